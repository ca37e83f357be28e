"""bench/pairs.py's delivery path: the :class:`Tracker` of send and delivery instants (a delivery is
matched to its send by the ``B|<run>|<pair>|<seq>|`` prefix of its ciphertext), the receivers' held
delivery sockets, and the senders (HTTP POSTs, or ``send`` frames over the sender's own socket)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench._pairs_setup import CLOCK_BYTES, Pair, b64d, b64e, bounded

if TYPE_CHECKING:
    from bench._pairs_server import Target

DRAIN_MAX_S = 15.0
WARMUP_MAX_S = 15.0
CONNECT_CONCURRENCY = 64


@dataclass
class Tracker:
    """Send and delivery instants (perf_counter) keyed by (pair, seq) for one run id."""

    run: str
    sent_at: dict[tuple[int, int], float] = field(default_factory=dict)
    accepted: set[tuple[int, int]] = field(default_factory=set)
    delivered: dict[tuple[int, int], float] = field(default_factory=dict)
    send_rtt: list[float] = field(default_factory=list)
    send_errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    duplicates: int = 0
    foreign: int = 0
    unknown: int = 0

    def on_envelope(self, ciphertext: bytes, t: float) -> None:
        parts = ciphertext.split(b"|", 4)
        if len(parts) < 5 or parts[0] != b"B":
            self.unknown += 1
            return
        if parts[1].decode() != self.run:
            self.foreign += 1
            return
        key = (int(parts[2]), int(parts[3]))
        if key in self.delivered:
            self.duplicates += 1
        else:
            self.delivered[key] = t

    def error(self, kind: str, detail: str) -> None:
        self.send_errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(detail[:600])

    def undelivered(self) -> int:
        return sum(1 for k in self.accepted if k not in self.delivered)

    async def drain(self, max_s: float) -> float:
        start = time.perf_counter()
        while self.undelivered() and time.perf_counter() - start < max_s:  # noqa: ASYNC110 - 10 ms poll
            await asyncio.sleep(0.01)
        return time.perf_counter() - start

    def latencies(self, until: float | None = None) -> list[float]:
        return [
            t - self.sent_at[k]
            for k, t in self.delivered.items()
            if k in self.sent_at and (until is None or t <= until)
        ]


class DeviceSocket:
    """A held delivery socket: auth first, ack every envelope by queue_seq, answer pings."""

    def __init__(self, ws_url: str, token: str) -> None:
        self.ws_url = ws_url
        self.token = token
        self.conn: ClientConnection | None = None
        self.tracker: Tracker | None = None
        self.pings = 0
        self.envelopes = 0
        self.closed: str | None = None
        self._pong = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.conn = await connect(
            self.ws_url + "/v1/ws", ping_interval=None, open_timeout=30, close_timeout=5, max_queue=None
        )
        await self.conn.send(orjson.dumps({"type": "auth", "token": self.token}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.conn.recv(), 30))
            if frame["type"] == "ready":
                break
            if frame["type"] == "ping":
                await self.conn.send('{"type":"pong"}')
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self.conn is not None
        conn = self.conn
        clock = time.perf_counter
        try:
            async for raw in conn:
                t = clock()
                frame = orjson.loads(raw)
                kind = frame["type"]
                if kind == "envelope":
                    self.envelopes += 1
                    if self.tracker is not None:
                        self.tracker.on_envelope(b64d(frame["ciphertext"]), t)
                    await conn.send(f'{{"type":"ack","queue_seq":{int(frame["queue_seq"])}}}')
                elif kind == "ping":
                    self.pings += 1
                    await conn.send('{"type":"pong"}')
                elif kind == "pong":
                    self._pong.set()
            code = conn.close_code
            self.closed = f"closed by server (code {code})"
        except ConnectionClosed as exc:
            self.closed = f"connection closed: {exc}"
        except Exception as exc:
            self.closed = f"{type(exc).__name__}: {exc}"

    async def check_alive(self, wait_s: float = 10.0) -> bool:
        """Send a client ping; alive if the pong comes back."""
        if self.conn is None or self.closed is not None:
            return False
        self._pong.clear()
        try:
            await self.conn.send('{"type":"ping"}')
            await asyncio.wait_for(self._pong.wait(), wait_s)
        except (TimeoutError, ConnectionClosed):
            return False
        return True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)


async def open_sockets(ws_url: str, tokens: list[str]) -> tuple[list[DeviceSocket], list[str]]:
    socks = [DeviceSocket(ws_url, t) for t in tokens]
    errors: list[str] = []

    async def one(s: DeviceSocket) -> None:
        try:
            await s.open()
        except Exception as exc:
            s.closed = f"open failed: {type(exc).__name__}: {exc}"
            errors.append(s.closed)

    await bounded(CONNECT_CONCURRENCY, [one(s) for s in socks])
    return socks, errors


async def close_sockets(socks: list[DeviceSocket]) -> None:
    await bounded(CONNECT_CONCURRENCY, [s.close() for s in socks])


class Sender:
    def __init__(self, base_url: str, pair: Pair, tracker: Tracker) -> None:
        self.pair = pair
        self.tracker = tracker
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={**pair.sender.headers, "Content-Type": "application/json"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=8),
        )
        self.path = f"/v1/conversations/{pair.conversation_id}/envelopes"

    def body(self, run: str, seq: int, ciphertext_bytes: int) -> bytes:
        """A pre-built envelope (JSON bytes): one ciphertext for the receiver's device."""
        prefix = f"B|{run}|{self.pair.index}|{seq}|".encode()
        ciphertext = prefix + os.urandom(ciphertext_bytes - len(prefix))
        s, r = self.pair.sender, self.pair.receiver
        return orjson.dumps(
            {
                "envelope_id": b64e(os.urandom(16)),
                "clock": b64e(os.urandom(CLOCK_BYTES)),
                "device_list_versions": {s.account_id: s.list_version, r.account_id: r.list_version},
                "ephemeral": False,
                "ciphertexts": [{"device_id": r.id, "ciphertext": b64e(ciphertext)}],
            }
        )

    async def send(self, seq: int, body: bytes) -> bool:
        key = (self.pair.index, seq)
        tracker = self.tracker
        t = time.perf_counter()
        tracker.sent_at[key] = t
        try:
            r = await self.http.post(self.path, content=body)
        except Exception as exc:
            tracker.error(type(exc).__name__, f"pair {key[0]} seq {key[1]}: {type(exc).__name__}: {exc}")
            return False
        if r.status_code != 201:
            tracker.error(
                f"http_{r.status_code}", f"pair {key[0]} seq {key[1]}: HTTP {r.status_code}: {r.text}"
            )
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.add(key)
        return True

    async def close(self) -> None:
        await self.http.aclose()


