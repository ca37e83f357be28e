"""The conflict rules as small pure registers (docs/protocol/sync.md § 5).

Every register's value is a function of the *set* of writes it has been given, never of their
order, so every device that applied the same operations shows the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from saltline.client_sdk.core.sync.clock import Dot, FullClock, contains
from saltline.client_sdk.core.sync.ops import Op

T = TypeVar("T")

LwwKey = tuple[int, bytes, int]


def lww_key(op: Op) -> LwwKey:
    """Last-writer-wins order: ``(lamport, device id)``; ``n`` only separates a device from itself
    (a device never reuses a lamport number, so it never decides)."""
    return (op.lamport, op.dot.device, op.dot.n)


@dataclass(frozen=True, slots=True)
class Write(Generic[T]):
    key: LwwKey
    dot: Dot
    author: bytes
    clock: FullClock
    value: T


class FrontierRegister(Generic[T]):
    """A multi-value register: keeps the writes no other write has seen (the causal frontier).
    ``winner`` is the frontier's last writer by :func:`lww_key` (which is also the last writer of
    all writes, since a later write has a larger lamport); the other frontier writes
    (``losers``) are values written concurrently that no later write overwrote."""

    __slots__ = ("_writes",)

    def __init__(self) -> None:
        self._writes: list[Write[T]] = []

    def add(self, write: Write[T]) -> None:
        if any(w.dot == write.dot or contains(w.clock, write.dot) for w in self._writes):
            return  # already known or overwritten by a write that saw it
        self._writes = [w for w in self._writes if not contains(write.clock, w.dot)]
        self._writes.append(write)

    @property
    def frontier(self) -> tuple[Write[T], ...]:
        return tuple(sorted(self._writes, key=lambda w: w.key, reverse=True))

    @property
    def winner(self) -> Write[T] | None:
        return max(self._writes, key=lambda w: w.key, default=None)

    @property
    def losers(self) -> tuple[Write[T], ...]:
        return self.frontier[1:]


def may_edit(message_author: bytes, editor: bytes) -> bool:
    """Only the author's account (any of its devices) edits or deletes a message."""
    return message_author == editor


def member_present(genesis: bool, frontier: tuple[Write[bool], ...]) -> bool:
    """Membership of one account: the genesis value until a change, then present only when every
    frontier write is an add (a remove concurrent with an add wins; a later add re-adds)."""
    if not frontier:
        return genesis
    return all(w.value for w in frontier)
