"""Disappearing messages on the real server (docs/protocol/sync.md § 5.8): a message bob sends
under a timer is gone, after the timer, from bob's, alice's desktop's and alice's phone's stores
(store API, raw SQLite rows and the database files), with its edit and the reaction to it; a
device linked afterwards does not receive it in its history bundle, and applies the timers to
what it does receive (also from a floor: history "none"). The clocks are one injected clock the
test advances; waits are on events with timeouts, never on sleeps."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import history as fmt
from saltline.client_sdk.core.events import Event, MessageExpired, MessageReceived
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.linking import link
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0
TIMER_MS = 60_000


class Clock:
    def __init__(self) -> None:
        self.now = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.now


def _name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


def _rows_with(path: Path, needle: bytes) -> list[str]:
    """Every (table, column) of the SQLite file whose raw value contains ``needle``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found = []
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for row in conn.execute(f"SELECT * FROM {table}"):
                for column, value in zip(columns, row, strict=True):
                    raw = value.encode() if isinstance(value, str) else value
                    if isinstance(raw, bytes) and needle in raw:
                        found.append(f"{table}.{column}")
        return found
    finally:
        conn.close()


def _store_has(client: Client, cid: str, needle: str) -> list[str]:
    """Where the decrypted store (its API) still holds ``needle``."""
    store = client.store
    out = [f"message {m.envelope_id}" for m in store.conversations.messages(cid) if needle in m.text]
    out += [
        f"message body {m.envelope_id}"
        for m in store.conversations.messages(cid)
        if needle.encode() in m.body
    ]
    out += [f"sync op {r.server_seq}" for r in store.sync.sync_ops(cid) if needle.encode() in r.plaintext]
    out += [f"outbox {i.envelope_id}" for i in store.outbox.outbox() if needle.encode() in i.body]
    return out


async def _expired(client: Client, *envelope_ids: str) -> MessageExpired:
    """Consume ``MessageExpired`` events until each of ``envelope_ids`` had one; the first's."""
    seen: dict[str, MessageExpired] = {}
    while set(envelope_ids) - seen.keys():
        event = await client.next_event(MessageExpired, WAIT)
        seen[event.envelope_id] = event
    return seen[envelope_ids[0]]


async def _received(client: Client, text: str) -> MessageReceived:
    async def loop() -> MessageReceived:
        while True:
            event = await client.next_event(MessageReceived, WAIT)
            if event.text == text:
                return event

    return await asyncio.wait_for(loop(), WAIT)


async def _settled(client: Client, cid: str, count: int) -> None:
    """Consume events until ``client`` shows ``count`` messages."""

    async def loop() -> None:
        while len((await client.conversation(cid)).messages) != count:
            await client.next_event(Event, WAIT)

    await asyncio.wait_for(loop(), WAIT)