class WsSender(Sender):
    """The same envelope bodies, sent as ``send`` frames over the sender device's own delivery
    socket (``--send-via ws``); accepted = its ``send_result`` with status 201."""

    def __init__(self, base_url: str, ws_url: str, pair: Pair, tracker: Tracker) -> None:
        super().__init__(base_url, pair, tracker)
        self.ws_url = ws_url
        self.conn: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._head = (
            b'{"type":"send","request_id":"%s","conversation_id":"'
            + pair.conversation_id.encode()
            + b'","envelope":'
        )

    async def open(self) -> None:
        self.conn = await connect(
            self.ws_url + "/v1/ws", ping_interval=None, open_timeout=30, close_timeout=5, max_queue=None
        )
        await self.conn.send(orjson.dumps({"type": "auth", "token": self.pair.sender.access_token}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.conn.recv(), 30))
            if frame["type"] == "ready":
                break
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self.conn is not None
        conn = self.conn
        try:
            async for raw in conn:
                frame = orjson.loads(raw)
                kind = frame["type"]
                if kind == "send_result":
                    fut = self._pending.pop(frame["request_id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
                elif kind == "ping":
                    await conn.send('{"type":"pong"}')
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the sender's socket closed"))

    def body(self, run: str, seq: int, ciphertext_bytes: int) -> bytes:
        return self._head.replace(b"%s", str(seq).encode()) + super().body(run, seq, ciphertext_bytes) + b"}"

    async def send(self, seq: int, body: bytes) -> bool:
        assert self.conn is not None
        key = (self.pair.index, seq)
        tracker = self.tracker
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[str(seq)] = fut
        t = time.perf_counter()
        tracker.sent_at[key] = t
        try:
            await self.conn.send(body, text=True)
            answer = await fut
        except Exception as exc:
            self._pending.pop(str(seq), None)
            tracker.error(type(exc).__name__, f"pair {key[0]} seq {key[1]}: {type(exc).__name__}: {exc}")
            return False
        if answer["status"] != 201:
            tracker.error(
                f"ws_{answer['status']}", f"pair {key[0]} seq {key[1]}: status {answer['status']}: {answer}"
            )
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.add(key)
        return True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 10)
        await super().close()


async def make_senders(args: argparse.Namespace, target: Target, pairs: list[Pair]) -> list[Sender]:
    """One sender per pair: HTTP POSTs, or ``send`` frames over the sender's socket."""
    if args.send_via == "http":
        return [Sender(target.base_url, p, Tracker("")) for p in pairs]
    ws_senders = [WsSender(target.base_url, target.ws_url, p, Tracker("")) for p in pairs]
    await bounded(CONNECT_CONCURRENCY, [s.open() for s in ws_senders])
    senders: list[Sender] = list(ws_senders)
    return senders


def delivery_report(tracker: Tracker) -> dict[str, Any]:
    accepted = len(tracker.accepted)
    delivered_accepted = sum(1 for k in tracker.accepted if k in tracker.delivered)
    return {
        "sent": len(tracker.sent_at),
        "accepted": accepted,
        "send_errors": sum(tracker.send_errors.values()),
        "send_errors_by_kind": dict(tracker.send_errors),
        "send_error_samples": tracker.error_samples,
        "delivered": len(tracker.delivered),
        "lost": accepted - delivered_accepted,
        "delivered_without_accepted_send": len(tracker.delivered) - delivered_accepted,
        "duplicates": tracker.duplicates,
        "foreign_frames": tracker.foreign + tracker.unknown,
    }
