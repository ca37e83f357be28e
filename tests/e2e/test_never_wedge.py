"""A device never wedges (issue 10): one end-to-end test per failure class, with the real server on
real sockets, on SQLite and on PostgreSQL.

Every test ends the same way: messages sent after the failure still arrive, exactly once (counted
by text and by envelope id over every ``MessageReceived``), and the event that names the failure
was emitted. Waits are on events and conditions with timeouts, never on sleeps; the one exception
is test 3, which has to let an access token expire by the clock.

Faults: ``tests/proxy.py`` (a TCP proxy that freezes or resets connections, a WebSocket man in the
middle that injects frames) and ``tests/subprocess_server.py`` (the server as a process to SIGKILL).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from saltline.client_sdk import errors
from saltline.client_sdk.client import Client
from saltline.client_sdk.core import events as ev
from saltline.client_sdk.core.events import Event, MessageReceived
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from saltline.crypto.keys import b64decode, b64encode
from tests.linking import link
from tests.live import LiveServer, ManualClock
from tests.proxy import TcpProxy, WsMitm
from tests.subprocess_server import SubprocessServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PASSWORD = "correct horse battery staple"
WAIT = 15.0
E = TypeVar("E", bound=Event)


def _name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


def fast_backoff(**overrides: float) -> Any:
    """Quick reconnects, so a test never waits for a long random back-off."""
    from saltline.client_sdk.core.backoff import BackoffPolicy

    values = {"base_s": 0.05, "cap_s": 0.5, "healthy_after_s": 0.0, **overrides}
    return BackoffPolicy(**values)


# -- recording a device's events ------------------------------------------------------------------


class Inbox:
    """Every event of one client, as delivered to a callback (``client.on(Event, ...)``), with the
    monotonic time it came at; coroutines wait on it with a predicate and a timeout."""

    def __init__(self, client: Client, name: str) -> None:
        self.name = name
        self.events: list[tuple[float, Event]] = []
        self._changed = asyncio.Event()
        client.on(Event, self._record)

    def _record(self, event: Event) -> None:
        self.events.append((time.monotonic(), event))
        self._changed.set()

    def mark(self) -> int:
        """A position: ``of(..., since=mark)`` and ``event(..., since=mark)`` look after it."""
        return len(self.events)

    def of(self, kind: type[E], since: int = 0) -> list[E]:
        return [e for _, e in self.events[since:] if isinstance(e, kind)]

    def texts(self) -> Counter[str]:
        return Counter(e.text for e in self.of(MessageReceived))

    def _summary(self) -> str:
        return "\n  ".join(repr(e)[:300] for _, e in self.events[-25:])

    async def until(self, check: Callable[[], bool], what: str, wait_s: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            self._changed.clear()
            if check():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no {what} within {wait_s} s; last events:\n  {self._summary()}"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def event(
        self,
        kind: type[E],
        check: Callable[[E], bool] = lambda e: True,
        *,
        since: int = 0,
        wait_s: float = WAIT,
    ) -> E:
        """The first event of ``kind`` at or after ``since`` for which ``check`` holds."""
        found: list[E] = []

        def seen() -> bool:
            found[:] = [e for e in self.of(kind, since) if check(e)]
            return bool(found)

        await self.until(seen, kind.__name__, wait_s)
        return found[0]

    async def received(self, *texts: str, wait_s: float = WAIT) -> None:
        await self.until(lambda: all(self.texts()[t] >= 1 for t in texts), f"message(s) {texts!r}", wait_s)

    def assert_exactly_once(self, *texts: str) -> None:
        counts = self.texts()
        assert {t: counts[t] for t in texts} == dict.fromkeys(texts, 1), f"{self.name}: {counts}"
        ids = [e.envelope_id for e in self.of(MessageReceived)]
        duplicates = [i for i, n in Counter(ids).items() if n > 1]
        assert not duplicates, f"{self.name}: envelopes delivered more than once: {duplicates}"


@dataclass
class Device:
    name: str
    client: Client
    inbox: Inbox
    store: Any

    @property
    def username(self) -> str:
        return self.client.username


class Devices:
    """Creates devices (registered, or linked to an existing account) and closes them all."""

    def __init__(self) -> None:
        self.all: list[Device] = []

    async def open(
        self,
        url: str,
        name: str,
        *,
        store: Any = None,
        ws_url: str | None = None,
        backoff: Any = None,
        before_record: Callable[[Client], None] | None = None,
    ) -> Device:
        kwargs: dict[str, Any] = {}
        if ws_url is not None:
            kwargs["ws_url"] = ws_url
        if backoff is not None:
            kwargs["backoff"] = backoff
        store = store if store is not None else MemoryStore()
        client = await Client.create(url, store, **kwargs)
        if before_record is not None:
            before_record(client)
        device = Device(name, client, Inbox(client, name), store)
        self.all.append(device)
        return device

    async def register(self, url: str, prefix: str, **kwargs: Any) -> Device:
        device = await self.open(url, prefix, **kwargs)
        await device.client.register(_name(prefix), PASSWORD)
        return device

    async def link(self, existing: Device, url: str, name: str, **kwargs: Any) -> Device:
        device = await self.open(url, name, **kwargs)
        await link(existing.client, device.client, wait_s=WAIT)
        return device

    async def close(self, device: Device) -> None:
        if device in self.all:
            self.all.remove(device)
        try:
            await asyncio.wait_for(device.client.close(), WAIT)
        finally:
            if isinstance(device.store, SqliteStore):
                device.store.close()

    async def close_all(self) -> None:
        for device in list(self.all):
            try:
                await self.close(device)
            except Exception as exc:  # teardown goes on; the test has its verdict already
                logging.getLogger(__name__).warning("closing %s failed: %r", device.name, exc)


@pytest.fixture
async def devices() -> AsyncIterator[Devices]:
    made = Devices()
    yield made
    await made.close_all()


async def _serve(make_server: Callable[..., LiveServer], **overrides: object) -> LiveServer:
    """``make_server`` off the event loop (its migration runs an event loop of its own)."""
    return await asyncio.to_thread(make_server, **overrides)


async def _connected(device: Device, since: int = 0) -> Event:
    """The socket's first ``ready`` after ``since`` (``Connected`` or ``Reconnected``)."""
    ready = (ev.Connected, ev.Reconnected)
    return await device.inbox.event(Event, lambda e: isinstance(e, ready), since=since)


