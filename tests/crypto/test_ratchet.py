"""Double Ratchet: layouts, KDF chain, out-of-order delivery, bounds, failure atomicity,
serialisation and injected randomness."""

from __future__ import annotations

import struct

import pytest

from crypto import primitives as p
from crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    EncodingError,
    SessionSetupError,
    StateVersionError,
    TooManySkippedError,
)
from crypto.keys import EphemeralKey
from crypto.ratchet import (
    HEADER_SIZE,
    MAX_PREVIOUS_CHAINS,
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    MESSAGE_KEY_INFO,
    RATCHET_INFO,
    MessageHeader,
    Session,
    accept,
    kdf_ck,
    kdf_rk,
    message_key_material,
)
from crypto.x3dh import initiate, respond
from tests.crypto.test_x3dh import DRng, establish, make_device, make_responder


def expect_unchanged(
    session: Session, message: bytes, ad: bytes, error: type[Exception] = DecryptionError
) -> None:
    before = session.to_bytes()
    with pytest.raises(error):
        session.decrypt(message, ad)
    assert session.to_bytes() == before


# -- layouts and the KDF chain ------------------------------------------------------


def test_kdf_definitions() -> None:
    rk, ck = bytes(range(32)), bytes(range(32, 64))
    out = p.hkdf_sha256(ck, salt=rk, info=b"Saltline ratchet v1", length=64)
    assert RATCHET_INFO == b"Saltline ratchet v1" and MESSAGE_KEY_INFO == b"Saltline message keys v1"
    assert kdf_rk(rk, ck) == (out[:32], out[32:])
    assert kdf_ck(ck) == (p.hmac_sha256(ck, b"\x01"), p.hmac_sha256(ck, b"\x02"))
    material = p.hkdf_sha256(ck, salt=bytes(32), info=b"Saltline message keys v1", length=56)
    assert message_key_material(ck) == (material[:32], material[32:])


def test_first_message_follows_the_documented_construction() -> None:
    """Rebuild the initiator's first message from the spec text alone."""
    rng = DRng(b"kat")
    alice_keys = make_device(rng, b"alice")
    bob = make_responder(rng)
    x3dh = initiate(alice_keys, bob.bundle(), rng)
    probe = DRng(b"ratchet key")
    session = Session.initiate(x3dh, probe)
    assert probe.calls == [32]
    message = session.encrypt(b"payload", b"envelope header")

    dhs = EphemeralKey(DRng(b"ratchet key")(32))
    _rk, cks = kdf_rk(x3dh.shared_key, p.x25519(bytes(dhs), bytes(bob.spk.public_key)))
    mk = p.hmac_sha256(cks, b"\x01")
    material = p.hkdf_sha256(mk, salt=bytes(32), info=b"Saltline message keys v1", length=56)
    header = b"\x01" + bytes(dhs.public_key) + struct.pack(">II", 0, 0)
    assert len(header) == HEADER_SIZE == 41
    ad = x3dh.associated_data + header + b"envelope header"
    assert message == header + p.aead_encrypt(material[:32], material[32:], b"payload", ad)
    assert len(message) == 41 + len(b"payload") + 16
    # the second message uses the next chain key and N = 1
    ck2 = p.hmac_sha256(cks, b"\x02")
    second = session.encrypt(b"two")
    header2 = b"\x01" + bytes(dhs.public_key) + struct.pack(">II", 0, 1)
    mk2, _ = kdf_ck(ck2)
    key, nonce = message_key_material(mk2)
    assert second == header2 + p.aead_encrypt(key, nonce, b"two", x3dh.associated_data + header2)
    # the responder reads both
    back = Session.respond(respond(bob.keys, bob.store, x3dh.header), DRng(b"b"))
    assert back.decrypt(second) == b"two"
    assert back.decrypt(message, b"envelope header") == b"payload"


def test_message_header_encoding() -> None:
    header = MessageHeader(bytes(range(32)), 7, 9)
    data = header.encode()
    assert data == b"\x01" + bytes(range(32)) + b"\x00\x00\x00\x07\x00\x00\x00\x09"
    assert MessageHeader.decode(data) == header
    for bad in (data[:-1], data + b"\x00", b"\x02" + data[1:]):
        with pytest.raises(EncodingError):
            MessageHeader.decode(bad)


def test_headers_carry_pn_and_n_across_ratchet_steps() -> None:
    alice, bob, _, _ = establish()
    m1 = alice.encrypt(b"a1")
    assert MessageHeader.decode(m1[:HEADER_SIZE]).message_number == 1  # 0 was b"hello"
    bob.decrypt(m1)
    r = [bob.encrypt(b"b%d" % i) for i in range(3)]
    headers = [MessageHeader.decode(m[:HEADER_SIZE]) for m in r]
    assert [h.message_number for h in headers] == [0, 1, 2]
    assert all(h.previous_chain_length == 0 for h in headers)
    for m in r:
        alice.decrypt(m)
    a2 = MessageHeader.decode(alice.encrypt(b"a2")[:HEADER_SIZE])
    assert (a2.previous_chain_length, a2.message_number) == (2, 0)
    assert a2.ratchet_key != MessageHeader.decode(m1[:HEADER_SIZE]).ratchet_key


