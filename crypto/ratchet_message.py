"""The Double Ratchet's per-message layer: the KDF chain, the message keys and the message header.
:mod:`saltline.crypto.ratchet` (the session state machine) is built on it and re-exports every
name here; the state encoding is in :mod:`saltline.crypto.ratchet_state`.

Key derivation
--------------
* ``KDF_RK(rk, dh_out)``: ``HKDF-SHA256(ikm = dh_out, salt = rk, info = "Saltline ratchet v1",
  length = 64)``; bytes 0..31 are the new root key, bytes 32..63 the new chain key (:func:`kdf_rk`).
* ``KDF_CK(ck)``: ``mk = HMAC-SHA256(ck, 0x01)``, ``ck' = HMAC-SHA256(ck, 0x02)`` (:func:`kdf_ck`).
* AEAD key: ``HKDF-SHA256(ikm = mk, salt = 0x00 * 32, info = "Saltline message key v2",
  length = 32)`` (:func:`message_key`).
* AEAD nonce: 24 bytes drawn from the session's ``rng`` for every message and sent in the
  header. The nonce does **not** depend on ``mk``: a session restored from an older snapshot
  (a crash before the state was persisted, a backup, a cloned phone) re-derives the same
  ``mk`` for the same slot, but encrypts under a fresh random nonce, so no (key, nonce) pair is
  ever used twice (XChaCha20's 192-bit nonces make random nonces safe). A deterministic ``rng``
  is for test vectors only: restoring a snapshot together with the same deterministic ``rng``
  repeats nonces.
* AEAD: XChaCha20-Poly1305 (IETF), 16-byte tag appended to the ciphertext.

Message layout, version 2 (integers big endian)::

    message = header (65) || AEAD ciphertext (len(plaintext) + 16)
    header  = version (1, 0x02) || DHs public key (32, raw X25519) || PN (u32) || N (u32)
              || nonce (24)

    offset  size  field
         0     1  version = 0x02
         1    32  sender's current ratchet public key (raw X25519, not low-order)
        33     4  PN: number of messages in the sender's previous sending chain (<= 2**32 - 2)
        37     4  N: message number in the current sending chain (<= 2**32 - 3)
        41    24  XChaCha20-Poly1305 nonce (random)

Header decoding (:meth:`MessageHeader.decode`, the only header parser) is strict: wrong length,
another version, a low-order ratchet key or a counter out of range raise
:class:`~saltline.crypto.errors.EncodingError` (reported by
:meth:`saltline.crypto.ratchet.Session.decrypt` as :class:`~saltline.crypto.errors.DecryptionError`).

AEAD associated data::

    aead_ad = AD (session AD from X3DH, 168 bytes) || header (65) || associated_data (caller's)

The caller passes the envelope header as ``associated_data`` so that any change the server
makes to routing data, clocks or counters fails authentication. ``AD`` and the header have
fixed sizes, so the concatenation is unambiguous; the header (nonce included) is authenticated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from saltline.crypto import primitives as p
from saltline.crypto.errors import EncodingError
from saltline.crypto.ratchet_state import MAX_COUNTER, MAX_MESSAGE_NUMBER

__all__ = [
    "HEADER_SIZE",
    "HEADER_VERSION",
    "MESSAGE_KEY_INFO",
    "NONCE_SIZE",
    "RATCHET_INFO",
    "MessageHeader",
    "kdf_ck",
    "kdf_rk",
    "message_key",
]

HEADER_VERSION = 2
RATCHET_INFO = b"Saltline ratchet v1"
MESSAGE_KEY_INFO = b"Saltline message key v2"
NONCE_SIZE = p.AEAD_NONCE_SIZE  # 24
_ZERO_SALT = bytes(32)
_HEADER = struct.Struct(">B32sII24s")
HEADER_SIZE = _HEADER.size  # 65


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """``KDF_RK``: (new root key, new chain key)."""
    out = p.hkdf_sha256(dh_out, salt=rk, info=RATCHET_INFO, length=64)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """``KDF_CK``: (message key, next chain key)."""
    return p.hmac_sha256(ck, b"\x01"), p.hmac_sha256(ck, b"\x02")


def message_key(mk: bytes) -> bytes:
    """The 32-byte AEAD key for a message key (the nonce is random and sent in the header)."""
    return p.hkdf_sha256(mk, salt=_ZERO_SALT, info=MESSAGE_KEY_INFO, length=p.AEAD_KEY_SIZE)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The 65-byte ratchet header (layout in the module docstring). Construction checks every
    field and raises :class:`~saltline.crypto.errors.EncodingError`; :meth:`decode` is the only parser
    of headers (used by :meth:`saltline.crypto.ratchet.Session.decrypt`)."""

    ratchet_key: bytes
    previous_chain_length: int
    message_number: int
    nonce: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.ratchet_key, bytes) or len(self.ratchet_key) != p.X25519_KEY_SIZE:
            raise EncodingError("ratchet key must be 32 bytes")
        if p.is_low_order_x25519(self.ratchet_key):
            raise EncodingError("ratchet key is a low-order point")
        if not _is_int(self.previous_chain_length) or not 0 <= self.previous_chain_length <= MAX_COUNTER:
            raise EncodingError(f"previous chain length must be in 0..{MAX_COUNTER}")
        if not _is_int(self.message_number) or not 0 <= self.message_number <= MAX_MESSAGE_NUMBER:
            raise EncodingError(f"message number must be in 0..{MAX_MESSAGE_NUMBER}")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise EncodingError(f"nonce must be {NONCE_SIZE} bytes")

    def encode(self) -> bytes:
        return _HEADER.pack(
            HEADER_VERSION, self.ratchet_key, self.previous_chain_length, self.message_number, self.nonce
        )

    @classmethod
    def decode(cls, data: bytes) -> MessageHeader:
        data = bytes(data)
        if len(data) != HEADER_SIZE:
            raise EncodingError(f"ratchet header must be {HEADER_SIZE} bytes")
        version, key, pn, n, nonce = _HEADER.unpack(data)
        if version != HEADER_VERSION:
            raise EncodingError(f"unsupported ratchet header version {version}")
        return cls(key, pn, n, nonce)
