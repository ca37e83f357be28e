"""websockets driver for ``/v1/ws``: authenticates, answers pings, hands every frame to a
handler, acknowledges what the handler stored, watches the server's heartbeat, and reconnects with
back-off (:mod:`saltline.client_sdk.core.backoff`), resuming from the server's acknowledged position. It
also sends envelopes over the socket (:meth:`DeliverySocket.send_envelope`).

Two tasks per connection: the reader answers pings, matches ``send_result`` frames to their sends
and queues every other frame for the frame task, which runs the handler and sends the acks in
order. So a handler that waits for a lock held by a send on this socket does not keep that send's
answer from being read.

Nothing but :meth:`DeliverySocket.stop` and the close code of a removed device ends
:meth:`DeliverySocket.run`: a handler that raises, a malformed frame, a dead connection or a
refused token all end one connection, and the next one starts after the back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from saltline.client_sdk.core import wire
from saltline.client_sdk.core.backoff import Backoff, BackoffPolicy

log = logging.getLogger("saltline.client_sdk.transport")

#: Close codes after which reconnecting is pointless (the device was removed).
FATAL_CLOSE_CODES = wire.FATAL_CLOSE_CODES
CLOSE_AUTH_FAILED = wire.CLOSE_AUTH_FAILED
#: Sends over the socket are limited to this frame size (the server closes the socket on a larger
#: message); a larger envelope goes over HTTP.
MAX_SEND_FRAME_BYTES = 64 * 1024
#: How long a ``send`` waits for its ``send_result`` (as the HTTP transport's timeout).
SEND_TIMEOUT_S = 15.0
#: How long the connection may take to open and answer the auth frame with ``ready``.
OPEN_TIMEOUT_S = 10.0
#: The largest frame the client reads.
MAX_FRAME_BYTES = 8 * 1024 * 1024


class SocketUnavailable(Exception):
    """The socket cannot carry this send (not connected or not ready, the frame is too large, or
    the connection closed before the answer came): send it another way."""


class DeadConnection(Exception):
    """No frame from the server for two heartbeat intervals: the connection is half-open."""


FrameHandler = Callable[[object], Awaitable[int | None]]
"""Called for every frame that is not a ping or a send result (a JSON value, or the raw text of a
frame that is not JSON); returns a queue_seq to acknowledge, or None. An exception ends the
connection (nothing more is acknowledged; the server redelivers) and the socket reconnects."""

StateCallback = Callable[[str, int | None, int, float | None], Awaitable[None]]
"""``on_state(reason, close_code, attempt, retry_in_s)`` after every disconnection: ``close_code``
is the server's (None for a network failure or a dead connection); 4003: the token was refused
(fetch a new one before the next attempt); 4002: the device was removed (``retry_in_s`` None: the
socket stops for good)."""


def backoff_delay(
    attempt: int, *, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (kept for callers of earlier versions)."""
    r = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    return BackoffPolicy(base, cap).delay(attempt + 1, r.random)


