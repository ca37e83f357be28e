"""RedisBus against a real redis-server: two buses stand for two server instances."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest

from saltline.server.services.redis_bus import CHANNEL_PREFIX, RedisBus, device_channel
from tests.redis_fixture import RedisServer, start_redis

WAIT = 5.0


class Listener:
    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()

    def on_wake(self) -> None:
        self.events.put_nowait(("wake", None))

    def on_ephemeral(self, frame: bytes) -> None:
        self.events.put_nowait(("eph", frame))

    def on_device_removed(self) -> None:
        self.events.put_nowait(("removed", None))

    def on_tokens_revoked(self) -> None:
        self.events.put_nowait(("revoked", None))

    def on_replaced(self) -> None:
        self.events.put_nowait(("replaced", None))

    async def next(self, kind: str) -> tuple[str, bytes | None]:
        """The next event of ``kind`` (wake-ups on subscription/reconnect are skipped over)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), WAIT)
            if event[0] == kind:
                return event

    def drain(self) -> list[str]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait()[0])
        return out


async def _numsub(bus: RedisBus, channel: str) -> int:
    return int(dict(await bus._pub.pubsub_numsub(channel)).get(channel.encode(), 0))


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll Redis's own view (PUBSUB NUMSUB has no notification) until ``check`` holds."""
    for _ in range(int(WAIT / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def _channel_live(bus: RedisBus, channel: str, subscribers: int = 1) -> None:
    """Wait until Redis reports ``subscribers`` subscribers on ``channel``."""

    async def live() -> bool:
        return await _numsub(bus, channel) >= subscribers

    await _eventually(live)


@pytest.fixture
async def two_buses(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    a, b = RedisBus(redis_server.url, instance_id="a"), RedisBus(redis_server.url, instance_id="b")
    await a.start()
    await b.start()
    await asyncio.wait_for(a.wait_connected(), WAIT)
    await asyncio.wait_for(b.wait_connected(), WAIT)
    yield a, b
    await a.close()
    await b.close()


async def test_events_cross_instances(two_buses: tuple[RedisBus, RedisBus]) -> None:
    a, b = two_buses
    dev = os.urandom(16)
    listener = Listener()
    sub = b.subscribe(dev, listener)
    assert device_channel(dev).startswith(CHANNEL_PREFIX)
    await _channel_live(a, device_channel(dev))
    await listener.next("wake")  # the subscription went live
    listener.drain()

    await a.publish_wake([dev])
    assert (await listener.next("wake")) == ("wake", None)
    assert await a.publish_ephemeral({dev: b'{"type":"ephemeral"}'}) == 1
    assert (await listener.next("eph")) == ("eph", b'{"type":"ephemeral"}')
    await a.publish_device_removed(dev)
    await listener.next("removed")
    await a.publish_tokens_revoked(dev)
    await listener.next("revoked")

    # Only devices with a socket here are subscribed: unsubscribing drops the channel.
    b.unsubscribe(sub)
    assert b.subscriber_count() == 0 and device_channel(dev) not in b.subscribed_channels()

    async def gone() -> bool:
        return await _numsub(a, device_channel(dev)) == 0

    await _eventually(gone)
    assert await a.publish_ephemeral({dev: b"{}"}) == 0


async def test_connected_elsewhere_closes_the_older_socket(two_buses: tuple[RedisBus, RedisBus]) -> None:
    a, b = two_buses
    dev = os.urandom(16)
    old, new = Listener(), Listener()
    a.claim(a.subscribe(dev, old))
    await _channel_live(b, device_channel(dev))
    b.claim(b.subscribe(dev, new))  # newer: announces itself; the older socket on A is replaced
    await old.next("replaced")
    await _channel_live(a, device_channel(dev), subscribers=2)
    await a.publish_wake([dev])
    await new.next("wake")
    assert "replaced" not in new.drain()


class Sniffer:
    """A plain Redis subscriber of one device channel: what the buses publish on it."""

    def __init__(self, url: str, channel: str) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.channel = channel

    async def start(self) -> None:
        await self.pubsub.subscribe(self.channel)
        while (await self.pubsub.get_message(timeout=WAIT))["type"] != "subscribe":
            pass

    async def until(self, marker: dict[str, object]) -> list[dict[str, object]]:
        """The messages on the channel up to ``marker`` (a message that contains its items)."""
        seen = []
        while True:
            message = await asyncio.wait_for(self.pubsub.get_message(timeout=WAIT), WAIT)
            if message is None or message["type"] != "message":
                continue
            data = orjson.loads(message["data"])
            seen.append(data)
            if marker.items() <= data.items():
                return seen

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


async def test_a_socket_is_announced_only_once_claimed(
    two_buses: tuple[RedisBus, RedisBus], redis_server: RedisServer
) -> None:
    """A socket still being checked (its token holder may be refused) announces nothing, and
    does not answer an older socket's announcement for its device either: only a claimed one
    closes the device's socket on another instance."""
    a, b = two_buses
    dev = os.urandom(16)
    sniffer = Sniffer(redis_server.url, device_channel(dev))
    await sniffer.start()
    try:
        old, pending = Listener(), Listener()
        sub_a = a.subscribe(dev, old)
        sub_b = b.subscribe(dev, pending)  # newer, not claimed (its check is under way)
        await asyncio.wait_for(a.until_live(sub_a), WAIT)
        await asyncio.wait_for(b.until_live(sub_b), WAIT)
        a.claim(sub_a)  # the older socket is announced: B hears it, after B's channel is live
        await asyncio.gather(*a._tasks)  # the announcement has gone out
        await a.publish_wake([dev])  # (same connection as the announcement: after it)
        await pending.next("wake")  # B dispatched A's announcement before this wake
        await asyncio.gather(*b._tasks)  # anything B would announce in answer has gone out
        await b.publish_wake([dev])
        seen = await sniffer.until({"t": "wake", "o": "b"})
        assert [m["o"] for m in seen if m["t"] == "conn"] == ["a"]
        assert "replaced" not in old.drain() + pending.drain()

        b.claim(sub_b)  # the check passed: now the newer socket replaces the older one
        await old.next("replaced")
        assert "replaced" not in pending.drain()
    finally:
        await sniffer.close()


@pytest.mark.parametrize("older_claims_last", [False, True])
async def test_two_sockets_opened_at_once_on_two_instances_leave_one(
    two_buses: tuple[RedisBus, RedisBus], older_claims_last: bool
) -> None:
    """Two sockets of one device opened together on two instances: each is announced once its
    channel is live, so whichever announcement comes second is heard, and the older closes."""
    a, b = two_buses
    dev = os.urandom(16)
    older, newer = Listener(), Listener()
    sub_a = a.subscribe(dev, older)
    sub_b = b.subscribe(dev, newer)
    await asyncio.gather(a.until_live(sub_a), b.until_live(sub_b))
    claims = [(b, sub_b), (a, sub_a)] if older_claims_last else [(a, sub_a), (b, sub_b)]
    for bus, sub in claims:
        bus.claim(sub)
    await older.next("replaced")
    await a.publish_wake([dev])
    await newer.next("wake")
    assert "replaced" not in newer.drain()


async def test_an_announcement_lost_while_redis_was_down_is_made_again(redis_server: RedisServer) -> None:
    """A newer socket claimed while Redis is down (its announcement dropped) still closes the
    older one on another instance once Redis is back: a channel that becomes live again
    announces its newest claimed socket."""
    redis = start_redis()  # a private redis-server: this test stops it
    a, b = RedisBus(redis.url, instance_id="a"), RedisBus(redis.url, instance_id="b")
    try:
        await a.start()
        await b.start()
        await asyncio.wait_for(a.wait_connected(), WAIT)
        await asyncio.wait_for(b.wait_connected(), WAIT)
        dev = os.urandom(16)
        older, newer = Listener(), Listener()
        sub_a = a.subscribe(dev, older)
        await asyncio.wait_for(a.until_live(sub_a), WAIT)
        a.claim(sub_a)

        redis.stop()
        await asyncio.wait_for(a.wait_disconnected(), WAIT)
        await asyncio.wait_for(b.wait_disconnected(), WAIT)
        sub_b = b.subscribe(dev, newer)
        await asyncio.wait_for(b.until_live(sub_b), WAIT)  # at once: Redis is down
        b.claim(sub_b)  # its announcement cannot go out
        assert "replaced" not in older.drain()

        await asyncio.to_thread(redis.start)
        await older.next("replaced")
        await _channel_live(a, device_channel(dev), subscribers=2)
        await a.publish_wake([dev])
        await newer.next("wake")
        assert "replaced" not in newer.drain()
    finally:
        await a.close()
        await b.close()
        redis.close()


async def test_reconnects_after_redis_restart(redis_server: RedisServer) -> None:
    # A private redis-server: this test kills it.
    redis = start_redis()
    a, b = RedisBus(redis.url, instance_id="a"), RedisBus(redis.url, instance_id="b")
    try:
        await a.start()
        await b.start()
        await asyncio.wait_for(a.wait_connected(), WAIT)
        await asyncio.wait_for(b.wait_connected(), WAIT)
        dev = os.urandom(16)
        listener = Listener()
        b.subscribe(dev, listener)
        await _channel_live(a, device_channel(dev))
        listener.drain()

        redis.stop()
        await asyncio.wait_for(a.wait_disconnected(), WAIT)
        await asyncio.wait_for(b.wait_disconnected(), WAIT)
        await a.publish_wake([dev])  # Redis is down: dropped without an error (heartbeat polls)

        await asyncio.to_thread(redis.start)
        await asyncio.wait_for(a.wait_connected(), WAIT)
        await asyncio.wait_for(b.wait_connected(), WAIT)
        await listener.next("wake")  # after a reconnect every local listener is woken once
        await _channel_live(a, device_channel(dev))  # re-subscribed
        listener.drain()
        await a.publish_wake([dev])
        await listener.next("wake")
    finally:
        await a.close()
        await b.close()
        redis.close()


async def test_a_wake_published_once_the_subscription_is_live_arrives_without_a_confirmation_wake(
    two_buses: tuple[RedisBus, RedisBus],
) -> None:
    """until_live: the connection's first read comes after it, so the subscription's
    confirmation does not wake the listener (no second queue read per socket open); a wake-up
    published after it reaches the listener through Redis."""
    a, b = two_buses
    device = os.urandom(16)
    listener = Listener()
    sub = b.subscribe(device, listener)
    await asyncio.wait_for(b.until_live(sub), WAIT)
    assert await _numsub(a, device_channel(device)) == 1  # live in Redis when it returns
    assert listener.drain() == []  # the confirmation woke nobody: the caller reads next
    await a.publish_wake([device])
    assert await listener.next("wake") == ("wake", None)
    # a second socket of the device on the live channel is live at once
    other = Listener()
    sub2 = b.subscribe(device, other)
    await asyncio.wait_for(b.until_live(sub2), 0.001)
    b.unsubscribe(sub2)
    b.unsubscribe(sub)


async def test_a_subscriber_that_did_not_wait_is_woken_when_its_subscription_is_live(
    two_buses: tuple[RedisBus, RedisBus],
) -> None:
    """A listener that read the queue before its subscription was active (no until_live, or a
    wait that gave up) may have missed a wake-up: the confirmation wakes it."""
    _a, b = two_buses
    device = os.urandom(16)
    listener = Listener()
    sub = b.subscribe(device, listener)
    assert await listener.next("wake") == ("wake", None)
    b.unsubscribe(sub)


async def test_until_live_does_not_wait_while_redis_is_down(redis_server: RedisServer) -> None:
    """With Redis unreachable a socket open is not held up: the heartbeat polls the queue and
    the reconnect wakes every listener."""
    bus = RedisBus("redis://127.0.0.1:1/0", instance_id="down")  # nothing listens on port 1
    await bus.start()
    try:
        listener = Listener()
        sub = bus.subscribe(os.urandom(16), listener)
        await asyncio.wait_for(bus.until_live(sub), 0.05)
        assert not bus.connected
        bus.unsubscribe(sub)
    finally:
        await bus.close()