# -- conversation ---------------------------------------------------------------------


def test_ping_pong_and_pending_initial_header() -> None:
    alice, bob, _, _ = establish()
    assert alice.pending_initial_header is not None
    assert bob.pending_initial_header is None
    for i in range(5):
        m = alice.encrypt(b"a%d" % i, b"ad")
        assert alice.pending_initial_header is not None  # still unanswered
        assert bob.decrypt(m, b"ad") == b"a%d" % i
    for round_ in range(4):
        assert alice.decrypt(bob.encrypt(b"b%d" % round_)) == b"b%d" % round_
        assert alice.pending_initial_header is None
        assert bob.decrypt(alice.encrypt(b"a%d" % round_)) == b"a%d" % round_
    assert alice.associated_data == bob.associated_data
    assert alice.base_key == bob.base_key


def test_responder_cannot_send_first() -> None:
    rng = DRng(b"r")
    alice_keys = make_device(rng, b"alice")
    bob = make_responder(rng)
    x3dh = initiate(alice_keys, bob.bundle(), rng)
    fresh = Session.respond(respond(bob.keys, bob.store, x3dh.header), rng)
    assert not fresh.can_send
    with pytest.raises(SessionSetupError):
        fresh.encrypt(b"too early")
    # a fresh responder state round-trips too
    assert Session.from_bytes(fresh.to_bytes()).to_bytes() == fresh.to_bytes()


def test_out_of_order_within_and_across_chains() -> None:
    alice, bob, _, _ = establish()
    chain1 = [alice.encrypt(b"1-%d" % i) for i in range(5)]
    assert bob.decrypt(chain1[3]) == b"1-3"
    assert bob.stored_skipped_keys == 3  # 0, 1, 2 of chain 1 (N=0 was "hello", so 1..3)
    assert alice.decrypt(bob.encrypt(b"reply")) == b"reply"
    chain2 = [alice.encrypt(b"2-%d" % i) for i in range(3)]
    assert bob.decrypt(chain2[2]) == b"2-2"  # skips chain 1's tail (via PN) and chain 2's head
    for i in (4, 0, 2, 1):
        assert bob.decrypt(chain1[i]) == b"1-%d" % i
    assert bob.decrypt(chain2[0]) == b"2-0"
    assert bob.decrypt(chain2[1]) == b"2-1"
    assert bob.stored_skipped_keys == 0


def test_replays_are_duplicates_and_change_nothing() -> None:
    alice, bob, _, _ = establish()
    m0, m1, m2 = (alice.encrypt(b"%d" % i) for i in range(3))
    bob.decrypt(m2)  # m0, m1 skipped
    bob.decrypt(m0)  # from the skipped store
    expect_unchanged(bob, m0, b"", DuplicateMessageError)  # consumed skipped key
    expect_unchanged(bob, m2, b"", DuplicateMessageError)  # current chain, below Nr
    # move the chain on: m1 (still skipped) and m2 now belong to a former chain
    alice.decrypt(bob.encrypt(b"x"))
    bob.decrypt(alice.encrypt(b"new chain"))
    expect_unchanged(bob, m2, b"", DuplicateMessageError)
    assert bob.decrypt(m1) == b"1"
    expect_unchanged(bob, m1, b"", DuplicateMessageError)


def test_replay_from_a_long_gone_chain_fails_without_change() -> None:
    alice, bob, _, _ = establish()
    old = alice.encrypt(b"old")
    bob.decrypt(old)
    for _ in range(MAX_PREVIOUS_CHAINS + 2):
        alice.decrypt(bob.encrypt(b"b"))
        bob.decrypt(alice.encrypt(b"a"))
    probe = DRng(b"probe")
    restored = Session.from_bytes(bob.to_bytes(), probe)
    expect_unchanged(restored, old, b"")  # a DecryptionError, maybe not a DuplicateMessageError
    assert probe.calls == []


# -- bounds -------------------------------------------------------------------------


def test_skip_bound_in_current_chain() -> None:
    alice, bob, _, _ = establish()
    messages = [alice.encrypt(b"m") for _ in range(MAX_SKIP + 2)]  # N = 1 .. MAX_SKIP + 2
    # N = MAX_SKIP + 2 would skip MAX_SKIP + 1 keys (Nr is 1)
    expect_unchanged(bob, messages[-1], b"", TooManySkippedError)
    assert bob.decrypt(messages[-2]) == b"m"  # exactly MAX_SKIP skipped keys is fine
    assert bob.stored_skipped_keys == MAX_SKIP


