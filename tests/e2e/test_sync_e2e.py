"""Conversation sync through the SDK on the real server: alice-desktop, alice-phone (linked) and
bob. Edits, deletes, reactions, read markers, settings and typing converge on every device
(docs/protocol/sync.md). Waits are on events with timeouts, never on sleeps."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import (
    Drained,
    Event,
    MessageDeleted,
    MessageReceived,
    TypingChanged,
)
from saltline.client_sdk.core.views import ConversationView
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.linking import link
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0


def _name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


async def _until(client: Client, check: Callable[[], Awaitable[bool]]) -> None:
    """Consume ``client``'s events until ``check()`` holds."""

    async def loop() -> None:
        while not await check():
            await client.next_event(Event, WAIT)

    await asyncio.wait_for(loop(), WAIT)


def _shared(view: ConversationView) -> object:
    """What every device must agree on."""
    return (view.messages, view.settings, view.mute, view.members, view.read_up_to, view.receipts)


async def _converged(cid: str, *devices: Client) -> ConversationView:
    """Consume the devices' events until all of them show the same state."""

    async def loop() -> None:
        while True:
            views = [_shared(await d.conversation(cid)) for d in devices]
            if all(v == views[0] for v in views):
                return
            waits = [asyncio.ensure_future(d.next_event(Event, WAIT)) for d in devices]
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()

    await asyncio.wait_for(loop(), WAIT)
    return await devices[0].conversation(cid)


async def test_sync_three_devices(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    url = live_server.base_url
    alice_name, bob_name = _name("alice"), _name("bob")
    desk = await Client.create(url, SqliteStore.open(tmp_path_factory.mktemp("desk") / "store.db"))
    await desk.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)
    phone = await Client.create(url, MemoryStore())
    await link(desk, phone, wait_s=WAIT)
    typing_seen: dict[str, list[TypingChanged]] = {"desk": [], "phone": [], "bob": []}
    for name, c in (("desk", desk), ("phone", phone), ("bob", bob)):
        c.on(TypingChanged, typing_seen[name].append)
        await c.connect()

    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, "hello alice")
    for device in (desk, phone):
        assert (await device.next_event(MessageReceived, WAIT)).text == "hello alice"
    await desk.send_text(cid, "a typo here")
    for device in (phone, bob):
        assert (await device.next_event(MessageReceived, WAIT)).text == "a typo here"
    view = await _converged(cid, desk, phone, bob)
    assert [m.text for m in view.messages] == ["hello alice", "a typo here"]
    ref = view.messages[1].message_ref

    # the phone edits while the desktop (offline, not seeing the edit) deletes: delete wins
    await desk.disconnect()
    await phone.edit(cid, ref, "fixed on the phone")

    async def bob_sees_edit() -> bool:
        m = (await bob.conversation(cid)).messages[1]
        return m.text == "fixed on the phone" and m.edited

    await _until(bob, bob_sees_edit)
    await desk.delete(cid, ref)
    await desk.connect()
    view = await _converged(cid, desk, phone, bob)
    target = view.messages[1]
    assert target.deleted and target.text is None
    assert view.messages[0].text == "hello alice"

    # reading on the desktop clears the unread count on the phone
    assert await phone.unread(cid) == 1
    await desk.mark_read(cid)

    async def phone_read() -> bool:
        return await phone.unread(cid) == 0

    await _until(phone, phone_read)
    view = await _converged(cid, desk, phone, bob)
    assert view.receipts.get(view.messages[1].author) is not None  # bob sees alice's read receipt

    # two devices rename at once: one winner everywhere, the loser kept in conflicts
    await desk.disconnect()
    await phone.disconnect()
    await desk.set_title(cid, "from the desktop")
    await phone.set_title(cid, "from the phone")
    await desk.connect()
    await phone.connect()
    view = await _converged(cid, desk, phone, bob)
    title = view.settings["title"]
    assert title.value in ("from the desktop", "from the phone")
    loser = "from the phone" if title.value == "from the desktop" else "from the desktop"
    assert list(title.conflicts) == [loser]

    # reactions: last writer per (message, account)
    hello = view.messages[0].message_ref
    await bob.react(cid, hello, "👍")
    await phone.react(cid, hello, "❤️")
    view = await _converged(cid, desk, phone, bob)
    assert {r.emoji for r in view.messages[0].reactions} == {"👍", "❤️"}
    await bob.unreact(cid, hello, "👍")
    await desk.react(cid, hello, "🎉")  # replaces the phone's reaction: one per account
    view = await _converged(cid, bob, desk, phone)
    assert [r.emoji for r in view.messages[0].reactions] == ["🎉"]

    # typing reaches the devices online now, and is never stored
    await desk.disconnect()
    await bob.typing(cid)
    event = await phone.next_event(TypingChanged, WAIT)
    assert (event.account_id, event.typing) == (bob.account_id, True)
    await desk.connect()
    await desk.send_text(cid, "back")
    await bob.next_event(MessageReceived, WAIT)
    await desk.next_event(Drained, WAIT)
    assert typing_seen["desk"] == []
    assert all(m.text != "" for m in (await bob.conversation(cid)).messages)

    for c in (desk, phone, bob):
        await c.close()
    desk.store.close()  # type: ignore[attr-defined]


