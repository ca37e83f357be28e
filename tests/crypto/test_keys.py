"""Typed keys: encodings, strict decoding, constant-time equality, no secret in repr, prekeys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.crypto import keys as k
from saltline.crypto import primitives as p
from saltline.crypto.errors import EncodingError, InvalidKeyError, SignatureError, UsageError

SEED = bytes(range(32))
OTHER = bytes(range(1, 33))

PUBLIC_CLASSES: list[type[k.PublicKey]] = [
    k.AccountPublicKey,
    k.DeviceSigningPublicKey,
    k.DeviceDHPublicKey,
    k.EphemeralPublicKey,
    k.SignedPreKeyPublicKey,
    k.OneTimePreKeyPublicKey,
    k.LastResortPreKeyPublicKey,
]


def _raw_public(cls: type[k.PublicKey], seed: bytes = SEED) -> bytes:
    if issubclass(cls, k.X25519PublicKey):
        return p.x25519_public(seed)
    return p.ed25519_public(seed)


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_public_key_encoding_round_trip(cls: type[k.PublicKey]) -> None:
    key = cls(_raw_public(cls))
    enc = key.encode()
    assert len(enc) == k.PUBLIC_KEY_ENCODED_SIZE
    assert enc[0] == k.ENCODING_VERSION and enc[1] == cls.KIND
    assert cls.decode(enc) == key
    assert cls.from_b64(key.to_b64()) == key
    assert bytes(cls.decode(enc)) == bytes(key)


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda c: c.__name__)
def test_public_key_decode_rejects_bad_version_kind_length(cls: type[k.PublicKey]) -> None:
    enc = cls(_raw_public(cls)).encode()
    with pytest.raises(EncodingError):
        cls.decode(bytes([2]) + enc[1:])
    with pytest.raises(EncodingError):
        cls.decode(bytes([0]) + enc[1:])
    for kind in k.KeyKind:
        if kind != cls.KIND:
            with pytest.raises(EncodingError):
                cls.decode(enc[:1] + bytes([kind]) + enc[2:])
    for bad in (enc[:-1], enc + b"\x00", b"", enc[:2]):
        with pytest.raises(EncodingError):
            cls.decode(bad)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_raw_key_wrong_length_rejected(size: int) -> None:
    with pytest.raises(InvalidKeyError):
        k.AccountPublicKey(bytes(size))
    with pytest.raises(InvalidKeyError):
        k.AccountKey(bytes(size))
    with pytest.raises(InvalidKeyError):
        k.DeviceDHKey(bytes(size))


def test_raw_key_wrong_type_rejected() -> None:
    with pytest.raises(InvalidKeyError):
        k.AccountPublicKey("x" * 32)  # type: ignore[arg-type]


def test_equality_is_typed_and_by_value() -> None:
    raw = p.ed25519_public(SEED)
    a = k.AccountPublicKey(raw)
    assert a == k.AccountPublicKey(raw)
    assert hash(a) == hash(k.AccountPublicKey(raw))
    assert a != k.DeviceSigningPublicKey(raw)  # same bytes, other role
    assert a != raw  # never equal to plain bytes
    assert a != k.AccountPublicKey(p.ed25519_public(OTHER))
    assert k.AccountKey(SEED) == k.AccountKey(SEED)
    assert k.AccountKey(SEED) != k.DeviceSigningKey(SEED)
    assert k.AccountKey(SEED) != k.AccountKey(OTHER)


def test_equality_uses_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = p.constant_time_equal

    def spy(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(p, "constant_time_equal", spy)
    assert k.AccountKey(SEED) == k.AccountKey(SEED)
    assert k.DeviceDHPublicKey(p.x25519_public(SEED)) != k.DeviceDHPublicKey(p.x25519_public(OTHER))
    assert len(calls) == 2


PRIVATE_FACTORIES = [
    lambda: k.AccountKey(SEED),
    lambda: k.DeviceSigningKey(SEED),
    lambda: k.DeviceDHKey(SEED),
    lambda: k.EphemeralKey(SEED),
    lambda: k.SignedPreKey(7, SEED),
    lambda: k.OneTimePreKey(8, SEED),
    lambda: k.LastResortPreKey(9, SEED),
]


@pytest.mark.parametrize("make", PRIVATE_FACTORIES)
def test_repr_never_leaks_secret(make: object) -> None:
    assert callable(make)
    key = make()
    text = repr(key) + str(key)
    assert "<secret>" in text
    for needle in (SEED.hex(), SEED.hex()[:16], k.b64encode(SEED), k.b64encode(SEED)[:12], repr(SEED)[2:20]):
        assert needle not in text


def test_public_repr_is_a_fingerprint() -> None:
    key = k.AccountKey(SEED).public_key
    assert repr(key) == f"AccountPublicKey({key.fingerprint()})"
    assert bytes(key).hex() not in repr(key)


def test_signing_contexts_are_domain_separated() -> None:
    key = k.DeviceSigningKey(SEED)
    sig = key.sign(k.SigningContext.PREKEY, b"m")
    key.public_key.verify(k.SigningContext.PREKEY, b"m", sig)
    for ctx in k.SigningContext:
        if ctx is not k.SigningContext.PREKEY:
            with pytest.raises(SignatureError):
                key.public_key.verify(ctx, b"m", sig)
    assert len({c.value for c in k.SigningContext}) == len(k.SigningContext)


@pytest.mark.parametrize("cls", [k.SignedPreKey, k.OneTimePreKey, k.LastResortPreKey])
def test_prekey_signature_verify_and_reject(cls: type[k.PreKey]) -> None:
    signer = k.DeviceSigningKey(SEED)
    prekey = cls.generate_with_id(42, lambda n: OTHER[:n])
    public = prekey.signed_public(signer)
    assert public.kind == cls.KIND and public.key_id == 42
    public.verify(signer.public_key)
    assert k.PreKeyPublic.decode(public.encode()) == public
    assert k.PreKeyPublic.from_b64(public.to_b64()) == public
    assert len(public.encode()) == k.PREKEY_ENCODED_SIZE
    assert public.public_key == cls.PUBLIC(bytes(prekey.public_key))

    # Another signer.
    with pytest.raises(SignatureError):
        public.verify(k.DeviceSigningKey(OTHER).public_key)
    # Altered id, kind, key or signature.
    enc = bytearray(public.encode())
    for index in (2, 5, 6, 37, 38, 101):
        bad = bytearray(enc)
        bad[index] ^= 0x01
        try:
            altered = k.PreKeyPublic.decode(bytes(bad))
        except (EncodingError, InvalidKeyError):
            continue
        with pytest.raises(SignatureError):
            altered.verify(signer.public_key)
    other_kind = next(x for x in k.PREKEY_KINDS if x != cls.KIND)
    relabelled = k.PreKeyPublic(other_kind, public.key_id, public.key, public.signature)
    with pytest.raises(SignatureError):
        relabelled.verify(signer.public_key)


def test_prekey_decode_rejects_malformed() -> None:
    public = k.SignedPreKey(1, SEED).signed_public(k.DeviceSigningKey(SEED))
    enc = public.encode()
    with pytest.raises(EncodingError):
        k.PreKeyPublic.decode(enc[:-1])
    with pytest.raises(EncodingError):
        k.PreKeyPublic.decode(enc + b"\x00")
    with pytest.raises(EncodingError):
        k.PreKeyPublic.decode(bytes([2]) + enc[1:])
    with pytest.raises(EncodingError):
        k.PreKeyPublic.decode(enc[:1] + bytes([k.KeyKind.DEVICE_DH]) + enc[2:])
    with pytest.raises(EncodingError):
        k.SignedPreKey(2**32, SEED)
    with pytest.raises(UsageError):
        k.SignedPreKey.generate()


def test_prekey_equality_includes_id_and_kind() -> None:
    a = k.OneTimePreKey(1, SEED)
    assert a == k.OneTimePreKey(1, SEED) and hash(a) == hash(k.OneTimePreKey(1, SEED))
    assert a != k.OneTimePreKey(2, SEED)  # same key, other id
    assert a != k.LastResortPreKey(1, SEED)  # same key and id, other kind
    assert a != k.SignedPreKey(1, SEED)
    assert len({a, k.OneTimePreKey(2, SEED), k.LastResortPreKey(1, SEED)}) == 3


@given(st.binary(min_size=0, max_size=80))
def test_b64_round_trip(data: bytes) -> None:
    text = k.b64encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert k.b64decode(text) == data


@pytest.mark.parametrize("text", ["AA==", "A+B/", "AB C", "é", "A", "AB\n"])
def test_b64_strict(text: str) -> None:
    with pytest.raises(EncodingError):
        k.b64decode(text)


def test_b64_rejects_non_canonical_trailing_bits() -> None:
    assert k.b64decode("AA") == b"\x00"
    with pytest.raises(EncodingError):
        k.b64decode("AB")  # same byte, non-zero padding bits
