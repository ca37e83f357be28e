"""Disappearing messages: the expiry rule and the tombstone that replaces an expired operation
(docs/protocol/sync.md § 5.8). Pure: no I/O, no clock of its own (``now`` is passed in).

The rule. A message's timer is the ``disappearing_ms`` setting *in force when it was sent*: of the
``disappearing_ms`` writes in the message's causal past (its full clock contains their dots), the
last by the last-writer-wins order (:func:`~saltline.client_sdk.core.sync.rules.lww_key`) - the value the
register showed on the author's device when it composed the message. A change concurrent with the
message (not in its causal past) never governs it, whatever its lamport number. A timer of None or
0 means never. The message expires at ``sent_at_ms + timer`` (the author's claimed send time).

Every input is in the message's causal past, which every device applies before the message
(causal delivery), so every device that holds the same operations computes the same expiry, in
whatever order they arrived.

:class:`ExpiryTracker` is what the reducer (:class:`~saltline.client_sdk.core.sync.state.ConversationState`)
feeds with each operation it applies with effect.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from saltline.client_sdk.core.sync.clock import Dot, contains
from saltline.client_sdk.core.sync.ops import Message, Op, SettingsChange, Unknown
from saltline.client_sdk.core.sync.rules import LwwKey, lww_key
from saltline.client_sdk.core.wire import canonical_json

#: The ``type`` of the local tombstone an expired operation is replaced with (sync.md § 5.8). A
#: sender never sends one; received from anyone it is an unknown type (consumes its dot, no effect).
TOMBSTONE_TYPE = "expired"


@dataclass(frozen=True, slots=True, order=True)
class TimerWrite:
    """One ``disappearing_ms`` write: its LWW key ``(lamport, device, n)``, its dot and value."""

    key: LwwKey
    dot: Dot
    value: int | None


def timer_write(op: Op) -> TimerWrite | None:
    """The timer write an operation makes (None: it is not a ``disappearing_ms`` change)."""
    body = op.body
    if not isinstance(body, SettingsChange) or body.field != "disappearing_ms":
        return None
    value = body.value
    return TimerWrite(
        lww_key(op), op.dot, value if isinstance(value, int) and not isinstance(value, bool) else None
    )


def timer_in_force(writes: Iterable[TimerWrite], clock: Mapping[bytes, int]) -> int | None:
    """The timer of an operation with full clock ``clock``: the last (by LWW key) of the
    ``writes`` in its causal past; None when there is none (never expires)."""
    seen = [w for w in writes if contains(clock, w.dot)]
    if not seen:
        return None
    value = max(seen).value
    return value if value else None  # 0 and None: never


def expires_at(sent_at_ms: int, timer_ms: int | None) -> int | None:
    """When a message sent at ``sent_at_ms`` under ``timer_ms`` expires (None: never)."""
    if not timer_ms or timer_ms <= 0:
        return None
    return sent_at_ms + timer_ms


def expired(expiry_ms: int | None, now_ms: int) -> bool:
    """A message is expired from its expiry time on (never when it has none)."""
    return expiry_ms is not None and now_ms >= expiry_ms


def tombstone(op: Op) -> bytes:
    """The plaintext that replaces an expired operation in the store and in history bundles: only
    what the reducer needs to stay convergent (the dot and clock travel beside it, the lamport
    number is kept so the lamport bounds of later operations stay the same); no text, no emoji, no
    target, no send time."""
    return canonical_json({"v": 2, "lamport": op.lamport, "type": TOMBSTONE_TYPE})


def is_tombstone(op: Op) -> bool:
    return isinstance(op.body, Unknown) and op.body.type == TOMBSTONE_TYPE


class ExpiryTracker:
    """What one conversation's reducer knows about disappearing messages: every timer write
    (applied, or seeded from the floor of a history bundle), the expiry of each message that has a
    timer, the operations that refer to a message (edits, reactions, deletes by target; replies by
    the message they answer) and the dots already replaced by a tombstone."""

    __slots__ = ("_dependents", "_expiry", "_heap", "_stale", "_tombstones", "_writes")

    def __init__(self) -> None:
        self._writes: list[TimerWrite] = []
        self._expiry: dict[Dot, int] = {}
        self._heap: list[tuple[int, Dot]] = []
        self._dependents: dict[Dot, list[Dot]] = {}
        self._tombstones: set[Dot] = set()
        self._stale = False  # an operation refers to a message already replaced by a tombstone

    def seed(self, writes: Iterable[TimerWrite]) -> None:
        """Timer writes below this device's floor (from the history bundle it started from)."""
        for w in writes:
            if w not in self._writes:
                self._writes.append(w)

    def seed_expiring(self, entries: Iterable[tuple[Dot, int]], now_ms: int) -> None:
        """The messages below this device's floor that expire (``(dot, expiry)``; expiry 0: gone
        already), from the history bundle it started from: what refers to them above the floor
        goes with them. Those expired at ``now_ms`` count as tombstones."""
        for dot, at in entries:
            if expired(at, now_ms):
                self._tombstones.add(dot)
                self._stale = self._stale or dot in self._dependents
            elif dot not in self._expiry:
                self._expiry[dot] = at
                heapq.heappush(self._heap, (at, dot))

    def expiring(self, clock: Mapping[bytes, int]) -> tuple[tuple[Dot, int], ...]:
        """What :meth:`seed_expiring` takes, for a floor with ``clock``: the messages in its causal
        past that expire (with their expiry) or are tombstones (expiry 0)."""
        out = [(d, at) for d, at in self._expiry.items() if contains(clock, d)]
        out += [(d, 0) for d in self._tombstones if contains(clock, d)]
        return tuple(sorted(out))

    def applied(self, op: Op, full: Mapping[bytes, int]) -> None:
        """Record an operation the reducer applied with effect (``full``: its full clock)."""
        body = op.body
        write = timer_write(op)
        if write is not None:
            self._writes.append(write)
        elif isinstance(body, Message):
            at = expires_at(body.sent_at_ms, timer_in_force(self._writes, full))
            if at is not None:
                self._expiry[op.dot] = at
                heapq.heappush(self._heap, (at, op.dot))
            if body.reply_to is not None:  # a reply goes with the message it answers
                self._depend(body.reply_to, op.dot)
        elif op.target is not None:  # an edit, a reaction or a delete
            self._depend(op.target, op.dot)
        elif is_tombstone(op):
            self._tombstones.add(op.dot)
            self._stale = self._stale or op.dot in self._dependents

    def _depend(self, target: Dot, dot: Dot) -> None:
        self._dependents.setdefault(target, []).append(dot)
        self._stale = self._stale or target in self._tombstones

    def writes(self, clock: Mapping[bytes, int] | None = None) -> tuple[TimerWrite, ...]:
        """The timer writes known (those in the causal past of ``clock`` when given), sorted."""
        return tuple(sorted(w for w in self._writes if clock is None or contains(clock, w.dot)))

    def expiry(self, dot: Dot) -> int | None:
        return self._expiry.get(dot)

    def expiries(self) -> dict[Dot, int]:
        """Message dot -> expiry time, for every message with a timer (not yet a tombstone)."""
        return dict(self._expiry)

    def next_expiry(self) -> int | None:
        """The earliest expiry of a message not yet replaced by a tombstone."""
        heap = self._heap
        while heap and heap[0][1] not in self._expiry:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def purge_due(self, now_ms: int) -> bool:
        """Whether :meth:`due` has anything at ``now_ms``."""
        at = self.next_expiry()
        return self._stale or (at is not None and expired(at, now_ms))

    def due(self, now_ms: int) -> tuple[frozenset[Dot], frozenset[Dot]]:
        """``(messages, dependents)``: the messages expired at ``now_ms``, and every operation
        that refers to one of them or to a message already replaced by a tombstone - edits,
        reactions, deletes and replies, and what refers to those replies, transitively. All of
        these are to be replaced by tombstones."""
        messages = frozenset(d for d, at in self._expiry.items() if expired(at, now_ms))
        dependents: set[Dot] = set()
        todo = [*messages, *self._tombstones]
        while todo:
            for d in self._dependents.get(todo.pop(), ()):
                if d not in dependents and d not in messages and d not in self._tombstones:
                    dependents.add(d)
                    todo.append(d)
        return messages, frozenset(dependents)
