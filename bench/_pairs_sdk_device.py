"""One SDK client of bench/pairs_sdk.py (sdk mode) and what its events tell the benchmark: the
:class:`Device` wrapper (deliveries matched by the ``B|<run>|<index>|<seq>|`` prefix of the
decrypted text, the SDK's envelope handling time, its network errors), the store the clients of a
run use (``--sdk-store``) and the per-test reports built from the clients."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common as common
from bench._pairs_delivery import CONNECT_CONCURRENCY, DRAIN_MAX_S, Tracker
from bench._pairs_setup import PLAINTEXT_BYTES, SetupError, bounded
from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import DecryptionFailed, Disconnected, MessageReceived
from saltline.client_sdk.errors import NetworkError
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto.ratchet import Session

log = common.log

#: How long one set-up step may wait for a message to arrive.
SETUP_WAIT_S = 60.0
STORES = {
    "memory": "MemoryStore (saltline.client_sdk.stores.memory: in memory, no disk I/O)",
    "sqlite": "SqliteStore (saltline.client_sdk.stores.sqlite: encrypted rows, one file per client)",
}
#: Which store the clients of this run use (``--sdk-store``; set by :func:`use_store`).
_store_kind = "memory"
_store_dir: Path | None = None


def make_store() -> Any:
    """A new store of the kind this run uses."""
    if _store_kind == "memory":
        return MemoryStore()
    global _store_dir
    if _store_dir is None:
        _store_dir = Path(tempfile.mkdtemp(prefix="saltline-bench-sdk-"))
    from saltline.client_sdk.stores.sqlite import SqliteStore

    return SqliteStore.open(_store_dir / f"{secrets.token_hex(8)}.db", key=secrets.token_bytes(32))


def use_store(kind: str) -> None:
    """The store the clients created from now on use: ``"memory"`` or ``"sqlite"`` (a key in
    :data:`STORES`)."""
    if kind not in STORES:
        raise ValueError(f"unknown sdk store {kind!r}")
    global _store_kind
    _store_kind = kind


def message_text(run: str, index: int, seq: int) -> str:
    """200 bytes of ASCII: ``B|<run>|<index>|<seq>|`` then random hex."""
    prefix = f"B|{run}|{index}|{seq}|"
    pad = PLAINTEXT_BYTES - len(prefix)
    return prefix + os.urandom((pad + 1) // 2).hex()[:pad]


# -- one SDK client ----------------------------------------------------------------------------


class Device:
    """One SDK client (one device) and what its events tell the benchmark.

    Deliveries are recorded into ``tracker`` keyed by (pair from the text, seq), or by
    (``key_index``, seq) when ``key_index`` is set (fanout: one key per recipient device)."""

    def __init__(self, client: Client, index: int, key_index: int | None = None) -> None:
        self.client = client
        self.index = index
        self.key_index = key_index
        self.tracker: Tracker | None = None
        self.received = 0
        self.misrouted = 0
        self.decryption_failures: list[str] = []
        self.disconnects = 0
        #: Seconds the SDK spent handling each envelope frame while a tracker is attached (from
        #: the socket handing the frame over to the handler returning: decrypt, store, events).
        self.processing: list[float] = []
        #: Network errors the SDK's HTTP transport raised since the last :meth:`reset` (the SDK
        #: keeps such a send in its outbox and returns; it goes out with the next flush).
        self.network_errors: list[str] = []
        execute = client._ctx.http.execute

        async def recorded(request: Any, access_token: str | None = None) -> Any:
            try:
                return await execute(request, access_token)
            except NetworkError as exc:
                cause = exc.__cause__
                what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                self.network_errors.append(f"{request.method} {request.path}: {what}"[:400])
                raise

        client._ctx.http.execute = recorded  # type: ignore[method-assign]
        self._changed = asyncio.Event()
        handle = client.delivery.on_frame

        async def timed(frame: dict[str, Any]) -> int | None:
            if self.tracker is None or frame.get("type") != "envelope":
                return await handle(frame)
            t = time.perf_counter()
            try:
                return await handle(frame)
            finally:
                self.processing.append(time.perf_counter() - t)

        client.delivery.on_frame = timed  # type: ignore[method-assign, assignment]  # read when the socket starts
        client.on(MessageReceived, self._on_message)
        client.on(DecryptionFailed, self._on_failed)
        client.on(Disconnected, self._on_disconnect)

    @classmethod
    async def create(cls, base_url: str, index: int, key_index: int | None = None) -> Device:
        return cls(await Client.create(base_url, make_store()), index, key_index)

    def attach(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.reset()

    def reset(self) -> None:
        self.processing.clear()
        self.network_errors.clear()

    def _on_message(self, event: MessageReceived) -> None:
        t = time.perf_counter()
        self.received += 1
        tracker = self.tracker
        if tracker is not None:
            parts = event.text.split("|", 4)
            if len(parts) < 5 or parts[0] != "B":
                tracker.unknown += 1
            elif parts[1] != tracker.run:
                tracker.foreign += 1
            else:
                pair = int(parts[2])
                if self.key_index is None and pair != self.index:
                    self.misrouted += 1
                key = (pair if self.key_index is None else self.key_index, int(parts[3]))
                if key in tracker.delivered:
                    tracker.duplicates += 1
                else:
                    tracker.delivered[key] = t
        self._changed.set()

    def _on_failed(self, event: DecryptionFailed) -> None:
        self.decryption_failures.append(f"{event.envelope_id}: {event.reason}"[:300])

    def _on_disconnect(self, event: Disconnected) -> None:
        self.disconnects += 1

    async def resend_leftovers(self, tracker: Tracker, keys: list[Any], attempts: int = 3) -> bool:
        """Set-up and warm-up only: flush what a network error left in the outbox (the SDK would do
        it on its next send or reconnection); ``keys`` accepted once the outbox is empty."""
        for _ in range(attempts):
            if not self.client.store.outbox.outbox():
                tracker.accepted.update(keys)
                return True
            try:
                await self.client.flush_outbox()
            except Exception as exc:
                tracker.error(type(exc).__name__, f"sender {self.index} flush: {exc}")
            await asyncio.sleep(0.1)
        if not self.client.store.outbox.outbox():
            tracker.accepted.update(keys)
            return True
        return False

    async def send_setup(self, conversation_id: str, text: str) -> None:
        """A set-up message; what a network error left in the outbox is flushed again."""
        await self.client.send_text(conversation_id, text)
        for _ in range(3):
            if not self.client.store.outbox.outbox():
                return
            await asyncio.sleep(0.1)
            try:
                await self.client.flush_outbox()
            except Exception as exc:
                log(f"set-up send of {self.client.device_id}: {type(exc).__name__}: {exc}")
        if self.client.store.outbox.outbox():
            raise SetupError(f"device {self.client.device_id} could not send a set-up message")

    async def wait_received(self, count: int, wait_s: float = SETUP_WAIT_S) -> None:
        """Until this client has emitted ``count`` MessageReceived in all."""
        deadline = time.perf_counter() + wait_s
        while self.received < count:
            self._changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise SetupError(
                    f"device {self.client.device_id} received {self.received} of {count} set-up messages"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def session_confirmed(self, peer_device_id: str) -> bool:
        """The session this client would send with to ``peer_device_id`` (the SDK's choice: the
        first that can send) exists and no longer carries the X3DH initial header."""
        for record in self.client.store.sessions.sessions_for(peer_device_id):
            session = Session.from_bytes(record.state)
            if session.can_send:
                return session.pending_initial_header is None
        return False

    async def send(
        self, tracker: Tracker, conversation_id: str, seq: int, text: str, keys: list[Any]
    ) -> bool:
        """``send_text`` with the instants of the workload: every key in ``keys`` is sent at the
        instant just before the call and accepted when the message left the outbox."""
        t = time.perf_counter()
        for key in keys:
            tracker.sent_at[key] = t
        try:
            envelope_id = await self.client.send_text(conversation_id, text)
        except Exception as exc:
            tracker.error(type(exc).__name__, f"sender {self.index} seq {seq}: {type(exc).__name__}: {exc}")
            return False
        if self.client.store.outbox.get_outbox(envelope_id) is not None:
            last = self.network_errors[-1] if self.network_errors else "no error recorded"
            tracker.error("left_in_outbox", f"sender {self.index} seq {seq}: left in the outbox ({last})")
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.update(keys)
        return True


async def close_clients(devices: list[Device]) -> None:
    async def one(d: Device) -> None:
        try:
            await asyncio.wait_for(d.client.close(), 15)
        except BaseException as exc:  # best effort at tear-down
            log(f"closing a client: {type(exc).__name__}: {exc}")

    await bounded(CONNECT_CONCURRENCY, [one(d) for d in devices])


def events_report(devices: list[Device]) -> dict[str, Any]:
    failures = [f for d in devices for f in d.decryption_failures]
    return {
        "decryption_failures": len(failures),
        "decryption_failure_samples": failures[:3],
        "misrouted": sum(d.misrouted for d in devices),
        "socket_disconnects": sum(d.disconnects for d in devices),
        "sdk_network_errors": sum(len(d.network_errors) for d in devices),
        "sdk_network_error_samples": [e for d in devices for e in d.network_errors][:3],
        "sdk_envelope_handling_ms": common.latency_summary_ms([t for d in devices for t in d.processing]),
    }


def parameters_common() -> dict[str, Any]:
    return {
        "client": "saltline.client_sdk.client.Client (send_text; MessageReceived callback)",
        "store": STORES[_store_kind],
        "send_transport": "HTTP POST (the SDK's send_text; --send-via applies to server mode only)",
        "delivery": "the SDK's delivery socket; delivered = MessageReceived (decrypted, stored, acked)",
        "clients_in_one_process": True,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "plaintext_bytes": PLAINTEXT_BYTES,
        "drain_max_s": DRAIN_MAX_S,
    }


def cpu_per_message(cpu: dict[str, Any], delivered: int) -> dict[str, Any]:
    if not delivered:
        return {"server_ms": None, "loadgen_ms": None}
    server = cpu.get("server_cpu_s")
    return {
        "server_ms": None if server is None else round(server / delivered * 1000, 3),
        "loadgen_ms": round(cpu["loadgen_cpu_s"] / delivered * 1000, 3),
    }
