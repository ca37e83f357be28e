"""websockets driver for ``/v1/ws``: authenticates, answers pings, hands every frame to a
handler, acknowledges what the handler stored, and reconnects with exponential back-off and
jitter (resuming from the server's acknowledged position). It also sends envelopes over the socket
(:meth:`DeliverySocket.send_envelope`: a ``send`` frame answered by a ``send_result`` frame).

Two tasks per connection: the reader answers pings and matches ``send_result`` frames to their
sends itself, and queues every other frame for the frame task, which runs the handler and sends
the acks in order. So a handler that waits for a lock held by a send in progress on this socket
does not keep that send's answer from being read."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

#: Close codes after which reconnecting is pointless (the device was removed).
FATAL_CLOSE_CODES = {4002}
CLOSE_AUTH_FAILED = 4003

#: Sends over the socket are limited to this frame size (the server closes the socket on a larger
#: message); a larger envelope goes over HTTP.
MAX_SEND_FRAME_BYTES = 64 * 1024
#: How long a ``send`` waits for its ``send_result`` (as the HTTP transport's timeout).
SEND_TIMEOUT_S = 15.0


class SocketUnavailable(Exception):
    """The socket cannot carry this send (not connected or not ready, the frame is too large, or
    the connection closed before the answer came): send it another way (its envelope id makes a
    second send of it a replay)."""


FrameHandler = Callable[[dict[str, Any]], Awaitable[int | None]]
"""Called for every frame that is not a ping; returns a queue_seq to acknowledge, or None.

``on_state(state, close_code)`` is told of every disconnection with the server's close code
(``None`` for a network failure): 4003 means the token was refused (fetch a new one before the
next attempt), 4002 that the device was removed (the socket stops for good)."""


def backoff_delay(
    attempt: int, *, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    r = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    return r.uniform(0, min(cap, base * (2**attempt)))


class DeliverySocket:
    def __init__(
        self,
        ws_url: str,
        token: Callable[[], Awaitable[str]],
        handler: FrameHandler,
        *,
        on_state: Callable[[str, int | None], Awaitable[None]] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.ws_url = ws_url.rstrip("/") + "/v1/ws"
        self._token = token
        self._handler = handler
        self._on_state = on_state
        self._stop = asyncio.Event()
        self._conn: ClientConnection | None = None
        self._ready = False
        self._request_ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.max_attempts = max_attempts
        self.fatal: str | None = None

    @property
    def ready(self) -> bool:
        """Connected and authenticated (the server's ``ready`` frame came): sends may use it."""
        return self._conn is not None and self._ready

    async def send_envelope(self, conversation_id: str, envelope: dict[str, Any]) -> dict[str, Any]:
        """Send ``envelope`` (the body of ``POST /v1/conversations/{id}/envelopes``) over the socket;
        the server's ``send_result`` frame. Raises :class:`SocketUnavailable` when the socket cannot
        carry it or closes before the answer, :class:`TimeoutError` when no answer comes in time."""
        conn = self._conn
        if conn is None or not self._ready:
            raise SocketUnavailable("the delivery socket is not ready")
        request_id = str(next(self._request_ids))
        frame = json.dumps(
            {
                "type": "send",
                "request_id": request_id,
                "conversation_id": conversation_id,
                "envelope": envelope,
            },
            separators=(",", ":"),
        )
        if len(frame) > MAX_SEND_FRAME_BYTES:
            raise SocketUnavailable("the envelope is too large for the delivery socket")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            await conn.send(frame)
            return await asyncio.wait_for(answer, SEND_TIMEOUT_S)
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
        attempt = 0
        while not self._stop.is_set():
            try:
                await self._session()
                attempt = 0
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                # Decisions are taken on the close code, never on the reason text.
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if code in FATAL_CLOSE_CODES:
                    self.fatal = "this device was removed from its account"
                    if self._on_state:
                        await self._on_state("removed", code)
                    return
                if self._on_state:
                    await self._on_state(f"disconnected: {exc}", code)
            if self._stop.is_set():
                return
            attempt += 1
            if self.max_attempts is not None and attempt > self.max_attempts:
                return
            try:
                await asyncio.wait_for(self._stop.wait(), backoff_delay(min(attempt, 8)))
            except TimeoutError:
                pass

    async def _session(self) -> None:
        token = await self._token()
        async with connect(
            self.ws_url, ping_interval=None, open_timeout=10, max_size=8 * 1024 * 1024
        ) as conn:
            self._conn = conn
            inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
            frames = asyncio.create_task(self._frames(conn, inbox))
            try:
                await conn.send(json.dumps({"type": "auth", "token": token}))
                async for raw in conn:
                    frame = json.loads(raw)
                    if not isinstance(frame, dict):
                        continue
                    kind = frame.get("type")
                    if kind == "ping":
                        await conn.send('{"type":"pong"}')
                    elif kind == "send_result":
                        answer = self._pending.get(str(frame.get("request_id")))
                        if answer is not None and not answer.done():
                            answer.set_result(frame)
                    else:
                        if kind == "ready":
                            self._ready = True
                        inbox.put_nowait(frame)
                    if self._stop.is_set() or frames.done():
                        break
            finally:
                self._conn = None
                self._ready = False
                self._fail_pending()
                # frames not handled yet are dropped unacknowledged: the server sends them again
                while not inbox.empty():
                    inbox.get_nowait()
                inbox.put_nowait(None)
                await frames  # the frame in hand is finished; the handler's error is raised
            if self._stop.is_set():
                return
        # A clean close from the server: raise so run() reconnects.
        raise ConnectionClosed(None, None)

    async def _frames(self, conn: ClientConnection, inbox: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Hand the queued frames to the handler in order and acknowledge what it stored."""
        try:
            while (frame := await inbox.get()) is not None:
                ack = await self._handler(frame)
                if ack is not None:
                    try:
                        await conn.send(json.dumps({"type": "ack", "queue_seq": ack}))
                    except ConnectionClosed:
                        return
                if self._stop.is_set():
                    return
        except Exception:
            with contextlib.suppress(Exception):
                await conn.close()  # ends the reader, which raises this error
            raise

    async def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            await conn.close()