# -- 1. oversized message -------------------------------------------------------------------------


async def test_oversized_message_is_refused_before_it_is_queued(
    make_server: Callable[..., LiveServer], devices: Devices
) -> None:
    """(a) A message too large for all its recipient devices together raises
    ``MessageTooLargeError`` naming the limit; nothing is queued; later sends go through."""
    url = (await _serve(make_server)).base_url
    alice = await devices.register(url, "alice")
    bob = await devices.register(url, "bob")
    bob_phone = await devices.link(bob, url, "bob-phone")
    for d in (alice, bob, bob_phone):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    big = "x" * 132_000  # ~130 KB, twice (two devices) is over the default 256 KiB per envelope

    with pytest.raises(errors.MessageTooLargeError) as refused:
        await alice.client.send_text(cid, big)
    assert isinstance(refused.value, errors.UsageError)
    assert re.search(r"262[ ,.]?144|256 ?KiB", str(refused.value)), str(refused.value)
    assert alice.client.outbox() == []

    await alice.client.send_text(cid, "after the big one")
    for d in (bob, bob_phone):
        await d.inbox.received("after the big one")
    await bob.client.send_text(cid, "bob answers")
    await alice.inbox.received("bob answers")
    for d in (bob, bob_phone):
        d.inbox.assert_exactly_once("after the big one")
        assert all(len(e.text) < 1000 for e in d.inbox.of(MessageReceived))
    alice.inbox.assert_exactly_once("bob answers")


