"""Thin, checked wrappers over libsodium (through PyNaCl) and the standard library.

Tier one of the package (as in PyNaCl): plain functions over ``bytes`` that check
sizes and translate library failures into :mod:`saltline.crypto.errors`. Everything above
this module uses these functions and never calls libsodium directly, so there is
one place to audit.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import nacl.utils

from saltline.crypto.errors import DecryptionError, InvalidKeyError, SignatureError, UsageError

#: A source of randomness: ``rng(n)`` returns ``n`` random bytes. Production code
#: uses :func:`random_bytes`; test vectors pass a deterministic one.
Rng = Callable[[int], bytes]

X25519_KEY_SIZE = 32
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SEED_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
AEAD_KEY_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
AEAD_NONCE_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
AEAD_TAG_SIZE = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
HASH_SIZE = 32

# The X25519 points of small order (and their non-canonical encodings), as listed by
# libsodium's ``has_small_order``. A DH with any of them yields a value an attacker knows.
_LOW_ORDER_POINTS: frozenset[bytes] = frozenset(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    )
)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from libsodium's CSPRNG."""
    return bytes(nacl.utils.random(n))


def _check_len(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidKeyError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise InvalidKeyError(f"{name} must be {size} bytes, got {len(value)}")


def is_low_order_x25519(public: bytes) -> bool:
    """True if ``public`` is a small-order X25519 point (ignoring the top bit, as X25519 does)."""
    masked = bytes(public[:31]) + bytes([public[31] & 0x7F])
    return masked in _LOW_ORDER_POINTS or bytes(public) in _LOW_ORDER_POINTS


def check_x25519_public(public: bytes) -> bytes:
    """Return ``public`` if it is a usable X25519 public key; raise :class:`InvalidKeyError` if not."""
    _check_len("X25519 public key", public, X25519_KEY_SIZE)
    if is_low_order_x25519(public):
        raise InvalidKeyError("X25519 public key is a low-order point and is refused")
    return bytes(public)


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private scalar."""
    _check_len("X25519 private key", private, X25519_KEY_SIZE)
    return bytes(sodium.crypto_scalarmult_base(bytes(private)))


def x25519(private: bytes, public: bytes) -> bytes:
    """X25519(private, public), refusing low-order public keys and an all-zero result."""
    _check_len("X25519 private key", private, X25519_KEY_SIZE)
    check_x25519_public(public)
    try:
        shared = bytes(sodium.crypto_scalarmult(bytes(private), bytes(public)))
    except (nacl.exceptions.CryptoError, RuntimeError) as exc:  # libsodium refuses all-zero output
        raise InvalidKeyError("X25519 produced an all-zero shared secret") from exc
    if hmac.compare_digest(shared, bytes(32)):
        raise InvalidKeyError("X25519 produced an all-zero shared secret")
    return shared


def ed25519_public(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed (RFC 8032 private key)."""
    _check_len("Ed25519 seed", seed, ED25519_SEED_SIZE)
    return bytes(nacl.signing.SigningKey(bytes(seed)).verify_key)


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """A detached 64-byte Ed25519 signature (deterministic, RFC 8032)."""
    _check_len("Ed25519 seed", seed, ED25519_SEED_SIZE)
    return bytes(nacl.signing.SigningKey(bytes(seed)).sign(bytes(message)).signature)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> None:
    """Verify a detached Ed25519 signature; raise :class:`SignatureError` if it does not verify."""
    _check_len("Ed25519 public key", public, ED25519_PUBLIC_KEY_SIZE)
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise SignatureError(f"signature must be {ED25519_SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        nacl.signing.VerifyKey(bytes(public)).verify(bytes(message), bytes(signature))
    except nacl.exceptions.BadSignatureError as exc:
        raise SignatureError("signature does not verify") from exc
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise SignatureError("signature or public key is malformed") from exc


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF) encryption; returns ciphertext || 16-byte tag."""
    _check_len("AEAD key", key, AEAD_KEY_SIZE)
    _check_len("AEAD nonce", nonce, AEAD_NONCE_SIZE)
    return bytes(
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), bytes(associated_data), bytes(nonce), bytes(key)
        )
    )


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF) decryption; raise :class:`DecryptionError` on any alteration."""
    _check_len("AEAD key", key, AEAD_KEY_SIZE)
    _check_len("AEAD nonce", nonce, AEAD_NONCE_SIZE)
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionError("ciphertext is shorter than the authentication tag")
    try:
        return bytes(
            sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(ciphertext), bytes(associated_data), bytes(nonce), bytes(key)
            )
        )
    except nacl.exceptions.CryptoError as exc:
        raise DecryptionError("message failed authentication") from exc


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(bytes(data)).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(bytes(key), bytes(data), "sha256")  # the one-shot C implementation


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` (zeros if empty), expand to ``length`` bytes.

    Raises :class:`~saltline.crypto.errors.UsageError` unless ``1 <= length <= 8160``."""
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 255 * HASH_SIZE:
        raise UsageError(f"HKDF output length must be 1..{255 * HASH_SIZE}")
    prk = hmac_sha256(salt or bytes(HASH_SIZE), ikm)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, block + bytes(info) + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time that depends only on their lengths."""
    return hmac.compare_digest(bytes(a), bytes(b))
