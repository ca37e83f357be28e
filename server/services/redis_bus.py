"""The delivery bus across several server instances: Redis pub/sub (docs/protocol/delivery.md § 6).

Each instance subscribes only to the devices whose sockets it holds, one channel per device::

    saltline:dev:<device id, unpadded base64url>

Every message on a channel is a small JSON object; ``o`` is the publishing instance's id:

    {"t":"wake","o":I}                      the device's queue has new rows (published after commit)
    {"t":"eph","o":I,"f":"<frame text>"}    an ephemeral frame for the device, if it is online
    {"t":"removed","o":I}                   the device was removed: close its socket (4002)
    {"t":"revoked","o":I}                   its token family was revoked: close its socket (4003)
    {"t":"conn","o":I,"n":N,"ts":T}         a socket for the device connected on instance I
                                            (connection nonce N, wall-clock ns T): every *older*
                                            socket of the device on another instance closes (4001)

A socket is announced (``conn``) only once its token holder is checked (:meth:`RedisBus.claim`:
a refused token never closes the device's socket elsewhere) and, normally, once its channel is
live here (the connection waits for it first); so of two sockets opened at once on two
instances, the one announced second is heard by the other. When a channel becomes live again
after a reconnect to Redis, the device's newest claimed socket here is announced again (one
announcement lost while Redis was down would otherwise leave two sockets open).

Listeners in the publishing instance are called directly (no round trip); an instance ignores
what it published itself when it comes back from Redis.

Redis carries only wake-ups. The queue in the database is the truth: a lost wake-up (Redis down,
a message dropped, a subscription not yet active) delays delivery until the connection's next
heartbeat tick, which re-reads the queue (:attr:`RedisBus.poll_on_heartbeat`). When a subscription
becomes active, and after every reconnect to Redis, the bus wakes the affected listeners once so
that anything published while it was not listening is read from the database at once. While Redis
is unreachable, publishes to other instances are skipped (they would only fail) and the bus
reconnects with exponential back-off and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from saltline.crypto.keys import b64encode
from saltline.server.services.bus import DeviceListener, InProcessBus, Subscription, _safely

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "saltline:dev:"
#: Each instance also listens on its own channel (keeps the pub/sub connection subscribed).
INSTANCE_CHANNEL_PREFIX = "saltline:instance:"
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
#: A publish waits at most this long for Redis; the queue is committed already, so a publish that
#: gives up only costs the receiver a heartbeat interval.
PUBLISH_TIMEOUT_S = 1.0
#: A new socket waits at most this long for its channel's subscription before its first queue
#: read; past it, the read goes ahead and the listener is woken when the subscription is live.
LIVE_TIMEOUT_S = 1.0


def device_channel(device_id: bytes) -> str:
    return CHANNEL_PREFIX + b64encode(device_id)


class RedisSubscription(Subscription):
    """A subscription that knows which connection it is: nonce + wall-clock start (ns); and
    whether its channel is subscribed in Redis yet (``live``) and its listener waits for that
    before reading the queue (``waiting``): then the subscription's confirmation needs no wake-up;
    and whether its connection passed its checks and was announced (``claimed``)."""

    __slots__ = ("claimed", "live", "nonce", "since_ns", "waiting")

    def __init__(self, device_id: bytes, listener: DeviceListener, live: bool) -> None:
        super().__init__(device_id, listener)
        self.nonce = os.urandom(8).hex()
        self.since_ns = time.time_ns()
        self.live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if live:
            self.live.set_result(None)
        self.waiting = False
        self.claimed = False

    def key(self) -> tuple[int, str]:
        return (self.since_ns, self.nonce)


class RedisBus:
    """:class:`~saltline.server.services.bus.DeliveryBus` on Redis pub/sub (redis-py asyncio)."""

    #: The delivery loop must re-read the queue on every heartbeat tick: wake-ups may be lost.
    poll_on_heartbeat = True

    def __init__(self, url: str, *, instance_id: str | None = None) -> None:
        self.url = url
        self.instance_id = instance_id or os.urandom(8).hex()
        self._local = InProcessBus()
        self._channels: dict[str, bytes] = {}  # wanted channel -> device id
        self._dirty = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._pub: Any = None
        self._pubsub: Any = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live_channels: set[str] = set()  # subscribed in Redis now (confirmed)
        self._announcements: list[tuple[bytes, dict[str, Any]]] = []
        self._closed = False
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def _client(self) -> Any:
        from redis.asyncio import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return Redis.from_url(
            self.url,
            socket_connect_timeout=PUBLISH_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # we handle failures (and back-off) ourselves
            decode_responses=False,
        )

    async def start(self) -> None:
        self._pub = self._client()
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-bus")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close_pubsub()
        if self._pub is not None:
            with contextlib.suppress(Exception):
                await self._pub.aclose()
        await self._local.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, device_id: bytes, listener: DeviceListener) -> Subscription:
        channel = device_channel(device_id)
        sub = RedisSubscription(device_id, listener, live=channel in self._live_channels)
        self._local._subs.setdefault(device_id, []).append(sub)
        self._channels[channel] = device_id
        self._dirty.set()
        return sub

    def claim(self, subscription: Subscription) -> None:
        """One socket per device across instances: announce the subscription (``conn``), so
        that the device's older sockets elsewhere close (4001). Only for a connection whose token
        holder passed its check: an announcement of a refused one would close the device's
        current socket on another instance."""
        if isinstance(subscription, RedisSubscription) and not subscription.claimed:
            subscription.claimed = True
            self._announce(subscription)

    async def until_live(self, subscription: Subscription) -> None:
        """Wait (at most :data:`LIVE_TIMEOUT_S`; not at all while Redis is down) until the
        subscription's channel is subscribed in Redis. The listener's first read then sees
        everything committed before it, and Redis carries every wake-up after it, so the
        confirmation does not wake it (a second read of the queue per socket open, in a
        reconnect storm). If the wait gives up, the confirmation wakes it as before."""
        if not isinstance(subscription, RedisSubscription) or subscription.live.done():
            return
        if not self._connected.is_set():
            return  # polling covers it (poll_on_heartbeat) and the reconnect wakes everyone
        subscription.waiting = True
        try:
            await asyncio.wait_for(asyncio.shield(subscription.live), LIVE_TIMEOUT_S)
        except TimeoutError:
            pass
        finally:
            subscription.waiting = False

    def unsubscribe(self, subscription: Subscription) -> None:
        self._local.unsubscribe(subscription)
        if subscription.device_id not in self._local._subs:
            self._channels.pop(device_channel(subscription.device_id), None)
            self._dirty.set()

    def subscriber_count(self) -> int:
        return self._local.subscriber_count()

    def subscribed_channels(self) -> set[str]:
        """Channels this instance wants (for tests and metrics)."""
        return set(self._channels)

    # -- publishing --------------------------------------------------------------------------

    async def publish_wake(self, device_ids: Iterable[bytes]) -> None:
        device_ids = list(device_ids)
        await self._local.publish_wake(device_ids)
        await self._publish([(d, {"t": "wake"}) for d in device_ids])

    async def publish_ephemeral(self, frames: Mapping[bytes, bytes]) -> int:
        delivered = await self._local.publish_ephemeral(frames)
        receivers = await self._publish([(d, {"t": "eph", "f": f.decode()}) for d, f in frames.items()])
        return delivered + receivers

    async def publish_device_removed(self, device_id: bytes) -> None:
        await self._local.publish_device_removed(device_id)
        await self._publish([(device_id, {"t": "removed"})])

    async def publish_tokens_revoked(self, device_id: bytes) -> None:
        await self._local.publish_tokens_revoked(device_id)
        await self._publish([(device_id, {"t": "revoked"})])

    async def _publish(self, messages: list[tuple[bytes, dict[str, Any]]]) -> int:
        """PUBLISH each message; returns how many *other* instances received one (PUBLISH counts
        subscribers, our own included when we listen on that channel too)."""
        if not messages or not self._connected.is_set() or self._pub is None:
            return 0  # Redis is down: the receivers' heartbeat polls the queue
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                async with self._pub.pipeline(transaction=False) as pipe:
                    for device_id, msg in messages:
                        msg["o"] = self.instance_id
                        pipe.publish(device_channel(device_id), orjson.dumps(msg))
                    counts = await pipe.execute()
        except Exception as exc:
            log.warning("redis publish failed (%s); receivers fall back to polling", type(exc).__name__)
            return 0
        mine = sum(1 for d, _ in messages if d in self._local._subs)
        return max(0, sum(int(c) for c in counts) - mine)

    def _announce(self, sub: RedisSubscription) -> None:
        """Queue the subscription's ``conn`` message; the announcements queued in one turn of
        the loop go out in one pipeline (a reconnect storm opens thousands at once)."""
        if not self._announcements:
            self._spawn(self._flush_announcements())
        self._announcements.append((sub.device_id, {"t": "conn", "n": sub.nonce, "ts": sub.since_ns}))

    async def _flush_announcements(self) -> None:
        await asyncio.sleep(0)  # let the other opens of this turn queue theirs
        batch, self._announcements = self._announcements, []
        await self._publish(batch)

    def _spawn(self, coro: Any) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- receiving ---------------------------------------------------------------------------

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("ignoring a malformed message on the delivery bus")
            return
        if not isinstance(msg, dict) or msg.get("o") == self.instance_id:
            return
        device_id = self._channels.get(channel.decode())
        if device_id is None:
            return
        kind = msg.get("t")
        subs = list(self._local._subs.get(device_id, ()))
        if kind == "wake":
            for s in subs:
                _safely(s.listener.on_wake)
        elif kind == "eph" and isinstance(msg.get("f"), str):
            frame = msg["f"].encode()
            for s in subs:
                _safely(s.listener.on_ephemeral, frame)
        elif kind == "removed":
            for s in subs:
                _safely(s.listener.on_device_removed)
        elif kind == "revoked":
            for s in subs:
                _safely(s.listener.on_tokens_revoked)
        elif kind == "conn":
            theirs = (msg.get("ts") if isinstance(msg.get("ts"), int) else 0, str(msg.get("n", "")))
            newest_mine: RedisSubscription | None = None
            for s in subs:
                if not isinstance(s, RedisSubscription):
                    continue
                if s.key() < theirs:
                    _safely(_replaced, s.listener)
                elif s.claimed and (newest_mine is None or s.key() > newest_mine.key()):
                    newest_mine = s  # (one still being checked announces itself if it passes)
            if newest_mine is not None:
                # Theirs is older than ours (they may not have heard our announcement yet).
                self._announce(newest_mine)

    async def _supervise(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closed:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected.is_set():
                    log.warning("redis bus disconnected (%s); polling until it is back", type(exc).__name__)
                    backoff = BACKOFF_MIN_S
            self._connected.clear()
            self._live_channels.clear()
            self._disconnected.set()
            await self._close_pubsub()
            if self._closed:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _run_once(self) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = self._client()
        pubsub = client.pubsub()
        self._pubsub = (client, pubsub)
        with contextlib.suppress(AttributeError):
            pubsub.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
        await pubsub.subscribe(INSTANCE_CHANNEL_PREFIX + self.instance_id)
        current: set[str] = set()
        await self._pub.ping()
        reader = asyncio.create_task(self._read(pubsub), name="redis-bus-reader")
        dirty: asyncio.Future[Any] | None = None
        try:
            first = True
            while True:
                self._dirty.clear()
                wanted = set(self._channels)
                add, remove = wanted - current, current - wanted
                if add:
                    await pubsub.subscribe(*add)
                if remove:
                    self._live_channels.difference_update(remove)
                    await pubsub.unsubscribe(*remove)
                current = wanted
                if first:
                    first = False
                    if self.reconnects or self._local._subs:
                        # Anything published while we were not listening: read the queues now.
                        for subs in list(self._local._subs.values()):
                            for s in list(subs):
                                _safely(s.listener.on_wake)
                    self.reconnects += 1
                    self._disconnected.clear()
                    self._connected.set()
                    log.info("redis bus connected (instance %s)", self.instance_id)
                dirty = asyncio.ensure_future(self._dirty.wait())
                done, _ = await asyncio.wait({dirty, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()  # raises what broke the connection
                    raise ConnectionError("redis pub/sub reader stopped")
        finally:
            for task in (reader, dirty):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _read(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "message":
                self._dispatch(message["channel"], message["data"])
            elif kind == "subscribe":
                self._subscribed(message["channel"].decode())

    def _subscribed(self, channel: str) -> None:
        """The channel's subscription is live: a listener that waits for it (``until_live``)
        reads the queue next; every other one is woken once (a wake-up published before this
        point reached nobody here; the queue in the database has it)."""
        self._live_channels.add(channel)
        device_id = self._channels.get(channel)
        if device_id is None:
            return
        newest: RedisSubscription | None = None
        for s in list(self._local._subs.get(device_id, ())):
            if isinstance(s, RedisSubscription):
                if s.claimed and (newest is None or s.key() > newest.key()):
                    newest = s
                if not s.live.done():
                    s.live.set_result(None)
                    if s.waiting:
                        continue
            _safely(s.listener.on_wake)
        if newest is not None:
            # Live again (a reconnect): announced sockets elsewhere may not have heard of it.
            self._announce(newest)

    async def _close_pubsub(self) -> None:
        pair, self._pubsub = self._pubsub, None
        if pair is None:
            return
        client, pubsub = pair
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        with contextlib.suppress(Exception):
            await client.aclose()


def _replaced(listener: DeviceListener) -> None:
    on_replaced = getattr(listener, "on_replaced", None)
    if on_replaced is not None:
        on_replaced()
