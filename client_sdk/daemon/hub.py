"""The daemon's state: the clients of the profiles it serves, and the subscribers their events
go to.

Each client's events are read in one task (:meth:`Client.events`) and offered to every
subscriber that wants that profile. A subscriber has a bounded queue (:data:`DEFAULT_QUEUE`
events and :data:`DEFAULT_QUEUE_BYTES` bytes of their JSON), and there are at most
:data:`MAX_SUBSCRIBERS` of them: one that does not keep up (a slow SSE reader, a stalled socket)
is dropped when its queue is full; its queue is emptied
and it gets one last :data:`DROPPED` item, so memory stays bounded whatever a reader does.
Events that arrive while nobody is subscribed are not kept (subscribe first, then act)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.daemon.codec import event_json
from saltline.client_sdk.daemon.rpc import SALTLINE_ERROR, RpcError, encode, invalid_params
from saltline.client_sdk.errors import SaltlineError

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client

log = logging.getLogger("saltline.client_sdk.daemon")

#: Events a subscriber may have waiting before it is dropped.
DEFAULT_QUEUE = 1000
#: Bytes (of their JSON) those events may hold before it is dropped.
DEFAULT_QUEUE_BYTES = 8 << 20
#: Subscriptions of every connection together (SSE streams included).
MAX_SUBSCRIBERS = 64

#: The last item of a dropped subscriber's queue.
DROPPED: dict[str, Any] = {"dropped": True}


@dataclass(eq=False)
class Subscriber:
    """One subscription: events of ``profiles`` (None: every profile) in a bounded queue."""

    id: int
    profiles: frozenset[str] | None
    limit: int
    limit_bytes: int = DEFAULT_QUEUE_BYTES
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    dropped: bool = False
    closed: bool = False
    queued_bytes: int = 0
    _sizes: collections.deque[int] = field(default_factory=collections.deque)  # of the queued items

    def offer(self, item: dict[str, Any], size: int = 0) -> None:
        if self.dropped or self.closed:
            return
        if self.queue.qsize() >= self.limit or self.queued_bytes + size > self.limit_bytes:
            self.dropped = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self._sizes.clear()
            self.queued_bytes = 0
            reason = (
                f"more than {self.limit} events or {self.limit_bytes} bytes waiting: "
                "the subscriber does not read fast enough"
            )
            self.queue.put_nowait({**DROPPED, "subscription": self.id, "reason": reason})
            log.warning("subscription %d dropped: %s", self.id, reason)
            return
        self.queue.put_nowait(item)
        self._sizes.append(size)
        self.queued_bytes += size

    async def get(self) -> dict[str, Any]:
        item = await self.queue.get()
        if self._sizes:
            self.queued_bytes -= self._sizes.popleft()
        return item

    def wants(self, profile: str) -> bool:
        return self.profiles is None or profile in self.profiles


class Hub:
    def __init__(
        self,
        clients: Mapping[str, Client],
        *,
        queue_limit: int = DEFAULT_QUEUE,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        max_subscribers: int = MAX_SUBSCRIBERS,
    ) -> None:
        if not clients:
            raise ValueError("a daemon serves at least one profile")
        self.clients = dict(clients)
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.max_subscribers = max_subscribers
        self._subscribers: dict[int, Subscriber] = {}
        self._ids = itertools.count(1)
        self._readers: list[asyncio.Task[None]] = []

    # -- profiles ---------------------------------------------------------------------------------

    def client(self, profile: str | None) -> tuple[str, Client]:
        """The client a request names (``profile`` may be left out when one profile is served)."""
        if profile is None:
            if len(self.clients) == 1:
                return next(iter(self.clients.items()))
            raise invalid_params("this daemon serves several profiles: name one with 'profile'")
        client = self.clients.get(profile)
        if client is None:
            raise invalid_params(f"profile {profile!r} is not served by this daemon")
        return profile, client

    def check_profiles(self, names: list[str] | None) -> frozenset[str] | None:
        if names is None:
            return None
        unknown = sorted(set(names) - set(self.clients))
        if unknown:
            raise invalid_params("profile(s) not served by this daemon: " + ", ".join(unknown))
        return frozenset(names)

    # -- events -----------------------------------------------------------------------------------

    def subscribe(self, profiles: frozenset[str] | None = None, limit: int | None = None) -> Subscriber:
        """A new subscriber; :class:`RpcError` (-32000, ``too_many_subscriptions``) past
        :attr:`max_subscribers` in all."""
        if len(self._subscribers) >= self.max_subscribers:
            raise RpcError(
                SALTLINE_ERROR,
                f"too many subscriptions: this daemon holds at most {self.max_subscribers}",
                {"code": "too_many_subscriptions", "type": "TooManySubscriptions"},
            )
        sub = Subscriber(next(self._ids), profiles, limit or self.queue_limit, self.queue_bytes)
        self._subscribers[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        self._subscribers.pop(sub.id, None)

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers.values())

    def broadcast(self, profile: str, item: dict[str, Any]) -> None:
        try:
            size = len(encode(item))
        except (TypeError, ValueError, RecursionError):  # one event JSON cannot hold: skipped
            log.exception("cannot encode an event of profile %s", profile)
            return
        for sub in list(self._subscribers.values()):
            if sub.wants(profile):
                sub.offer(item, size)
                if sub.dropped:
                    self._subscribers.pop(sub.id, None)

    async def _read(self, profile: str, client: Client) -> None:
        async for event in client.events():
            try:
                item = event_json(event, profile)
                self.broadcast(profile, item)
            except Exception:  # a field the codec cannot show must not stop the others
                log.exception("cannot serialize %s", type(event).__name__)

    async def start(self, *, connect: bool = True) -> None:
        """Read every client's events, and connect their delivery sockets (a server that cannot
        be reached now is retried in the background)."""
        for profile, client in self.clients.items():
            self._readers.append(asyncio.get_running_loop().create_task(self._read(profile, client)))
        if connect:
            for profile, client in self.clients.items():
                try:
                    await client.connect()
                except SaltlineError as exc:
                    log.warning("profile %s: %s", profile, exc)

    async def stop(self) -> None:
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(BaseException):
                await task
        self._readers.clear()
        for sub in self.subscribers:
            self.unsubscribe(sub)
