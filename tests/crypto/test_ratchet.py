"""Double Ratchet: layouts, KDF chain, out-of-order delivery, bounds, failure atomicity,
serialisation and injected randomness."""

from __future__ import annotations

import struct

import pytest

import saltline.crypto.ratchet as ratchet_module
from saltline.crypto import primitives as p
from saltline.crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    EncodingError,
    SessionSetupError,
    StateVersionError,
    TooManySkippedError,
    UsageError,
)
from saltline.crypto.keys import EphemeralKey
from saltline.crypto.ratchet import (
    HEADER_SIZE,
    HEADER_VERSION,
    MAX_COUNTER,
    MAX_MESSAGE_NUMBER,
    MAX_PREVIOUS_CHAINS,
    MAX_SKIP,
    MAX_STORED_SKIPPED,
    MESSAGE_KEY_INFO,
    NONCE_SIZE,
    RATCHET_INFO,
    MessageHeader,
    Session,
    accept,
    kdf_ck,
    kdf_rk,
    message_key,
)
from saltline.crypto.x3dh import AD_SIZE, initiate, respond
from tests.crypto.test_x3dh import DRng, entry_of, establish, make_device, make_responder


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
    assert RATCHET_INFO == b"Saltline ratchet v1" and MESSAGE_KEY_INFO == b"Saltline message key v2"
    assert kdf_rk(rk, ck) == (out[:32], out[32:])
    assert kdf_ck(ck) == (p.hmac_sha256(ck, b"\x01"), p.hmac_sha256(ck, b"\x02"))
    assert message_key(ck) == p.hkdf_sha256(ck, salt=bytes(32), info=b"Saltline message key v2", length=32)


def test_first_message_follows_the_documented_construction() -> None:
    """Rebuild the initiator's first message from the spec text alone."""
    rng = DRng(b"kat")
    alice_keys = make_device(rng, b"alice")
    bob = make_responder(rng)
    x3dh = initiate(alice_keys, bob.bundle(), bob.entry, rng)
    probe = DRng(b"ratchet key")
    session = Session.initiate(x3dh, probe)
    assert probe.calls == [32]
    message = session.encrypt(b"payload", b"envelope header")
    assert probe.calls == [32, 24]  # one random nonce per message

    replica = DRng(b"ratchet key")
    dhs = EphemeralKey(replica(32))
    nonce1, nonce2 = replica(24), replica(24)
    _rk, cks = kdf_rk(x3dh.shared_key, p.x25519(bytes(dhs), bytes(bob.spk.public_key)))
    mk = p.hmac_sha256(cks, b"\x01")
    key1 = p.hkdf_sha256(mk, salt=bytes(32), info=b"Saltline message key v2", length=32)
    header = b"\x02" + bytes(dhs.public_key) + struct.pack(">II", 0, 0) + nonce1
    assert len(header) == HEADER_SIZE == 65 and HEADER_VERSION == 2 and NONCE_SIZE == 24
    ad = x3dh.associated_data + header + b"envelope header"
    assert message == header + p.aead_encrypt(key1, nonce1, b"payload", ad)
    assert len(message) == 65 + len(b"payload") + 16
    # the second message uses the next chain key, N = 1 and a new nonce
    ck2 = p.hmac_sha256(cks, b"\x02")
    second = session.encrypt(b"two")
    header2 = b"\x02" + bytes(dhs.public_key) + struct.pack(">II", 0, 1) + nonce2
    mk2, _ = kdf_ck(ck2)
    assert second == header2 + p.aead_encrypt(
        message_key(mk2), nonce2, b"two", x3dh.associated_data + header2
    )
    # the responder reads both
    back = Session.respond(
        respond(bob.keys, bob.store, x3dh.header, trusted=entry_of(alice_keys)), DRng(b"b")
    )
    assert back.decrypt(second) == b"two"
    assert back.decrypt(message, b"envelope header") == b"payload"


def test_message_header_encoding() -> None:
    nonce = bytes(range(100, 124))
    header = MessageHeader(bytes(range(32)), 7, 9, nonce)
    data = header.encode()
    assert data == b"\x02" + bytes(range(32)) + b"\x00\x00\x00\x07\x00\x00\x00\x09" + nonce
    assert MessageHeader.decode(data) == header
    edge = MessageHeader(bytes(range(32)), MAX_COUNTER, MAX_MESSAGE_NUMBER, nonce)
    assert MessageHeader.decode(edge.encode()) == edge
    assert (MAX_COUNTER, MAX_MESSAGE_NUMBER) == (2**32 - 2, 2**32 - 3)

    def with_fields(key: bytes = bytes(range(32)), pn: int = 7, n: int = 9) -> bytes:
        return b"\x02" + key + struct.pack(">II", pn, n) + nonce

    bad = [
        data[:-1],
        data + b"\x00",
        b"\x01" + data[1:],  # version 1 (the 41-byte layout) is gone
        b"\x03" + data[1:],
        with_fields(n=MAX_MESSAGE_NUMBER + 1),
        with_fields(n=2**32 - 1),
        with_fields(pn=MAX_COUNTER + 1),
        with_fields(key=bytes(32)),  # low-order ratchet key
        with_fields(key=b"\x01" + bytes(31)),
    ]
    for item in bad:
        with pytest.raises(EncodingError):
            MessageHeader.decode(item)
    for fields in ((bytes(31), 0, 0, nonce), (bytes(range(32)), -1, 0, nonce), (bytes(range(32)), 0, 0, b"")):
        with pytest.raises(EncodingError):
            MessageHeader(*fields)


