"""A device with an encrypted, integrity-protected store talks to a real server; its trust anchors
are then tampered with in the file: the store refuses to open (issue 12, "a tampered trust anchor
in the store is detected on open"). Waits are on events with timeouts, never on sleeps."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.errors import StoreTamperedError
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0
STORE_KEY = os.urandom(32)


async def test_tampered_trust_anchor_is_detected_on_open(
    live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = live_server.base_url
    path = tmp_path_factory.mktemp("alice-device") / "store.db"
    alice = await Client.create(url, SqliteStore.open(path, key=STORE_KEY))
    alice_name = f"alice_{os.urandom(3).hex()}"
    await alice.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(f"bob_{os.urandom(3).hex()}", PASSWORD)
    for c in (alice, bob):
        await c.connect()
    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, "hello alice")
    assert (await alice.next_event(MessageReceived, WAIT)).text == "hello alice"
    await alice.send_text(cid, "hello bob")
    assert (await bob.next_event(MessageReceived, WAIT)).text == "hello bob"

    # a restart from the protected store works, sessions and all
    await alice.close()
    alice.store.close()  # type: ignore[attr-defined]
    alice = await Client.create(url, SqliteStore.open(path, key=STORE_KEY))
    await alice.connect()
    await bob.send_text(cid, "after your restart")
    assert (await alice.next_event(MessageReceived, WAIT)).text == "after your restart"
    await alice.close()
    alice.store.close()  # type: ignore[attr-defined]
    await bob.close()

    clean = path.read_bytes()
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute(
        "UPDATE contacts SET account_key = ?, verified = 1 WHERE account_id = ?",
        (os.urandom(32), bob.account_id),
    ).rowcount
    conn.close()
    with pytest.raises(StoreTamperedError, match="backup"):
        SqliteStore.open(path, key=STORE_KEY)

    path.write_bytes(clean)  # the untampered file (WAL checkpointed on close) opens
    SqliteStore.open(path, key=STORE_KEY).close()
    conn = sqlite3.connect(path, isolation_level=None)
    (members,) = conn.execute(
        "SELECT members FROM conversations WHERE conversation_id = ?", (cid,)
    ).fetchone()
    forged = json.dumps(sorted([*json.loads(members), "bWFsbG9yeS1hY2NvdW50LWlk"]))
    conn.execute("UPDATE conversations SET members = ? WHERE conversation_id = ?", (forged, cid))
    conn.close()
    with pytest.raises(StoreTamperedError):
        SqliteStore.open(path, key=STORE_KEY)
