"""Vector clocks for conversation sync (docs/protocol/sync.md § 3).

A *full* clock is a mapping ``device_id -> counter``: the author had seen that device's operations
``1..counter``. On the wire a clock is *compact*: a base ``server_seq`` B ("I had applied every
operation of the conversation with ``server_seq <= B``") plus per-device *extras* (entries where
the author's clock exceeds what the prefix ``<= B`` implies). A receiver that holds the prefix
``<= B`` expands it back to the full clock. Pure: no I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from saltline.client_sdk.core.sync.errors import SyncFormatError

CLOCK_VERSION = 0x03  # base, transcript hash, extras (sync.md § 3, § 9)
CLOCK_VERSION_NO_TRANSCRIPT = 0x02  # base and extras only (stored by earlier clients)
LEGACY_CLOCK_VERSION = 0x01  # messages.md § 4: the full clock, no base
DEVICE_ID_SIZE = 16
LOG_HASH_SIZE = 32
_HEADER = struct.Struct(">BQH")
_HEADER_V3 = struct.Struct(">BQ32sH")
_ENTRY = struct.Struct(">16sQ")

FullClock = Mapping[bytes, int]


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    """The identity of an operation: its author device's ``n``-th operation (``n >= 1``)."""

    device: bytes
    n: int


class Order(enum.Enum):
    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class CompactClock:
    """``base`` server_seq plus sorted ``extras`` ``((device_id, counter), ...)``, counters >= 1,
    and ``log_hash``: the transcript hash ``T(base)`` of the log the author had applied
    (:mod:`saltline.client_sdk.core.sync.transcript`), None only in clocks of the older encodings."""

    base: int
    extras: tuple[tuple[bytes, int], ...] = ()
    log_hash: bytes | None = None

    @classmethod
    def of(cls, base: int, extras: Mapping[bytes, int], log_hash: bytes | None = None) -> CompactClock:
        if base < 0:
            raise SyncFormatError("negative base server_seq")
        for device in extras:
            if len(device) != DEVICE_ID_SIZE:
                raise SyncFormatError("device ids are 16 bytes")
        if log_hash is not None and len(log_hash) != LOG_HASH_SIZE:
            raise SyncFormatError("the transcript hash is 32 bytes")
        return cls(base, tuple(sorted((d, n) for d, n in extras.items() if n > 0)), log_hash)

    def counter_of(self, device: bytes) -> int:
        for d, n in self.extras:
            if d == device:
                return n
        return 0

    def expand(self, prefix: FullClock) -> dict[bytes, int]:
        """The full clock, given ``prefix`` = the clock implied by the operations ``<= base``."""
        return merge(prefix, dict(self.extras))

    def encode(self) -> bytes:
        """``0x03 || base (u64) || log_hash (32) || u16 count || count x (device_id (16) ||
        counter (u64))``; without a log hash, the older ``0x02`` layout (no hash field)."""
        entries = b"".join(_ENTRY.pack(d, n) for d, n in self.extras)
        if self.log_hash is None:
            return _HEADER.pack(CLOCK_VERSION_NO_TRANSCRIPT, self.base, len(self.extras)) + entries
        return _HEADER_V3.pack(CLOCK_VERSION, self.base, self.log_hash, len(self.extras)) + entries

    @classmethod
    def decode(cls, data: bytes) -> CompactClock:
        """Decode version 0x03, 0x02 (no transcript hash), or a full version 0x01 clock
        (messages.md § 4) as base 0."""
        log_hash: bytes | None = None
        if len(data) >= 3 and data[0] == LEGACY_CLOCK_VERSION:
            base, start = 0, 3
            (count,) = struct.unpack_from(">H", data, 1)
        elif len(data) >= _HEADER_V3.size and data[0] == CLOCK_VERSION:
            _, base, log_hash, count = _HEADER_V3.unpack_from(data, 0)
            start = _HEADER_V3.size
        elif len(data) >= _HEADER.size and data[0] == CLOCK_VERSION_NO_TRANSCRIPT:
            _, base, count = _HEADER.unpack_from(data, 0)
            start = _HEADER.size
        else:
            raise SyncFormatError("unsupported clock encoding")
        if len(data) != start + count * _ENTRY.size:
            raise SyncFormatError("malformed clock")
        extras: list[tuple[bytes, int]] = []
        previous = b""
        for i in range(count):
            device, n = _ENTRY.unpack_from(data, start + i * _ENTRY.size)
            if device <= previous or n == 0:
                raise SyncFormatError("clock entries are not canonical")
            extras.append((device, n))
            previous = device
        return cls(base, tuple(extras), log_hash)


def compact(full: FullClock, base: int, prefix: FullClock, log_hash: bytes | None = None) -> CompactClock:
    """Encode ``full`` relative to the prefix clock of ``base``: keep only entries above it."""
    return CompactClock.of(base, {d: n for d, n in full.items() if n > prefix.get(d, 0)}, log_hash)


def contains(clock: FullClock, dot: Dot) -> bool:
    """True when an operation with ``clock`` had seen the operation ``dot``."""
    return clock.get(dot.device, 0) >= dot.n


def merge(a: FullClock, b: FullClock) -> dict[bytes, int]:
    out = dict(a)
    for device, n in b.items():
        if n > out.get(device, 0):
            out[device] = n
    return out


def compare(a: FullClock, b: FullClock) -> Order:
    a_le_b = all(n <= b.get(d, 0) for d, n in a.items())
    b_le_a = all(n <= a.get(d, 0) for d, n in b.items())
    if a_le_b and b_le_a:
        return Order.EQUAL
    if a_le_b:
        return Order.BEFORE
    if b_le_a:
        return Order.AFTER
    return Order.CONCURRENT


def concurrent(dot_a: Dot, clock_a: FullClock, dot_b: Dot, clock_b: FullClock) -> bool:
    """Two operations are concurrent exactly when neither clock contains the other's dot."""
    return dot_a != dot_b and not contains(clock_a, dot_b) and not contains(clock_b, dot_a)


def prunable(removed: Mapping[bytes, int], live_clocks: Iterable[FullClock]) -> frozenset[bytes]:
    """Devices whose entries may be pruned: ``removed`` maps each device removed from the
    conversation to the counter of its last dot; an entry goes only when every live device's
    latest clock has passed (contains) that last dot."""
    clocks = list(live_clocks)
    return frozenset(d for d, last in removed.items() if all(contains(c, Dot(d, last)) for c in clocks))


def prune(clock: FullClock, retired: Iterable[bytes]) -> dict[bytes, int]:
    """``clock`` without the entries of ``retired`` devices (see :func:`prunable`). A pruned entry
    reads back as the retired device's last counter (:func:`restore`)."""
    gone = frozenset(retired)
    return {d: n for d, n in clock.items() if d not in gone}


def restore(clock: FullClock, retired: Mapping[bytes, int]) -> dict[bytes, int]:
    """Re-insert pruned entries (``retired`` maps device -> last counter)."""
    return merge(retired, clock)