async def test_oversized_for_the_server_fails_alone_and_can_be_discarded(
    make_server: Callable[..., LiveServer], devices: Devices
) -> None:
    """(b) The server's limit is below the SDK's pre-check (the default 256 KiB): the 413 fails
    that item permanently (``OutboxItemFailed``, outbox state "failed"), later sends in this and
    other conversations succeed, and ``discard_outbox`` removes it."""
    url = (await _serve(make_server, max_envelope_bytes=32 * 1024)).base_url
    alice = await devices.register(url, "alice", backoff=fast_backoff())
    bob = await devices.register(url, "bob")
    carol = await devices.register(url, "carol")
    for d in (alice, bob, carol):
        await d.client.connect()
    to_bob = await alice.client.create_conversation([bob.username])
    to_carol = await alice.client.create_conversation([carol.username])
    await alice.client.send_text(to_bob, "hello bob")
    await bob.inbox.received("hello bob")

    mark = alice.inbox.mark()
    big = "y" * 40_000  # under the SDK's pre-check, over this server's 32 KiB
    eid: str | None
    try:
        eid = await alice.client.send_text(to_bob, big)
    except errors.ServerError as exc:  # the first attempt's answer may also be raised to the caller
        assert exc.status == 413, exc
        eid = None
    failed = await alice.inbox.event(
        ev.OutboxItemFailed,
        lambda e: e.conversation_id == to_bob and eid in (None, e.envelope_id),
        since=mark,
    )
    eid = failed.envelope_id
    assert (failed.conversation_id, failed.status) == (to_bob, 413), failed
    assert failed.reason
    # (other items may be on their way meanwhile: only the failed one stays)
    (entry,) = [e for e in alice.client.outbox() if e.state == "failed"]
    assert (entry.envelope_id, entry.conversation_id, entry.state) == (eid, to_bob, "failed"), entry
    assert entry.failed_status == 413 and entry.failed_reason

    # the failed item blocks nothing, in this conversation or another one
    await alice.client.send_text(to_bob, "after the failed one, to bob")
    await alice.client.send_text(to_carol, "after the failed one, to carol")
    await bob.client.send_text(to_bob, "bob is still here")
    await bob.inbox.received("after the failed one, to bob")
    await carol.inbox.received("after the failed one, to carol")
    await alice.inbox.received("bob is still here")
    # still listed, still failed, and the only failed item
    assert [e.envelope_id for e in alice.client.outbox() if e.state == "failed"] == [eid]

    await alice.client.discard_outbox(eid)
    assert eid not in [e.envelope_id for e in alice.client.outbox()]
    await alice.client.send_text(to_bob, "after the discard")
    await bob.inbox.received("after the discard")
    bob.inbox.assert_exactly_once("hello bob", "after the failed one, to bob", "after the discard")
    carol.inbox.assert_exactly_once("after the failed one, to carol")
    alice.inbox.assert_exactly_once("bob is still here")
    assert big not in bob.inbox.texts()
    assert len(alice.inbox.of(ev.OutboxItemFailed)) == 1


# -- 2. added to a group and removed while offline ------------------------------------------------


async def test_group_add_and_remove_while_offline(
    make_server: Callable[..., LiveServer], devices: Devices
) -> None:
    url = (await _serve(make_server)).base_url
    alice = await devices.register(url, "alice")
    bob = await devices.register(url, "bob", backoff=fast_backoff())  # offline until below
    carol = await devices.register(url, "carol")
    for d in (alice, carol):
        await d.client.connect()

    group = await alice.client.create_conversation([bob.username, carol.username])
    await alice.client.send_text(group, "welcome to the group")
    await carol.inbox.received("welcome to the group")
    await alice.client.remove_member(group, bob.username)
    await alice.client.send_text(group, "bob is gone")
    await carol.inbox.received("bob is gone")
    direct = await alice.client.create_conversation([bob.username])
    await alice.client.send_text(direct, "direct, queued behind the group")

    await bob.client.connect()
    await bob.inbox.received("direct, queued behind the group")
    await alice.client.send_text(direct, "direct, after bob came online")
    await bob.inbox.received("direct, after bob came online")
    await bob.client.send_text(direct, "bob answers")
    await alice.inbox.received("bob answers")

    bob.inbox.assert_exactly_once("direct, queued behind the group", "direct, after bob came online")
    unavailable = [e for e in bob.inbox.of(ev.ConversationUnavailable) if e.conversation_id == group]
    got_welcome = bob.inbox.texts()["welcome to the group"]
    assert unavailable or got_welcome == 1, "bob neither got the group's message nor was told it is gone"
    assert got_welcome <= 1
    assert all(e.status in (403, 404) and e.reason for e in unavailable), unavailable
    assert bob.inbox.texts()["bob is gone"] == 0
    carol.inbox.assert_exactly_once("welcome to the group", "bob is gone")


