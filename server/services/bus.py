"""The delivery bus: wakes the connection that holds a device's socket (docs/protocol/delivery.md § 6).

The queue in the database is the truth; the bus only *wakes*. A lost wake-up delays delivery at
most until the connection's next heartbeat (each ping tick also re-reads the queue), it never loses
anything. Three kinds of events travel on it, all addressed to one device:

- **wake**: the device's queue has new rows (published only *after* the commit that inserted them);
- **ephemeral**: a frame for a device that is online now (typing indicators), never stored; if
  nobody holds that device's socket, the frame is dropped, as intended;
- **device removed**: the device was removed from its account's list; its socket must close.

:class:`InProcessBus` serves a single server process. :class:`saltline.server.services.redis_bus.RedisBus`
(one pub/sub channel per subscribed device) fills the same :class:`DeliveryBus` interface for
several instances; it also closes a device's older socket on another instance (``on_replaced``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)


class DeviceListener(Protocol):
    """What a connection implements to hear about its device. Callbacks run on the event loop,
    must not block and must not raise."""

    def on_wake(self) -> None: ...

    def on_ephemeral(self, frame: bytes) -> None: ...

    def on_device_removed(self) -> None: ...

    def on_tokens_revoked(self) -> None: ...

    def on_replaced(self) -> None:
        """A newer socket for the same device connected on another instance: close (4001)."""
        ...


class Subscription:
    """A handle returned by :meth:`DeliveryBus.subscribe`; pass it back to unsubscribe."""

    __slots__ = ("device_id", "listener")

    def __init__(self, device_id: bytes, listener: DeviceListener) -> None:
        self.device_id = device_id
        self.listener = listener


class DeliveryBus(Protocol):
    #: True when a wake-up may be lost (Redis): the delivery loop must then re-read the queue on
    #: every heartbeat tick even when it saw nothing new, so a lost wake-up costs at most one
    #: heartbeat interval.
    poll_on_heartbeat: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def subscribe(self, device_id: bytes, listener: DeviceListener) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    async def until_live(self, subscription: Subscription) -> None:
        """Return once a wake-up published from now on reaches ``subscription`` (at once in one
        process; across processes, once the subscription is active, or after a bounded wait,
        when the bus wakes the listener as soon as it becomes active). A connection calls it
        between :meth:`subscribe` and its first read of the queue, so that what that read
        misses is always announced."""
        ...

    def claim(self, subscription: Subscription) -> None:
        """The subscription's connection passed its checks (token holder, device): it becomes
        the device's socket, and older ones on other instances close (4001). Never called for a
        refused token, which must not displace the device's current socket."""
        ...

    async def publish_wake(self, device_ids: Iterable[bytes]) -> None: ...

    async def publish_ephemeral(self, frames: Mapping[bytes, bytes]) -> int:
        """Hand each device's frame (device id -> encoded frame) to its listener, if any; returns
        how many were handed over (an implementation across processes may return a lower bound)."""
        ...

    async def publish_device_removed(self, device_id: bytes) -> None: ...

    async def publish_tokens_revoked(self, device_id: bytes) -> None:
        """The device's refresh-token family was revoked (a rotated token was reused): its
        listeners close their sockets (4003)."""
        ...

    def subscriber_count(self) -> int: ...


class InProcessBus:
    """The single-process bus: a dict from device id to its listeners."""

    #: Wake-ups are never lost in one process (one socket per device is the connection
    #: registry's job here, so ``on_replaced`` is never called).
    poll_on_heartbeat = False

    def __init__(self) -> None:
        self._subs: dict[bytes, list[Subscription]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subs.clear()

    def subscribe(self, device_id: bytes, listener: DeviceListener) -> Subscription:
        sub = Subscription(device_id, listener)
        self._subs.setdefault(device_id, []).append(sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._subs.get(subscription.device_id)
        if not subs:
            return
        try:
            subs.remove(subscription)
        except ValueError:
            return
        if not subs:
            del self._subs[subscription.device_id]

    async def until_live(self, subscription: Subscription) -> None:
        return None

    def claim(self, subscription: Subscription) -> None:
        return None  # in one process the connection registry replaces the older socket

    def _listeners(self, device_id: bytes) -> list[DeviceListener]:
        return [s.listener for s in self._subs.get(device_id, ())]

    async def publish_wake(self, device_ids: Iterable[bytes]) -> None:
        for device_id in device_ids:
            for listener in self._listeners(device_id):
                _safely(listener.on_wake)

    async def publish_ephemeral(self, frames: Mapping[bytes, bytes]) -> int:
        delivered = 0
        for device_id, frame in frames.items():
            for listener in self._listeners(device_id):
                _safely(listener.on_ephemeral, frame)
                delivered += 1
        return delivered

    async def publish_device_removed(self, device_id: bytes) -> None:
        for listener in self._listeners(device_id):
            _safely(listener.on_device_removed)

    async def publish_tokens_revoked(self, device_id: bytes) -> None:
        for listener in self._listeners(device_id):
            _safely(listener.on_tokens_revoked)

    def subscriber_count(self) -> int:
        return sum(len(v) for v in self._subs.values())


def _safely(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Exception:  # a broken listener must not stop the others
        log.exception("delivery bus listener failed")