class DeliverySocket:
    def __init__(
        self,
        ws_url: str,
        token: Callable[[], Awaitable[str]],
        handler: FrameHandler,
        *,
        on_state: StateCallback | None = None,
        backoff: BackoffPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.ws_url = ws_url.rstrip("/") + "/v1/ws"
        self._token = token
        self._handler = handler
        self._on_state = on_state
        self._backoff = Backoff(backoff or BackoffPolicy())
        self._monotonic = monotonic
        self._jitter = jitter or random.Random().random  # noqa: S311 - jitter only
        self._stop = asyncio.Event()
        self._conn: ClientConnection | None = None
        self._ready = False
        self._request_ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.max_attempts = max_attempts
        self.fatal: str | None = None
        self.heartbeat_interval_s = wire.DEFAULT_HEARTBEAT_INTERVAL_S

    @property
    def ready(self) -> bool:
        """Connected and authenticated (the server's ``ready`` frame came): sends may use it."""
        return self._conn is not None and self._ready

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def send_envelope(self, conversation_id: str, envelope: dict[str, Any] | bytes) -> dict[str, Any]:
        """Send ``envelope`` (a JSON object, or its UTF-8 JSON encoding as stored in the outbox)
        over the socket; the server's ``send_result`` frame. Raises :class:`SocketUnavailable`
        when the socket cannot carry it or closes before the answer, :class:`TimeoutError` when
        no answer comes in time."""
        conn = self._conn
        if conn is None or not self._ready:
            raise SocketUnavailable("the delivery socket is not ready")
        request_id = str(next(self._request_ids))
        head = json.dumps(
            {"type": wire.FRAME_SEND, "request_id": request_id, "conversation_id": conversation_id},
            separators=(",", ":"),
        )
        # the envelope's JSON is spliced in as the last member, not parsed and encoded again
        if isinstance(envelope, bytes):
            encoded = envelope.decode()
        else:
            encoded = json.dumps(envelope, separators=(",", ":"))
        frame = head[:-1] + ',"envelope":' + encoded + "}"
        if len(frame) > MAX_SEND_FRAME_BYTES:
            raise SocketUnavailable("the envelope is too large for the delivery socket")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            await conn.send(frame)
            async with asyncio.timeout(SEND_TIMEOUT_S):
                return await answer
        except ConnectionClosed as exc:
            raise SocketUnavailable("the delivery socket closed during the send") from exc
        finally:
            self._pending.pop(request_id, None)

    def _fail_pending(self) -> None:
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(SocketUnavailable("the delivery socket closed during the send"))
        self._pending.clear()

    async def run(self) -> None:
        """Connect, and reconnect after every failure, until :meth:`stop` or a fatal close code."""
        while not self._stop.is_set():
            code: int | None = None
            try:
                await self._session()
                reason = "the server closed the connection"
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                # Decisions are taken on the close code, never on the reason text.
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = f"connection closed ({code})" if code is not None else "connection lost"
            except DeadConnection as exc:
                reason = str(exc)
            except Exception as exc:  # network errors, refused tokens, handler failures
                reason = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, OSError | TimeoutError):
                    log.debug("delivery connection ended", exc_info=True)
            if self._stop.is_set():
                return
            if code in FATAL_CLOSE_CODES:
                self.fatal = "this device was removed from its account"
                await self._tell("removed", code, self._backoff.attempt + 1, None)
                return
            attempt, delay = self._backoff.failed(self._monotonic(), self._jitter)
            if self.max_attempts is not None and attempt > self.max_attempts:
                await self._tell(reason, code, attempt, None)
                return
            await self._tell(reason, code, attempt, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _tell(self, reason: str, code: int | None, attempt: int, delay: float | None) -> None:
        if self._on_state is None:
            return
        try:
            await self._on_state(reason, code, attempt, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the delivery state callback raised")

    async def _session(self) -> None:
        token = await self._token()
        async with connect(
            self.ws_url,
            ping_interval=None,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=1.0,
            max_size=MAX_FRAME_BYTES,
            compression=None,
        ) as conn:
            self._conn = conn
            inbox: asyncio.Queue[object] = asyncio.Queue()
            frames = asyncio.create_task(self._frames(conn, inbox))
            try:
                await conn.send(json.dumps({"type": wire.FRAME_AUTH, "token": token}))
                await self._read(conn, inbox, frames)
            finally:
                self._conn = None
                self._ready = False
                self._fail_pending()
                # frames not handled yet are dropped unacknowledged: the server sends them again
                while not inbox.empty():
                    inbox.get_nowait()
                inbox.put_nowait(_END)
                await frames  # the frame in hand is finished; the handler's error is raised

    async def _read(
        self, conn: ClientConnection, inbox: asyncio.Queue[object], frames: asyncio.Task[None]
    ) -> None:
        """Read until the connection ends; a silence of two heartbeat intervals is a dead
        connection (before ``ready``: the open timeout)."""
        while not self._stop.is_set() and not frames.done():
            limit = self.heartbeat_interval_s * wire.MISSED_HEARTBEATS_DEAD if self._ready else OPEN_TIMEOUT_S
            try:
                async with asyncio.timeout(limit):  # no task per frame, unlike wait_for
                    raw = await conn.recv()
            except TimeoutError:
                raise DeadConnection(
                    f"no frame from the server for {limit:.1f} s: the connection is dead"
                ) from None
            try:
                frame: object = json.loads(raw)
            except ValueError:
                frame = raw if isinstance(raw, str) else repr(raw[:64])
            if isinstance(frame, dict):
                kind = frame.get("type")
                if kind == wire.FRAME_PING:
                    await conn.send('{"type":"pong"}')
                    continue
                if kind == wire.FRAME_SEND_RESULT:
                    answer = self._pending.get(str(frame.get("request_id")))
                    if answer is not None and not answer.done():
                        answer.set_result(frame)
                    continue
                if kind == wire.FRAME_READY:
                    hb = frame.get("heartbeat_interval_s")
                    if isinstance(hb, int | float) and not isinstance(hb, bool) and 0 < hb <= 3600:
                        self.heartbeat_interval_s = float(hb)
                    self._ready = True
                    self._backoff.healthy(self._monotonic())
            inbox.put_nowait(frame)
        if frames.done():
            frames.result()  # raises the handler's error

    async def _frames(self, conn: ClientConnection, inbox: asyncio.Queue[object]) -> None:
        """Hand the queued frames to the handler in order and acknowledge what it stored."""
        while (frame := await inbox.get()) is not _END:
            try:
                ack = await self._handler(frame)
            except Exception:
                # end the connection (the reader stops; nothing later is acknowledged)
                if conn.transport is not None:
                    conn.transport.abort()
                raise
            if ack is not None:
                try:
                    await conn.send(json.dumps({"type": wire.FRAME_ACK, "queue_seq": ack}))
                except ConnectionClosed:
                    return
            if self._stop.is_set():
                return

    async def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)


_END = object()
