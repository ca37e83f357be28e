"""Attacker tests, continued: the malicious server lies in its *answers* (send results, creation
answers, username lookups, history pages). Found by a hostile review of the trust and transcript
changes; each test failed before its fix. Same set-up as ``test_hostile_server.py`` (alice behind
the man in the middle; bob and mallory direct). Waits are on events, never on sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import ForkDetected, HistoryGap, MessageReceived, MessageSent
from saltline.client_sdk.errors import UntrustedConversationError, UntrustedDeviceListError
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.e2e.hostile_world import (
    PASSWORD,
    World,
    device_ids_encrypted_to,
    mallory_messages_alice,
    name,
    until,
)
from tests.hostile import HostileHttp
from tests.live import LiveServer
from tests.proxy import WsMitm

pytestmark = pytest.mark.e2e


def _lie_once_about_the_next_send(w: World, change: dict[str, Any] | None, drop: str | None = None) -> None:
    """The next successful ``send_result`` alice gets says ``change`` (or lacks ``drop``)."""
    state = {"done": False}

    def rule(frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") == "send_result" and frame.get("status") == 201 and not state["done"]:
            state["done"] = True
            out = {**frame, **(change or {})}
            if drop is not None:
                out.pop(drop, None)
            return out
        return frame

    w.ws.down_rules.append(rule)


@pytest.mark.parametrize(
    ("change", "drop"),
    [
        ({"server_seq": 0}, None),
        ({"server_seq": 2**63}, None),
        ({"server_seq": True}, None),
        (None, "server_seq"),
    ],
    ids=["seq-0", "seq-2^63", "seq-true", "no-seq"],
)
async def test_an_impossible_send_answer_is_not_written_and_the_message_goes_out_later(
    world: World, change: dict[str, Any] | None, drop: str | None
) -> None:
    """A send answer whose position cannot be true is refused: nothing is written, the item stays
    queued (never failed), the outbox goes on, and the resend gets the server's real answer."""
    w = world
    _lie_once_about_the_next_send(w, change, drop)
    await w.alice.send_text(w.cid, "did it go?")
    assert (await until(w.bob, MessageReceived, lambda e: e.text == "did it go?")).server_seq == 4
    (queued,) = w.alice.outbox()
    assert queued.state == "queued" and queued.failed_reason is None
    assert all(r.server_seq >= 1 for r in w.alice.store.sync.sync_ops(w.cid))
    # the outbox goes on: a later message is sent at once
    await w.alice.send_text(w.cid, "and this one?")
    assert (await until(w.bob, MessageReceived, lambda e: e.text == "and this one?")).server_seq == 5
    # the resend of the first is a replay: the server's real answer, position 4
    await w.alice.flush_outbox()  # or the back-off timer already resent it: one MessageSent
    sent = await until(w.alice, MessageSent, lambda e: e.envelope_id == queued.envelope_id)
    assert sent.server_seq == 4 and not w.alice.outbox()
    assert [m.text for m in w.alice.messages(w.cid)][-2:] == ["did it go?", "and this one?"]


async def test_a_send_answer_naming_an_occupied_position_is_a_fork_not_an_overwrite(world: World) -> None:
    w = world
    before = {r.server_seq: r.envelope_id for r in w.alice.store.sync.sync_ops(w.cid)}
    _lie_once_about_the_next_send(w, {"server_seq": 3})  # bob's "hello alice" is at 3
    await w.alice.send_text(w.cid, "third")
    fork = await until(w.alice, ForkDetected, lambda e: e.conversation_id == w.cid)
    assert fork.server_seq == 3 and fork.message_ref is None
    after = {r.server_seq: r.envelope_id for r in w.alice.store.sync.sync_ops(w.cid)}
    assert after == before  # nothing overwritten
    await w.alice.flush_outbox()  # or the back-off timer already resent it: one MessageSent
    assert [m.text for m in (await w.alice.conversation(w.cid)).messages] == [
        "hello bob",
        "hello alice",
        "third",
    ]


async def test_a_creation_answer_with_an_existing_conversations_id_is_refused(world: World) -> None:
    """alice starts a conversation with carol; the server answers with the id of alice's
    conversation with mallory (members as asked): alice must not send carol's messages there."""
    w = world
    mcid = await mallory_messages_alice(w, "hi alice")
    await until(w.alice, MessageReceived, lambda e: e.conversation_id == mcid)
    carol = await Client.create(w.alice._ctx.http.base_url, MemoryStore())
    try:
        await carol.register(name("carol"), PASSWORD)
        w.http.rewrite("POST", "/v1/conversations", lambda req, body: {**body, "conversation_id": mcid})
        with pytest.raises(UntrustedConversationError, match="existing one"):
            await w.alice.create_conversation([carol.username])
        assert w.mallory.device_id not in device_ids_encrypted_to(w)
    finally:
        await carol.close()


