"""Deterministic tests of the sans-I/O core and the memory store (no network, fixed randomness)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from saltline.client_sdk.core import api, linking, trust
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core.sync.clock import CompactClock
from saltline.client_sdk.errors import (
    AuthError,
    DecryptError,
    DeviceListOutdatedError,
    LinkError,
    RecipientsChangedError,
    StoreLockedError,
    UntrustedDeviceListError,
)
from saltline.client_sdk.stores.base import MessageRecord, OutboxItem, Store
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto import device_list as dl
from saltline.crypto import private_state
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, EphemeralKey, b64encode
from saltline.crypto.x3dh import PreKeyBundle


def det_rng(seed: bytes):  # deterministic randomness for the tests
    counter = itertools.count()

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


def _account(name: str, seed: bytes):
    rng = det_rng(seed)
    key = AccountKey.generate(rng)
    state = private_state.generate_device(account_key=key, one_time_prekeys=3, rng=rng)
    signed = dl.first(key, name, [state.device_entry(key.public_key, 1)])
    return key, state, signed


def test_padding_buckets() -> None:
    for size in (0, 10, 255, 256, 1000):
        padded = msg.pad(b"x" * size)
        assert len(padded) >= 256 and len(padded) & (len(padded) - 1) == 0
        assert msg.unpad(padded) == b"x" * size


def test_pairwise_messages_bind_the_envelope_header() -> None:
    _, alice, alice_list = _account("alice", b"a")
    _, bob, bob_list = _account("bob", b"b")
    rng = det_rng(b"r")
    bob_entry = bob_list.content.devices[0]
    bundle = PreKeyBundle(
        bob.device_id,
        bob.signing_key.public_key,
        bob.dh_key.public_key,
        bob.signed_prekey_public(),
        bob.one_time_prekeys_public()[0],
    )
    header = msg.EnvelopeHeader(
        b"c" * 16, b"e" * 16, b"A" * 16, alice.device_id, CompactClock.of(0, {alice.device_id: 1}).encode()
    )
    ad = header.associated_data(bob.device_id)
    enc = msg.encrypt_to_device(msg.identity_keys(alice), None, bundle, bob_entry, msg.pad(b"hi"), ad, rng)
    assert enc.ciphertext[:2] == bytes([msg.FORMAT_VERSION, msg.KIND_PREKEY])
    alice_entry = alice_list.content.devices[0]
    # a server that changes the clock (or any routing field) is detected
    forged = msg.EnvelopeHeader(
        b"c" * 16, b"e" * 16, b"A" * 16, alice.device_id, CompactClock.of(0, {alice.device_id: 2}).encode()
    )
    with pytest.raises(DecryptError):
        msg.decrypt_from_device(
            bob, [], enc.ciphertext, forged.associated_data(bob.device_id), alice_entry, rng
        )
    # a device that no verified list names is refused
    with pytest.raises(DecryptError):
        msg.decrypt_from_device(bob, [], enc.ciphertext, ad, bob_entry, rng)
    dec = msg.decrypt_from_device(bob, [], enc.ciphertext, ad, alice_entry, rng)
    assert msg.unpad(dec.padded) == b"hi" and dec.one_time_prekey_id is not None
    # the answer is a plain ratchet message, decrypted by alice's session
    reply_ad = header.associated_data(alice.device_id)
    reply = msg.encrypt_to_device(
        msg.identity_keys(bob), dec.session, None, alice_entry, msg.pad(b"yo"), reply_ad, rng
    )
    assert reply.ciphertext[1] == msg.KIND_RATCHET
    back = msg.decrypt_from_device(alice, [enc.session], reply.ciphertext, reply_ad, bob_entry, rng)
    assert msg.unpad(back.padded) == b"yo"
    with pytest.raises(DecryptError):  # replay
        msg.decrypt_from_device(alice, [back.session], reply.ciphertext, reply_ad, bob_entry, rng)


def _inject(signed: dl.SignedDeviceList) -> bytes:
    c = signed.content
    rogue_key = DeviceSigningKey.generate()
    rogue = dl.bind_device(c.root, b"\x7f" * 16, rogue_key, DeviceDHKey.generate().public_key, 0, c.version)
    content = dl.DeviceList.create(c.version, c.previous_hash, c.account_key, c.username, [*c.devices, rogue])
    return dl.SignedDeviceList(content, signed.signature).encode()


def test_device_list_trust_rules() -> None:
    key, state, v1 = _account("alice", b"a")
    first = trust.first_contact("alice", [v1.encode()])
    assert first.version == 1 and first.account_key == bytes(key.public_key)
    with pytest.raises(UntrustedDeviceListError):
        trust.first_contact("alice", [_inject(v1)])
    with pytest.raises(UntrustedDeviceListError):
        trust.first_contact("mallory", [v1.encode()])
    other = private_state.generate_device(account_key=key, one_time_prekeys=0, rng=det_rng(b"x"))
    v2 = dl.with_device_added(v1, key, other.device_entry(key.public_key, 2, 2))
    step = trust.advance("alice", first.account_key, first.signed_list, [v2.encode()])
    assert step.changed and step.added == (b64encode(other.device_id),) and step.removed == ()
    with pytest.raises(UntrustedDeviceListError):  # injected device, old signature
        trust.advance("alice", first.account_key, first.signed_list, [_inject(v2)])
    with pytest.raises(UntrustedDeviceListError):  # rollback
        trust.advance("alice", first.account_key, step.signed_list, [v1.encode()])
    new_key = AccountKey.generate(det_rng(b"k"))
    impostor = dl.first(new_key, "alice", [state.device_entry(new_key.public_key, 1)])
    with pytest.raises(trust.KeyMismatch):
        trust.advance("alice", first.account_key, first.signed_list, [impostor.encode()])
    lists = {"A": v2.content}
    recipients = trust.fan_out(state.device_id, lists)
    assert [r.device_id for r in recipients] == [b64encode(other.device_id)]
    assert trust.versions(lists) == {"A": 2}


def test_responses_become_typed_errors() -> None:
    with pytest.raises(RecipientsChangedError) as info:
        api.check(
            api.Response(
                409, {"code": "recipients_mismatch", "accounts": {"A": {"missing": ["d"], "extra": []}}}
            )
        )
    assert api.parse_recipients_mismatch(info.value.body).accounts == {"A": (("d",), ())}
    with pytest.raises(DeviceListOutdatedError) as outdated:
        api.check(api.Response(410, {"code": "device_list_outdated", "accounts": {"A": {"version": 3}}}))
    assert api.parse_outdated_accounts(outdated.value.body) == {"A": 3}
    with pytest.raises(AuthError):
        api.check(api.Response(401, {"code": "token_expired"}))
    req = api.claim([("a", "d"), ("a", "d"), ("b", "e")])
    assert req.method == "POST" and len(req.json_body["devices"]) == 2
    put = api.put_provisioning("c", "s", "p")
    assert dict(put.headers) == {api.CHANNEL_SECRET_HEADER: "s"}


def test_link_code_and_payload() -> None:
    link_key = EphemeralKey.generate(det_rng(b"l"))
    code = linking.LinkCode(b"\x01" * 16, "secret-abc", bytes(link_key.public_key), b"\x02" * 16)
    parsed = linking.LinkCode.parse(code.to_text())
    assert parsed == code
    box = linking.seal_payload(parsed, {"username": "alice"})
    assert linking.open_payload(link_key, "secret-abc", box)["username"] == "alice"
    with pytest.raises(LinkError):
        linking.open_payload(link_key, "another-secret", box)
    with pytest.raises(LinkError):
        linking.LinkCode.parse("hello")


def test_memory_store_transactions_and_lock() -> None:
    store = MemoryStore()
    assert isinstance(store, Store)
    store.acquire()
    with pytest.raises(StoreLockedError):
        store.acquire()
    store.release()
    item = OutboxItem("e1", "c1", b"{}", b"", 1)
    with pytest.raises(RuntimeError), store.transaction():
        store.outbox.put_outbox(item)
        store.cursors.set_acked_queue_seq(5)
        raise RuntimeError("crash before commit")
    assert store.outbox.outbox() == [] and store.cursors.get_acked_queue_seq() == 0
    with store.transaction():
        store.outbox.put_outbox(item)
    assert store.outbox.get_outbox("e1") == item
    for seq, eid in ((2, "b"), (None, "p"), (1, "a")):
        store.conversations.put_message(MessageRecord("c1", eid, "A", "D", eid, 0, False, "received", seq))
    assert [m.envelope_id for m in store.conversations.messages("c1")] == ["a", "b", "p"]


# -- account-key rotation, handoffs and names (issue 12) -----------------------------------------


def test_advance_follows_a_succession_and_keeps_the_old_key_out() -> None:
    key, _state, v1 = _account("alice", b"rot")
    other = private_state.generate_device(account_key=key, one_time_prekeys=0, rng=det_rng(b"o"))
    v2 = dl.with_device_added(v1, key, other.device_entry(key.public_key, 2, 2))
    new_key = AccountKey.generate(det_rng(b"new"))
    v3 = dl.with_device_removed(v2, key, other.device_id, rotate_to=new_key)
    step = trust.advance("alice", bytes(key.public_key), v1.encode(), [v2.encode(), v3.encode()])
    assert step.rotated and step.account_key == bytes(new_key.public_key)
    assert step.keys == (bytes(key.public_key), bytes(new_key.public_key))
    # v1 -> v3: the other device came and went between two refreshes: both are reported
    assert step.added == step.removed == (b64encode(other.device_id),)
    # a contact meeting alice for the first time after the rotation accepts the old key vouched for
    first = trust.first_contact("alice", [v1.encode(), v2.encode(), v3.encode()])
    assert first.keys == (bytes(key.public_key), bytes(new_key.public_key)) and first.rotated
    # the thief's later list under the old key is an identity change, not a successor
    thief = dl.sign(
        key,
        dl.DeviceList.create(4, v3.hash(), key.public_key, "alice", v3.content.devices, key.public_key),
    )
    with pytest.raises(trust.KeyMismatch):
        trust.advance("alice", step.account_key, step.signed_list, [thief.encode()])


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("alice's phone", "alice's phone"),
        ("  Desk  ", "Desk"),
        ("é" * 64, "é" * 64),
        ("", None),
        ("x" * 65, None),
        ("bad\nname", None),
        ("bell\x07", None),
    ],
)
def test_device_names_are_checked(name: str, ok: str | None) -> None:
    from saltline.client_sdk.core import account_keys
    from saltline.client_sdk.errors import UsageError

    if ok is None:
        with pytest.raises(UsageError):
            account_keys.check_name(name)
    else:
        assert account_keys.check_name(name) == ok


def test_handoff_refuses_what_a_server_could_swap() -> None:
    from saltline.client_sdk.core import account_keys
    from saltline.crypto.keys import DeviceDHKey

    dh = DeviceDHKey.generate(det_rng(b"dh"))
    new_key = AccountKey.generate(det_rng(b"k"))
    account = b"\x01" * 16
    box = account_keys.seal_handoff(dh.public_key, account, 5, new_key, det_rng(b"s"))
    assert account_keys.open_handoff(dh, box, account, 5, new_key.public_key) == new_key
    other_dh = DeviceDHKey.generate(det_rng(b"dh2"))
    forged = account_keys.seal_handoff(dh.public_key, account, 5, AccountKey.generate(det_rng(b"x")))
    for bad in (
        lambda: account_keys.open_handoff(other_dh, box, account, 5, new_key.public_key),  # not mine
        lambda: account_keys.open_handoff(dh, box, b"\x02" * 16, 5, new_key.public_key),  # moved
        lambda: account_keys.open_handoff(dh, box, account, 6, new_key.public_key),  # replayed
        lambda: account_keys.open_handoff(dh, forged, account, 5, new_key.public_key),  # swapped key
        lambda: account_keys.open_handoff(dh, box[:-1], account, 5, new_key.public_key),  # cut
    ):
        with pytest.raises(account_keys.HandoffError):
            bad()
