"""X3DH session set-up: agreement, prekey kinds, signature checks, consumption rules, encodings.

The helpers at the top (``DRng``, ``make_device``, ``make_responder``, ``establish``) are also
used by ``test_ratchet.py`` and ``test_ratchet_properties.py``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace

import pytest

from saltline.crypto import device_list as dl
from saltline.crypto import primitives as p
from saltline.crypto.errors import (
    CryptoError,
    DecryptionError,
    EncodingError,
    InvalidKeyError,
    PreKeyConsumedError,
    PreKeySignatureError,
    SessionSetupError,
    SignatureError,
    UntrustedDeviceError,
    UsageError,
)
from saltline.crypto.keys import (
    AccountKey,
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
from saltline.crypto.ratchet import Session, accept
from saltline.crypto.x3dh import (
    AD_SIZE,
    INITIAL_HEADER_SIZE,
    X3DH_INFO,
    DeviceIdentity,
    DeviceIdentityKeys,
    InitialHeader,
    InMemoryPreKeys,
    PreKeyBundle,
    associated_data,
    identity_matches,
    initiate,
    respond,
    trust_device_lists,
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


#: The account whose (verified) device list the test devices belong to.
TEST_ACCOUNT = AccountKey(hashlib.sha256(b"x3dh test account").digest())


def entry_of(keys: DeviceIdentityKeys, added_at: int = 1_700_000_000) -> dl.DeviceEntry:
    """The device-list entry of a test device (what a verified device list would hold)."""
    return dl.bind_device(
        TEST_ACCOUNT.public_key, keys.device_id, keys.signing_key, keys.dh_key.public_key, added_at
    )


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

    @property
    def entry(self) -> dl.DeviceEntry:
        return entry_of(self.keys)

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
    alice = Session.initiate(initiate(alice_keys, bob.bundle(), bob.entry, rng_a), rng_a)
    first = alice.encrypt(b"hello", ad)
    header = alice.pending_initial_header
    assert header is not None
    accepted = accept(bob.keys, bob.store, header, first, ad, rng_b, trusted=entry_of(alice_keys))
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
    out = initiate(alice, bob.bundle(), bob.entry)
    back = respond(bob.keys, bob.store, out.header, trusted=entry_of(alice))
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
    out = initiate(alice, bob.bundle(use_opk=False), bob.entry)
    back = respond(bob.keys, bob.store, out.header, trusted=entry_of(alice))
    assert out.shared_key == back.shared_key
    assert out.header.one_time_prekey_kind is None and out.header.one_time_prekey_id is None
    assert back.one_time_prekey_id is None


def test_last_resort_prekey_is_used_but_never_consumed(alice: DeviceIdentityKeys, bob: Responder) -> None:
    bundle = bob.bundle(bob.last_resort.signed_public(bob.keys.signing_key))
    for _ in range(2):
        out = initiate(alice, bundle, bob.entry)
        back = respond(bob.keys, bob.store, out.header, trusted=entry_of(alice))
        assert out.shared_key == back.shared_key
        assert out.header.one_time_prekey_kind == KeyKind.LAST_RESORT_PREKEY
        assert out.header.one_time_prekey_id == 9
        assert back.one_time_prekey_id is None  # nothing to delete


def test_shared_key_follows_the_documented_derivation(alice: DeviceIdentityKeys, bob: Responder) -> None:
    """SK = HKDF(0xFF*32 || DH1 || DH2 || DH3 || DH4, salt=0*32, info="Saltline X3DH v1", 32)."""
    rng = DRng(b"ephemeral")
    out = initiate(alice, bob.bundle(), bob.entry, rng)
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
    without = initiate(alice, bob.bundle(use_opk=False), bob.entry, DRng(b"ephemeral"))
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
    assert initiate(alice, bob.bundle(), bob.entry).associated_data == ad


def test_swapped_roles_do_not_interoperate(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> None:
    """A responder that believes the roles are swapped computes another AD: the first message fails."""
    out = initiate(alice, bob.bundle(), bob.entry, rng)
    back = respond(bob.keys, bob.store, out.header, trusted=entry_of(alice))
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
        initiate(alice, bundle, bob.entry, no_rng)
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
            initiate(alice, bundle, bob.entry, no_rng)
    # a bundle whose signing key is another device's: not the trusted device ...
    forged = replace(bob.bundle(), signing_key=alice.signing_key.public_key)
    with pytest.raises(UntrustedDeviceError):
        initiate(alice, forged, bob.entry, no_rng)
    # ... and, even if a list claimed that key for Bob's device, the prekeys do not verify
    claimed = dl.DeviceEntry(
        bob.keys.device_id, alice.signing_key.public_key, bob.keys.dh_key.public_key, 0, bytes(64)
    )
    with pytest.raises(PreKeySignatureError):
        initiate(alice, forged, claimed, no_rng)
    assert no_rng.calls == []


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
        initiate(bob.keys, bob.bundle(), bob.entry)
    header = initiate(alice, bob.bundle(), bob.entry).header
    forged = replace(header, initiator=bob.keys.public)
    with pytest.raises(SessionSetupError) as info:
        respond(bob.keys, bob.store, forged, trusted=entry_of(bob.keys))  # own list names itself
    assert not isinstance(info.value, UntrustedDeviceError)
    with pytest.raises(UntrustedDeviceError):
        respond(bob.keys, bob.store, forged, trusted=entry_of(alice))


# -- responder: prekey lookup and consumption ---------------------------------------


def test_unknown_one_time_prekey_is_rejected(alice: DeviceIdentityKeys, bob: Responder, rng: DRng) -> None:
    never_issued = OneTimePreKey.generate_with_id(555, rng).signed_public(bob.keys.signing_key)
    out = initiate(alice, bob.bundle(never_issued), bob.entry)
    with pytest.raises(PreKeyConsumedError):
        respond(bob.keys, bob.store, out.header, trusted=entry_of(alice))


def test_unknown_signed_or_last_resort_prekey_is_rejected(alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle(), bob.entry)
    with pytest.raises(SessionSetupError) as info:
        respond(bob.keys, bob.store, replace(out.header, signed_prekey_id=2), trusted=entry_of(alice))
    assert not isinstance(info.value, PreKeyConsumedError)
    lr = initiate(alice, bob.bundle(bob.last_resort.signed_public(bob.keys.signing_key)), bob.entry)
    with pytest.raises(SessionSetupError) as info:
        respond(bob.keys, bob.store, replace(lr.header, one_time_prekey_id=10), trusted=entry_of(alice))
    assert not isinstance(info.value, PreKeyConsumedError)


def test_one_time_prekey_is_consumed_exactly_once(
    rng: DRng, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    out = initiate(alice, bob.bundle(), bob.entry, rng)
    session = Session.initiate(out, rng)
    first = session.encrypt(b"first", b"env")
    header = session.pending_initial_header
    assert header is not None and len(header) == INITIAL_HEADER_SIZE

    accepted = accept(bob.keys, bob.store, header, first, b"env", rng, trusted=entry_of(alice))
    assert accepted.plaintext == b"first"
    assert accepted.one_time_prekey_id == 100
    assert accepted.initiator == alice.public
    bob.store.remove_one_time_prekey(100)  # what the caller must do, with persisting the session

    replayed = session.encrypt(b"second", b"env")  # same X3DH header: a second run must fail
    with pytest.raises(PreKeyConsumedError):
        accept(bob.keys, bob.store, header, replayed, b"env", rng, trusted=entry_of(alice))
    # ... while the session that was accepted reads it
    assert accepted.session.base_key == session.base_key
    assert accepted.session.decrypt(replayed, b"env") == b"second"


def test_failed_first_message_consumes_nothing(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle(), bob.entry, rng)
    session = Session.initiate(out, rng)
    first = session.encrypt(b"first", b"env")
    header = session.pending_initial_header
    assert header is not None
    before = dict(bob.store.one_time)
    tampered = first[:-1] + bytes([first[-1] ^ 0x80])
    for message, ad in ((tampered, b"env"), (first, b"other envelope")):
        with pytest.raises(DecryptionError):
            accept(bob.keys, bob.store, header, message, ad, rng, trusted=entry_of(alice))
    assert bob.store.one_time == before
    assert (
        accept(bob.keys, bob.store, header, first, b"env", rng, trusted=entry_of(alice)).one_time_prekey_id
        == 100
    )


def test_altered_initial_header_fails_the_first_message(
    rng: DRng, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    """Every header field feeds SK or AD: changing any of them makes the first message fail.
    (A changed initiator identity is refused by the trust policy first; with a policy that
    trusts everyone, the first message still fails.)"""
    session = Session.initiate(initiate(alice, bob.bundle(), bob.entry, rng), rng)
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
    for index, variant in enumerate(variants):
        if index < 3:
            with pytest.raises(UntrustedDeviceError):
                accept(bob.keys, bob.store, variant.encode(), first, b"", rng, trusted=entry_of(alice))
        with pytest.raises(DecryptionError):
            accept(bob.keys, bob.store, variant.encode(), first, b"", rng, trusted=lambda _identity: True)
        if index >= 3:
            with pytest.raises(DecryptionError):
                accept(bob.keys, bob.store, variant.encode(), first, b"", rng, trusted=entry_of(alice))
    assert accept(bob.keys, bob.store, header, first, b"", rng, trusted=entry_of(alice)).plaintext == b"first"


# -- initial header encoding --------------------------------------------------------


def test_initial_header_layout_and_round_trip(alice: DeviceIdentityKeys, bob: Responder) -> None:
    out = initiate(alice, bob.bundle(), bob.entry)
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
    no_opk = initiate(alice, bob.bundle(use_opk=False), bob.entry).header.encode()
    assert no_opk[119:128] == b"\x00\x00\x00\x01\x00\x00\x00\x00\x00"
    assert InitialHeader.decode(no_opk).one_time_prekey_kind is None


def test_initial_header_decoding_is_strict(alice: DeviceIdentityKeys, bob: Responder) -> None:
    data = initiate(alice, bob.bundle(), bob.entry).header.encode()

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
        accept(bob.keys, bob.store, data[:-1], b"\x00" * 80, trusted=entry_of(alice))


# -- trust: both sides check the other device against a verified device list ----------------


@pytest.mark.parametrize("field", ["device_id", "signing_key", "dh_key"])
def test_initiate_refuses_a_bundle_that_is_not_the_trusted_device(
    monkeypatch: pytest.MonkeyPatch, rng: DRng, alice: DeviceIdentityKeys, bob: Responder, field: str
) -> None:
    other = make_device(rng, b"mallory")
    entry = bob.entry
    wrong = {
        "device_id": replace(entry, device_id=other.device_id),
        "signing_key": replace(entry, signing_key=other.signing_key.public_key),
        "dh_key": replace(entry, dh_key=other.dh_key.public_key),
    }[field]
    no_rng = _forbid_dh_and_rng(monkeypatch)
    with pytest.raises(UntrustedDeviceError) as info:
        initiate(alice, bob.bundle(), wrong, no_rng)
    assert isinstance(info.value, SessionSetupError)
    assert no_rng.calls == []
    # a server that substitutes a whole (validly signed) bundle of another device is refused too
    mallory = make_responder(rng, b"mallory")
    with pytest.raises(UntrustedDeviceError):
        initiate(alice, mallory.bundle(), entry, no_rng)


def test_initiate_requires_a_device_entry(alice: DeviceIdentityKeys, bob: Responder) -> None:
    with pytest.raises(UsageError):
        initiate(alice, bob.bundle(), bob.keys.public)  # type: ignore[arg-type]
    assert identity_matches(bob.keys.public, bob.entry)
    assert not identity_matches(alice.public, bob.entry)


def _first_message(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> tuple[bytes, bytes]:
    session = Session.initiate(initiate(alice, bob.bundle(), bob.entry, rng), rng)
    first = session.encrypt(b"first", b"env")
    header = session.pending_initial_header
    assert header is not None
    return header, first


def test_accept_refuses_an_untrusted_initiator_before_anything(
    monkeypatch: pytest.MonkeyPatch, rng: DRng, alice: DeviceIdentityKeys, bob: Responder
) -> None:
    header, first = _first_message(rng, alice, bob)
    stranger = make_device(rng, b"stranger")
    before = dict(bob.store.one_time)
    no_rng = _forbid_dh_and_rng(monkeypatch)
    seen: list[DeviceIdentity] = []

    def policy(identity: DeviceIdentity) -> bool:
        seen.append(identity)
        return False

    refusing = [
        entry_of(stranger),
        replace(entry_of(alice), dh_key=stranger.dh_key.public_key),
        policy,
        lambda _identity: 1,  # truthy is not enough: the policy must return True
    ]
    for trusted in refusing:
        with pytest.raises(UntrustedDeviceError):
            accept(bob.keys, bob.store, header, first, b"env", no_rng, trusted=trusted)  # type: ignore[arg-type]
        with pytest.raises(UntrustedDeviceError):
            respond(bob.keys, bob.store, InitialHeader.decode(header), trusted=trusted)  # type: ignore[arg-type]
    assert seen == [alice.public, alice.public]
    assert no_rng.calls == [] and bob.store.one_time == before
    with pytest.raises(UsageError):
        accept(bob.keys, bob.store, header, first, b"env", no_rng, trusted=alice.public)  # type: ignore[arg-type]


def test_accept_with_verified_device_lists(rng: DRng, alice: DeviceIdentityKeys, bob: Responder) -> None:
    header, first = _first_message(rng, alice, bob)
    other = make_device(rng, b"other")
    alice_list = dl.verify(
        dl.first(TEST_ACCOUNT, "alice", [entry_of(alice), entry_of(other)]), TEST_ACCOUNT.public_key
    )
    other_list = dl.verify(dl.first(TEST_ACCOUNT, "carol", [entry_of(other)]), TEST_ACCOUNT.public_key)
    with pytest.raises(UntrustedDeviceError):
        accept(bob.keys, bob.store, header, first, b"env", rng, trusted=trust_device_lists(other_list))
    accepted = accept(
        bob.keys, bob.store, header, first, b"env", rng, trusted=trust_device_lists(other_list, alice_list)
    )
    assert accepted.plaintext == b"first" and accepted.initiator == alice.public
    with pytest.raises(UsageError):
        trust_device_lists(entry_of(alice))  # type: ignore[arg-type]