async def test_a_username_lookup_answered_with_another_account_is_refused(world: World) -> None:
    w = world
    carol = await Client.create(w.alice._ctx.http.base_url, MemoryStore())
    await carol.register(name("carol"), PASSWORD)
    carol_name = carol.username
    await carol.close()
    mallory = {
        "account_id": w.mallory.account_id,
        "username": w.mallory.username,
        "account_key": w.mallory._ctx.account_key().public_key.to_b64(),
        "device_list_version": 1,
    }
    w.http.rewrite("GET", f"/v1/accounts/by-username/{carol_name}", lambda req, body: mallory)
    with pytest.raises(UntrustedDeviceListError, match="answered a lookup"):
        await w.alice.create_conversation([carol_name])
    with pytest.raises(UntrustedDeviceListError):
        await w.alice.verify_contact(carol_name)
    assert w.alice.store.device_lists.get_contact(w.mallory.account_id) is None


async def test_a_gap_fill_the_server_refuses_is_still_a_history_gap(world: World) -> None:
    w = world
    w.ws.down_rules.append(
        lambda f: None if f.get("conversation_id") == w.cid and f.get("server_seq") == 4 else f
    )
    w.http.rewrite("GET", f"/v1/conversations/{w.cid}/envelopes", lambda req, body: {"not": "a page"})
    for text in ("lost", "after the loss"):
        await w.bob.send_text(w.cid, text)
    gap = await until(w.alice, HistoryGap, lambda e: e.conversation_id == w.cid)
    assert gap.missing == (4,)


async def test_endless_history_pages_do_not_hold_the_device(world: World) -> None:
    """Every history page says there is more: a gap fill reads a bounded number of pages, then the
    device goes on (it can send; the gap is reported)."""
    w = world
    pages = {"n": 0}

    def endless(req: Any, body: Any) -> dict[str, Any]:
        pages["n"] += 1
        after = int(req.url.params.get("after", "0"))
        return {"envelopes": [{"server_seq": after + 1, "ciphertext": None}], "next_after": after + 1}

    w.http.rewrite("GET", f"/v1/conversations/{w.cid}/envelopes", endless)
    w.ws.down_rules.append(
        lambda f: None if f.get("conversation_id") == w.cid and f.get("server_seq") == 4 else f
    )
    await w.bob.send_text(w.cid, "lost")
    await w.bob.send_text(w.cid, "jump")
    await until(w.alice, HistoryGap, lambda e: e.conversation_id == w.cid)
    await w.alice.send_text(w.cid, "still here")
    assert (await until(w.bob, MessageReceived, lambda e: e.text == "still here")).text == "still here"
    assert pages["n"] >= 50


async def test_one_poisoned_history_item_does_not_stop_later_delivery(
    live_server: LiveServer, make_mitm: Any, tmp_path: Path
) -> None:
    """SQLite store: the server withholds bob's envelope at position 3 (after the genesis and
    alice's first message) on the socket and serves it in history pages with ``server_ts`` =
    2^63 (out of every column's range). Later envelopes of the conversation still arrive."""
    http, ws = HostileHttp(), await make_mitm(live_server.ws_url)
    mitm: WsMitm = ws
    alice = await Client.create(
        live_server.base_url, SqliteStore.open(tmp_path / "a.db"), http_transport=http, ws_url=mitm.ws_url
    )
    bob = await Client.create(live_server.base_url, MemoryStore())
    try:
        await alice.register(name("alice"), PASSWORD)
        await bob.register(name("bob"), PASSWORD)
        for c in (alice, bob):
            await c.connect()
        cid = await alice.create_conversation([bob.username])
        await alice.send_text(cid, "hello bob")
        await until(bob, MessageReceived, lambda e: e.text == "hello bob")
        mitm.down_rules.append(
            lambda f: None if f.get("conversation_id") == cid and f.get("server_seq") == 3 else f
        )
        http.rewrite(
            "GET",
            f"/v1/conversations/{cid}/envelopes",
            lambda req, body: {
                **body,
                "envelopes": [
                    {**e, "server_ts": 2**63} if e.get("server_seq") == 3 else e for e in body["envelopes"]
                ],
            },
        )
        for text in ("poisoned", "later 1", "later 2"):
            await bob.send_text(cid, text)
        got = [await until(alice, MessageReceived, lambda e: e.conversation_id == cid) for _ in range(3)]
        assert sorted(e.text for e in got) == ["later 1", "later 2", "poisoned"]
        assert [m.text for m in alice.messages(cid)] == ["hello bob", "poisoned", "later 1", "later 2"]
    finally:
        for c in (alice, bob):
            await c.close()
        await http.aclose()