def test_decrypt_refuses_headers_the_decoder_refuses() -> None:
    alice, bob, _, _ = establish()
    m = alice.encrypt(b"x")
    for n in (MAX_MESSAGE_NUMBER + 1, 2**32 - 1):
        expect_unchanged(bob, m[:37] + struct.pack(">I", n) + m[41:], b"")
    expect_unchanged(bob, m[:33] + struct.pack(">I", 2**32 - 1) + m[37:], b"")
    expect_unchanged(bob, b"\x01" + m[1:], b"")
    assert bob.decrypt(m) == b"x"


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
    x3dh = initiate(alice_keys, bob.bundle(), bob.entry, rng)
    fresh = Session.respond(respond(bob.keys, bob.store, x3dh.header, trusted=entry_of(alice_keys)), rng)
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
    alice = Session.initiate(initiate(alice_keys, bob.bundle(), bob.entry, rng), rng)
    first = alice.encrypt(b"hi")
    header = alice.pending_initial_header
    assert header is not None
    probe = DRng(b"bob")
    accepted = accept(bob.keys, bob.store, header, first, b"", probe, trusted=entry_of(alice_keys))
    assert probe.calls == [32]  # the sending half of the first DH step
    assert accepted.session.can_send
    with pytest.raises(CryptoError):
        accept(bob.keys, bob.store, header[:-1], first, b"", probe, trusted=entry_of(alice_keys))


# -- restored (rolled-back) state: no nonce or keystream reuse ------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("dh_step", [False, True])
def test_restored_snapshot_never_reuses_a_nonce_or_keystream(dh_step: bool) -> None:
    """A state restored from an older snapshot (crash before persist, backup, cloned phone)
    encrypts in the same slot with the same message key, but under a fresh random nonce."""
    alice, bob, _, _ = establish()
    if dh_step:  # Bob's sending chain right after a DH step
        bob.decrypt(alice.encrypt(b"a"))
    else:
        alice.decrypt(bob.encrypt(b"b"))
    snapshot = bob.to_bytes()
    p1, p2 = b"attack at dawn!!", b"retreat at noon!"
    c1 = bob.encrypt(p1, b"env")
    restored = Session.from_bytes(snapshot)  # production rng
    c2 = restored.encrypt(p2, b"env")
    h1, h2 = MessageHeader.decode(c1[:HEADER_SIZE]), MessageHeader.decode(c2[:HEADER_SIZE])
    assert (h1.ratchet_key, h1.previous_chain_length, h1.message_number) == (
        h2.ratchet_key,
        h2.previous_chain_length,
        h2.message_number,
    )  # the same slot, hence the same message key ...
    assert h1.nonce != h2.nonce  # ... but not the same nonce
    body1, body2 = c1[HEADER_SIZE : HEADER_SIZE + len(p1)], c2[HEADER_SIZE : HEADER_SIZE + len(p2)]
    assert _xor(body1, body2) != _xor(p1, p2)  # no shared keystream
    assert c1[-16:] != c2[-16:]
    # the receiver reads the first and refuses the second as a duplicate, state unchanged
    assert alice.decrypt(c1, b"env") == p1
    expect_unchanged(alice, c2, b"env", DuplicateMessageError)


def test_encrypt_draws_one_nonce_and_checks_the_rng() -> None:
    alice, _, rng_a, _ = establish()
    calls = len(rng_a.calls)
    message = alice.encrypt(b"x")
    assert rng_a.calls[calls:] == [24]
    assert len(message) == HEADER_SIZE + 1 + 16
    short = Session.from_bytes(alice.to_bytes(), lambda n: bytes(n - 1))
    before = short.to_bytes()
    with pytest.raises(UsageError):
        short.encrypt(b"y")
    assert short.to_bytes() == before


def test_sending_chain_exhaustion_is_at_max_counter() -> None:
    alice, _, _, _ = establish()
    data = bytearray(alice.to_bytes())
    struct.pack_into(">I", data, 98, MAX_COUNTER - 1)  # Ns
    almost = Session.from_bytes(bytes(data))
    last = almost.encrypt(b"last")
    assert MessageHeader.decode(last[:HEADER_SIZE]).message_number == MAX_MESSAGE_NUMBER
    assert Session.from_bytes(almost.to_bytes()).to_bytes() == almost.to_bytes()  # Ns = MAX_COUNTER
    with pytest.raises(CryptoError):
        almost.encrypt(b"one too many")


# -- cost of forged messages ----------------------------------------------------------------


def _forged(key: bytes, pn: int, n: int) -> bytes:
    return MessageHeader(key, pn, n, bytes(24)).encode() + bytes(40)