async def test_sync_state_survives_restart(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The materialised state is rebuilt from the durable store after a restart, and events
    announce edits and deletes."""
    url = live_server.base_url
    path = tmp_path_factory.mktemp("desk") / "store.db"
    alice = await Client.create(url, SqliteStore.open(path))
    await alice.register(_name("alice"), PASSWORD)
    bob_name = _name("bob")
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)
    await bob.connect()
    cid = await alice.create_conversation([bob_name])
    sent = await alice.send_text(cid, "one")
    await alice.edit(cid, sent, "one, edited")
    await alice.set_title(cid, "plans")
    await alice.delete(cid, sent)
    await bob.next_event(MessageDeleted, WAIT)
    before = await alice.conversation(cid)
    assert before.messages[0].deleted and before.settings["title"].value == "plans"
    await alice.close()
    alice.store.close()  # type: ignore[attr-defined]
    alice = await Client.create(url, SqliteStore.open(path))
    assert _shared(await alice.conversation(cid)) == _shared(before)
    assert _shared(await bob.conversation(cid)) == _shared(before)
    await alice.close()
    alice.store.close()  # type: ignore[attr-defined]
    await bob.close()


async def test_new_device_gets_the_history(live_server: LiveServer) -> None:
    """A device linked after 200 messages (with edits, a delete, a title, reactions and a read
    marker) shows exactly what the other devices show, and keeps up afterwards."""
    await _history_for_new_device(live_server)


@pytest.fixture
def small_blob_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A live server whose blobs hold at most 4 KiB (started outside the test's event loop)."""
    return make_server(max_blob_bytes=4 * 1024)


async def test_new_device_gets_a_multi_part_history(small_blob_server: LiveServer) -> None:
    """The same with the server's blobs limited to 4 KiB: the history bundle goes up in several
    parts (their size learnt from the 413's ``limit``) and arrives identical."""
    await _history_for_new_device(small_blob_server, min_parts=2)


async def _history_for_new_device(live_server: LiveServer, min_parts: int = 1) -> None:
    url = live_server.base_url
    alice_name, bob_name = _name("alice"), _name("bob")
    desk = await Client.create(url, MemoryStore())
    await desk.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)
    for c in (desk, bob):
        await c.connect()
    cid = await bob.create_conversation([alice_name])
    for i in range(100):
        await bob.send_text(cid, f"bob {i}")
        await desk.send_text(cid, f"alice {i}")
    await desk.set_title(cid, "two hundred")
    view = await _converged(cid, desk, bob)
    assert len(view.messages) == 200
    mine = [m for m in view.messages if m.author == view.messages[1].author]
    await desk.edit(cid, mine[0].message_ref, "alice 0, edited")
    await desk.delete(cid, mine[1].message_ref)
    await bob.react(cid, mine[2].message_ref, "👍")
    await desk.mark_read(cid)
    before = await _converged(cid, desk, bob)

    laptop = await Client.create(url, MemoryStore())
    uploads: list[int] = []
    upload_parts = desk.linking._upload_parts

    async def counting(ciphertext: bytes) -> list[str]:
        ids = await upload_parts(ciphertext)
        uploads.append(len(ids))
        return ids

    desk.linking._upload_parts = counting  # type: ignore[method-assign]
    await link(desk, laptop, history="all", wait_s=WAIT)
    assert uploads and uploads[0] >= min_parts
    assert _shared(await laptop.conversation(cid)) == _shared(before)
    assert await laptop.unread(cid) == 0
    # messages() shows the current text: the edit's, and nothing of the deleted message
    assert [m.text for m in laptop.messages(cid)][:4] == ["bob 0", "alice 0, edited", "bob 1", ""]

    await laptop.connect()
    await bob.send_text(cid, "after the link")
    assert (await laptop.next_event(MessageReceived, WAIT)).text == "after the link"
    await laptop.edit(cid, mine[3].message_ref, "edited on the laptop")
    view = await _converged(cid, laptop, desk, bob)
    assert view.messages[-1].text == "after the link"
    assert await laptop.unread(cid) == 1
    for c in (desk, bob, laptop):
        await c.close()