# -- 3. access token expiry across a server outage ------------------------------------------------

TOKEN_TTL_S = 3


async def test_token_expires_during_server_outage(
    make_server: Callable[..., LiveServer], clock: ManualClock, devices: Devices
) -> None:
    server = await _serve(make_server, access_token_ttl_s=TOKEN_TTL_S)
    url = server.base_url
    alice = await devices.register(url, "alice", backoff=fast_backoff())
    bob = await devices.register(url, "bob", backoff=fast_backoff())
    for d in (alice, bob):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    await alice.client.send_text(cid, "before the outage")
    await bob.inbox.received("before the outage")

    mark = bob.inbox.mark()
    stopped_at = time.monotonic()
    await asyncio.to_thread(server.stop)
    await bob.inbox.event(ev.Disconnected, since=mark)
    # every token bob holds was issued before the stop: by now it has expired for bob's clock
    # (monotonic) and, once the server's clock moves too, for the server
    await asyncio.sleep(max(0.0, stopped_at + TOKEN_TTL_S + 0.2 - time.monotonic()))
    clock.advance(TOKEN_TTL_S + 60)
    # bob keeps trying (and failing) after his token expired: the delivery task is alive
    expired_at = time.monotonic()
    await bob.inbox.until(
        lambda: any(t > expired_at and isinstance(e, ev.Disconnected) for t, e in bob.inbox.events[mark:]),
        "reconnect attempt after the token expired",
    )
    assert bob.inbox.of(ev.Reconnected, mark) == []

    restart_mark = bob.inbox.mark()
    await asyncio.to_thread(server.start)
    reconnected = await bob.inbox.event(ev.Reconnected, since=restart_mark)
    assert reconnected.attempts >= 1
    await alice.client.send_text(cid, "after the outage")
    await bob.inbox.received("after the outage")
    await bob.client.send_text(cid, "bob is back")
    await alice.inbox.received("bob is back")
    bob.inbox.assert_exactly_once("before the outage", "after the outage")
    disconnects = bob.inbox.of(ev.Disconnected, mark)
    assert disconnects and all(d.reason for d in disconnects)


# -- 4. server SIGKILL right after a group's first message ----------------------------------------


async def test_server_sigkill_right_after_a_groups_first_message(
    make_subprocess_server: Callable[..., SubprocessServer], devices: Devices
) -> None:
    server = make_subprocess_server()
    url = server.base_url
    alice = await devices.register(url, "alice", backoff=fast_backoff())
    alice_phone = await devices.link(alice, url, "alice-phone", backoff=fast_backoff())
    bob = await devices.register(url, "bob", backoff=fast_backoff())
    carol = await devices.register(url, "carol", backoff=fast_backoff())
    everyone = (alice, alice_phone, bob, carol)
    for d in everyone:
        await d.client.connect()
    group = await alice.client.create_conversation([bob.username, carol.username])
    marks = {d.name: d.inbox.mark() for d in everyone}

    await alice.client.send_text(group, "first in the group")  # returns once the server stored it
    server.kill()  # no await in between: the recipients are about to look the new group up
    await server.astart()

    for d in (alice_phone, bob, carol):
        await d.inbox.received("first in the group")
    for d in everyone:
        await d.inbox.event(ev.Reconnected, since=marks[d.name])
    later = {"second, from bob": bob, "third, from carol": carol}
    for text, sender in later.items():
        await sender.client.send_text(group, text)
    for d in everyone:
        await d.inbox.received(*[t for t, sender in later.items() if sender is not d])
    for d in (alice_phone, bob, carol):
        d.inbox.assert_exactly_once("first in the group")
    for d in everyone:
        d.inbox.assert_exactly_once(*[t for t, sender in later.items() if sender is not d])
    assert "first in the group" not in server.log_text()