def _forbid_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> bytes:
        raise AssertionError("key derivation or DH before the skip bound was checked")

    monkeypatch.setattr(ratchet_module, "kdf_ck", refuse)
    monkeypatch.setattr(ratchet_module, "kdf_rk", refuse)
    monkeypatch.setattr(p, "x25519", refuse)
    monkeypatch.setattr(p, "hkdf_sha256", refuse)


def test_skip_bounds_are_checked_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, _, _ = establish()
    alice.decrypt(bob.encrypt(b"b"))
    current = MessageHeader.decode(bob.encrypt(b"b2")[:HEADER_SIZE]).ratchet_key
    fresh = bytes(EphemeralKey.generate(DRng(b"forger")).public_key)
    nr = 2  # Alice has read N = 0 and 1 of Bob's current chain
    _forbid_work(monkeypatch)
    cases = [
        _forged(current, 0, nr + MAX_SKIP + 1),  # current chain: N too far ahead
        _forged(fresh, 0, MAX_SKIP + 1),  # new chain: N too far
        _forged(fresh, nr + MAX_SKIP + 1, 0),  # new chain: PN too far in the current chain
        _forged(fresh, MAX_COUNTER, MAX_MESSAGE_NUMBER),
    ]
    for forged in cases:
        expect_unchanged(alice, forged, b"", TooManySkippedError)


def test_skip_bound_counts_both_chains_across_a_dh_step() -> None:
    """PN and N each within MAX_SKIP, but together above it: refused (bounded work per message)."""
    alice, bob, _, _ = establish()
    alice.decrypt(bob.encrypt(b"b"))  # Alice reads Bob's N = 0
    lost = [bob.encrypt(b"lost") for _ in range(600)]  # N = 1..600 never arrive
    assert len(lost) == 600
    bob.decrypt(alice.encrypt(b"a"))
    new_chain = [bob.encrypt(b"n%d" % i) for i in range(501)]
    expect_unchanged(alice, new_chain[500], b"", TooManySkippedError)  # 600 + 500 > MAX_SKIP
    assert alice.decrypt(new_chain[400]) == b"n400"  # 600 + 400 == MAX_SKIP: fine
    assert alice.stored_skipped_keys == MAX_SKIP


# -- strict state parsing --------------------------------------------------------------------


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_state_counters_are_range_checked() -> None:
    alice, _, _, _ = establish()
    data = alice.to_bytes()
    assert Session.from_bytes(_patched(data, 98, struct.pack(">III", MAX_COUNTER, MAX_COUNTER, MAX_COUNTER)))
    for index in range(3):  # Ns, Nr, PN at offsets 98, 102, 106
        for value in (MAX_COUNTER + 1, 2**32 - 1):
            with pytest.raises(EncodingError, match="counter"):
                Session.from_bytes(_patched(data, 98 + 4 * index, struct.pack(">I", value)))


def test_state_chains_need_a_peer_ratchet_key() -> None:
    alice, _, _, _ = establish()
    data = alice.to_bytes()
    assert data[1] & 0b0011 == 0b0011  # DHr and CKs
    with pytest.raises(EncodingError, match="without a peer ratchet key"):
        Session.from_bytes(data[:1] + bytes([data[1] & ~0x01]) + data[2:])


def test_state_ad_must_be_two_identities() -> None:
    alice, _, _, _ = establish()
    data = alice.to_bytes()
    assert struct.unpack(">H", data[302:304]) == (AD_SIZE,)
    ad, rest = data[304 : 304 + AD_SIZE], data[304 + AD_SIZE :]
    for bad_ad in (b"", ad[:-1], ad + b"\x00"):
        with pytest.raises(EncodingError):
            Session.from_bytes(data[:302] + struct.pack(">H", len(bad_ad)) + bad_ad + rest)
    for offset, value in ((0, b"\x02"), (1, b"\x03"), (84 + 35, b"\x02"), (84 + 36, bytes(32))):
        with pytest.raises(EncodingError):  # bad version, kinds, low-order DH key
            Session.from_bytes(_patched(data, 304 + offset, value))


def test_state_skipped_entries_are_checked() -> None:
    alice, bob, _, _ = establish()
    m = [alice.encrypt(b"m") for _ in range(3)]
    bob.decrypt(m[2])
    data = bob.to_bytes()
    assert bob.stored_skipped_keys == 2
    last = len(data) - 68  # the last entry: key (32) || N (4) || mk (32)
    with pytest.raises(EncodingError):
        Session.from_bytes(_patched(data, last + 32, struct.pack(">I", MAX_MESSAGE_NUMBER + 1)))
    with pytest.raises(EncodingError):
        Session.from_bytes(_patched(data, last + 32, struct.pack(">I", 2**32 - 1)))
    with pytest.raises(EncodingError):
        Session.from_bytes(_patched(data, last, bytes(32)))  # low-order ratchet key
    assert Session.from_bytes(_patched(data, last + 32, struct.pack(">I", MAX_MESSAGE_NUMBER)))
