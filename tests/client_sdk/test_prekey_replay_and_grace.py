"""Replay of initial messages that used a reusable (last-resort or signed) prekey, and the grace
period of replaced prekeys (docs/protocol/session-setup.md § 3.1 and § 6.2).

Deterministic: injected clocks and seeded randomness, no sleeps."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core.events import DecryptionFailed, Event, MessageReceived
from saltline.client_sdk.core.prekeys import GRACE_MS as PREKEY_GRACE_MS
from saltline.client_sdk.core.prekeys import SPK_ROTATION_MS
from saltline.client_sdk.errors import DecryptError, ReplayedPreKeyMessageError
from saltline.client_sdk.stores.base import Store
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import MIGRATIONS, SqliteStore
from saltline.crypto import device_list as dl
from saltline.crypto import private_state
from saltline.crypto.keys import AccountKey
from saltline.crypto.x3dh import InitialHeader, PreKeyBundle
from tests.client_sdk.harness import FakeRelay

URL = "http://relay.invalid"
PASSWORD = "a long passphrase"
KEY = bytes(range(32))


def det_rng(seed: bytes) -> Callable[[int], bytes]:
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


# -- the sans-I/O core -------------------------------------------------------------------------------


def _device(name: str) -> tuple[private_state.DeviceState, dl.DeviceEntry]:
    rng = det_rng(name.encode())
    key = AccountKey.generate(rng)
    state = private_state.generate_device(account_key=key, one_time_prekeys=1, rng=rng)
    return state, state.device_entry(key.public_key, 1)


ALICE, ALICE_ENTRY = _device("alice")
BOB, BOB_ENTRY = _device("bob")
AD = b"envelope associated data"


def _initial(sender_seed: bytes, opk: str = "last_resort", bob: private_state.DeviceState = BOB) -> bytes:
    """An initial message from alice to ``bob``, with the last-resort, a one-time or no prekey."""
    other = {
        "last_resort": bob.last_resort_prekey_public(),
        "one_time": bob.one_time_prekeys_public()[0],
        "none": None,
    }[opk]
    bundle = PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, bob.dh_key.public_key, bob.signed_prekey_public(), other
    )
    enc = msg.encrypt_to_device(
        msg.identity_keys(ALICE), None, bundle, BOB_ENTRY, msg.pad(b"hi"), AD, det_rng(sender_seed)
    )
    return enc.ciphertext


def _header(ciphertext: bytes) -> InitialHeader:
    return InitialHeader.decode(ciphertext[2 : 2 + 128])


def test_reusable_prekey_use_names_the_last_resort_or_the_signed_prekey() -> None:
    lr, otk, none = _initial(b"1"), _initial(b"2", "one_time"), _initial(b"3", "none")
    lr_use = msg.reusable_prekey_use(_header(lr))
    assert lr_use is not None and lr_use[0] == BOB.last_resort_prekey.key_id
    assert lr_use[1] == msg.seen_base_key_digest(lr_use[0], bytes(_header(lr).ephemeral_key))
    assert msg.reusable_prekey_use(_header(otk)) is None  # deleted on use: cannot be replayed
    none_use = msg.reusable_prekey_use(_header(none))
    assert none_use is not None and none_use[0] == BOB.signed_prekey.key_id
    # the digest binds the prekey id and the base key
    base = bytes(_header(lr).ephemeral_key)
    assert len({msg.seen_base_key_digest(2, base), msg.seen_base_key_digest(1, base)}) == 2


def test_a_replayed_last_resort_message_is_refused_and_another_base_key_accepted() -> None:
    seen: set[tuple[int, bytes]] = set()

    def has(prekey_id: int, digest: bytes) -> bool:
        return (prekey_id, digest) in seen

    first = _initial(b"first")
    dec = msg.decrypt_from_device(BOB, [], first, AD, ALICE_ENTRY, det_rng(b"r"), has)
    assert msg.unpad(dec.padded) == b"hi" and dec.reusable_prekey_use is not None
    assert dec.one_time_prekey_id is None
    seen.add(dec.reusable_prekey_use)  # what the client does in the session's transaction

    # the same message again, with no session for its base key (e.g. the session was deleted)
    with pytest.raises(ReplayedPreKeyMessageError, match="replayed initial message"):
        msg.decrypt_from_device(BOB, [], first, AD, ALICE_ENTRY, det_rng(b"r"), has)
    assert issubclass(ReplayedPreKeyMessageError, DecryptError)
    # with the session held, it is routed to it (the initiator's later messages carry the header)
    with pytest.raises(DecryptError) as duplicate:
        msg.decrypt_from_device(BOB, [dec.session], first, AD, ALICE_ENTRY, det_rng(b"r"), has)
    assert not isinstance(duplicate.value, ReplayedPreKeyMessageError)

    # a different initiator base key against the same last-resort prekey is a new session
    second = _initial(b"second")
    assert _header(second).one_time_prekey_id == _header(first).one_time_prekey_id
    dec2 = msg.decrypt_from_device(BOB, [dec.session], second, AD, ALICE_ENTRY, det_rng(b"r"), has)
    assert dec2.base_key != dec.base_key and dec2.reusable_prekey_use not in seen


@settings(max_examples=25, deadline=None)
@given(
    seeds=st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=5, unique=True),
    opk=st.sampled_from(["last_resort", "none"]),
)
def test_each_base_key_is_accepted_exactly_once(seeds: list[bytes], opk: str) -> None:
    """Property: over any sequence of deliveries (each message twice), every distinct base key
    sets up exactly one session and every repeat is refused as a replay."""
    seen: set[tuple[int, bytes]] = set()
    accepted: list[bytes] = []
    for seed in [*seeds, *seeds]:
        ciphertext = _initial(seed, opk)
        try:
            dec = msg.decrypt_from_device(
                BOB, [], ciphertext, AD, ALICE_ENTRY, det_rng(b"r"), lambda i, d: (i, d) in seen
            )
        except ReplayedPreKeyMessageError:
            assert bytes(_header(ciphertext).ephemeral_key) in accepted
            continue
        assert dec.reusable_prekey_use is not None
        seen.add(dec.reusable_prekey_use)
        accepted.append(dec.base_key)
    assert len(accepted) == len(set(accepted)) == len(seeds)


# -- the stores ---------------------------------------------------------------------------------------


def _stores(tmp_path: Path) -> list[tuple[str, Callable[[], Store], Callable[[Store], None]]]:
    memory = MemoryStore()
    return [
        ("memory", lambda: memory, lambda s: None),
        ("sqlite-plain", lambda: SqliteStore.open(tmp_path / "plain.db"), lambda s: s.close()),  # type: ignore[attr-defined]
        ("sqlite-encrypted", lambda: SqliteStore.open(tmp_path / "enc.db", key=KEY), lambda s: s.close()),  # type: ignore[attr-defined]
    ]


def test_store_seen_set_survives_reopen_rolls_back_and_is_pruned(tmp_path: Path) -> None:
    a, b = msg.seen_base_key_digest(2, b"A" * 32), msg.seen_base_key_digest(2, b"B" * 32)
    c = msg.seen_base_key_digest(7, b"C" * 32)
    for _name, open_store, close in _stores(tmp_path):
        store = open_store()
        store.prekeys.add_seen_base_key(2, a)
        store.prekeys.add_seen_base_key(2, a)  # idempotent
        store.prekeys.add_seen_base_key(7, c)
        with pytest.raises(RuntimeError), store.transaction():
            store.prekeys.add_seen_base_key(2, b)
            raise RuntimeError("rolled back")
        close(store)
        store = open_store()  # a restart
        assert store.prekeys.has_seen_base_key(2, a) and store.prekeys.has_seen_base_key(7, c)
        assert not store.prekeys.has_seen_base_key(2, b)
        assert not store.prekeys.has_seen_base_key(7, a)  # bound to the prekey id
        assert store.prekeys.drop_seen_base_keys({7, 9}) == 1
        assert not store.prekeys.has_seen_base_key(2, a) and store.prekeys.has_seen_base_key(7, c)
        assert store.prekeys.drop_seen_base_keys(()) == 1
        assert not store.prekeys.has_seen_base_key(7, c)
        close(store)


def test_encrypted_store_keeps_no_digest_in_clear(tmp_path: Path) -> None:
    import sqlite3

    digest = msg.seen_base_key_digest(2, b"A" * 32)
    for name, key in (("plain.db", None), ("enc.db", KEY)):
        with SqliteStore.open(tmp_path / name, key=key) as store:
            store.prekeys.add_seen_base_key(2, digest)
        conn = sqlite3.connect(tmp_path / name)
        try:
            ((tag,),) = conn.execute("SELECT tag FROM seen_base_keys").fetchall()
        finally:
            conn.close()
        assert (bytes(tag) == digest) is (key is None)


def test_v3_database_gets_the_seen_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with SqliteStore.open(path, key=KEY, migrations=MIGRATIONS[:3]) as store:  # as the v3 SDK wrote it
        store.prekeys.put_prekey_meta(store.prekeys.get_prekey_meta())
    with SqliteStore.open(path, key=KEY) as store:
        assert not store.prekeys.has_seen_base_key(1, b"x" * 32)
        store.prekeys.add_seen_base_key(1, b"x" * 32)
        assert store.prekeys.has_seen_base_key(1, b"x" * 32)


# -- the client ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


def _drain(c: Client) -> list[Event]:
    out = []
    out.extend(c._ctx.bus.drain())
    return out


async def _user(
    relay: FakeRelay, name: str, store: Store | None = None, clock: Clock | None = None
) -> Client:
    c = await Client.create(URL, store or MemoryStore(), http_transport=relay, clock=clock or Clock())
    await c.register(name, PASSWORD)
    return c


def _take_frame(relay: FakeRelay, device_id: str) -> dict[str, Any]:
    (frame,) = relay.queues[device_id]
    return dict(frame)


async def _replay(relay: FakeRelay, target: Client, frame: dict[str, Any], server_seq: int) -> None:
    """The server hands ``frame`` to ``target`` again (new queue and conversation positions:
    neither is authenticated)."""
    seq = relay.next_queue_seq[target.device_id] + 1
    relay.next_queue_seq[target.device_id] = seq
    relay.queues[target.device_id].append({**frame, "queue_seq": seq, "server_seq": server_seq})
    await relay.deliver(target)


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_client_refuses_a_replayed_last_resort_message_across_a_restart(
    tmp_path: Path, store_kind: str
) -> None:
    relay = FakeRelay()
    path = tmp_path / "alice.db"

    def alice_store() -> Store:
        return MemoryStore() if store_kind == "memory" else SqliteStore.open(path, key=KEY)

    alice, bob = await _user(relay, "alice", alice_store()), await _user(relay, "bob")
    relay.keys[alice.device_id].one_time.clear()  # exhausted: the bundle carries the last-resort prekey
    cid = await bob.create_conversation(["alice"])  # its genesis: a sequenced operation, not a text
    frame = _take_frame(relay, alice.device_id)
    await relay.deliver(alice)
    (first,) = alice.store.sessions.sessions_for(bob.device_id)
    lr_id = alice._ctx.state.last_resort_prekey.key_id
    digest = msg.seen_base_key_digest(lr_id, first.base_key)
    assert alice.store.prekeys.has_seen_base_key(lr_id, digest)

    if store_kind == "sqlite":  # restart: the seen set comes back from the file
        store = alice.store
        await alice.close()
        store.close()  # type: ignore[attr-defined]
        alice = await Client.create(URL, alice_store(), http_transport=relay, clock=Clock())
        assert alice.store.prekeys.has_seen_base_key(lr_id, digest)

    # alice loses that session (the case the seen set is for), then starts a new one with bob
    alice.store.sessions.delete_sessions(bob.device_id)
    await alice.send_text(cid, "a new session")
    (existing,) = alice.store.sessions.sessions_for(bob.device_id)
    assert existing.base_key != first.base_key
    _drain(alice)

    await _replay(relay, alice, frame, server_seq=99)
    (failed,) = [e for e in _drain(alice) if isinstance(e, DecryptionFailed)]
    assert "replayed initial message" in failed.reason and failed.sender_device_id == bob.device_id
    assert alice.store.sessions.sessions_for(bob.device_id) == [existing]  # untouched
    assert relay.queues[alice.device_id] == []  # acknowledged, not retried
    await alice.close()


async def test_client_accepts_another_base_key_against_the_same_last_resort_prekey() -> None:
    relay = FakeRelay()
    alice, bob, carol = await _user(relay, "alice"), await _user(relay, "bob"), await _user(relay, "carol")
    relay.keys[alice.device_id].one_time.clear()
    lr_id = alice._ctx.state.last_resort_prekey.key_id
    for sender in (bob, carol):
        cid = await sender.create_conversation(["alice"])
        await sender.send_text(cid, f"from {sender.username}")
    await relay.deliver(alice)
    assert not [e for e in _drain(alice) if isinstance(e, DecryptionFailed)]
    for sender in (bob, carol):
        (session,) = alice.store.sessions.sessions_for(sender.device_id)
        assert alice.store.prekeys.has_seen_base_key(lr_id, msg.seen_base_key_digest(lr_id, session.base_key))


async def _in_flight_against_old_keys(opk: str) -> tuple[FakeRelay, Client, Client, Clock, int]:
    """bob sends alice a first message against her current keys (a last-resort or a one-time
    prekey), then alice rotates before receiving it. Returns the old signed prekey id."""
    relay, clock = FakeRelay(), Clock()
    alice, bob = await _user(relay, "alice", clock=clock), await _user(relay, "bob")
    if opk == "last_resort":
        relay.keys[alice.device_id].one_time.clear()
    old_spk = alice._ctx.state.signed_prekey.key_id
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "in flight")
    clock.ms += SPK_ROTATION_MS
    await alice.maintain_prekeys()
    assert alice._ctx.state.signed_prekey.key_id != old_spk
    assert alice.store.prekeys.get_prekey_meta().signed_prekey_rotated_at_ms == clock.ms
    return relay, alice, bob, clock, old_spk


@pytest.mark.parametrize("opk", ["last_resort", "one_time"])
async def test_previous_prekeys_accept_sessions_within_the_grace_period(opk: str) -> None:
    relay, alice, _bob, clock, old_spk = await _in_flight_against_old_keys(opk)
    old_lr = alice._ctx.state.previous_last_resort_prekey
    assert old_lr is not None and alice._ctx.state.find_signed_prekey(old_spk) is not None
    clock.ms += PREKEY_GRACE_MS - 1
    await alice.maintain_prekeys()
    assert alice._ctx.state.previous_last_resort_prekey == old_lr  # still in its grace period
    await relay.deliver(alice)
    events = _drain(alice)
    assert [e.text for e in events if isinstance(e, MessageReceived)] == ["in flight"]
    assert not [e for e in events if isinstance(e, DecryptionFailed)]


@pytest.mark.parametrize("opk", ["last_resort", "one_time"])
async def test_previous_prekeys_are_deleted_after_the_grace_period(opk: str) -> None:
    relay, alice, _bob, clock, old_spk = await _in_flight_against_old_keys(opk)
    old_lr = alice._ctx.state.previous_last_resort_prekey
    assert old_lr is not None
    clock.ms += PREKEY_GRACE_MS
    assert alice.prekeys.work_due().expire  # the maintenance path deletes them
    await alice.prekeys.maintain_if_due()
    state = alice._ctx.state
    assert state.find_signed_prekey(old_spk) is None and state.find_last_resort_prekey(old_lr.key_id) is None
    assert alice.store.identity.get_device() is not None
    stored = private_state.decode(alice.store.identity.get_device().state)  # type: ignore[union-attr]
    assert stored.find_last_resort_prekey(old_lr.key_id) is None  # durably
    await relay.deliver(alice)
    # the genesis and "in flight" were both encrypted against the deleted prekeys (and come
    # again with the gap fill they cause)
    failed = [e for e in _drain(alice) if isinstance(e, DecryptionFailed)]
    assert all("unknown signed prekey" in f.reason for f in failed)
    assert len({f.envelope_id for f in failed}) == 2
    assert alice.store.sessions.sessions_for(_bob.device_id) == []


async def test_expiry_without_a_rotation_due_and_seen_entries_are_dropped_with_their_key() -> None:
    relay, clock = FakeRelay(), Clock()
    alice, bob = await _user(relay, "alice", clock=clock), await _user(relay, "bob")
    relay.keys[alice.device_id].one_time.clear()
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "via the last-resort prekey")
    await relay.deliver(alice)
    (session,) = alice.store.sessions.sessions_for(bob.device_id)
    lr_id = alice._ctx.state.last_resort_prekey.key_id
    digest = msg.seen_base_key_digest(lr_id, session.base_key)
    assert alice.store.prekeys.has_seen_base_key(lr_id, digest)

    clock.ms += SPK_ROTATION_MS
    assert await alice.rotate_signed_prekey_if_due()
    assert alice._ctx.state.previous_last_resort_prekey is not None
    assert alice._ctx.state.previous_last_resort_prekey.key_id == lr_id
    assert alice.store.prekeys.has_seen_base_key(lr_id, digest)  # the key is kept: so is its entry
    assert not await alice.expire_previous_prekeys_if_due()

    clock.ms += PREKEY_GRACE_MS
    assert await alice.expire_previous_prekeys_if_due()
    assert not alice._ctx.state.has_previous_prekeys
    assert not alice.store.prekeys.has_seen_base_key(lr_id, digest)  # dropped with the key
    assert not await alice.expire_previous_prekeys_if_due()  # nothing left to delete
    assert alice._ctx.state.prekey_lookup().last_resort_prekey(lr_id) is None