# -- 5. half-open connection ----------------------------------------------------------------------

HEARTBEAT_S = 0.5


async def test_half_open_connection_is_detected_and_nothing_is_lost(
    make_server: Callable[..., LiveServer],
    make_proxy: Callable[[int], Awaitable[TcpProxy]],
    devices: Devices,
) -> None:
    server = await _serve(make_server, heartbeat_interval_s=HEARTBEAT_S)
    proxy = await make_proxy(server.port)
    alice = await devices.register(server.base_url, "alice", backoff=fast_backoff())
    # bob's delivery socket goes through the proxy; his HTTP calls go straight to the server
    bob = await devices.register(server.base_url, "bob", ws_url=proxy.ws_url, backoff=fast_backoff())
    for d in (alice, bob):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    await alice.client.send_text(cid, "before the freeze")
    await bob.inbox.received("before the freeze")
    await bob.client.send_text(cid, "bob before the freeze")
    await alice.inbox.received("bob before the freeze")

    mark = bob.inbox.mark()
    assert proxy.freeze() == 1
    # bob's socket still looks open to him: this send goes into the frozen connection
    bob_send = asyncio.create_task(bob.client.send_text(cid, "bob while frozen"))
    await alice.client.send_text(cid, "alice while frozen")  # the server pushes it into the void

    frozen_at = time.monotonic()
    disconnected = await bob.inbox.event(ev.Disconnected, since=mark, wait_s=6 * HEARTBEAT_S + 2)
    detected_after = time.monotonic() - frozen_at
    assert disconnected.reason
    await bob.inbox.event(ev.Reconnected, since=mark)
    await asyncio.wait_for(bob_send, WAIT)
    await alice.inbox.received("bob while frozen")
    await bob.inbox.received("alice while frozen")

    await alice.client.send_text(cid, "after the freeze")
    await bob.client.send_text(cid, "bob after the freeze")
    await bob.inbox.received("after the freeze")
    await alice.inbox.received("bob after the freeze")
    bob.inbox.assert_exactly_once("before the freeze", "alice while frozen", "after the freeze")
    alice.inbox.assert_exactly_once("bob before the freeze", "bob while frozen", "bob after the freeze")
    assert detected_after < 6 * HEARTBEAT_S + 2
    assert proxy.accepted.value >= 2  # a new connection through the proxy


# -- 6. repeated disconnects ----------------------------------------------------------------------

DROPS = 10


async def test_repeated_disconnects_reconnect_quickly(
    make_server: Callable[..., LiveServer],
    make_proxy: Callable[[int], Awaitable[TcpProxy]],
    devices: Devices,
) -> None:
    from saltline.client_sdk.core.backoff import BackoffPolicy

    server = await _serve(make_server)
    proxy = await make_proxy(server.port)
    alice = await devices.register(server.base_url, "alice")
    policy = BackoffPolicy(base_s=0.05, cap_s=30.0, healthy_after_s=0.0)
    bob = await devices.register(server.base_url, "bob", ws_url=proxy.ws_url, backoff=policy)
    for d in (alice, bob):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    start = bob.inbox.mark()
    sent: list[str] = []

    started = time.monotonic()
    for i in range(DROPS):
        mark = bob.inbox.mark()
        await proxy.accepted.wait_for(i + 1, WAIT)
        text = f"in flight at drop {i}"
        await alice.client.send_text(cid, text)  # stored; racing the drop on its way to bob
        sent.append(text)
        assert proxy.drop_all() >= 1
        await bob.inbox.event(ev.Disconnected, since=mark)
        await bob.inbox.event(ev.Reconnected, since=mark)
    storm_s = time.monotonic() - started

    await alice.client.send_text(cid, "after the last reconnect")
    await bob.inbox.received(*sent, "after the last reconnect")
    await bob.client.send_text(cid, "bob after the storm")
    await alice.inbox.received("bob after the storm")
    bob.inbox.assert_exactly_once(*sent, "after the last reconnect")
    disconnects = bob.inbox.of(ev.Disconnected, start)
    assert len(disconnects) >= DROPS
    assert [d.attempt for d in disconnects] == [1] * len(disconnects), disconnects
    assert all(d.retry_in_s is not None and d.retry_in_s <= policy.base_s for d in disconnects), disconnects
    assert len(bob.inbox.of(ev.Reconnected, start)) >= DROPS
    assert storm_s < DROPS * 1.0, f"{DROPS} reconnects took {storm_s:.1f} s"