def test_skip_bound_in_new_chain_and_via_previous_chain_length() -> None:
    alice, bob, _, _ = establish()
    bob_first = bob.encrypt(b"b")
    many = [bob.encrypt(b"b") for _ in range(MAX_SKIP + 1)]
    expect_unchanged(alice, many[-1], b"", TooManySkippedError)  # N = MAX_SKIP + 1 in a new chain
    assert alice.decrypt(many[-2]) == b"b"
    # PN too large: Alice's former chain has MAX_SKIP + 2 unread messages
    alice2, bob2, _, _ = establish(seed=2)
    unread = [alice2.encrypt(b"a") for _ in range(MAX_SKIP + 2)]
    bob2.decrypt(unread[0])
    alice2.decrypt(bob2.encrypt(b"b"))
    next_chain = alice2.encrypt(b"next")
    assert MessageHeader.decode(next_chain[:HEADER_SIZE]).previous_chain_length == MAX_SKIP + 3
    expect_unchanged(bob2, next_chain, b"", TooManySkippedError)
    assert alice.decrypt(bob_first) == b"b"


def test_stored_skipped_keys_are_bounded_oldest_evicted() -> None:
    alice, bob, _, _ = establish()
    first_chain = [alice.encrypt(b"a") for _ in range(MAX_SKIP + 1)]
    bob.decrypt(first_chain[-1])  # skips MAX_SKIP
    alice.decrypt(bob.encrypt(b"b"))
    second_chain = [alice.encrypt(b"c") for _ in range(MAX_SKIP + 1)]
    bob.decrypt(second_chain[-1])
    assert bob.stored_skipped_keys == 2 * MAX_SKIP == MAX_STORED_SKIPPED
    alice.decrypt(bob.encrypt(b"b"))
    third = [alice.encrypt(b"d") for _ in range(3)]
    bob.decrypt(third[2])  # two more skipped keys: the two oldest are dropped
    assert bob.stored_skipped_keys == MAX_STORED_SKIPPED
    expect_unchanged(bob, first_chain[0], b"", DuplicateMessageError)  # evicted
    expect_unchanged(bob, first_chain[1], b"", DuplicateMessageError)
    assert bob.decrypt(first_chain[2]) == b"a"
    assert bob.decrypt(third[0]) == b"d"
    restored = Session.from_bytes(bob.to_bytes())
    assert restored.to_bytes() == bob.to_bytes()
    assert restored.decrypt(second_chain[0]) == b"c"


# -- failures leave the state unchanged ------------------------------------------------


def test_tampering_fails_without_state_change_or_randomness() -> None:
    alice, bob, _, rng_b = establish()
    bob.decrypt(alice.encrypt(b"x"))
    alice.decrypt(bob.encrypt(b"y"))
    fresh_chain = alice.encrypt(b"secret", b"envelope")  # new ratchet key: a DH step for Bob
    same_chain = alice.encrypt(b"second", b"envelope")
    calls = len(rng_b.calls)
    for message in (fresh_chain, same_chain):
        for i in range(len(message)):
            for mask in (0x01, 0x80):
                tampered = message[:i] + bytes([message[i] ^ mask]) + message[i + 1 :]
                expect_unchanged(bob, tampered, b"envelope")
        for ad in (b"", b"envelopE", b"envelope\x00", b"envelop"):
            expect_unchanged(bob, message, ad)
        for cut in (0, 1, HEADER_SIZE, HEADER_SIZE + 15, len(message) - 1):
            expect_unchanged(bob, message[:cut], b"envelope")
        expect_unchanged(bob, message + b"\x00", b"envelope")
    assert len(rng_b.calls) == calls  # failures draw no randomness
    assert bob.decrypt(same_chain, b"envelope") == b"second"  # the DH step happens here
    assert bob.decrypt(fresh_chain, b"envelope") == b"secret"  # from the skipped store
    assert rng_b.calls[calls:] == [32]
    assert alice.decrypt(bob.encrypt(b"z")) == b"z"


def test_dh_step_draws_one_key_after_the_tag_verified() -> None:
    alice, bob, _, rng_b = establish()
    alice.decrypt(bob.encrypt(b"b"))
    m = alice.encrypt(b"a")
    calls = len(rng_b.calls)
    bob.decrypt(m)
    assert rng_b.calls[calls:] == [32]


def test_low_order_ratchet_key_is_refused() -> None:
    alice, bob, _, _ = establish()
    m = alice.encrypt(b"x")
    for point in (bytes(32), b"\x01" + bytes(31)):
        forged = m[:1] + point + m[33:]
        expect_unchanged(bob, forged, b"")


