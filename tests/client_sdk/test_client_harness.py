"""The client's protocol rules against the in-memory relay (tests/client_sdk/harness.py): no
network, no server. Fan-out, 409/410 handling, prekeys, device-list trust, identity changes,
gap filling, and the delivery socket's close codes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import outbox as outbox_rules
from saltline.client_sdk.core import prekeys as prekey_rules
from saltline.client_sdk.core.backoff import Backoff, BackoffPolicy
from saltline.client_sdk.core.events import (
    DeliveryGap,
    DeviceListChanged,
    DeviceRemoved,
    Disconnected,
    Event,
    IdentityChanged,
    MessageReceived,
    OwnDeviceLinked,
)
from saltline.client_sdk.core.prekeys import SPK_ROTATION_MS
from saltline.client_sdk.errors import AuthError, IdentityChangedError
from saltline.client_sdk.facets import inbound as inbound_facet
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto import device_list as dl
from saltline.crypto import private_state
from saltline.crypto.keys import AccountKey
from tests.client_sdk.harness import FakeRelay

URL = "http://relay.invalid"
PASSWORD = "a long passphrase"


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


async def _user(relay: FakeRelay, name: str, clock: Clock | None = None) -> Client:
    c = await Client.create(URL, MemoryStore(), http_transport=relay, clock=clock or Clock())
    await c.register(name, PASSWORD)
    return c


def _drain(c: Client) -> list[Event]:
    out = []
    out.extend(c._ctx.bus.drain())
    return out


def _texts(c: Client) -> list[str]:
    return [e.text for e in _drain(c) if isinstance(e, MessageReceived)]


async def _add_device(relay: FakeRelay, owner: Client, *, upload: bool = True, seed: bool = True) -> Client:
    """A second device of ``owner``'s account (what linking produces), without the provisioning
    round trip; ``seed``: with a history bundle of depth "none" (the membership snapshot of each
    conversation, as linking hands over)."""
    bundle = owner.linking.history_bundle("none") if seed else None
    new = await Client.create(URL, MemoryStore(), http_transport=relay)
    key = owner._ctx.account_key()
    state = new._ctx.state.with_account_key(key)
    current = relay.accounts[owner.account_id].current
    signed = dl.with_device_added(
        current, key, state.device_entry(current.content.root, 0, current.version + 1)
    )
    relay.accounts[owner.account_id].chain.append(signed)
    new._ctx.put_device(
        replace(new._ctx.device, state=state.encode(), username=owner.username, account_id=owner.account_id),
        state,
    )
    new.contacts.put_own_contact(signed)
    new._ctx.set_access_token(f"access.{new.device_id}", float("inf"))
    if bundle is not None:
        with new._ctx.transaction():
            new.linking.seed_history(bundle)
    if upload:
        await new.prekeys.upload_all()
    return new


async def test_fan_out_410_and_409_resend_with_the_same_envelope_id() -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "one")
    await relay.deliver(alice)
    assert _texts(alice) == ["one"]

    # alice gets a phone that has not published prekeys yet: bob's list is stale (410), then the
    # phone has no bundle, so the relay keeps answering 409 until it has one
    phone = await _add_device(relay, alice, upload=False)
    await bob.send_text(cid, "two")  # queued: it waits out a back-off, then tries again
    (pending,) = bob.store.outbox.outbox()
    assert pending.failed_reason is None and pending.next_attempt_ms > 0
    statuses = [r for r in relay.requests if r[0] == "POST" and r[1].endswith("/envelopes")]
    # the genesis, "one", then "two" and each re-encryption of it for the changed recipients
    assert len(statuses) == 3 + outbox_rules.MAX_REENCRYPTS
    await phone.prekeys.upload_all()
    assert await bob.flush_outbox() == 1
    last = relay.sends[-1]
    assert last["envelope_id"] == pending.envelope_id  # the same envelope, re-encrypted
    assert {c["device_id"] for c in last["ciphertexts"]} == {alice.device_id, phone.device_id}
    assert last["device_list_versions"] == {alice.account_id: 2, bob.account_id: 1}
    for device in (alice, phone):
        await relay.deliver(device)
        assert _texts(device) == ["two"]

    # alice's phone -> bob and to alice's desktop, as sent by her
    await phone.send_text(cid, "from the phone")
    await relay.deliver(alice)
    (event,) = [e for e in _drain(alice) if isinstance(e, MessageReceived)]
    assert event.sent_by_me and event.sender_device_id == phone.device_id
    await relay.deliver(bob)
    assert _texts(bob) == ["from the phone"]


async def test_prekey_replenishment() -> None:
    relay = FakeRelay()
    alice = await _user(relay, "alice")
    assert len(relay.keys[alice.device_id].one_time) == prekey_rules.BATCH
    assert await alice.replenish_prekeys() == 0
    del relay.keys[alice.device_id].one_time[: prekey_rules.BATCH - 5]  # claimed by others
    assert await alice.replenish_prekeys() == prekey_rules.BATCH - 5
    assert len(relay.keys[alice.device_id].one_time) == prekey_rules.BATCH
    assert len(set(relay.keys[alice.device_id].one_time)) == prekey_rules.BATCH


async def test_signed_prekey_rotation_keeps_the_previous_one_for_in_flight_sessions() -> None:
    relay = FakeRelay()
    clock = Clock()
    alice, bob = await _user(relay, "alice", clock), await _user(relay, "bob")
    first = alice._ctx.state.signed_prekey.key_id
    published = relay.keys[alice.device_id].signed_prekey, relay.keys[alice.device_id].last_resort
    assert not await alice.rotate_signed_prekey_if_due()
    clock.ms += SPK_ROTATION_MS - 1
    assert not await alice.rotate_signed_prekey_if_due()

    # bob starts a session against the current signed prekey; alice rotates before receiving it
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "in flight")
    clock.ms += 1
    assert await alice.rotate_signed_prekey_if_due()
    state = alice._ctx.state
    assert state.signed_prekey.key_id != first
    assert state.previous_signed_prekey is not None and state.previous_signed_prekey.key_id == first
    now_published = relay.keys[alice.device_id].signed_prekey, relay.keys[alice.device_id].last_resort
    assert now_published[0] != published[0] and now_published[1] != published[1]
    assert alice.store.prekeys.get_prekey_meta().signed_prekey_rotated_at_ms == clock.ms
    await relay.deliver(alice)
    assert _texts(alice) == ["in flight"]
    assert not await alice.rotate_signed_prekey_if_due()

    clock.ms += SPK_ROTATION_MS
    assert await alice.rotate_signed_prekey_if_due()
    assert alice._ctx.state.find_signed_prekey(first) is None  # dropped at the next rotation


async def test_a_failed_rotation_upload_keeps_the_old_keys() -> None:
    relay = FakeRelay()
    clock = Clock()
    alice = await _user(relay, "alice", clock)
    before = alice._ctx.device.state
    clock.ms += SPK_ROTATION_MS
    alice._ctx._access = "access.unknown-device"
    alice._ctx.put_device(replace(alice._ctx.device, refresh_token="refresh.unknown"))
    with pytest.raises(Exception):  # noqa: B017 - whatever the failed upload raises
        await alice.rotate_signed_prekey_if_due()
    stored = alice.store.identity.get_device()
    assert stored is not None and private_state.decode(stored.state) == private_state.decode(before)
    assert alice._ctx.state == private_state.decode(before)


def _rekeyed_chain(relay: FakeRelay, victim: Client) -> list[dl.SignedDeviceList]:
    """The account re-registered under a new account key (same username and device)."""
    key = AccountKey.generate()
    entry = victim._ctx.state.device_entry(key.public_key, 0)
    v1 = dl.first(key, victim.username, [entry])
    return [v1, dl.successor(v1, key, [entry])]


async def test_identity_change_warn_continues() -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "before")
    relay.replace_account_key(alice.account_id, _rekeyed_chain(relay, alice))
    await bob.send_text(cid, "after")  # 410 -> the new key is seen -> warn: adopted, sent
    events = _drain(bob)
    (changed,) = [e for e in events if isinstance(e, IdentityChanged)]
    assert (changed.account_id, changed.policy, changed.blocked) == (alice.account_id, "warn", False)
    assert not bob.store.outbox.outbox()
    contact = bob.store.device_lists.get_contact(alice.account_id)
    assert contact is not None and not contact.verified
    await relay.deliver(alice)
    assert _texts(alice) == ["before", "after"]


async def test_identity_change_block_holds_only_that_conversation() -> None:
    relay = FakeRelay()
    alice, bob, carol = await _user(relay, "alice"), await _user(relay, "bob"), await _user(relay, "carol")
    with_alice = await bob.create_conversation(["alice"])
    with_carol = await bob.create_conversation(["carol"])
    await bob.set_trust_policy("alice", "block")
    relay.replace_account_key(alice.account_id, _rekeyed_chain(relay, alice))

    with pytest.raises(IdentityChangedError):
        await bob.send_text(with_alice, "held")
    (changed,) = [e for e in _drain(bob) if isinstance(e, IdentityChanged)]
    assert changed.blocked and changed.policy == "block"
    # the held item is first in the outbox, yet a message to another conversation still goes out
    await bob.send_text(with_carol, "to carol")
    assert [i.conversation_id for i in bob.store.outbox.outbox()] == [with_alice]
    await relay.deliver(carol)
    assert _texts(carol) == ["to carol"]
    with pytest.raises(IdentityChangedError):
        await bob.flush_outbox()
    # only the genesis, sent before the key changed
    assert [e["server_seq"] for e in relay.queues.get(alice.device_id, [])] == [1]

    await bob.verify_contact("alice")
    assert await bob.flush_outbox() == 1
    await relay.deliver(alice)
    assert _texts(alice) == ["held"]


async def test_injected_device_in_a_list_is_refused() -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    rogue = await Client.create(URL, MemoryStore(), http_transport=relay)
    signed = relay.accounts[alice.account_id].current
    c = signed.content
    entry = rogue._ctx.state.device_entry(c.root, 0, c.version + 1)
    forged = dl.DeviceList.create(
        c.version + 1, signed.hash(), c.account_key, c.username, [*c.devices, entry]
    )
    relay.accounts[alice.account_id].chain.append(dl.SignedDeviceList(forged, signed.signature))
    with pytest.raises(Exception, match="refused"):
        await bob.send_text(cid, "not to the rogue")
    assert all(ct["device_id"] != rogue.device_id for s in relay.sends for ct in s["ciphertexts"])


async def test_gap_marker_and_seq_jump_are_filled_from_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbound_facet, "HISTORY_PAGE", 2)  # exercise next_after paging
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "m0")
    await relay.deliver(alice)
    assert _texts(alice) == ["m0"]
    for i in range(1, 6):
        await bob.send_text(cid, f"m{i}")
    relay.drop_queue(alice.device_id)  # retention dropped them: a gap marker instead
    await relay.deliver(alice)
    events = _drain(alice)
    assert any(isinstance(e, DeliveryGap) for e in events)
    assert [e.text for e in events if isinstance(e, MessageReceived)] == [f"m{i}" for i in range(1, 6)]
    assert alice.store.cursors.get_server_seq(cid) == 7  # the genesis at 1, m0..m5 at 2..7
    assert not relay.queues[alice.device_id]

    # a silent hole: the next queued envelope jumps over two server_seq values
    for i in range(6, 9):
        await bob.send_text(cid, f"m{i}")
    del relay.queues[alice.device_id][:2]
    await relay.deliver(alice)
    assert _texts(alice) == ["m6", "m7", "m8"]
    assert [m.text for m in alice.messages(cid)] == [f"m{i}" for i in range(9)]  # once each
    history = [r for r in relay.requests if r[0] == "GET" and r[1].endswith("/envelopes")]
    assert len(history) >= 4


async def test_close_codes_decide_reauth_and_removal() -> None:
    from websockets.asyncio.server import serve

    relay = FakeRelay()
    alice = await _user(relay, "alice")
    closes = [(1011, "4003 in the reason means nothing"), (4003, "x"), (4002, "y")]
    tokens: list[str] = []

    async def handler(ws: Any) -> None:
        tokens.append(await ws.recv())
        code, reason = closes.pop(0)
        await ws.close(code, reason)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        alice.delivery._ws_url = f"ws://127.0.0.1:{port}"
        with pytest.raises(AuthError):  # the device was removed (4002): no socket will be ready
            await alice.connect()
        await asyncio.wait_for(alice.delivery._socket_task, 10)  # type: ignore[arg-type]
    assert not closes
    refreshes = [r for r in relay.requests if r == ("POST", "/v1/auth/refresh")]
    assert len(refreshes) == 1  # only after the 4003 close, not after the reason text
    events = _drain(alice)
    assert [type(e) for e in events] == [Disconnected, Disconnected, DeviceRemoved]
    assert alice.delivery.socket is not None and alice.delivery.socket.fatal is not None


async def test_link_follow_up_merges_only_what_the_new_device_lacks() -> None:
    """The follow-up bundle (docs/protocol/sync.md § 8) adds the operations the new device does
    not hold (sent before it was in the device list), skips those it received itself, and
    merging it again changes nothing."""
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "one")
    await relay.deliver(alice)
    first = alice.linking.history_bundle("all")
    sent = {
        c["conversation_id"]: (c["floor_seq"], frozenset(o["seq"] for o in c["ops"]))
        for c in first["conversations"]
    }
    await bob.send_text(cid, "two")  # while linking: no copy for the phone
    await relay.deliver(alice)
    phone = await _add_device(relay, alice, seed=False)
    with phone._ctx.transaction():
        phone.linking.seed_history(first)
    await bob.send_text(cid, "three")  # the phone is in the list now
    await relay.deliver(alice)
    await relay.deliver(phone)
    assert _texts(phone) == ["three"]
    assert [m.text for m in (await phone.conversation(cid)).messages] == ["one"]  # "three" is held
    follow_up = alice.linking.history_bundle("all", sent)
    # the genesis is at 1 and "one" at 2: the follow-up carries "two" and "three"
    assert [o["seq"] for c in follow_up["conversations"] for o in c["ops"]] == [3, 4]
    assert alice.linking.history_bundle("all", {cid: (0, frozenset({1, 2, 3, 4}))})["conversations"] == []
    await phone.linking.merge_follow_up(follow_up)
    await phone.linking.merge_follow_up(follow_up)
    assert _texts(phone) == ["two"]  # announced once; "three" was already there
    assert [m.text for m in phone.messages(cid)] == ["one", "two", "three"]
    assert (await phone.conversation(cid)) == (await alice.conversation(cid))


async def test_a_device_list_older_than_the_bound_is_fetched_again_before_sending() -> None:
    """Rule 7 of saltline.client_sdk.core.trust: a stale verified list is refreshed before a send (so a
    removal the server did not show once does not last); a fresh one is not asked for again."""
    from saltline.client_sdk.core.trust import DEVICE_LIST_MAX_AGE_MS

    relay, clock = FakeRelay(), Clock()
    alice, bob = await _user(relay, "alice", clock), await _user(relay, "bob", clock)
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "one")

    def chain_fetches() -> int:
        return sum(
            1
            for m, p in relay.requests
            if m == "GET" and p == f"/v1/accounts/{alice.account_id}/device-list/chain"
        )

    before = chain_fetches()
    clock.ms += DEVICE_LIST_MAX_AGE_MS - 1
    await bob.send_text(cid, "two")
    assert chain_fetches() == before  # still fresh
    clock.ms += 2
    await bob.send_text(cid, "three")
    assert chain_fetches() == before + 1
    contact = bob.store.device_lists.get_contact(alice.account_id)
    assert contact is not None and contact.updated_at_ms == clock.ms  # verified as current now
    await bob.send_text(cid, "four")
    assert chain_fetches() == before + 1
    await relay.deliver(alice)
    assert _texts(alice) == ["one", "two", "three", "four"]


async def test_a_conversations_kind_and_a_direct_conversations_accounts_never_change() -> None:
    """What the server later says of a known conversation cannot turn a group into a direct
    conversation (whose accounts would then be pinned) nor change a direct one's accounts: the
    stored record stays, with a MembershipMismatch event."""
    from saltline.client_sdk.core import api
    from saltline.client_sdk.core.events import MembershipMismatch
    from saltline.client_sdk.errors import UntrustedConversationError

    relay = FakeRelay()
    alice, bob, carol = await _user(relay, "alice"), await _user(relay, "bob"), await _user(relay, "carol")
    group = await bob.create_conversation(["alice", "carol"])
    direct = await bob.create_conversation(["alice"])
    _drain(bob)
    known_group, known_direct = (
        bob.store.conversations.get_conversation(group),
        bob.store.conversations.get_conversation(direct),
    )
    assert known_group is not None and known_direct is not None
    for cid, kind, members in (
        (group, "direct", (bob.account_id, carol.account_id)),
        (direct, "direct", (bob.account_id, carol.account_id)),
        (direct, "group", (bob.account_id, alice.account_id, carol.account_id)),
    ):
        kept = bob.conversations.put(api.ConversationInfo(cid, kind, members, 0, 0))
        assert kept == bob.store.conversations.get_conversation(cid)
    assert bob.store.conversations.get_conversation(group) == known_group
    assert bob.store.conversations.get_conversation(direct) == known_direct
    await bob._ctx.flush()
    mismatches = [e for e in _drain(bob) if isinstance(e, MembershipMismatch)]
    assert [e.conversation_id for e in mismatches] == [group, direct, direct]
    # a direct conversation first seen with three accounts, or without this account, is refused
    for members in (
        (bob.account_id, alice.account_id, carol.account_id),
        (alice.account_id, carol.account_id),
    ):
        with pytest.raises(UntrustedConversationError):
            bob.conversations.put(api.ConversationInfo("bmV3IGNvbnZlcnNhdGlvbg", "direct", members, 0, 0))


async def test_filling_gaps_pages_through_the_whole_conversation_list() -> None:
    """delivery.md § 4.4: the client follows next_after until it is null, so a conversation on a
    later page (for example one someone created among many groups containing this account) is
    found and its history fetched."""
    from saltline.client_sdk.core.events import ConversationAdded

    relay = FakeRelay()
    relay.list_page = 2
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cids = [await bob.create_conversation(["alice"])]
    for i in range(4):
        carol = await _user(relay, f"carol{i}")
        cids.append(await carol.create_conversation(["alice"]))
        await carol.send_text(cids[-1], f"hello from carol{i}")
    await alice.fill_gaps()
    added = {e.conversation_id for e in _drain(alice) if isinstance(e, ConversationAdded)}
    assert set(cids) <= added
    pages = [p for m, p in relay.requests if m == "GET" and p == "/v1/conversations"]
    assert len(pages) == 3  # 5 conversations, 2 a page
    assert sorted(m.text for c in cids[1:] for m in alice.messages(c)) == [
        f"hello from carol{i}" for i in range(4)
    ]


async def test_concurrent_refreshes_of_a_changed_list_announce_it_once_and_keep_the_newest_pin() -> None:
    # A pushed list, a send and this device's own change may refresh the same account at once:
    # each reads the pin, then awaits the chain. The one that commits second must not verify
    # against the pin it read before (a second DeviceListChanged, a second OwnDeviceLinked).
    relay = FakeRelay()
    desk = await _user(relay, "alice")
    phone = await _add_device(relay, desk)
    _drain(desk)
    relay.meet_at_chain(3)
    pins = await asyncio.gather(*(desk.contacts.refresh(desk.account_id) for _ in range(3)))
    assert {dl.SignedDeviceList.decode(p.signed_list).version for p in pins} == {2}
    await desk._ctx.flush()
    events = _drain(desk)
    assert [(e.version, e.added) for e in events if isinstance(e, DeviceListChanged)] == [
        (2, (phone.device_id,))
    ]
    assert [e.device_id for e in events if isinstance(e, OwnDeviceLinked)] == [phone.device_id]
    pinned = desk.store.device_lists.get_contact(desk.account_id)
    assert pinned is not None and dl.SignedDeviceList.decode(pinned.signed_list).version == 2


async def test_a_flush_that_raises_arms_the_resend_timer_with_a_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A failure outside any one item's attempt (here: an I/O error around it) leaves the item
    # queued; the outbox tries again by itself, after a back-off that grows while the failure
    # repeats, and sends it once the failure is gone.
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    bob._ctx.jitter = lambda: 0.5
    armed: list[float | None] = []
    real_arm = bob.outbound._arm
    monkeypatch.setattr(bob.outbound, "_arm", lambda delay: (armed.append(delay), real_arm(delay))[1])
    real_send = bob.outbound._send_item
    failures = 3
    sent = asyncio.Event()

    async def flaky(item: Any) -> Any:
        nonlocal failures
        if failures > 0:
            failures -= 1
            raise OSError("disk I/O error")
        result = await real_send(item)
        sent.set()
        return result

    monkeypatch.setattr(bob.outbound, "_send_item", flaky)
    bob.outbound._flush_failures = Backoff(BackoffPolicy(base_s=0.001, cap_s=0.004))
    with pytest.raises(OSError):
        await bob.send_text(cid, "kept")
    assert [i.conversation_id for i in bob.store.outbox.outbox()] == [cid]
    await asyncio.wait_for(sent.wait(), 10)
    # three failures: back-offs of half the growing ceiling (1, 2, 4 ms), then no timer is needed
    assert armed[:3] == [0.0005, 0.001, 0.002]
    assert bob.outbound._flush_failures.attempt == 0
    assert not bob.store.outbox.outbox()
    await relay.deliver(alice)
    assert _texts(alice) == ["kept"]
