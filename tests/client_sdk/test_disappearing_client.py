"""Disappearing messages in the client against the in-memory relay (docs/protocol/sync.md § 5.8):
a message that arrives already expired is stored only as a tombstone and never announced, an edit
of it arriving later loses its text at once, what expired while the client was closed goes when it
opens, the timer purges by itself when the injected clock passes an expiry, and the history
bundle's floor timers are validated."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import history as fmt
from saltline.client_sdk.core.events import Event, MessageExpired, MessageReceived
from saltline.client_sdk.errors import LinkError
from saltline.client_sdk.stores.base import SyncMeta
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.client_sdk.harness import FakeRelay

URL = "http://relay.invalid"
PASSWORD = "a long passphrase"
TIMER = 10_000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


async def _user(relay: FakeRelay, name: str, clock: Clock, store: MemoryStore | None = None) -> Client:
    c = await Client.create(URL, store or MemoryStore(), http_transport=relay, clock=clock)
    await c.register(name, PASSWORD)
    return c


def _drain(c: Client) -> list[Event]:
    return list(c._ctx.bus.drain())


def _holds(c: Client, cid: str, text: str) -> bool:
    store = c.store
    return any(text in m.text or text.encode() in m.body for m in store.conversations.messages(cid)) or any(
        text.encode() in r.plaintext for r in store.sync.sync_ops(cid)
    )


async def _timed_pair() -> tuple[FakeRelay, Client, Client, Clock, Clock, str]:
    relay = FakeRelay()
    alice_clock, bob_clock = Clock(), Clock()
    alice, bob = await _user(relay, "alice", alice_clock), await _user(relay, "bob", bob_clock)
    cid = await bob.create_conversation(["alice"])
    await bob.set_disappearing_timer(cid, TIMER)
    await relay.deliver(alice)
    _drain(alice)
    return relay, alice, bob, alice_clock, bob_clock, cid


async def test_a_message_that_arrives_expired_is_never_shown_nor_kept() -> None:
    relay, alice, bob, alice_clock, _, cid = await _timed_pair()
    late = await bob.send_text(cid, "SECRET already gone")
    alice_clock.ms += TIMER  # alice was offline past the expiry
    await relay.deliver(alice)
    events = _drain(alice)
    assert not [e for e in events if isinstance(e, MessageReceived | MessageExpired)]
    assert alice.store.conversations.get_message(late) is None
    assert not _holds(alice, cid, "SECRET")
    assert (await alice.conversation(cid)).messages == ()
    # bob edits it (his clock: not expired yet for him); the edit's text never stays at alice
    ref = (await bob.conversation(cid)).messages[0].message_ref
    await bob.edit(cid, ref, "SECRET edited")
    await relay.deliver(alice)
    assert not [e for e in _drain(alice) if isinstance(e, MessageReceived | MessageExpired)]
    assert not _holds(alice, cid, "SECRET")
    assert _holds(bob, cid, "SECRET")
    for c in (alice, bob):
        await c.close()


async def test_the_timer_purges_by_itself_and_a_message_without_timer_stays() -> None:
    relay, alice, bob, alice_clock, _, cid = await _timed_pair()
    await bob.set_disappearing_timer(cid, None)
    kept = await bob.send_text(cid, "kept")
    await bob.set_disappearing_timer(cid, TIMER)
    gone = await bob.send_text(cid, "SECRET soon gone")
    await relay.deliver(alice)
    assert [e.text for e in _drain(alice) if isinstance(e, MessageReceived)] == ["kept", "SECRET soon gone"]
    alice_clock.ms += TIMER - 1
    assert await alice.expire_messages() == 0
    alice_clock.ms += 1
    event = await alice.next_event(MessageExpired, 5.0)  # the client's own timer, not the test
    assert (event.conversation_id, event.envelope_id) == (cid, gone)
    assert not _holds(alice, cid, "SECRET")
    assert [m.envelope_id for m in alice.messages(cid)] == [kept]
    assert [m.text for m in (await alice.conversation(cid)).messages] == ["kept"]
    for c in (alice, bob):
        await c.close()


async def test_what_expired_while_closed_goes_on_open() -> None:
    relay, alice, bob, alice_clock, _, cid = await _timed_pair()
    gone = await bob.send_text(cid, "SECRET while closed")
    await relay.deliver(alice)
    _drain(alice)
    store = alice.store
    assert isinstance(store, MemoryStore)
    await alice.close()
    alice_clock.ms += TIMER
    reopened = await Client.create(URL, store, http_transport=relay, clock=alice_clock)
    expired = [e for e in _drain(reopened) if isinstance(e, MessageExpired)]
    assert [e.envelope_id for e in expired] == [gone]
    assert not _holds(reopened, cid, "SECRET")
    for c in (reopened, bob):
        await c.close()


def _conv(timers: object) -> dict[str, object]:
    conv = _bundle(timers)["conversations"]
    assert isinstance(conv, list)
    return dict(conv[0])


def _bundle(timers: object) -> dict[str, object]:
    return {
        "v": 1,
        "created_at_ms": 0,
        "conversations": [
            {
                "conversation_id": "Y2lk",
                "kind": "direct",
                "members": [],
                "floor_seq": 3,
                "ops": [],
                "timers": timers,
            }
        ],
    }


def test_bundle_timers_round_trip_and_bad_ones_fail_the_link() -> None:
    device = "AQEBAQEBAQEBAQEBAQEBAQ"
    (conv,) = fmt.parse_bundle(_bundle([[device, 2, 5, 60_000], [device, 3, 6, None]]))
    assert conv.timers == ((device, 2, 5, 60_000), (device, 3, 6, None))
    again = fmt.encode_bundle([conv], 0)
    assert fmt.parse_bundle(again)[0].timers == conv.timers
    older = _bundle([])
    del older["conversations"][0]["timers"]  # type: ignore[index]
    assert fmt.parse_bundle(older)[0].timers == ()  # a bundle of an earlier version
    (conv,) = fmt.parse_bundle(
        {**_bundle([]), "conversations": [{**_conv([]), "expiring": [[device, 3, 0]]}]}
    )
    assert conv.expiring == ((device, 3, 0),)
    assert fmt.parse_bundle(fmt.encode_bundle([conv], 0))[0].expiring == conv.expiring
    for bad_expiring in ("x", [[device, 0, 1]], [[device, 1, -1]], [[device, 1]]):
        with pytest.raises(LinkError):
            fmt.parse_bundle({**_bundle([]), "conversations": [{**_conv([]), "expiring": bad_expiring}]})
    for bad in (
        "x",
        [[device, 0, 5, 1]],
        [[device, 1, 5, -1]],
        [[device, 1, 5, True]],
        [[device, 1, 5]],
        [["!", 1, 1, 1]],
    ):
        with pytest.raises(LinkError):
            fmt.parse_bundle(_bundle(bad))


def test_the_floor_timers_survive_in_the_sqlite_store(tmp_path: Path) -> None:
    meta = SyncMeta(
        "Y2lk",
        floor_seq=3,
        timers=(("AQEBAQEBAQEBAQEBAQEBAQ", 2, 5, 60_000), ("AgICAgICAgICAgICAgICAg", 1, 6, None)),
        expiring=(("AQEBAQEBAQEBAQEBAQEBAQ", 3, 70_000), ("AgICAgICAgICAgICAgICAg", 2, 0)),
    )
    with SqliteStore.open(tmp_path / "store.db") as store:
        store.sync.put_sync_meta(meta)
    with SqliteStore.open(tmp_path / "store.db") as store:
        assert store.sync.get_sync_meta("Y2lk") == meta


async def test_a_reply_goes_with_the_message_it_answers() -> None:
    relay, alice, bob, alice_clock, bob_clock, cid = await _timed_pair()
    gone = await bob.send_text(cid, "SECRET question")
    await bob.set_disappearing_timer(cid, None)
    await relay.deliver(alice)
    reply = await alice.reply(cid, gone, "SECRET answer, under no timer")
    await relay.deliver(bob)
    assert [m.text for m in (await bob.conversation(cid)).messages] == [
        "SECRET question",
        "SECRET answer, under no timer",
    ]
    _drain(alice)
    _drain(bob)
    for clock in (alice_clock, bob_clock):
        clock.ms += TIMER
    for c in (alice, bob):
        await c.expire_messages()  # (or the client's own timer, if it woke first)
        expired = {e.envelope_id for e in _drain(c) if isinstance(e, MessageExpired)}
        assert expired == {gone, reply}
        assert not _holds(c, cid, "SECRET")
        assert (await c.conversation(cid)).messages == ()
    for c in (alice, bob):
        await c.close()


async def test_a_message_that_expires_in_the_outbox_is_not_sent() -> None:
    relay, alice, bob, _, bob_clock, cid = await _timed_pair()
    real = relay.handle_async_request

    async def offline(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/envelopes"):
            raise httpx.ConnectError("offline")
        return await real(request)

    relay.handle_async_request = offline  # type: ignore[method-assign]
    gone = await bob.send_text(cid, "SECRET never left")
    assert [i.envelope_id for i in bob.store.outbox.outbox()] == [gone]
    _drain(bob)
    bob_clock.ms += TIMER
    await bob.expire_messages()
    assert [e.envelope_id for e in _drain(bob) if isinstance(e, MessageExpired)] == [gone]
    (void,) = bob.store.outbox.outbox()  # its dot goes to a void operation
    assert b"SECRET" not in void.body and void.clock
    assert bob.store.conversations.get_message(gone) is None

    relay.handle_async_request = real  # type: ignore[method-assign]
    await bob.flush_outbox()
    await bob.send_text(cid, "after")
    await relay.deliver(alice)
    assert [e.text for e in _drain(alice) if isinstance(e, MessageReceived)] == ["after"]
    assert gone not in {s["envelope_id"] for s in relay.sends}  # the server never stored it
    assert not _holds(alice, cid, "SECRET")
    for c in (alice, bob):
        await c.close()


async def test_a_failing_timer_round_does_not_stop_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """One round of the timer that raises (here: reading the outbox) is logged and the next round
    still purges: a timer task that died would keep every later disappearing message."""
    relay, alice, bob, alice_clock, _, cid = await _timed_pair()
    gone = await bob.send_text(cid, "SECRET soon gone")
    await relay.deliver(alice)
    _drain(alice)
    timer = alice.conversations.disappearing
    real = timer._outbox_expired
    failed = asyncio.Event()

    def failing_once(now: int) -> list[Any]:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a store that failed once")
        return real(now)

    monkeypatch.setattr(timer, "_outbox_expired", failing_once)
    await asyncio.wait_for(failed.wait(), 5.0)  # a round before the expiry asks the outbox: it raises
    alice_clock.ms += TIMER
    event = await alice.next_event(MessageExpired, 5.0)  # a later round of the same timer
    assert event.envelope_id == gone
    assert not _holds(alice, cid, "SECRET")
    for c in (alice, bob):
        await c.close()
