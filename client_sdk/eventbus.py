"""The client's events: a bounded buffer for :meth:`Client.events` / :meth:`Client.next_event`
and callbacks registered with :meth:`Client.on`.

Rules:

* An event is published only after the store transaction that holds its effect committed (the
  facets collect events while they write and publish them after the ``with`` block).
* A callback that raises is logged with its traceback (logger ``client_sdk.events``) and never
  stops the other callbacks, delivery or acknowledgement.
* The buffer holds at most ``maxlen`` events; when nobody reads, the oldest are dropped (counted
  in :attr:`EventBus.dropped`, logged once per burst). :meth:`EventBus.next_event` takes the first event of
  the asked type and leaves every other event in place.
* ``at_least_once`` callbacks (for :class:`MessageReceived`): the client acknowledges the message
  only after every such callback returned; see :meth:`publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from saltline.client_sdk.core.events import Event

E = TypeVar("E", bound=Event)
log = logging.getLogger("client_sdk.events")

#: Events kept for readers of :meth:`EventBus.events` (about 1 KiB each at most).
DEFAULT_MAX_BUFFERED = 10_000


#: What :meth:`EventBus.deliver` reports: every ``at_least_once`` callback returned (``"ok"``), one
#: raised (``"failed"``), or one took the event to handle later (``"deferred"``, see :class:`Deferred`).
Outcome = Literal["ok", "failed", "deferred"]


class Deferred(Exception):
    """Raised by an ``at_least_once`` callback that queued the event to handle it later: the
    message stays pending without counting an attempt; the callback's owner settles it (see
    ``Inbound.settle``) once its handling finished."""


@dataclass(frozen=True, slots=True)
class _Callback:
    event_type: type[Event]
    fn: Callable[[Any], Any]
    at_least_once: bool


class EventBus:
    def __init__(self, maxlen: int = DEFAULT_MAX_BUFFERED) -> None:
        self._buffer: deque[Event] = deque()
        self._maxlen = maxlen
        self._callbacks: list[_Callback] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.dropped = 0

    def on(self, event_type: type[E], fn: Callable[[E], Any], *, at_least_once: bool = False) -> None:
        self._callbacks.append(_Callback(event_type, fn, at_least_once))

    def has_at_least_once(self, event_type: type[Event]) -> bool:
        return any(c.at_least_once and issubclass(event_type, c.event_type) for c in self._callbacks)

    def _buffer_event(self, event: Event) -> None:
        if len(self._buffer) >= self._maxlen:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event buffer full: %d events dropped (read client.events())", self.dropped)
        self._buffer.append(event)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def publish(self, event: Event, *, at_least_once_only: bool = False) -> bool:
        """Buffer ``event`` and run the matching callbacks in registration order. Returns whether
        every ``at_least_once`` callback that matched returned normally. ``at_least_once_only``:
        a redelivery of an unhandled message: only those callbacks run and nothing is buffered."""
        return await self.deliver(event, at_least_once_only=at_least_once_only) == "ok"

    async def deliver(self, event: Event, *, at_least_once_only: bool = False) -> Outcome:
        """:meth:`publish`, telling a failure of an ``at_least_once`` callback from a deferral."""
        if not at_least_once_only:
            self._buffer_event(event)
        outcome: Outcome = "ok"
        for cb in list(self._callbacks):
            if not isinstance(event, cb.event_type) or (at_least_once_only and not cb.at_least_once):
                continue
            try:
                result = cb.fn(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Deferred:
                if cb.at_least_once and outcome == "ok":
                    outcome = "deferred"
            except Exception:
                log.exception("event callback %r raised on %s", cb.fn, type(event).__name__)
                if cb.at_least_once:
                    outcome = "failed"
        return outcome

    async def publish_all(self, events: list[Event]) -> None:
        for event in events:
            await self.publish(event)

    async def _changed(self, limit_s: float | None) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, limit_s)
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            if self._buffer:
                yield self._buffer.popleft()
            else:
                await self._changed(None)

    async def next_event(self, event_type: type[E], wait_s: float) -> E:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            for i, event in enumerate(self._buffer):
                if isinstance(event, event_type):
                    del self._buffer[i]
                    return event
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {event_type.__name__} event within {wait_s} s")
            with contextlib.suppress(TimeoutError):
                await self._changed(left)

    def drain(self) -> list[Event]:
        """Take every buffered event (tests and tools)."""
        out = list(self._buffer)
        self._buffer.clear()
        return out
