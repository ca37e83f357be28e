"""The conversation transcript hash (docs/protocol/sync.md § 9): a running hash over the sequenced
log, ``server_seq`` by ``server_seq``, that every operation's author binds (through the compact
clock, inside the envelope's associated data) at the base it had applied.

    T(0) = SHA-256("saltline/v1/transcript/genesis" || conversation_id)
    T(n) = SHA-256("saltline/v1/transcript/step" || T(n-1) || u64(n) || device_id (16) || u64(counter))

where ``(device_id, counter)`` is the dot of the operation the server sequenced at ``n``. Two
devices that hold the same ``T(n)`` were shown the same operations at ``server_seq`` 1..n (up to a
SHA-256 collision). A receiver compares an operation's claimed ``T(base)`` with its own: a
difference means the server showed the author and the receiver different histories (a dropped,
swapped, reused or forked ``server_seq``). Pure.
"""

from __future__ import annotations

import hashlib
import struct

from saltline.client_sdk.core.sync.clock import DEVICE_ID_SIZE, Dot

HASH_SIZE = 32
GENESIS_LABEL = b"saltline/v1/transcript/genesis"
STEP_LABEL = b"saltline/v1/transcript/step"
_U64 = struct.Struct(">Q")


def genesis(conversation_id: bytes) -> bytes:
    """``T(0)`` of a conversation."""
    return hashlib.sha256(GENESIS_LABEL + bytes(conversation_id)).digest()


def step(previous: bytes, seq: int, dot: Dot) -> bytes:
    """``T(seq)`` from ``T(seq - 1)`` and the dot sequenced at ``seq``."""
    if len(previous) != HASH_SIZE or len(dot.device) != DEVICE_ID_SIZE or seq < 1 or dot.n < 1:
        raise ValueError("transcript step: malformed input")
    return hashlib.sha256(STEP_LABEL + previous + _U64.pack(seq) + dot.device + _U64.pack(dot.n)).digest()


def of_log(conversation_id: bytes, dots: list[Dot]) -> bytes:
    """``T(len(dots))`` for the log whose ``server_seq`` ``i + 1`` holds ``dots[i]``."""
    t = genesis(conversation_id)
    for i, dot in enumerate(dots):
        t = step(t, i + 1, dot)
    return t
