"""Attachments: libsodium secretstream (XChaCha20-Poly1305) with a random key per attachment.

The sender encrypts the file, uploads the ciphertext, and sends :class:`AttachmentKey` (key,
SHA-256 of the ciphertext, plaintext size) inside the end-to-end encrypted message.

Framing::

    ciphertext = header (24) || chunk_1 || ... || chunk_n            n = max(1, ceil(size / CHUNK_SIZE))
    chunk_i    = crypto_secretstream_xchacha20poly1305_push(state, m_i, ad=None, tag_i)
               = 17 + len(m_i) bytes (1 encrypted tag byte || ciphertext || 16-byte MAC)
    m_i        = plaintext[(i-1)*CHUNK_SIZE : i*CHUNK_SIZE]     CHUNK_SIZE = 65536
    tag_i      = TAG_MESSAGE (0x00) for i < n, TAG_FINAL (0x03) for i = n
    digest     = SHA-256(ciphertext)

Every chunk but the last holds exactly ``CHUNK_SIZE`` plaintext bytes; the last holds 0 to
``CHUNK_SIZE`` (an empty attachment is one empty FINAL chunk; a size that is a positive
multiple of ``CHUNK_SIZE`` ends with a full FINAL chunk). A reader therefore knows every chunk
boundary from the byte count alone, and refuses with :class:`StreamError`: a stream that ends
without FINAL (truncation), a FINAL chunk followed by anything (extension), any chunk that
fails authentication (tampering, reordering — each chunk's nonce is its position), a short
non-final chunk, an empty FINAL chunk after data (not the canonical framing) and any tag
other than MESSAGE or FINAL.

Deterministic encryption (test vectors): libsodium's ``init_push`` draws the 24-byte header
from its own RNG and PyNaCl offers no way to choose it. Here the header is ``rng(24)`` and
the push state is set with ``init_pull(header, key)``: in libsodium both functions derive the
identical state (``k = HChaCha20(key, header[0:16])``, counter = 1, inonce = header[16:24]);
``init_push`` only differs by drawing the header. ``tests/crypto/test_attachments.py`` checks
that this gives byte-for-byte the ciphertext of ``init_push`` for the same header. So the
default and the deterministic path are one code path; with the default ``rng`` the key and
header come from libsodium's CSPRNG.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from saltline.crypto import primitives as p
from saltline.crypto.errors import EncodingError, InvalidKeyError, StreamError, UsageError

__all__ = [
    "ABYTES",
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentKey",
    "EncryptedAttachment",
    "ciphertext_size",
    "decrypt",
    "encrypt",
    "iter_decrypt",
]

KEY_SIZE = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES  # 32
HEADER_SIZE = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE  # 0
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL  # 3
CHUNK_SIZE = 64 * 1024
CIPHER_CHUNK_SIZE = CHUNK_SIZE + ABYTES
ATTACHMENT_KEY_VERSION = 1
ATTACHMENT_KEY_SIZE = 1 + KEY_SIZE + 32 + 8  # 73
_ATTACHMENT_KEY = struct.Struct(">B32s32sQ")


def ciphertext_size(plaintext_size: int) -> int:
    """The exact ciphertext size for a plaintext of ``plaintext_size`` bytes."""
    if isinstance(plaintext_size, bool) or not isinstance(plaintext_size, int) or plaintext_size < 0:
        raise UsageError("size must be a non-negative int")
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return HEADER_SIZE + plaintext_size + chunks * ABYTES


@dataclass(frozen=True, slots=True)
class AttachmentKey:
    """What the message that references an attachment carries: the stream key, the SHA-256
    digest of the ciphertext, and the plaintext size.

    Encoding: ``version (u8, 0x01) || key (32) || digest (32) || size (u64 BE)`` = 73 bytes.
    """

    key: bytes
    digest: bytes
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_SIZE:
            raise EncodingError("attachment key must be 32 bytes")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise EncodingError("attachment digest must be 32 bytes")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size < 2**64:
            raise EncodingError("attachment size must fit in 64 bits unsigned")

    def encode(self) -> bytes:
        return _ATTACHMENT_KEY.pack(ATTACHMENT_KEY_VERSION, self.key, self.digest, self.size)

    @classmethod
    def decode(cls, data: bytes) -> AttachmentKey:
        data = bytes(data)
        if len(data) != ATTACHMENT_KEY_SIZE:
            raise EncodingError(f"attachment key must be {ATTACHMENT_KEY_SIZE} bytes")
        version, key, digest, size = _ATTACHMENT_KEY.unpack(data)
        if version != ATTACHMENT_KEY_VERSION:
            raise EncodingError(f"unsupported attachment key version {version}")
        return cls(key, digest, size)

    def __repr__(self) -> str:
        return f"AttachmentKey(<secret>, digest={self.digest[:8].hex()}, size={self.size})"


@dataclass(frozen=True, slots=True)
class EncryptedAttachment:
    """An encrypted attachment: the bytes to upload and the key to send in the message."""

    ciphertext: bytes
    key: AttachmentKey

    def __repr__(self) -> str:
        return f"EncryptedAttachment({len(self.ciphertext)} bytes, {self.key!r})"


def _key_bytes(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_SIZE:
        raise InvalidKeyError(f"attachment key must be {KEY_SIZE} bytes")
    return bytes(key)


def _state_for(header: bytes, key: bytes) -> sodium.crypto_secretstream_xchacha20poly1305_state:
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    return state


class AttachmentEncryptor:
    """Incremental encryption: feed plaintext with :meth:`update`, then call :meth:`finalize`.

    Output is emitted a whole chunk at a time; one chunk of plaintext is held back so that the
    last chunk can carry TAG_FINAL.
    """

    __slots__ = ("_buffer", "_digest", "_done", "_key", "_pending", "_size", "_state")

    def __init__(self, key: bytes | None = None, *, rng: p.Rng = p.random_bytes) -> None:
        """``key`` defaults to ``rng(32)``; the header is then ``rng(24)``."""
        self._key = _key_bytes(rng(KEY_SIZE) if key is None else key)
        header = rng(HEADER_SIZE)
        if not isinstance(header, bytes) or len(header) != HEADER_SIZE:
            raise UsageError("rng returned a header of the wrong size")
        self._state = _state_for(header, self._key)
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._size = 0
        self._done = False
        self._pending = self._emit(header)  # returned by the first update() or finalize()

    def _emit(self, data: bytes) -> bytes:
        self._digest.update(data)
        return data

    def update(self, data: bytes) -> bytes:
        if self._done:
            raise UsageError("encryptor already finalised")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UsageError("attachment data must be bytes")
        self._buffer += data
        self._size += len(data)
        out = [self._pending]
        self._pending = b""
        # Keep at least one byte buffered: whether a full chunk is the last one is known only at finalize.
        while len(self._buffer) > CHUNK_SIZE:
            chunk = bytes(self._buffer[:CHUNK_SIZE])
            del self._buffer[:CHUNK_SIZE]
            out.append(
                self._emit(
                    sodium.crypto_secretstream_xchacha20poly1305_push(self._state, chunk, None, TAG_MESSAGE)
                )
            )
        return b"".join(out)

    def ciphertext_hash(self) -> hashlib._Hash:
        """A copy of the running SHA-256 of the ciphertext returned so far (after
        :meth:`finalize`: of the whole ciphertext), e.g. to extend it over padding."""
        return self._digest.copy()

    def finalize(self) -> tuple[bytes, AttachmentKey]:
        """The remaining ciphertext (the FINAL chunk) and the attachment key with the digest."""
        if self._done:
            raise UsageError("encryptor already finalised")
        self._done = True
        last = self._emit(
            sodium.crypto_secretstream_xchacha20poly1305_push(
                self._state, bytes(self._buffer), None, TAG_FINAL
            )
        )
        out = self._pending + last
        self._pending = b""
        self._buffer.clear()
        return out, AttachmentKey(self._key, self._digest.digest(), self._size)


def encrypt(
    data: bytes | Iterable[bytes], key: bytes | None = None, *, rng: p.Rng = p.random_bytes
) -> EncryptedAttachment:
    """Encrypt ``data`` (bytes, or an iterable of byte chunks of any sizes) in memory.

    ``rng`` draws the key (unless given) then the 24-byte header.
    """
    enc = AttachmentEncryptor(key, rng=rng)
    parts: list[bytes] = []
    if isinstance(data, bytes | bytearray | memoryview):
        parts.append(enc.update(bytes(data)))
    else:
        for piece in data:
            parts.append(enc.update(bytes(piece)))
    tail, attachment_key = enc.finalize()
    parts.append(tail)
    return EncryptedAttachment(b"".join(parts), attachment_key)


class AttachmentDecryptor:
    """Incremental decryption of a downloaded stream.

    :meth:`update` returns plaintext as soon as a chunk authenticates, but the attachment is
    complete and authentic only once :meth:`finalize` returns without error (it checks the
    FINAL tag, the digest and the size if given): do not use or show output before.
    """

    __slots__ = ("_buffer", "_digest", "_expected", "_finished", "_key", "_size", "_state")

    def __init__(self, key: bytes | AttachmentKey) -> None:
        self._expected = key if isinstance(key, AttachmentKey) else None
        self._key = key.key if isinstance(key, AttachmentKey) else _key_bytes(key)
        self._state: sodium.crypto_secretstream_xchacha20poly1305_state | None = None
        self._buffer = bytearray()
        # the digest is checked only against an AttachmentKey's (a bare key: the caller's job)
        self._digest = hashlib.sha256() if self._expected is not None else None
        self._finished = False
        self._size = 0

    def _pull(self, chunk: bytes) -> bytes:
        assert self._state is not None
        try:
            message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(self._state, chunk, None)
        except (nacl.exceptions.CryptoError, ValueError, RuntimeError) as exc:
            raise StreamError("attachment chunk failed authentication (altered or reordered)") from exc
        if tag == TAG_FINAL:
            if not message and self._size:
                raise StreamError("empty final chunk after data (non-canonical framing)")
            self._finished = True
        elif tag != TAG_MESSAGE:
            raise StreamError("attachment chunk carries an unexpected tag")
        elif len(message) != CHUNK_SIZE:
            raise StreamError("a non-final attachment chunk is short")
        self._size += len(message)
        return bytes(message)

    def update(self, data: bytes) -> bytes:
        data = bytes(data)
        if not data:
            return b""
        if self._finished:
            raise StreamError("data after the final attachment chunk")
        if self._digest is not None:
            self._digest.update(data)
        position = 0
        if self._state is None:
            position = min(len(data), HEADER_SIZE - len(self._buffer))
            self._buffer += data[:position]
            if len(self._buffer) < HEADER_SIZE:
                return b""
            self._state = _state_for(bytes(self._buffer), self._key)
            self._buffer.clear()
        out: list[bytes] = []
        if self._buffer:  # complete the chunk held back from the last call
            take = min(len(data) - position, CIPHER_CHUNK_SIZE - len(self._buffer))
            self._buffer += data[position : position + take]
            position += take
            if len(self._buffer) < CIPHER_CHUNK_SIZE:
                return b""
            out.append(self._pull(bytes(self._buffer)))
            self._buffer.clear()
        # whole chunks straight from ``data`` (one copy each); the rest is held back
        while len(data) - position >= CIPHER_CHUNK_SIZE:
            if self._finished:
                raise StreamError("data after the final attachment chunk")
            out.append(self._pull(data[position : position + CIPHER_CHUNK_SIZE]))
            position += CIPHER_CHUNK_SIZE
        if position < len(data):
            if self._finished:
                raise StreamError("data after the final attachment chunk")
            self._buffer += data[position:]
        return b"".join(out)

    def finalize(self) -> bytes:
        """The last plaintext bytes; raises :class:`StreamError` unless the stream ended properly."""
        out = b""
        if not self._finished:
            if self._state is None:
                raise StreamError("attachment is shorter than its header")
            if len(self._buffer) < ABYTES:
                raise StreamError("attachment is truncated (no final chunk)")
            chunk = bytes(self._buffer)
            self._buffer.clear()
            out = self._pull(chunk)
            if not self._finished:
                raise StreamError("attachment is truncated (no final chunk)")
        if self._expected is not None and self._digest is not None:
            if not p.constant_time_equal(self._digest.digest(), self._expected.digest):
                raise StreamError("attachment digest does not match")
            if self._size != self._expected.size:
                raise StreamError("attachment size does not match")
        return out


def decrypt(ciphertext: bytes, key: bytes | AttachmentKey) -> bytes:
    """Decrypt a whole attachment. With an :class:`AttachmentKey` the digest is checked first
    and the size last; with a bare key only the stream itself is authenticated."""
    ciphertext = bytes(ciphertext)
    if isinstance(key, AttachmentKey) and not p.constant_time_equal(p.sha256(ciphertext), key.digest):
        raise StreamError("attachment digest does not match")
    dec = AttachmentDecryptor(key)
    plaintext = dec.update(ciphertext) + dec.finalize()
    return plaintext


def iter_decrypt(chunks: Iterable[bytes], key: bytes | AttachmentKey) -> Iterator[bytes]:
    """Decrypt a stream of ciphertext pieces, yielding plaintext; the generator raises
    :class:`StreamError` at its end if the stream is incomplete. Use the output only once the
    generator is exhausted without error."""
    dec = AttachmentDecryptor(key)
    for piece in chunks:
        out = dec.update(piece)
        if out:
            yield out
    tail = dec.finalize()
    if tail:
        yield tail