def test_other_session_cannot_decrypt() -> None:
    alice, _, _, _ = establish(seed=1)
    _, bob2, _, _ = establish(seed=2)
    expect_unchanged(bob2, alice.encrypt(b"x"), b"")


# -- serialisation -----------------------------------------------------------------------


def test_state_round_trip_at_every_stage() -> None:
    alice, bob, _, _ = establish()
    states = [alice.to_bytes(), bob.to_bytes()]
    m = [alice.encrypt(b"%d" % i) for i in range(4)]
    bob.decrypt(m[3])
    states += [alice.to_bytes(), bob.to_bytes()]
    alice.decrypt(bob.encrypt(b"r"))
    states += [alice.to_bytes(), bob.to_bytes()]
    for data in states:
        assert Session.from_bytes(data).to_bytes() == data
    assert states[0][0] == 1
    # a restored session carries on exactly like the original
    twin = Session.from_bytes(bob.to_bytes(), DRng(b"twin"))
    assert twin.decrypt(m[1]) == bob.decrypt(m[1]) == b"1"
    assert twin.to_bytes() == bob.to_bytes()


def test_state_layout_prefix() -> None:
    alice, _, _, _ = establish()
    data = alice.to_bytes()
    # version, flags (DHr, CKs, initial header), RK, DHs, base key, Ns, Nr, PN
    assert data[0] == 1 and data[1] == 0b1011
    assert data[66:98] == alice.base_key
    assert struct.unpack(">III", data[98:110]) == (1, 0, 0)
    assert data[174:302] == alice.pending_initial_header  # after DHr and CKs
    assert struct.unpack(">H", data[302:304]) == (168,)
    assert data[304:472] == alice.associated_data
    assert data[472:] == b"\x00\x00\x00"  # no former chains, no skipped keys


def test_state_decoding_is_strict() -> None:
    alice, bob, _, _ = establish()
    m = [alice.encrypt(b"m") for _ in range(3)]
    bob.decrypt(m[2])
    alice.decrypt(bob.encrypt(b"b"))
    bob.decrypt(alice.encrypt(b"next"))
    data = bob.to_bytes()
    assert bob.stored_skipped_keys == 2
    for version in (0, 2, 255):
        with pytest.raises(StateVersionError):
            Session.from_bytes(bytes([version]) + data[1:])
    with pytest.raises(EncodingError):
        Session.from_bytes(b"")
    for cut in range(len(data)):
        with pytest.raises(EncodingError):
            Session.from_bytes(data[:cut])
    with pytest.raises(EncodingError):
        Session.from_bytes(data + b"\x00")
    for flags in (data[1] | 0x10, data[1] & ~0x01):  # unknown flag; CKr without DHr
        with pytest.raises(EncodingError):
            Session.from_bytes(data[:1] + bytes([flags]) + data[2:])
    # the same skipped key twice (the last two entries are 68 bytes each)
    entries = data[-136:]
    with pytest.raises(EncodingError):
        Session.from_bytes(data[:-136] + entries[:68] + entries[:68])
    with pytest.raises(EncodingError):
        Session.from_bytes(data[:-138] + struct.pack(">H", MAX_STORED_SKIPPED + 1) + entries)


def test_state_with_low_order_peer_key_is_refused() -> None:
    alice, _, _, _ = establish()
    data = alice.to_bytes()
    with pytest.raises(EncodingError):
        Session.from_bytes(data[:110] + bytes(32) + data[142:])  # DHr := 0


# -- injected randomness ----------------------------------------------------------------


def _transcript(seed: bytes) -> list[bytes]:
    alice, bob, _, _ = establish(seed=seed)
    out: list[bytes] = [alice.to_bytes(), bob.to_bytes()]
    for i in range(3):
        out.append(bob.encrypt(b"b%d" % i))
        alice.decrypt(out[-1])
        out.append(alice.encrypt(b"a%d" % i))
        bob.decrypt(out[-1])
    return [*out, alice.to_bytes(), bob.to_bytes()]


def test_all_randomness_comes_from_the_rng() -> None:
    assert _transcript(b"s") == _transcript(b"s")
    assert _transcript(b"s") != _transcript(b"t")


def test_accept_uses_the_given_rng_only() -> None:
    rng = DRng(b"accept")
    alice_keys = make_device(rng, b"alice")
    bob = make_responder(rng)
    alice = Session.initiate(initiate(alice_keys, bob.bundle(), rng), rng)
    first = alice.encrypt(b"hi")
    header = alice.pending_initial_header
    assert header is not None
    probe = DRng(b"bob")
    accepted = accept(bob.keys, bob.store, header, first, b"", probe)
    assert probe.calls == [32]  # the sending half of the first DH step
    assert accepted.session.can_send
    with pytest.raises(CryptoError):
        accept(bob.keys, bob.store, header[:-1], first, b"", probe)
