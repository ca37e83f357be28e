"""Deterministic tests of the sans-I/O core and the memory store (no network, fixed randomness)."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from client_sdk.core import api, linking, trust
from client_sdk.core import message as msg
from client_sdk.core.sync.clock import CompactClock
from client_sdk.errors import (
    AuthError,
    DecryptError,
    DeviceListOutdatedError,
    LinkError,
    RecipientsChangedError,
    StoreLockedError,
    UntrustedDeviceListError,
)
from client_sdk.stores.base import MessageRecord, OutboxItem, Store
from client_sdk.stores.memory import MemoryStore
from crypto import device_list as dl
from crypto import private_state
from crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, EphemeralKey, b64encode
from crypto.x3dh import PreKeyBundle


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
