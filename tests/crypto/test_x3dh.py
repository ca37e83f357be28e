"""X3DH session set-up: agreement, prekey kinds, signature checks, consumption rules, encodings.

The helpers at the top (``DRng``, ``make_device``, ``make_responder``, ``establish``) are also
used by ``test_ratchet.py`` and ``test_ratchet_properties.py``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace

import pytest

from crypto import primitives as p
from crypto.errors import (
    CryptoError,
    DecryptionError,
    EncodingError,
    InvalidKeyError,
    PreKeyConsumedError,
    PreKeySignatureError,
    SessionSetupError,
    SignatureError,
)
from crypto.keys import (
    DeviceDHKey,
    DeviceSigningKey,
    EphemeralKey,
    EphemeralPublicKey,
    KeyKind,
    LastResortPreKey,
    OneTimePreKey,
    PreKeyPublic,
    SignedPreKey,
)
from crypto.ratchet import Session, accept
from crypto.x3dh import (
    AD_SIZE,
    INITIAL_HEADER_SIZE,
    X3DH_INFO,
    DeviceIdentity,
    DeviceIdentityKeys,
    InitialHeader,
    InMemoryPreKeys,
    PreKeyBundle,
    associated_data,
    initiate,
    respond,
)

# -- shared helpers -------------------------------------------------------------------


class DRng:
    """Deterministic rng: SHA-256(seed || counter) blocks. Records every request size."""

    def __init__(self, seed: bytes | int = b"seed") -> None:
        self.seed = seed if isinstance(seed, bytes) else seed.to_bytes(8, "big")
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        out = b""
        while len(out) < n:
            out += hashlib.sha256(
                self.seed + len(self.calls).to_bytes(4, "big") + len(out).to_bytes(4, "big")
            ).digest()
        return out[:n]


def make_device(rng: DRng, name: bytes) -> DeviceIdentityKeys:
    device_id = hashlib.sha256(b"device id " + name + rng(8)).digest()[:16]
    return DeviceIdentityKeys(device_id, DeviceSigningKey.generate(rng), DeviceDHKey.generate(rng))


@dataclass
class Responder:
    keys: DeviceIdentityKeys
    spk: SignedPreKey
    opks: list[OneTimePreKey]
    last_resort: LastResortPreKey
    store: InMemoryPreKeys

    def bundle(self, opk: PreKeyPublic | None = None, *, use_opk: bool = True) -> PreKeyBundle:
        if opk is None and use_opk and self.opks:
            opk = self.opks[0].signed_public(self.keys.signing_key)
        return PreKeyBundle(
            self.keys.device_id,
            self.keys.signing_key.public_key,
            self.keys.dh_key.public_key,
            self.spk.signed_public(self.keys.signing_key),
            opk,
        )


def make_responder(rng: DRng, name: bytes = b"bob", n_opks: int = 3) -> Responder:
    keys = make_device(rng, name)
    spk = SignedPreKey.generate_with_id(1, rng)
    opks = [OneTimePreKey.generate_with_id(100 + i, rng) for i in range(n_opks)]
    last_resort = LastResortPreKey.generate_with_id(9, rng)
    return Responder(keys, spk, opks, last_resort, InMemoryPreKeys([spk], list(opks), [last_resort]))


def establish(seed: bytes | int = b"pair", ad: bytes = b"first") -> tuple[Session, Session, DRng, DRng]:
    """Alice initiates to Bob with a one-time prekey; Bob accepts Alice's first message
    (plaintext b"hello"). Returns (alice, bob, alice_rng, bob_rng)."""
    rng_a, rng_b = DRng(b"alice" + str(seed).encode()), DRng(b"bob" + str(seed).encode())
    alice_keys = make_device(rng_a, b"alice")
    bob = make_responder(rng_b)
    alice = Session.initiate(initiate(alice_keys, bob.bundle(), rng_a), rng_a)
    first = alice.encrypt(b"hello", ad)
    header = alice.pending_initial_header
    assert header is not None
    accepted = accept(bob.keys, bob.store, header, first, ad, rng_b)
    assert accepted.plaintext == b"hello"
    return alice, accepted.session, rng_a, rng_b


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
def rng() -> DRng:
    return DRng(b"x3dh tests")


@pytest.fixture
def alice(rng: DRng) -> DeviceIdentityKeys:
    return make_device(rng, b"alice")


@pytest.fixture
def bob(rng: DRng) -> Responder:
    return make_responder(rng)


# -- agreement ----------------------------------------------------------------------


def test_both_sides_derive_the_same_key_with_one_time_prekey(
    alice: DeviceIdentityKeys, bob: Responder
) -> None:
    out = initiate(alice, bob.bundle())
    back = respond(bob.keys, bob.store, out.header)
    assert out.shared_key == back.shared_key
    assert len(out.shared_key) == 32
    assert out.associated_data == back.associated_data
    assert len(out.associated_data) == AD_SIZE == 168
    assert out.header.one_time_prekey_kind == KeyKind.ONE_TIME_PREKEY
    assert back.one_time_prekey_id == bob.opks[0].key_id == 100
    assert back.initiator == alice.public
    assert out.responder == bob.keys.public
    assert out.base_key == back.base_key == bytes(out.header.ephemeral_key)
    assert bytes(out.remote_ratchet_key) == bytes(bob.spk.public_key)
    assert "secret" in repr(out) and out.shared_key.hex() not in repr(out)
    assert out.shared_key.hex() not in repr(back)


def test_both_sides_derive_the_same_key_without_one_time_prekey(
    alice: DeviceIdentityKeys, bob: Responder
) -> None:
    out = initiate(alice, bob.bundle(use_opk=False))
    back = respond(bob.keys, bob.store, out.header)
    assert out.shared_key == back.shared_key
    assert out.header.one_time_prekey_kind is None and out.header.one_time_prekey_id is None
    assert back.one_time_prekey_id is None


def test_last_resort_prekey_is_used_but_never_consumed(alice: DeviceIdentityKeys, bob: Responder) -> None:
    bundle = bob.bundle(bob.last_resort.signed_public(bob.keys.signing_key))
    for _ in range(2):
        out = initiate(alice, bundle)
        back = respond(bob.keys, bob.store, out.header)
        assert out.shared_key == back.shared_key
        assert out.header.one_time_prekey_kind == KeyKind.LAST_RESORT_PREKEY
        assert out.header.one_time_prekey_id == 9
        assert back.one_time_prekey_id is None  # nothing to delete


def test_shared_key_follows_the_documented_derivation(alice: DeviceIdentityKeys, bob: Responder) -> None:
    """SK = HKDF(0xFF*32 || DH1 || DH2 || DH3 || DH4, salt=0*32, info="Saltline X3DH v1", 32)."""
    rng = DRng(b"ephemeral")
    out = initiate(alice, bob.bundle(), rng)
    assert rng.calls == [32]
    ek = EphemeralKey(DRng(b"ephemeral")(32))
    opk = bob.opks[0]
    dh1 = p.x25519(bytes(alice.dh_key), bytes(bob.spk.public_key))
    dh2 = p.x25519(bytes(ek), bytes(bob.keys.dh_key.public_key))
    dh3 = p.x25519(bytes(ek), bytes(bob.spk.public_key))
    dh4 = p.x25519(bytes(ek), bytes(opk.public_key))
    expected = p.hkdf_sha256(b"\xff" * 32 + dh1 + dh2 + dh3 + dh4, salt=bytes(32), info=X3DH_INFO, length=32)
    assert X3DH_INFO == b"Saltline X3DH v1"
    assert out.shared_key == expected
    without = initiate(alice, bob.bundle(use_opk=False), DRng(b"ephemeral"))
    expected3 = p.hkdf_sha256(b"\xff" * 32 + dh1 + dh2 + dh3, salt=bytes(32), info=X3DH_INFO, length=32)
    assert without.shared_key == expected3 != expected


def test_associated_data_layout_and_role_binding(alice: DeviceIdentityKeys, bob: Responder) -> None:
    a, b = alice.public, bob.keys.public
    ad = associated_data(a, b)
    assert ad == (
        a.signing_key.encode()
        + a.dh_key.encode()
        + a.device_id
        + b.signing_key.encode()
        + b.dh_key.encode()
        + b.device_id
    )
    assert ad[0:2] == b"\x01\x02" and ad[34:36] == b"\x01\x03"
    assert associated_data(b, a) != ad  # swapped identities give a different AD
    assert DeviceIdentity.decode(ad[:84]) == a and DeviceIdentity.decode(ad[84:]) == b
    assert initiate(alice, bob.bundle()).associated_data == ad


def test_swapped_roles_do_not_interoperate(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> None:
    """A responder that believes the roles are swapped computes another AD: the first message fails."""
    out = initiate(alice, bob.bundle(), rng)
    back = respond(bob.keys, bob.store, out.header)
    swapped = replace(back, associated_data=associated_data(bob.keys.public, alice.public))
    sender = Session.initiate(out, rng)
    message = sender.encrypt(b"hi")
    assert Session.respond(back, rng).decrypt(message) == b"hi"
    with pytest.raises(DecryptionError):
        Session.respond(swapped, rng).decrypt(message)


# -- signatures ---------------------------------------------------------------------


def _forbid_dh_and_rng(monkeypatch: pytest.MonkeyPatch) -> DRng:
    def no_dh(private: bytes, public: bytes) -> bytes:
        raise AssertionError("DH computed before the signatures were verified")

    monkeypatch.setattr(p, "x25519", no_dh)
    return DRng(b"must not be used")


@pytest.mark.parametrize("which", ["signed", "one_time", "last_resort"])
def test_bad_prekey_signature_is_rejected_before_any_dh(
    monkeypatch: pytest.MonkeyPatch, rng: DRng, alice: DeviceIdentityKeys, bob: Responder, which: str
) -> None:
    impostor = DeviceSigningKey.generate(rng)
    spk = bob.spk.signed_public(bob.keys.signing_key)
    opk: PreKeyPublic | None = bob.opks[0].signed_public(bob.keys.signing_key)
    if which == "signed":
        spk = bob.spk.signed_public(impostor)
    elif which == "one_time":
        opk = bob.opks[0].signed_public(impostor)
    else:
        opk = bob.last_resort.signed_public(impostor)
    bundle = PreKeyBundle(
        bob.keys.device_id, bob.keys.signing_key.public_key, bob.keys.dh_key.public_key, spk, opk
    )
    no_rng = _forbid_dh_and_rng(monkeypatch)
    with pytest.raises(PreKeySignatureError) as info:
        initiate(alice, bundle, no_rng)
    assert isinstance(info.value, SessionSetupError) and isinstance(info.value, SignatureError)
    assert no_rng.calls == []


def test_flipped_signature_bit_and_swapped_key_are_rejected(
    monkeypatch: pytest.MonkeyPatch, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    good = bob.spk.signed_public(bob.keys.signing_key)
    flipped = PreKeyPublic(
        good.kind, good.key_id, good.key, bytes([good.signature[0] ^ 1]) + good.signature[1:]
    )
    other_key = PreKeyPublic(good.kind, good.key_id, bytes(bob.opks[0].public_key), good.signature)
    other_id = PreKeyPublic(good.kind, good.key_id + 1, good.key, good.signature)
    no_rng = _forbid_dh_and_rng(monkeypatch)
    for spk in (flipped, other_key, other_id):
        bundle = replace(bob.bundle(), signed_prekey=spk)
        with pytest.raises(PreKeySignatureError):
            initiate(alice, bundle, no_rng)
    # a bundle whose signing key is another device's fails too
    with pytest.raises(PreKeySignatureError):
        initiate(alice, replace(bob.bundle(), signing_key=alice.signing_key.public_key), no_rng)


def test_bundle_shapes_are_checked(bob: Responder) -> None:
    good = bob.bundle()
    opk = bob.opks[0].signed_public(bob.keys.signing_key)
    spk = bob.spk.signed_public(bob.keys.signing_key)
    with pytest.raises(EncodingError):
        replace(good, signed_prekey=opk)  # one-time prekey offered as signed prekey
    with pytest.raises(EncodingError):
        replace(good, one_time_prekey=spk)  # signed prekey offered as one-time prekey
    with pytest.raises(EncodingError):
        replace(good, device_id=b"short")
    assert good.identity == bob.keys.public


def test_session_with_itself_is_refused(alice: DeviceIdentityKeys, bob: Responder) -> None:
    with pytest.raises(SessionSetupError):
        initiate(bob.keys, bob.bundle())
    header = initiate(alice, bob.bundle()).header
    forged = replace(header, initiator=bob.keys.public)
    with pytest.raises(SessionSetupError):
        respond(bob.keys, bob.store, forged)


# -- responder: prekey lookup and consumption ---------------------------------------


def test_unknown_one_time_prekey_is_rejected(alice: DeviceIdentityKeys, bob: Responder, rng: DRng) -> None:
    never_issued = OneTimePreKey.generate_with_id(555, rng).signed_public(bob.keys.signing_key)
    out = initiate(alice, bob.bundle(never_issued))
    with pytest.raises(PreKeyConsumedError):
        respond(bob.keys, bob.store, out.header)


def test_unknown_signed_or_last_resort_prekey_is_rejected(alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle())
    with pytest.raises(SessionSetupError) as info:
        respond(bob.keys, bob.store, replace(out.header, signed_prekey_id=2))
    assert not isinstance(info.value, PreKeyConsumedError)
    lr = initiate(alice, bob.bundle(bob.last_resort.signed_public(bob.keys.signing_key)))
    with pytest.raises(SessionSetupError) as info:
        respond(bob.keys, bob.store, replace(lr.header, one_time_prekey_id=10))
    assert not isinstance(info.value, PreKeyConsumedError)


def test_one_time_prekey_is_consumed_exactly_once(
    rng: DRng, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    out = initiate(alice, bob.bundle(), rng)
    session = Session.initiate(out, rng)
    first = session.encrypt(b"first", b"env")
    header = session.pending_initial_header
    assert header is not None and len(header) == INITIAL_HEADER_SIZE

    accepted = accept(bob.keys, bob.store, header, first, b"env", rng)
    assert accepted.plaintext == b"first"
    assert accepted.one_time_prekey_id == 100
    assert accepted.initiator == alice.public
    bob.store.remove_one_time_prekey(100)  # what the caller must do, with persisting the session

    replayed = session.encrypt(b"second", b"env")  # same X3DH header: a second run must fail
    with pytest.raises(PreKeyConsumedError):
        accept(bob.keys, bob.store, header, replayed, b"env", rng)
    # ... while the session that was accepted reads it
    assert accepted.session.base_key == session.base_key
    assert accepted.session.decrypt(replayed, b"env") == b"second"


def test_failed_first_message_consumes_nothing(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle(), rng)
    session = Session.initiate(out, rng)
    first = session.encrypt(b"first", b"env")
    header = session.pending_initial_header
    assert header is not None
    before = dict(bob.store.one_time)
    tampered = first[:-1] + bytes([first[-1] ^ 0x80])
    for message, ad in ((tampered, b"env"), (first, b"other envelope")):
        with pytest.raises(DecryptionError):
            accept(bob.keys, bob.store, header, message, ad, rng)
    assert bob.store.one_time == before
    assert accept(bob.keys, bob.store, header, first, b"env", rng).one_time_prekey_id == 100


def test_altered_initial_header_fails_the_first_message(
    rng: DRng, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    """Every header field feeds SK or AD: changing any of them makes the first message fail."""
    session = Session.initiate(initiate(alice, bob.bundle(), rng), rng)
    first = session.encrypt(b"first")
    header = session.pending_initial_header
    assert header is not None
    other = make_device(rng, b"mallory")
    parsed = InitialHeader.decode(header)
    variants = [
        replace(parsed, initiator=replace(parsed.initiator, device_id=bytes(16))),
        replace(parsed, initiator=replace(parsed.initiator, signing_key=other.signing_key.public_key)),
        replace(parsed, initiator=replace(parsed.initiator, dh_key=other.dh_key.public_key)),
        replace(parsed, ephemeral_key=EphemeralKey.generate(rng).public_key),
        replace(parsed, one_time_prekey_id=101),
        replace(parsed, one_time_prekey_kind=None, one_time_prekey_id=None),
    ]
    for variant in variants:
        with pytest.raises(DecryptionError):
            accept(bob.keys, bob.store, variant.encode(), first, b"", rng)
    assert accept(bob.keys, bob.store, header, first, b"", rng).plaintext == b"first"


# -- initial header encoding --------------------------------------------------------


def test_initial_header_layout_and_round_trip(alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle())
    data = out.header.encode()
    assert len(data) == INITIAL_HEADER_SIZE == 128
    assert data[0] == 1
    assert data[1:17] == alice.device_id
    assert data[17:51] == alice.signing_key.public_key.encode()
    assert data[51:85] == alice.dh_key.public_key.encode()
    assert data[85:119] == out.header.ephemeral_key.encode()
    assert data[85:87] == b"\x01\x07"
    assert struct.unpack(">IBI", data[119:128]) == (1, 0x05, 100)
    assert InitialHeader.decode(data) == out.header
    no_opk = initiate(alice, bob.bundle(use_opk=False)).header.encode()
    assert no_opk[119:128] == b"\x00\x00\x00\x01\x00\x00\x00\x00\x00"
    assert InitialHeader.decode(no_opk).one_time_prekey_kind is None


def test_initial_header_decoding_is_strict(alice: DeviceIdentityKeys, bob: Responder) -> None:
    data = initiate(alice, bob.bundle()).header.encode()

    def patched(offset: int, value: bytes) -> bytes:
        return data[:offset] + value + data[offset + len(value) :]

    bad = [
        data[:-1],
        data + b"\x00",
        patched(0, b"\x02"),  # version
        patched(18, b"\x03"),  # signing key with the DH kind
        patched(52, b"\x02"),  # DH key with the signing kind
        patched(86, b"\x03"),  # ephemeral key with another kind
        patched(123, b"\x04"),  # signed prekey kind in the OPK slot
        patched(123, b"\x00"),  # no OPK but a non-zero id
    ]
    for item in bad:
        with pytest.raises(EncodingError):
            InitialHeader.decode(item)
    with pytest.raises(InvalidKeyError):
        InitialHeader.decode(patched(87, bytes(32)))  # low-order ephemeral key
    with pytest.raises(EncodingError):
        InitialHeader(alice.public, EphemeralPublicKey(data[87:119]), 1, None, 5)
    with pytest.raises(EncodingError):
        InitialHeader(alice.public, EphemeralPublicKey(data[87:119]), 2**32)
    with pytest.raises(CryptoError):
        accept(bob.keys, bob.store, data[:-1], b"\x00" * 80)