# -- 7. malformed frames from the server ----------------------------------------------------------


def _undecryptable(real: dict[str, Any]) -> dict[str, Any]:
    """A copy of a real envelope frame with a fresh envelope id, a ``server_seq`` no real envelope
    of the test reaches (a copy of a stored one would rightly be a duplicate) and random bytes as
    its ciphertext (a copy of a real one would name a used message key: a redelivery): well
    formed, not decryptable. ``queue_seq`` is given by the man in the middle."""
    frame = {k: v for k, v in real.items() if k != "queue_seq"}
    frame.update(
        envelope_id=b64encode(os.urandom(16)),
        server_seq=real["server_seq"] + 1_000_000,
        ciphertext=b64encode(os.urandom(len(b64decode(real["ciphertext"])))),
    )
    return frame


#: (what is injected, takes a queue position, the frame_type MalformedFrame names)
BAD_FRAMES: list[tuple[str | dict[str, Any], bool, str | None]] = [
    ("this is not JSON {", False, None),
    ("[1, 2, 3]", False, None),
    ('"a JSON string"', False, None),
    ({"type": "no-such-frame", "data": 1}, False, "no-such-frame"),
    ({"type": "envelope"}, True, "envelope"),  # nothing but its queue position
    (
        {
            "type": "envelope",
            "conversation_id": 42,
            "server_seq": "seven",
            "server_ts": None,
            "sender": "bob",
            "envelope_id": ["x"],
            "clock": 3.5,
            "ciphertext": {"a": 1},
        },
        True,
        "envelope",
    ),
    ({"type": "gap", "from_queue_seq": "a", "to_queue_seq": "b"}, False, "gap"),
]


async def test_malformed_frames_from_the_server(
    make_server: Callable[..., LiveServer],
    make_mitm: Callable[[str], Awaitable[WsMitm]],
    devices: Devices,
) -> None:
    server = await _serve(make_server)
    mitm = await make_mitm(server.ws_url)
    alice = await devices.register(server.base_url, "alice")
    bob = await devices.register(server.base_url, "bob", ws_url=mitm.ws_url, backoff=fast_backoff())
    for d in (alice, bob):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    await alice.client.send_text(cid, "before the garbage")
    await bob.inbox.received("before the garbage")

    for frame, takes_seq, frame_type in BAD_FRAMES:
        mark = bob.inbox.mark()
        await mitm.accepted.wait_for(1, WAIT)
        await mitm.inject(frame, take_queue_seq=takes_seq)
        malformed = await bob.inbox.event(ev.MalformedFrame, since=mark)
        assert malformed.frame_type == frame_type, (frame, malformed)
        assert malformed.reason, malformed

    mark = bob.inbox.mark()
    forged = _undecryptable(mitm.envelopes()[-1])
    await mitm.inject(forged, take_queue_seq=True)
    failed = await bob.inbox.event(ev.DecryptionFailed, since=mark)
    assert (failed.envelope_id, failed.conversation_id) == (forged["envelope_id"], cid), failed
    assert failed.reason

    await alice.client.send_text(cid, "after the garbage")
    await bob.inbox.received("after the garbage")
    await bob.client.send_text(cid, "bob is fine")
    await alice.inbox.received("bob is fine")
    bob.inbox.assert_exactly_once("before the garbage", "after the garbage")
    assert len(bob.inbox.of(ev.MalformedFrame)) == len(BAD_FRAMES)
    assert forged["envelope_id"] not in {e.envelope_id for e in bob.inbox.of(MessageReceived)}


# -- 8. a callback that raises --------------------------------------------------------------------


