"""Sealed boxes to a device: one-shot, anonymous public-key encryption (NaCl ``crypto_box_seal``).

Used for payloads such as the device-linking payload. A sealed box is *anonymous*: anyone
who knows the recipient's public key can make one, so the sender must be authenticated
inside the payload (for linking: the one-time secret of the link code).

Layout (libsodium ``crypto_box_seal``, unchanged)::

    sealed  = epk (32) || crypto_box(inner, nonce, recipient_pk, esk)     (48 + len(inner))
    nonce   = BLAKE2b-192(epk || recipient_pk)   (unkeyed, 24-byte output)
    inner   = len(context) (u8, 1..255) || context || plaintext

``crypto_box`` is XSalsa20-Poly1305 with the key HSalsa20(X25519(esk, recipient_pk)); its
output is the 16-byte tag followed by the ciphertext. The ``context`` is a label such as
:data:`LINK_PAYLOAD`: :func:`open` refuses a box made for another context, so a payload
sealed for one purpose can never be accepted as another.

:func:`seal` without ``rng`` calls libsodium, which draws and erases the ephemeral key
itself. With ``rng`` (test vectors), the ephemeral key is ``rng(32)`` and the box is built by
:func:`seal_with_ephemeral` from the same documented construction; tests check that
libsodium's ``crypto_box_seal_open`` opens it.
"""

from __future__ import annotations

import nacl.bindings as sodium
import nacl.exceptions

from saltline.crypto import primitives as p
from saltline.crypto.errors import DecryptionError, EncodingError, InvalidKeyError
from saltline.crypto.keys import X25519PrivateKey, X25519PublicKey

__all__ = [
    "LINK_PAYLOAD",
    "SEAL_OVERHEAD",
    "open",
    "overhead",
    "seal",
    "seal_with_ephemeral",
]

#: libsodium's overhead: ephemeral public key (32) + Poly1305 tag (16).
SEAL_OVERHEAD = sodium.crypto_box_SEALBYTES  # 48
#: Context label for the device-linking payload.
LINK_PAYLOAD = b"saltline/v1/link-payload"
MAX_CONTEXT_SIZE = 255


def _inner(plaintext: bytes, context: bytes) -> bytes:
    context = _context(context)
    return bytes([len(context)]) + context + _bytes(plaintext, "plaintext")


def _bytes(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise EncodingError(f"{what} must be bytes")
    return bytes(value)


def _context(context: bytes) -> bytes:
    context = _bytes(context, "context")
    if not 1 <= len(context) <= MAX_CONTEXT_SIZE:
        raise EncodingError(f"context must be 1..{MAX_CONTEXT_SIZE} bytes")
    return context


def overhead(context: bytes) -> int:
    """Bytes a sealed box adds to a plaintext sealed under ``context``: 48 + 1 + len(context)."""
    return SEAL_OVERHEAD + 1 + len(context)


def seal(recipient: X25519PublicKey, plaintext: bytes, context: bytes, rng: p.Rng | None = None) -> bytes:
    """Seal ``plaintext`` for ``recipient`` (for example a :class:`~saltline.crypto.keys.DeviceDHPublicKey`)
    under ``context``. With ``rng`` the ephemeral key is ``rng(32)`` (deterministic: test
    vectors only); without, libsodium draws it."""
    if not isinstance(recipient, X25519PublicKey):
        raise InvalidKeyError("recipient must be an X25519PublicKey")
    inner = _inner(plaintext, context)
    if rng is not None:
        return _seal_with_ephemeral(recipient, inner, _bytes(rng(32), "rng output"))
    return bytes(sodium.crypto_box_seal(inner, bytes(recipient)))


def seal_with_ephemeral(
    recipient: X25519PublicKey, plaintext: bytes, context: bytes, *, ephemeral_private: bytes
) -> bytes:
    """The ``crypto_box_seal`` construction with a caller-chosen ephemeral private key.

    For test vectors only: reusing ``ephemeral_private`` for two messages loses the
    confidentiality of both. The output opens with libsodium's ``crypto_box_seal_open``.
    """
    if not isinstance(recipient, X25519PublicKey):
        raise InvalidKeyError("recipient must be an X25519PublicKey")
    esk = _bytes(ephemeral_private, "ephemeral_private")
    return _seal_with_ephemeral(recipient, _inner(plaintext, context), esk)


def _seal_with_ephemeral(recipient: X25519PublicKey, inner: bytes, esk: bytes) -> bytes:
    epk = p.x25519_public(esk)
    rpk = bytes(recipient)
    p.x25519(esk, rpk)  # refuses an all-zero shared secret before libsodium sees it
    nonce = sodium.crypto_generichash_blake2b_salt_personal(epk + rpk, digest_size=24)
    try:
        boxed = sodium.crypto_box(inner, nonce, rpk, esk)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise InvalidKeyError("crypto_box refused the keys") from exc
    return epk + bytes(boxed)


def open(private: X25519PrivateKey, ciphertext: bytes, context: bytes) -> bytes:  # use as sealed.open
    """Open a sealed box made for ``private``'s public key under ``context``.

    Raises :class:`DecryptionError` if the box was altered, made for another key, or made
    for another context; :class:`InvalidKeyError` if ``private`` is not an X25519 private key;
    :class:`EncodingError` for a context outside 1..255 bytes.
    """
    if not isinstance(private, X25519PrivateKey):
        raise InvalidKeyError("private must be an X25519PrivateKey")
    context = _context(context)
    ciphertext = _bytes(ciphertext, "ciphertext")
    if len(ciphertext) < SEAL_OVERHEAD + 2:
        raise DecryptionError("sealed box is too short")
    try:
        inner = bytes(sodium.crypto_box_seal_open(ciphertext, bytes(private.public_key), bytes(private)))
    except (nacl.exceptions.CryptoError, ValueError, RuntimeError) as exc:
        raise DecryptionError("sealed box failed authentication") from exc
    n = inner[0]
    if n == 0 or len(inner) < 1 + n or not p.constant_time_equal(inner[1 : 1 + n], context):
        raise DecryptionError("sealed box was made for another context")
    return inner[1 + n :]
