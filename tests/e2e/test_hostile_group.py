"""Attacker tests for group membership (docs/protocol/sync.md § 5.7): the server lies about a
group's members, routes a non-member's envelope into it, or keeps a removed member. Real SDK
clients, the real server on real sockets, alice behind the man in the middle
(``tests/e2e/hostile_world.py``). Each test asserts that nothing is encrypted to the attacker and
the event the user sees. Waits are on events, never on sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.events import (
    DecryptionFailed,
    MembershipChanged,
    MembershipMismatch,
    MessageReceived,
    MessageSent,
    OperationRejected,
    UntrustedDeviceList,
)
from saltline.client_sdk.errors import NotAllowedError, UntrustedDeviceListError
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto.keys import AccountKey, b64decode, b64encode
from tests.e2e.hostile_world import (
    PASSWORD,
    World,
    device_ids_encrypted_to,
    mallory_messages_alice,
    name,
    until,
)
from tests.hostile import chain_body, forged_chain, forged_device, since_of

pytestmark = pytest.mark.e2e


@pytest.fixture
async def carol(world: World) -> AsyncIterator[Client]:
    c = await Client.create(world.alice._ctx.http.base_url, MemoryStore())
    await c.register(name("carol"), PASSWORD)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()


async def _group(w: World, carol: Client) -> str:
    """alice (admin), bob and carol; every one of them has received a first message."""
    gid = await w.alice.create_conversation([w.bob.username, carol.username])
    await w.alice.send_text(gid, "welcome to the group")
    for c in (w.bob, carol):
        await until(
            c, MessageReceived, lambda e: e.conversation_id == gid and e.text == "welcome to the group"
        )
    return gid


async def test_a_ghost_member_the_server_lists_in_a_group_gets_nothing(world: World, carol: Client) -> None:
    w = world
    gid = await _group(w, carol)
    # the server's answer to a membership request lists mallory as well: alice's copy of the
    # server's list now names her
    w.http.rewrite(
        "POST",
        f"/v1/conversations/{gid}/members",
        lambda req, body: {**body, "members": [*body["members"], w.mallory.account_id]},
    )
    dave = await Client.create(w.alice._ctx.http.base_url, MemoryStore())
    try:
        await dave.register(name("dave"), PASSWORD)
        await w.alice.add_member(gid, dave.username)
        mismatch = await until(w.alice, MembershipMismatch, lambda e: e.conversation_id == gid)
        assert w.mallory.account_id in mismatch.server_members
        assert w.mallory.account_id not in mismatch.members
        assert dave.account_id in mismatch.members
        await w.alice.send_text(gid, "for members only")
        for c in (w.bob, carol):
            await until(c, MessageReceived, lambda e: e.text == "for members only")
        assert w.mallory.device_id not in device_ids_encrypted_to(w)
    finally:
        await dave.close()


async def test_an_operation_of_a_non_member_moved_into_a_group_is_dropped(
    world: World, carol: Client
) -> None:
    w = world
    gid = await _group(w, carol)
    mcid = await mallory_messages_alice(w, "let me into your group")
    await until(w.alice, MessageReceived, lambda e: e.conversation_id == mcid)
    frame = next(dict(f) for f in w.ws.envelopes() if f.get("conversation_id") == mcid)
    forged: dict[str, Any] = {
        **frame,
        "conversation_id": gid,
        "envelope_id": frame["envelope_id"][:-2] + "AA",
        # the next position of the group
        "server_seq": w.alice.conversations.state(w.alice.conversations.known(gid)).received_seq + 1,  # type: ignore[arg-type]
    }
    await w.ws.inject(forged, take_queue_seq=True)
    dropped = await until(
        w.alice, DecryptionFailed, lambda e: e.conversation_id == gid and e.code == "not_a_member"
    )
    assert dropped.sender_device_id == w.mallory.device_id
    assert [m.text for m in w.alice.messages(gid)] == ["welcome to the group"]
    assert w.mallory.device_id not in device_ids_encrypted_to(w)


async def test_a_removed_member_kept_by_the_server_cannot_write_or_read(world: World, carol: Client) -> None:
    w = world
    gid = await _group(w, carol)
    # alice removes bob with the membership operation; the (malicious) server keeps bob in its list
    removal = await w.alice.outbound.send_op(gid, sync.MembershipChange(b64decode(w.bob.account_id), False))
    await until(w.alice, MessageSent, lambda e: e.envelope_id == removal)
    # (the group's creation also changed its membership: wait for the change that removes bob)
    await until(
        w.bob, MembershipChanged, lambda e: e.conversation_id == gid and w.bob.account_id not in e.members
    )
    assert w.bob.account_id not in (await w.bob.conversation(gid)).members
    with pytest.raises(NotAllowedError):  # an honest client refuses to write
        await w.bob.send_text(gid, "still here?")
    # a hostile client writes anyway, with its removal in its causal past
    w.bob.conversations.check_may_compose = lambda state, body: None  # type: ignore[method-assign]
    envelope_id = await w.bob.send_text(gid, "after my removal")
    rejected = await until(w.alice, OperationRejected, lambda e: e.envelope_id == envelope_id)
    assert rejected.reason == "not_a_member" and rejected.account_id == w.bob.account_id
    assert "after my removal" not in [m.text for m in w.alice.messages(gid)]
    assert "after my removal" not in [m.text for m in (await w.alice.conversation(gid)).messages]
    # and what alice writes now is not encrypted to bob (the server still lists him: reported)
    before = device_ids_encrypted_to(w)
    assert w.bob.device_id in before  # the removal itself went to bob
    w.http.requests.clear()
    w.ws.to_server.clear()
    await w.alice.send_text(gid, "after bob left")
    mismatch = await until(w.alice, MembershipMismatch, lambda e: e.conversation_id == gid)
    assert w.bob.account_id in mismatch.server_members and w.bob.account_id not in mismatch.members
    assert w.bob.device_id not in device_ids_encrypted_to(w)


async def test_a_member_presented_under_another_key_than_the_genesis_names_is_refused(
    world: World, carol: Client
) -> None:
    """bob creates a group with alice and carol (his genesis names carol's account key); alice has
    never met carol and the server shows her a list for carol's account signed by a key of its
    own: alice pins nothing and encrypts nothing to the server's devices."""
    w = world
    fake_key = AccountKey.generate()
    fake_device = forged_device()
    chain = forged_chain(fake_key, carol.username, [fake_device])
    w.http.rewrite(
        "GET",
        f"/v1/accounts/{carol.account_id}/device-list/chain",
        lambda req, body: chain_body(chain, since_of(req)),
    )
    gid = await w.bob.create_conversation([w.alice.username, carol.username])
    await w.bob.send_text(gid, "hi both")
    await until(w.alice, MessageReceived, lambda e: e.text == "hi both")
    with pytest.raises(UntrustedDeviceListError):
        await w.alice.send_text(gid, "hello carol?")
    refused = await until(w.alice, UntrustedDeviceList, lambda e: e.account_id == carol.account_id)
    assert "membership names" in refused.reason
    assert w.alice.store.device_lists.get_contact(carol.account_id) is None  # not pinned
    assert b64encode(fake_device.device_id) not in device_ids_encrypted_to(w)
