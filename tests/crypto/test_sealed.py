"""Sealed boxes: round trips, context binding, failures, and the deterministic construction
checked against libsodium's own crypto_box_seal_open (nacl.public.SealedBox)."""

from __future__ import annotations

import hashlib

import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.crypto import primitives as p
from saltline.crypto import sealed
from saltline.crypto.errors import DecryptionError, EncodingError, InvalidKeyError
from saltline.crypto.keys import DeviceDHKey, EphemeralKey

RECIPIENT = DeviceDHKey(hashlib.sha256(b"recipient").digest())
OTHER = DeviceDHKey(hashlib.sha256(b"other").digest())
CTX = sealed.LINK_PAYLOAD
ESK = hashlib.sha256(b"ephemeral").digest()


def test_round_trip() -> None:
    box = sealed.seal(RECIPIENT.public_key, b"account key and catch-up", CTX)
    assert len(box) == len(b"account key and catch-up") + sealed.overhead(CTX)
    assert sealed.open(RECIPIENT, box, CTX) == b"account key and catch-up"


def test_randomised_by_default() -> None:
    assert sealed.seal(RECIPIENT.public_key, b"x", CTX) != sealed.seal(RECIPIENT.public_key, b"x", CTX)


def test_empty_plaintext() -> None:
    assert sealed.open(RECIPIENT, sealed.seal(RECIPIENT.public_key, b"", CTX), CTX) == b""


def test_wrong_recipient() -> None:
    box = sealed.seal(RECIPIENT.public_key, b"secret", CTX)
    with pytest.raises(DecryptionError):
        sealed.open(OTHER, box, CTX)


def test_wrong_context() -> None:
    box = sealed.seal(RECIPIENT.public_key, b"secret", CTX)
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, box, b"saltline/v1/something-else")
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, box, CTX + b"x")
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, box, CTX[:-1])


def test_context_checked_for_size() -> None:
    for context in (b"", b"c" * 256):
        with pytest.raises(EncodingError):
            sealed.seal(RECIPIENT.public_key, b"x", context)
        with pytest.raises(EncodingError):
            sealed.seal_with_ephemeral(
                RECIPIENT.public_key, b"x", context, ephemeral_private=bytes(range(32))
            )
        with pytest.raises(EncodingError):
            sealed.open(RECIPIENT, sealed.seal(RECIPIENT.public_key, b"x", CTX), context)


@pytest.mark.parametrize("index", [0, 31, 32, 47, 48, -1])
def test_tamper(index: int) -> None:
    box = bytearray(sealed.seal(RECIPIENT.public_key, b"secret payload", CTX))
    box[index] ^= 0x01
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, bytes(box), CTX)


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49])
def test_too_short(size: int) -> None:
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, bytes(size), CTX)


def test_low_order_ephemeral_in_box_refused() -> None:
    box = bytes(32) + bytes(40)
    with pytest.raises(DecryptionError):
        sealed.open(RECIPIENT, box, CTX)


def test_deterministic_construction_layout() -> None:
    box = sealed.seal_with_ephemeral(RECIPIENT.public_key, b"vector", CTX, ephemeral_private=ESK)
    assert box == sealed.seal_with_ephemeral(RECIPIENT.public_key, b"vector", CTX, ephemeral_private=ESK)
    epk = EphemeralKey(ESK).public_key
    assert box[:32] == bytes(epk)
    # Reconstruct with PyNaCl's Box: nonce = BLAKE2b-192(epk || rpk), crypto_box(inner).
    nonce = hashlib.blake2b(bytes(epk) + bytes(RECIPIENT.public_key), digest_size=24).digest()
    inner = bytes([len(CTX)]) + CTX + b"vector"
    boxed = nacl.public.Box(
        nacl.public.PrivateKey(ESK), nacl.public.PublicKey(bytes(RECIPIENT.public_key))
    ).encrypt(inner, nonce)
    assert box[32:] == boxed.ciphertext


def test_deterministic_box_opens_with_libsodium_sealedbox() -> None:
    box = sealed.seal_with_ephemeral(RECIPIENT.public_key, b"vector", CTX, ephemeral_private=ESK)
    opened = nacl.public.SealedBox(nacl.public.PrivateKey(bytes(RECIPIENT))).decrypt(box)
    assert opened == bytes([len(CTX)]) + CTX + b"vector"
    assert sealed.open(RECIPIENT, box, CTX) == b"vector"


def test_rng_injection_is_the_deterministic_construction() -> None:
    box = sealed.seal(RECIPIENT.public_key, b"vector", CTX, rng=lambda n: ESK[:n])
    assert box == sealed.seal_with_ephemeral(RECIPIENT.public_key, b"vector", CTX, ephemeral_private=ESK)


def test_libsodium_seal_opens_with_manual_layout() -> None:
    # The other direction: a box from libsodium's crypto_box_seal has the documented layout.
    box = sealed.seal(RECIPIENT.public_key, b"abc", CTX)
    epk = box[:32]
    nonce = hashlib.blake2b(epk + bytes(RECIPIENT.public_key), digest_size=24).digest()
    inner = nacl.public.Box(nacl.public.PrivateKey(bytes(RECIPIENT)), nacl.public.PublicKey(epk)).decrypt(
        box[32:], nonce
    )
    assert inner == bytes([len(CTX)]) + CTX + b"abc"


def test_deterministic_refuses_unusable_ephemeral() -> None:
    with pytest.raises(InvalidKeyError):
        sealed.seal_with_ephemeral(RECIPIENT.public_key, b"x", CTX, ephemeral_private=b"short")


def test_type_checks() -> None:
    """Every failure is a CryptoError: wrong key types are InvalidKeyError."""
    with pytest.raises(InvalidKeyError):
        sealed.seal(bytes(RECIPIENT.public_key), b"x", CTX)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        sealed.open(bytes(RECIPIENT), b"x" * 60, CTX)  # type: ignore[arg-type]
    with pytest.raises(EncodingError):
        sealed.seal(RECIPIENT.public_key, "text", CTX)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=300), esk=st.binary(min_size=32, max_size=32))
def test_property_deterministic_round_trip(plaintext: bytes, esk: bytes) -> None:
    box = sealed.seal_with_ephemeral(RECIPIENT.public_key, plaintext, CTX, ephemeral_private=esk)
    assert sealed.open(RECIPIENT, box, CTX) == plaintext
    assert p.x25519_public(esk) == box[:32]
