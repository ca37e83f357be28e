"""websockets driver for ``/v1/ws``: authenticates, answers pings, hands every frame to a
handler, acknowledges what the handler stored, and reconnects with exponential back-off and
jitter (resuming from the server's acknowledged position)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

#: Close codes after which reconnecting is pointless (the device was removed).
FATAL_CLOSE_CODES = {4002}
CLOSE_AUTH_FAILED = 4003

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
        self.max_attempts = max_attempts
        self.fatal: str | None = None

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
            try:
                await conn.send(json.dumps({"type": "auth", "token": token}))
                async for raw in conn:
                    frame = json.loads(raw)
                    if not isinstance(frame, dict):
                        continue
                    if frame.get("type") == "ping":
                        await conn.send('{"type":"pong"}')
                        continue
                    ack = await self._handler(frame)
                    if ack is not None:
                        await conn.send(json.dumps({"type": "ack", "queue_seq": ack}))
                    if self._stop.is_set():
                        return
            finally:
                self._conn = None
        # A clean close from the server: raise so run() reconnects.
        raise ConnectionClosed(None, None)

    async def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            await conn.close()