async def test_raising_callback_stops_nothing(
    make_server: Callable[..., LiveServer], devices: Devices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="client_sdk")
    url = (await _serve(make_server)).base_url
    alice = await devices.register(url, "alice")
    raised: list[str] = []
    second: list[str] = []

    def boom(event: MessageReceived) -> None:
        raised.append(event.envelope_id)
        raise RuntimeError(f"boom from the app on {event.text!r}")

    def register_callbacks(client: Client) -> None:
        client.on(MessageReceived, boom)
        client.on(MessageReceived, lambda e: second.append(e.text))

    bob = await devices.register(url, "bob", before_record=register_callbacks, backoff=fast_backoff())
    await alice.client.connect()
    mark = bob.inbox.mark()
    await bob.client.connect()
    first_drain = await bob.inbox.event(ev.Drained, since=mark)
    cid = await alice.client.create_conversation([bob.username])
    texts = [f"message {i}" for i in range(3)]
    for text in texts:
        await alice.client.send_text(cid, text)
    await bob.inbox.received(*texts)
    # the server has every one of them acknowledged: acks went on despite the callback
    await bob.inbox.event(ev.Drained, lambda e: e.queue_seq >= first_drain.queue_seq + len(texts), since=mark)
    assert second == texts
    assert len(raised) == len(texts)

    await bob.client.disconnect()
    mark = bob.inbox.mark()
    await bob.client.connect()
    await _connected(bob, mark)
    await alice.client.send_text(cid, "after the reconnect")
    await bob.inbox.received("after the reconnect")
    await bob.client.send_text(cid, "bob still answers")
    await alice.inbox.received("bob still answers")
    assert second == [*texts, "after the reconnect"]
    bob.inbox.assert_exactly_once(*texts, "after the reconnect")

    logged = [
        r
        for r in caplog.records
        if r.name.startswith("client_sdk") and r.exc_info and "boom from the app" in str(r.exc_info[1])
    ]
    sdk_log = [r.getMessage() for r in caplog.records if r.name.startswith("client_sdk")]
    assert len(logged) >= len(raised), sdk_log
    assert all(r.exc_info and r.exc_info[2] is not None for r in logged)  # with the traceback


# -- 9. at-least-once app handler ------------------------------------------------------------------


async def test_at_least_once_handler_gets_the_message_again_after_a_crash(
    make_server: Callable[..., LiveServer], devices: Devices, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = (await _serve(make_server)).base_url
    alice = await devices.register(url, "alice")
    path = Path(tmp_path_factory.mktemp("bot")) / "store.db"
    calls: list[tuple[int, str]] = []  # (session, text)
    session = 1

    async def handler(event: MessageReceived) -> None:
        calls.append((session, event.text))
        if session == 1:
            raise RuntimeError("the bot crashed mid-reply")

    def opt_in(client: Client) -> None:
        client.on(MessageReceived, handler, at_least_once=True)

    bot = await devices.register(url, "bot", store=SqliteStore.open(path), before_record=opt_in)
    bot_name = bot.username
    await bot.client.connect()
    cid = await alice.client.create_conversation([bot_name])
    await alice.client.send_text(cid, "do the thing")
    await bot.inbox.received("do the thing")
    await bot.inbox.until(lambda: (1, "do the thing") in calls, "handler call")

    # the "crash": the bot goes away and comes back on its store
    await devices.close(bot)
    session = 2
    bot = await devices.open(url, "bot, restarted", store=SqliteStore.open(path), before_record=opt_in)
    await bot.client.connect()
    await bot.inbox.until(lambda: (2, "do the thing") in calls, "the message handed over again")

    await devices.close(bot)
    session = 3
    bot = await devices.open(url, "bot, restarted again", store=SqliteStore.open(path), before_record=opt_in)
    await bot.client.connect()
    await alice.client.send_text(cid, "and the next thing")
    await bot.inbox.received("and the next thing")
    await bot.inbox.until(lambda: (3, "and the next thing") in calls, "handler call")
    assert [c for c in calls if c[0] >= 2] == [(2, "do the thing"), (3, "and the next thing")], calls
    bot.inbox.assert_exactly_once("and the next thing")
    assert bot.inbox.texts()["do the thing"] == 0  # already shown to the app: not announced again
