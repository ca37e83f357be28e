"""Delivery: supervises the delivery socket (:class:`~saltline.client_sdk.transport.ws.DeliverySocket`) and
turns what happens to it into events.

The socket never stops by itself except when the server says the device is gone (a fatal close
code, or a token request answered "device not active"/"token revoked"): then
:class:`DeviceRemoved` is published. Every other close is a :class:`Disconnected` (reason, close
code, attempt, when the next attempt is) and the connection after it a :class:`Reconnected`.
Frames go to the inbound facet; ``ready`` marks the connection usable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import wire
from saltline.client_sdk.core.backoff import BackoffPolicy
from saltline.client_sdk.core.events import DeviceRemoved, Disconnected, Reconnected
from saltline.client_sdk.errors import AuthError, NetworkError
from saltline.client_sdk.facets.inbound import Inbound
from saltline.client_sdk.transport.ws import DeliverySocket

#: How long :meth:`Delivery.connect` waits for the first connection to be ready.
CONNECT_WAIT_S = 20.0
REMOVED = "this device was removed from its account; link it again"


class Delivery:
    def __init__(
        self,
        ctx: DeviceContext,
        inbound: Inbound,
        ws_url: str,
        backoff: BackoffPolicy | None,
        task: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._ctx = ctx
        self._inbound = inbound
        self._ws_url = ws_url
        self._backoff = backoff
        self._task = task
        self.socket: DeliverySocket | None = None
        self._socket_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._connections = 0
        self._last_attempt = 0

    async def connect(self, wait_s: float = CONNECT_WAIT_S) -> None:
        if self._socket_task is None or self._socket_task.done():
            self._ready.clear()
            self.socket = DeliverySocket(
                self._ws_url,
                self._token,
                self.on_frame,
                on_state=self._on_state,
                backoff=self._backoff,
                monotonic=self._ctx.monotonic,
                jitter=self._ctx.jitter,
            )
            self._socket_task = self._task(self.socket.run())
        waiter = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._socket_task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if self.socket is not None and self.socket.fatal:
                raise AuthError(403, wire.PROBLEM_DEVICE_NOT_ACTIVE, self.socket.fatal)
            raise NetworkError("the delivery socket did not become ready (it keeps trying in the background)")

    async def disconnect(self) -> None:
        socket, task = self.socket, self._socket_task
        self.socket, self._socket_task = None, None
        if socket is not None:
            await socket.stop()
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
        self._ready.clear()

    async def _token(self) -> str:
        try:
            return await self._ctx.token()
        except AuthError as exc:
            if (
                exc.code in (wire.PROBLEM_DEVICE_NOT_ACTIVE, wire.PROBLEM_TOKEN_REVOKED)
                and self.socket is not None
            ):
                self.socket.fatal = REMOVED
                await self._ctx.bus.publish(DeviceRemoved(REMOVED))
                self._task(self.socket.stop())
            raise

    async def on_frame(self, frame: object) -> int | None:
        """One frame from the socket; returns the queue sequence number to acknowledge, if any."""
        is_ready = isinstance(frame, dict) and frame.get("type") == wire.FRAME_READY
        if is_ready:
            assert isinstance(frame, dict)
            if self._connections > 0:
                acked = frame.get("acked_queue_seq")
                self._ctx.emit(Reconnected(acked if isinstance(acked, int) else 0, self._last_attempt))
            self._connections += 1
            self._last_attempt = 0
        ack = await self._inbound.on_frame(frame)
        if is_ready:
            self._ready.set()
        return ack

    async def _on_state(self, reason: str, code: int | None, attempt: int, retry_in_s: float | None) -> None:
        self._ready.clear()
        self._last_attempt = attempt
        if code == wire.CLOSE_AUTH_FAILED:
            self._ctx.drop_access_token()  # re-authenticate (refresh or device login) first
        if code in wire.FATAL_CLOSE_CODES:
            await self._ctx.bus.publish(DeviceRemoved(REMOVED))
            return
        await self._ctx.bus.publish(Disconnected(reason, code, attempt, retry_in_s))
