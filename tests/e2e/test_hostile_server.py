"""Attacker tests: the server is malicious. Real SDK clients talk to the real server over real
sockets through a man in the middle (``tests/hostile.py``: every HTTP response can be rewritten;
``tests/proxy.py``'s ``WsMitm``: every socket frame relayed, recorded, injected) that plays the
malicious server. Each test asserts that nothing is encrypted to the attacker, that the genuine
conversation keeps working, and that the user is told through the right event.

Waits are on events with timeouts, never on sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import (
    ConversationUnavailable,
    DecryptionFailed,
    ForkDetected,
    HistoryGap,
    IdentityChanged,
    MessageReceived,
    UntrustedDeviceList,
)
from saltline.client_sdk.errors import (
    IdentityChangedError,
    UntrustedConversationError,
    UntrustedDeviceListError,
)
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto import safety
from saltline.crypto.keys import AccountKey, AccountPublicKey, b64decode, b64encode
from tests.e2e.hostile_world import (
    PASSWORD,
    WAIT,
    World,
    device_ids_encrypted_to,
    events_of,
    genuine_conversation_still_works,
    mallory_messages_alice,
    name,
    until,
)
from tests.hostile import HostileHttp, chain_body, forged_chain, forged_device, since_of
from tests.linking import link
from tests.live import LiveServer
from tests.proxy import WsMitm

pytestmark = pytest.mark.e2e


async def test_a_device_id_registered_under_another_account_is_refused(world: World) -> None:
    """The server lists bob's device id in mallory's account (with mallory's own keys for it),
    hoping alice matches mallory's messages to bob's sessions, or her replies to mallory's."""
    w = world
    mallory_key: AccountKey = w.mallory._ctx.account_key()
    clone = forged_device(b64decode(w.bob.device_id))
    chain = forged_chain(mallory_key, w.mallory.username, [w.mallory._ctx.state, clone])
    w.http.rewrite(
        "GET",
        f"/v1/accounts/{w.mallory.account_id}/device-list/chain",
        lambda req, body: chain_body(chain, since_of(req)),
    )

    await mallory_messages_alice(w, "hello from mallory")
    dropped = await until(w.alice, DecryptionFailed, lambda e: e.sender_device_id == w.mallory.device_id)
    assert dropped.code == "untrusted_sender" and w.bob.device_id in dropped.reason
    assert not [e for e in w.alice._ctx.bus.drain() if isinstance(e, MessageReceived)]
    with pytest.raises(UntrustedDeviceListError, match="belongs to account"):
        await w.alice.create_conversation([w.mallory.username])
    assert any(e.account_id == w.mallory.account_id for e in events_of(w.alice, UntrustedDeviceList))

    await genuine_conversation_still_works(w, "still you, bob?")
    assert w.mallory.device_id not in device_ids_encrypted_to(w)


async def test_a_second_account_with_a_known_username_is_refused(world: World) -> None:
    """The server presents mallory's account under bob's username (a list mallory signed that
    claims the name): alice must not show mallory's messages as bob's nor trust mallory's key
    as bob's."""
    w = world
    mallory_key: AccountKey = w.mallory._ctx.account_key()
    chain = forged_chain(mallory_key, w.bob.username, [w.mallory._ctx.state])
    w.http.rewrite(
        "GET",
        f"/v1/accounts/{w.mallory.account_id}/device-list/chain",
        lambda req, body: chain_body(chain, since_of(req)),
    )
    w.http.rewrite(
        "GET", f"/v1/accounts/{w.mallory.account_id}", lambda req, body: {**body, "username": w.bob.username}
    )

    await mallory_messages_alice(w, "it's me, bob, new phone")
    changed = await until(w.alice, IdentityChanged, lambda e: e.account_id == w.mallory.account_id)
    assert changed.blocked and changed.pinned_account_id == w.bob.account_id
    assert changed.username == w.bob.username
    dropped = await until(w.alice, DecryptionFailed, lambda e: e.sender_device_id == w.mallory.device_id)
    assert dropped.code == "untrusted_sender"
    assert not [e for e in w.alice._ctx.bus.drain() if isinstance(e, MessageReceived)]

    # the username still names bob: his key in the safety number, his account in contacts
    number = await w.alice.safety_number(w.bob.username)
    expected = safety.safety_number(
        w.alice._ctx.account_key().public_key,
        w.alice.username,
        AccountPublicKey(bytes(w.bob._ctx.account_key().public_key)),
        w.bob.username,
    )
    assert number == expected
    assert await w.alice.safety_number(account_id=w.bob.account_id) == expected  # by account id too
    await w.alice.verify_contact(account_id=w.bob.account_id)
    bob = w.alice.store.device_lists.get_contact(w.bob.account_id)
    assert bob is not None and bob.verified
    assert w.alice.store.device_lists.get_contact(w.mallory.account_id) is None
    await genuine_conversation_still_works(w, "the real bob")
    assert w.mallory.device_id not in device_ids_encrypted_to(w)


async def test_a_verified_contacts_key_change_blocks_sending_under_the_default_policy(world: World) -> None:
    """alice verified bob; the server then presents a new account key for bob (with a device of
    the attacker's). Under the default "warn" policy the change is held: nothing is encrypted to
    the new key until alice verifies bob again."""
    w = world
    await w.alice.verify_contact(w.bob.username)
    attacker_key = AccountKey.generate()
    attacker_device = forged_device()
    chain = forged_chain(attacker_key, w.bob.username, [attacker_device], length=3)
    w.http.rewrite(
        "GET",
        f"/v1/accounts/{w.bob.account_id}/device-list/chain",
        lambda req, body: chain_body(chain, since_of(req)),
    )
    before = device_ids_encrypted_to(w)

    await w.alice.contacts.refresh(w.bob.account_id)
    await w.alice._ctx.flush()
    (changed,) = [e for e in events_of(w.alice, IdentityChanged) if e.account_id == w.bob.account_id]
    assert changed.blocked and changed.policy == "warn"
    with pytest.raises(IdentityChangedError):
        await w.alice.send_text(w.cid, "are you still bob?")
    item = w.alice.outbox()[0]
    assert item.state == "queued" and item.failed_reason is None  # held for the user, not lost
    assert device_ids_encrypted_to(w) == before
    assert b64encode(attacker_device.device_id) not in device_ids_encrypted_to(w)


async def test_a_ghost_member_in_a_direct_conversation_is_refused(world: World) -> None:
    """A direct conversation has exactly its two accounts, forever: the server cannot add its own
    account when alice creates one, nor show her one with a third member."""
    w = world
    carol = await Client.create(w.alice._ctx.http.base_url, MemoryStore())
    try:
        await carol.register(name("carol"), PASSWORD)
        await carol.connect()
        # 1. at creation: the server's answer adds mallory
        w.http.rewrite(
            "POST",
            "/v1/conversations",
            lambda req, body: {**body, "members": [*body["members"], w.mallory.account_id]},
        )
        with pytest.raises(UntrustedConversationError, match="not the direct conversation"):
            await w.alice.create_conversation([carol.username])

        # 2. on first sight: carol writes to alice; the server shows alice the conversation with
        # mallory in it
        def with_mallory(req: Any, body: Any) -> Any:
            if isinstance(body, dict) and carol.account_id in body.get("members", ()):
                return {**body, "members": [*body["members"], w.mallory.account_id]}
            return None

        # installed before carol creates it: her genesis reaches alice at once
        w.http.rewrite("GET", r"/v1/conversations/[A-Za-z0-9_-]{22}", with_mallory)
        cid = await carol.create_conversation([w.alice.username])
        await carol.send_text(cid, "hi alice, carol here")
        gone = await until(w.alice, ConversationUnavailable, lambda e: e.conversation_id == cid)
        assert "exactly this account and one other" in gone.reason
        with pytest.raises(UntrustedConversationError):
            await w.alice.send_text(cid, "hello?")

        # 3. an envelope from a non-member moved into the alice-bob conversation is dropped
        mcid = await mallory_messages_alice(w, "not for your chat with bob")
        await until(w.alice, MessageReceived, lambda e: e.conversation_id == mcid)
        frame = _frame_for(w.ws, mcid)
        forged = {
            **frame,
            "conversation_id": w.cid,
            "envelope_id": frame["envelope_id"][:-2] + "AA",
            "server_seq": 1000,
        }
        await w.ws.inject(forged, take_queue_seq=True)
        dropped = await until(
            w.alice, DecryptionFailed, lambda e: e.conversation_id == w.cid and e.code == "not_a_member"
        )
        assert dropped.sender_device_id == w.mallory.device_id
        assert w.mallory.device_id not in device_ids_encrypted_to(w)
        await genuine_conversation_still_works(w, "only us two")
    finally:
        await carol.close()


def _frame_for(ws: WsMitm, conversation_id: str) -> dict[str, Any]:
    """The envelope frame of ``conversation_id`` the relay passed to alice (already delivered)."""
    for f in ws.envelopes():
        if f.get("conversation_id") == conversation_id:
            return dict(f)
    raise AssertionError(f"no envelope of {conversation_id} went through the man in the middle")


# -- the transcript (docs/protocol/sync.md § 9) -----------------------------------------------------


def _relabel(w: World, mapping: dict[int, int]) -> None:
    """The server labels envelopes of alice's chat with bob at server_seq k as ``mapping[k]``, on
    the socket and in history pages alike (a consistent lie, as a malicious server would tell)."""
    _relabel_for(w.ws, w.http, w.cid, mapping)


def _relabel_for(ws: WsMitm, http: HostileHttp, cid: str, mapping: dict[int, int]) -> None:

    def one(item: dict[str, Any]) -> dict[str, Any]:
        seq = item.get("server_seq")
        return {**item, "server_seq": mapping[seq]} if seq in mapping else item

    def frame_rule(frame: dict[str, Any]) -> dict[str, Any] | None:
        if frame.get("type") == "envelope" and frame.get("conversation_id") == cid:
            return one(frame)
        return frame

    ws.down_rules.append(frame_rule)
    http.rewrite(
        "GET",
        f"/v1/conversations/{cid}/envelopes",
        lambda req, body: {**body, "envelopes": [one(e) for e in body["envelopes"]]},
    )


async def test_swapped_server_seqs_are_detected(world: World) -> None:
    """The server shows alice bob's next two messages in swapped positions. The second one's
    authenticated base already covers the position it is shown at (an impossible placement), and
    every later operation's transcript hash disagrees with alice's log: both are reported."""
    w = world
    _relabel(w, {4: 5, 5: 4})  # the genesis is at 1, the world's two messages at 2 and 3
    for text in ("one", "two"):
        await w.bob.send_text(w.cid, text)
        await until(w.alice, MessageReceived, lambda e, t=text: e.text == t)
    placed = await until(w.alice, ForkDetected, lambda e: e.conversation_id == w.cid)
    assert placed.server_seq == 4 and placed.sender_account_id == w.bob.account_id
    await w.bob.send_text(w.cid, "three")
    fork = await until(w.alice, ForkDetected, lambda e: e.conversation_id == w.cid)
    assert fork.server_seq == 6 and fork.sender_account_id == w.bob.account_id
    assert fork.message_ref is not None and "another history" in fork.reason
    # alice's next message carries her (different) transcript: bob detects it too
    await w.alice.send_text(w.cid, "four")
    assert (await until(w.bob, ForkDetected, lambda e: e.conversation_id == w.cid)).server_seq == 7


async def test_a_reused_server_seq_is_refused_not_taken_for_a_duplicate(world: World) -> None:
    """The server gives bob's second message the server_seq of his first: alice must not discard
    it silently as a redelivery."""
    w = world
    _relabel(w, {5: 4})
    await w.bob.send_text(w.cid, "first")
    await until(w.alice, MessageReceived, lambda e: e.text == "first")
    await w.bob.send_text(w.cid, "second")
    fork = await until(w.alice, ForkDetected, lambda e: e.conversation_id == w.cid)
    assert fork.server_seq == 4 and fork.message_ref is None and "another envelope" in fork.reason
    assert w.mallory.device_id not in device_ids_encrypted_to(w)


async def test_a_withheld_envelope_is_a_history_gap_and_later_messages_still_arrive(world: World) -> None:
    """The server drops bob's next message for alice, on the socket and in history pages: alice is
    told what is missing (after asking the server) and keeps receiving bob's later messages."""
    w = world
    w.ws.down_rules.append(
        lambda f: None if f.get("conversation_id") == w.cid and f.get("server_seq") == 4 else f
    )
    w.http.rewrite(
        "GET",
        f"/v1/conversations/{w.cid}/envelopes",
        lambda req, body: {**body, "envelopes": [e for e in body["envelopes"] if e.get("server_seq") != 4]},
    )
    for text in ("lost", "after the loss", "still here"):
        await w.bob.send_text(w.cid, text)
    gap = await until(w.alice, HistoryGap, lambda e: e.conversation_id == w.cid)
    assert gap.missing == (4,) and gap.held
    view = await w.alice.conversation(w.cid)  # the view shows the gap too
    assert view.missing == (4,) and len(view.held) == len(gap.held)
    received = [await until(w.alice, MessageReceived, lambda e: e.conversation_id == w.cid) for _ in range(2)]
    assert [e.text for e in received] == ["after the loss", "still here"]
    assert "lost" not in [m.text for m in w.alice.messages(w.cid)]


async def test_a_history_forked_between_two_devices_of_one_account_is_detected(
    world: World, live_server: LiveServer, make_mitm: Callable[[str], Awaitable[WsMitm]]
) -> None:
    """alice links a phone; the server shows the phone bob's next two messages in swapped
    positions and the desktop the true order. The phone's next message carries its transcript:
    the desktop (same account) and bob both detect the fork."""
    w = world
    phone_http, phone_ws = HostileHttp(), await make_mitm(live_server.ws_url)
    phone = await Client.create(
        live_server.base_url, MemoryStore(), http_transport=phone_http, ws_url=phone_ws.ws_url
    )
    try:
        assert await link(w.alice, phone, wait_s=WAIT) == w.alice.account_id
        await w.alice.finish_link()
        await phone.connect()
        _relabel_for(phone_ws, phone_http, w.cid, {4: 5, 5: 4})
        for text in ("one", "two"):
            await w.bob.send_text(w.cid, text)
            for device in (w.alice, phone):
                await until(device, MessageReceived, lambda e, t=text: e.text == t)
        # the phone notices the impossible placement itself; the desktop has seen nothing wrong
        assert (await until(phone, ForkDetected, lambda e: e.conversation_id == w.cid)).server_seq == 4
        assert not events_of(w.alice, ForkDetected)

        await phone.send_text(w.cid, "from the phone")
        on_desk = await until(w.alice, ForkDetected, lambda e: e.conversation_id == w.cid)
        assert on_desk.sender_account_id == w.alice.account_id and on_desk.server_seq == 6
        on_bob = await until(w.bob, ForkDetected, lambda e: e.conversation_id == w.cid)
        assert on_bob.server_seq == 6
    finally:
        await phone.close()