async def test_new_device_without_history(live_server: LiveServer) -> None:
    """History depth "none": the new device starts at the current point, and still applies the
    operations that follow (its floor stands in for what came before)."""
    url = live_server.base_url
    alice_name, bob_name = _name("alice"), _name("bob")
    desk = await Client.create(url, MemoryStore())
    await desk.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)
    await bob.connect()
    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, "old news")
    laptop = await Client.create(url, MemoryStore())
    await desk.connect()
    await desk.next_event(MessageReceived, WAIT)
    await link(desk, laptop, history="none", wait_s=WAIT)
    assert (await laptop.conversation(cid)).messages == ()
    await laptop.connect()
    await bob.send_text(cid, "fresh")
    assert (await laptop.next_event(MessageReceived, WAIT)).text == "fresh"
    assert [m.text for m in (await laptop.conversation(cid)).messages] == ["fresh"]
    for c in (desk, bob, laptop):
        await c.close()


async def test_messages_sent_while_linking_reach_the_new_device(live_server: LiveServer) -> None:
    """Envelopes stored after the approving device built the history bundle but before the new
    device published its device list have no copy for the new device and are not in the bundle:
    the approving device's follow-up bundle carries them (docs/protocol/sync.md § 8), including a
    conversation created meanwhile. Each arrives exactly once, in order (also one that came both
    directly and in the follow-up), and the new device's view converges with the others'."""
    url = live_server.base_url
    alice_name, bob_name, carol_name = _name("alice"), _name("bob"), _name("carol")
    desk = await Client.create(url, MemoryStore())
    await desk.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)
    carol = await Client.create(url, MemoryStore())
    await carol.register(carol_name, PASSWORD)
    for c in (desk, bob):
        await c.connect()
    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, "before")
    await _converged(cid, desk, bob)

    # hold the desk's follow-up until the laptop has received a message directly
    gate = asyncio.Event()
    fill_all_gaps = desk.inbound._fill_all_gaps

    async def gated() -> None:
        await gate.wait()
        await fill_all_gaps()

    desk.inbound._fill_all_gaps = gated  # type: ignore[method-assign]
    laptop = await Client.create(url, MemoryStore())
    # traffic after the desk built the history bundle and before the laptop joins: the desk's
    # second put on the code's channel is the sealed payload, made after the bundle
    put = desk.linking._put
    puts: list[str] = []
    cids: list[str] = []

    async def traffic_then_put(channel_id: str, secret: str, box: bytes) -> None:
        puts.append(channel_id)
        if len(puts) == 2:
            await bob.send_text(cid, "while linking, from bob")
            await desk.send_text(cid, "while linking, from the desk")
            ref = (await _converged(cid, desk, bob)).messages[0].message_ref
            await bob.react(cid, ref, "👍")
            cids.append(await bob.create_conversation([alice_name, carol_name]))  # a group, new meanwhile
            await bob.send_text(cids[0], "a new conversation")
            await _converged(cid, desk, bob)
            await _converged(cids[0], desk, bob)
        await put(channel_id, secret, box)

    desk.linking._put = traffic_then_put  # type: ignore[method-assign]
    await link(desk, laptop, wait_s=WAIT)  # only now do senders encrypt to the laptop
    cid2 = cids[0]
    received: list[MessageReceived] = []
    laptop.on(MessageReceived, received.append)
    await laptop.connect()
    await bob.send_text(cid, "after the link")
    assert (await laptop.next_event(MessageReceived, WAIT)).text == "after the link"
    # without the follow-up the laptop lacks what was sent while linking, and holds what follows
    assert [m.text for m in (await laptop.conversation(cid)).messages] == ["before"]

    gate.set()
    await desk.finish_link(WAIT)
    await laptop.finish_link(WAIT)
    expected = ["before", "while linking, from bob", "while linking, from the desk", "after the link"]
    view = await _converged(cid, laptop, desk, bob)
    assert [m.text for m in view.messages] == expected
    assert [r.emoji for r in view.messages[0].reactions] == ["👍"]
    assert [m.text for m in laptop.messages(cid)] == expected  # stored once each, in order
    view2 = await _converged(cid2, laptop, desk, bob)
    assert [m.text for m in view2.messages] == ["a new conversation"]
    assert sorted(e.text for e in received) == sorted([*expected[1:], "a new conversation"])  # once each
    await laptop.send_text(cid, "from the laptop")
    view = await _converged(cid, laptop, desk, bob)
    assert [m.text for m in view.messages] == [*expected, "from the laptop"]
    for c in (desk, bob, carol, laptop):
        await c.close()
