"""Attachment pointers: what a message carries so that a recipient can fetch, verify and decrypt
an attachment (docs/protocol/sealed-and-attachments.md § 4). Pure: no I/O.

A pointer is the ``attachment`` member of a ``message`` operation (sync.md § 2)::

    {"chunk_size": 65536, "digest": b64u(32), "id": b64u(32), "key": b64u(32),
     "mime": "image/png", "name": "cat.png", "padded_size": P, "size": S}

- ``id``: the server's attachment id (32 random bytes, the capability to read it);
- ``key``: the secretstream key (fresh per attachment);
- ``digest``: SHA-256 of the ``padded_size`` bytes stored on the server;
- ``size``: the plaintext size; ``padded_size = padme(ciphertext_size(size))`` exactly;
- ``chunk_size``: the secretstream plaintext chunk size (65536, the only one defined);
- ``name``: 1-255 characters, no ``/``, ``\\``, control characters, not ``.`` or ``..``;
- ``mime``: ``type/subtype`` in lower case (at most 127 characters).

The stored blob is ``ciphertext || zero bytes`` up to ``padded_size``; the digest covers the
padding too, so a reader verifies the whole blob and decrypts its first ``ciphertext_size(size)``
bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from saltline.crypto.attachments import CHUNK_SIZE, ciphertext_size
from saltline.crypto.padding import padme

ID_SIZE = 32
KEY_SIZE = 32
DIGEST_SIZE = 32
MAX_NAME = 255
MAX_MIME = 127
#: Larger than any server's limit; a pointer claiming more is malformed.
MAX_SIZE = 2**40
DEFAULT_MIME = "application/octet-stream"
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_FIELDS = frozenset({"chunk_size", "digest", "id", "key", "mime", "name", "padded_size", "size"})


class PointerError(ValueError):
    """A malformed attachment pointer (the message carrying it is malformed)."""


def padded_size(size: int) -> int:
    """The stored length of an attachment of ``size`` plaintext bytes."""
    return padme(ciphertext_size(size))


def valid_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= MAX_NAME
        and name not in (".", "..")
        and not any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    )


#: What a sender refuses in a file name besides :func:`valid_name`'s rules: C1 controls and
#: bidirectional controls (a receiver still accepts them, and shows them escaped).
_UNSAFE_TO_SEND = frozenset([*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]) | {
    0x200E,
    0x200F,
    0x061C,
}


def sendable_name(name: object) -> bool:
    """A name this client sends: :func:`valid_name` without C1 or bidirectional controls."""
    return valid_name(name) and not any(ord(c) in _UNSAFE_TO_SEND for c in str(name))


def valid_mime(mime: object) -> bool:
    return isinstance(mime, str) and len(mime) <= MAX_MIME and _MIME.fullmatch(mime) is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: object, size: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise PointerError(f"{what} is base64url text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PointerError(f"{what} is not base64url") from exc
    if len(raw) != size or _b64(raw) != text:
        raise PointerError(f"{what} is {size} bytes in canonical base64url")
    return raw


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise PointerError(f"{what} is an integer from 0 to 2^40")
    return value


@dataclass(frozen=True, slots=True)
class AttachmentPointer:
    id: bytes
    key: bytes
    digest: bytes
    padded_size: int
    size: int
    name: str
    mime: str
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if len(self.id) != ID_SIZE or len(self.key) != KEY_SIZE or len(self.digest) != DIGEST_SIZE:
            raise PointerError("id, key and digest are 32 bytes")
        size = _int(self.size, "size")
        if self.chunk_size != CHUNK_SIZE:
            raise PointerError(f"chunk_size must be {CHUNK_SIZE}")
        if _int(self.padded_size, "padded_size") != padded_size(size):
            raise PointerError("padded_size must be padme(ciphertext_size(size))")
        if not valid_name(self.name):
            raise PointerError("a name is 1-255 characters without '/', '\\\\' or control characters")
        if not valid_mime(self.mime):
            raise PointerError("a MIME type is type/subtype in lower case")

    @property
    def ref(self) -> str:
        """The attachment id in base64url (the server's name for it)."""
        return _b64(self.id)

    @property
    def ciphertext_size(self) -> int:
        return ciphertext_size(self.size)

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "digest": _b64(self.digest),
            "id": _b64(self.id),
            "key": _b64(self.key),
            "mime": self.mime,
            "name": self.name,
            "padded_size": self.padded_size,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, doc: object) -> AttachmentPointer:
        if not isinstance(doc, dict):
            raise PointerError("an attachment pointer is an object")
        if set(doc) != _FIELDS:
            raise PointerError(f"an attachment pointer has exactly the members {sorted(_FIELDS)}")
        chunk = doc["chunk_size"]
        if type(chunk) is not int:
            raise PointerError("chunk_size is an integer")
        return cls(
            _unb64(doc["id"], ID_SIZE, "id"),
            _unb64(doc["key"], KEY_SIZE, "key"),
            _unb64(doc["digest"], DIGEST_SIZE, "digest"),
            _int(doc["padded_size"], "padded_size"),
            _int(doc["size"], "size"),
            doc["name"] if isinstance(doc["name"], str) else "",
            doc["mime"] if isinstance(doc["mime"], str) else "",
            chunk,
        )

    def __repr__(self) -> str:
        return (
            f"AttachmentPointer(id={self.ref[:8]}…, <key>, size={self.size}, "
            f"name={self.name!r}, mime={self.mime!r})"
        )


def safe_file_name(name: str) -> str:
    """A name to write under a directory the user chose: the pointer's name is already free of
    separators; a leading dot is kept out (no hidden files)."""
    cleaned = name.lstrip(".") or "attachment"
    return cleaned[:MAX_NAME]


def pointer_of(op_json: bytes) -> AttachmentPointer | None:
    """The attachment pointer of a stored message's operation JSON, if it has a valid one."""
    try:
        doc = json.loads(op_json)
        if isinstance(doc, dict) and doc.get("attachment") is not None:
            return AttachmentPointer.from_json(doc["attachment"])
    except (ValueError, UnicodeDecodeError):
        pass
    return None
