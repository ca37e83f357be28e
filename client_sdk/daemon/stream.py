"""Line-delimited JSON-RPC over a byte stream (stdio, a UNIX socket connection): one JSON text
per line each way; requests are answered as they finish (match them by ``id``), and a
connection's subscriptions arrive on it as ``event`` notifications."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from saltline.client_sdk.daemon.hub import Hub, Subscriber
from saltline.client_sdk.daemon.methods import Peer
from saltline.client_sdk.daemon.rpc import (
    INVALID_REQUEST,
    Dispatcher,
    Parsed,
    RpcError,
    encode,
    notification,
    parse,
    response_error,
)

log = logging.getLogger("saltline.client_sdk.daemon")

#: Requests of one connection being worked on at once (each request of a batch counts); reading
#: waits beyond it.
MAX_IN_FLIGHT = 16
#: Subscriptions one connection may hold at once.
MAX_SUBSCRIPTIONS = 16

Write = Callable[[bytes], Awaitable[None]]


async def read_line(reader: asyncio.StreamReader, max_len: int) -> bytes:
    """One line of up to ``max_len`` bytes from a reader whose own limit may be smaller (the UNIX
    socket's reader keeps HTTP heads to 8 KiB, JSON lines go up to ``--max-body``); the line
    without its end at the end of input. A longer line raises :class:`ValueError`."""
    parts: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
            done = True
        except asyncio.LimitOverrunError as exc:
            chunk = await reader.readexactly(exc.consumed)  # what the reader could not hold at once
            done = False
        except asyncio.IncompleteReadError as exc:
            chunk, done = exc.partial, True
        total += len(chunk)
        if total > max_len:
            raise ValueError(f"a line over {max_len} bytes")
        parts.append(chunk)
        if done:
            return b"".join(parts)


class StreamConnection:
    """One stream peer. ``write(data)`` sends bytes (and waits for the peer to take them)."""

    def __init__(
        self, hub: Hub, dispatcher: Dispatcher[Peer | None], write: Write, *, max_line: int | None = None
    ) -> None:
        """``max_line``: the longest line taken (None: the reader's own limit)."""
        self.max_line = max_line
        self.hub = hub
        self.dispatcher = dispatcher
        self._write = write
        self._lock = asyncio.Lock()
        self._subs: dict[int, tuple[Subscriber, asyncio.Task[None]]] = {}
        self._requests: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.closed = False

    async def send(self, message: Any) -> None:
        data = (message if isinstance(message, str) else encode(message)).encode() + b"\n"
        async with self._lock:
            await self._write(data)

    async def serve(self, reader: asyncio.StreamReader, first_line: bytes | None = None) -> None:
        """Answer every line until the end of input (or a line over the reader's limit, which is
        answered with -32600 and ends the connection); then wait for the requests in flight."""
        try:
            line = first_line
            while True:
                if line is None:
                    try:
                        if self.max_line is None:
                            line = await reader.readline()
                        else:
                            line = await read_line(reader, self.max_line)
                    except (ValueError, asyncio.LimitOverrunError):
                        await self.send(
                            response_error(None, INVALID_REQUEST, "invalid request: line too long")
                        )
                        break
                    if not line:
                        break
                if line.strip():
                    parsed = parse(line)
                    weight = min(parsed.weight, MAX_IN_FLIGHT)
                    for _ in range(weight):  # only this loop acquires: no two batches half-hold slots
                        await self._slots.acquire()
                    task = asyncio.get_running_loop().create_task(self._answer(parsed, weight))
                    self._requests.add(task)
                    task.add_done_callback(self._requests.discard)
                line = None
            if self._requests:
                await asyncio.gather(*self._requests, return_exceptions=True)
        finally:
            await self.close()

    async def _answer(self, parsed: Parsed, weight: int) -> None:
        try:
            answer = await self.dispatcher.handle_text(parsed, self)
            if answer is not None:
                await self.send(answer)
        except (ConnectionError, OSError) as exc:
            log.info("connection lost while answering: %s", exc)
        except Exception:  # one request must not end the others
            log.exception("answering a request failed")
        finally:
            for _ in range(weight):
                self._slots.release()

    # -- subscriptions (methods.Peer) ---------------------------------------------------------------

    def check_subscription_room(self) -> None:
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise RpcError(
                -32000,
                f"too many subscriptions: at most {MAX_SUBSCRIPTIONS} on one connection",
                {"code": "too_many_subscriptions", "type": "TooManySubscriptions"},
            )

    def add_subscription(self, sub: Subscriber) -> None:
        task = asyncio.get_running_loop().create_task(self._forward(sub))
        self._subs[sub.id] = (sub, task)

    def remove_subscription(self, sub_id: int) -> bool:
        entry = self._subs.pop(sub_id, None)
        if entry is None:
            return False
        sub, task = entry
        self.hub.unsubscribe(sub)
        task.cancel()
        return True

    async def _forward(self, sub: Subscriber) -> None:
        try:
            while True:
                item = await sub.get()
                if item.get("dropped"):
                    await self.send(notification("subscription_dropped", item))
                    self._subs.pop(sub.id, None)
                    return
                try:
                    text = encode(notification("event", {"subscription": sub.id, **item}))
                except (TypeError, ValueError, RecursionError):  # one bad event: skip it
                    log.exception("cannot encode an event of subscription %d", sub.id)
                    continue
                await self.send(text)
        except (ConnectionError, OSError):
            self.hub.unsubscribe(sub)
            self._subs.pop(sub.id, None)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sub_id in list(self._subs):
            self.remove_subscription(sub_id)
        for task in list(self._requests):
            task.cancel()
        for task in list(self._requests):
            with contextlib.suppress(BaseException):
                await task