async def test_a_disappearing_message_is_gone_from_every_device(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = live_server.base_url
    clock = Clock()
    paths = {n: tmp_path_factory.mktemp(n) / "store.db" for n in ("bob", "desk", "phone", "laptop", "tablet")}

    async def client(name: str) -> Client:
        return await Client.create(url, SqliteStore.open(paths[name]), clock=clock)

    alice_name, bob_name = _name("alice"), _name("bob")
    desk = await client("desk")
    await desk.register(alice_name, PASSWORD)
    bob = await client("bob")
    await bob.register(bob_name, PASSWORD)
    phone = await client("phone")
    await link(desk, phone, wait_s=WAIT)
    devices = {"bob": bob, "desk": desk, "phone": phone}
    for c in devices.values():
        await c.connect()

    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, "kept for ever")
    for device in (desk, phone):
        await _received(device, "kept for ever")
    await bob.set_disappearing_timer(cid, TIMER_MS)
    marker = f"MARKER-{os.urandom(4).hex()}"
    secret = await bob.send_text(cid, f"{marker} self-destructs")
    for device in (desk, phone):
        assert (await _received(device, f"{marker} self-destructs")).envelope_id == secret
    view = await bob.conversation(cid)
    ref = view.messages[-1].message_ref
    await bob.edit(cid, ref, f"{marker} edited")
    await phone.react(cid, ref, "🔥")
    clock.now += 1_000
    for c in devices.values():
        await _settled(c, cid, 2)

    async def reacted(c: Client) -> None:
        while not (await c.conversation(cid)).messages[-1].reactions:
            await c.next_event(Event, WAIT)

    for c in devices.values():
        await asyncio.wait_for(reacted(c), WAIT)
        view = await c.conversation(cid)
        assert view.messages[-1].text == f"{marker} edited"
        assert _store_has(c, cid, marker)  # the test would see it if it stayed
    assert _rows_with(paths["bob"], marker.encode())  # (unencrypted stores: the raw rows show text)

    # the timer runs out: each device's own timer purges it, and says so
    clock.now += TIMER_MS
    for name, c in devices.items():
        event = await asyncio.wait_for(_expired(c, secret), WAIT)
        assert (event.conversation_id, event.message_ref) == (cid, ref), name
    for name, c in devices.items():
        assert _store_has(c, cid, marker) == [], name
        view = await c.conversation(cid)
        assert [m.text for m in view.messages] == ["kept for ever"], name
        assert [m.text for m in c.messages(cid)] == ["kept for ever"], name
        assert view.settings["disappearing_ms"].value == TIMER_MS, name

    # a laptop linked now does not get it in its history bundle, yet keeps the rest
    bundles: list[dict[str, Any]] = []
    seal = desk.linking._seal_bundle

    async def sealing(bundle: dict[str, Any]) -> fmt.HistoryRef:
        bundles.append(bundle)
        return await seal(bundle)

    desk.linking._seal_bundle = sealing  # type: ignore[method-assign]
    laptop = await client("laptop")
    # a second timed message, sent before the link: carried, and expired on the laptop too
    second = await bob.send_text(cid, f"{marker}-2 also goes")
    await _received(desk, f"{marker}-2 also goes")
    await link(desk, laptop, history="all", wait_s=WAIT)
    await desk.finish_link(WAIT)
    assert bundles
    for bundle in bundles:
        for conversation in fmt.parse_bundle(bundle):
            for o in conversation.ops:
                assert f"{marker} ".encode() not in o.plaintext
    assert [m.text for m in laptop.messages(cid)] == ["kept for ever", f"{marker}-2 also goes"]
    devices["laptop"] = laptop
    await laptop.connect()

    # a tablet linked with no history starts from a floor above the timer change: the bundle's
    # floor timers make it apply the timer to what it receives from now on
    tablet = await client("tablet")
    await link(desk, tablet, history="none", wait_s=WAIT)
    await desk.finish_link(WAIT)
    assert (await tablet.conversation(cid)).messages == ()
    devices["tablet"] = tablet
    await tablet.connect()
    sent_at = clock.now
    third = await bob.send_text(cid, f"{marker}-3 to every device")
    await _received(tablet, f"{marker}-3 to every device")
    await _received(laptop, f"{marker}-3 to every device")
    # 10 s later the laptop replies to the second message (below the tablet's floor): the reply's
    # own timer runs 10 s longer, yet it goes with the message it answers, on the tablet too
    clock.now += 10_000
    reply = await laptop.reply(cid, second, f"{marker}-4 a reply")
    for c in (bob, desk, phone, tablet):
        await _received(c, f"{marker}-4 a reply")

    clock.now = sent_at + TIMER_MS  # the second and third expire; the reply's own timer has 10 s left
    for c in devices.values():
        await asyncio.wait_for(_expired(c, third, reply), WAIT)
    for name, c in devices.items():
        assert _store_has(c, cid, marker) == [], name
        assert [m.text for m in c.messages(cid)] == ([] if name == "tablet" else ["kept for ever"]), name

    for c in devices.values():
        await c.close()
        c.store.close()  # type: ignore[attr-defined]
    for name, path in paths.items():
        assert _rows_with(path, marker.encode()) == [], name
        assert _file_has(path, marker.encode()) == [], name


def _file_has(path: Path, needle: bytes) -> list[str]:
    """The database files (the file and its log) whose bytes contain ``needle``: secure_delete
    overwrites what was deleted, and closing checkpoints the log."""
    out = []
    for suffix in ("", "-wal"):
        file = Path(f"{path}{suffix}")
        if file.exists() and needle in file.read_bytes():
            out.append(file.name)
    return out
