"""The canonical, versioned encoding of a Double Ratchet session's private state, and the session
limits it checks. Secret: it holds the root, chain and skipped message keys.
:meth:`saltline.crypto.ratchet.Session.to_bytes` and ``from_bytes`` are the entry points.

Layout, version 1, integers big endian::

    version      1   0x01 (other values: StateVersionError)
    flags        1   bit0 DHr present, bit1 CKs present (needs bit0), bit2 CKr present
                     (needs bit0), bit3 pending initial header present; other bits MUST be 0
    RK          32
    DHs private 32   (the public key is recomputed on load)
    base key    32   EK_A of the X3DH run
    Ns, Nr, PN  3 x u32, each <= MAX_COUNTER (2**32 - 2)
    DHr         32   if bit0 (not low-order)
    CKs         32   if bit1
    CKr         32   if bit2
    init header 128  if bit3 (saltline.crypto.x3dh.InitialHeader encoding)
    AD length   u16, MUST be 168, then AD = identity(initiator) || identity(responder), each
                half a valid saltline.crypto.x3dh.DeviceIdentity encoding
    previous    u8 count (<= MAX_PREVIOUS_CHAINS), then count x 32-byte peer ratchet keys
                (not low-order), oldest first
    skipped     u16 count (<= MAX_STORED_SKIPPED), then count x (ratchet key 32 (not
                low-order) || N u32 (<= MAX_MESSAGE_NUMBER) || mk 32), oldest first; no
                (ratchet key, N) twice
    nothing after; anything else raises EncodingError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from saltline.crypto import primitives as p
from saltline.crypto.errors import CryptoError, EncodingError, StateVersionError
from saltline.crypto.x3dh import (
    AD_SIZE,
    IDENTITY_ENCODED_SIZE,
    INITIAL_HEADER_SIZE,
    DeviceIdentity,
    InitialHeader,
)

__all__ = [
    "MAX_COUNTER",
    "MAX_MESSAGE_NUMBER",
    "MAX_PREVIOUS_CHAINS",
    "MAX_STORED_SKIPPED",
    "STATE_VERSION",
    "SessionFields",
    "decode",
    "encode",
]

STATE_VERSION = 1
MAX_STORED_SKIPPED = 2000
MAX_PREVIOUS_CHAINS = 5
MAX_COUNTER = 2**32 - 2  # largest Ns, Nr, PN
MAX_MESSAGE_NUMBER = MAX_COUNTER - 1  # largest N
_FIXED = struct.Struct(">BB32s32s32sIII")
_SKIPPED_ENTRY = struct.Struct(">32sI32s")
_F_DHR, _F_CKS, _F_CKR, _F_HDR = 1, 2, 4, 8
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")


@dataclass(slots=True)
class SessionFields:
    """A session's state, field for field (names as in the Signal specification)."""

    rk: bytes
    dhs_priv: bytes
    dhs_pub: bytes
    dhr: bytes | None
    cks: bytes | None
    ckr: bytes | None
    ns: int
    nr: int
    pn: int
    ad: bytes
    base_key: bytes
    initial_header: bytes | None
    previous: list[bytes]
    skipped: dict[tuple[bytes, int], bytes]


def encode(f: SessionFields) -> bytes:
    flags = (
        (_F_DHR if f.dhr is not None else 0)
        | (_F_CKS if f.cks is not None else 0)
        | (_F_CKR if f.ckr is not None else 0)
        | (_F_HDR if f.initial_header is not None else 0)
    )
    parts = [_FIXED.pack(STATE_VERSION, flags, f.rk, f.dhs_priv, f.base_key, f.ns, f.nr, f.pn)]
    for value in (f.dhr, f.cks, f.ckr, f.initial_header):
        if value is not None:
            parts.append(value)
    parts.append(struct.pack(">H", len(f.ad)))
    parts.append(f.ad)
    parts.append(bytes([len(f.previous)]))
    parts.extend(f.previous)
    parts.append(struct.pack(">H", len(f.skipped)))
    parts.extend(_SKIPPED_ENTRY.pack(dh, n, mk) for (dh, n), mk in f.skipped.items())
    return b"".join(parts)


def decode(data: bytes) -> SessionFields:
    """Inverse of :func:`encode`: :class:`~saltline.crypto.errors.StateVersionError` for an unknown version,
    :class:`~saltline.crypto.errors.EncodingError` for anything malformed (keys included)."""
    data = bytes(data)
    if not data:
        raise EncodingError("empty session state")
    if data[0] != STATE_VERSION:
        raise StateVersionError(f"unsupported session state version {data[0]}")
    reader = _Reader(data)
    _, flags, rk, dhs_priv, base_key, ns, nr, pn = reader.unpack(_FIXED)
    if flags & ~(_F_DHR | _F_CKS | _F_CKR | _F_HDR):
        raise EncodingError("unknown session state flags")
    if flags & (_F_CKR | _F_CKS) and not flags & _F_DHR:
        raise EncodingError("sending or receiving chain without a peer ratchet key")
    if max(ns, nr, pn) > MAX_COUNTER:
        raise EncodingError(f"message counter out of range (max {MAX_COUNTER})")
    dhr = reader.take(32) if flags & _F_DHR else None
    cks = reader.take(32) if flags & _F_CKS else None
    ckr = reader.take(32) if flags & _F_CKR else None
    initial_header = reader.take(INITIAL_HEADER_SIZE) if flags & _F_HDR else None
    (ad_len,) = reader.unpack(_U16)
    if ad_len != AD_SIZE:
        raise EncodingError(f"session AD must be {AD_SIZE} bytes")
    ad = reader.take(ad_len)
    (n_previous,) = reader.unpack(_U8)
    if n_previous > MAX_PREVIOUS_CHAINS:
        raise EncodingError("too many former chains")
    previous = [reader.take(32) for _ in range(n_previous)]
    (n_skipped,) = reader.unpack(_U16)
    if n_skipped > MAX_STORED_SKIPPED:
        raise EncodingError("too many skipped keys")
    skipped: dict[tuple[bytes, int], bytes] = {}
    for _ in range(n_skipped):
        key, number, mk = reader.unpack(_SKIPPED_ENTRY)
        if number > MAX_MESSAGE_NUMBER:
            raise EncodingError("skipped key with a message number out of range")
        if (key, number) in skipped:
            raise EncodingError("skipped key listed twice")
        skipped[(key, number)] = mk
    reader.finish()
    try:
        dhs_pub = p.x25519_public(dhs_priv)
        for key in [k for k in (dhr, *previous) if k is not None]:
            p.check_x25519_public(key)
        for key, _number in skipped:
            p.check_x25519_public(key)
        DeviceIdentity.decode(ad[:IDENTITY_ENCODED_SIZE])
        DeviceIdentity.decode(ad[IDENTITY_ENCODED_SIZE:])
        if initial_header is not None:
            InitialHeader.decode(initial_header)
    except EncodingError:
        raise
    except CryptoError as exc:
        raise EncodingError("session state holds an unusable key") from exc
    return SessionFields(
        rk, dhs_priv, dhs_pub, dhr, cks, ckr, ns, nr, pn, ad, base_key, initial_header, previous, skipped
    )


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise EncodingError("session state is truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise EncodingError("trailing bytes after session state")
