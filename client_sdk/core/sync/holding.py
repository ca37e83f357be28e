"""Causal holding (docs/protocol/sync.md § 4 rule 3): the operations a reducer
(:class:`~saltline.client_sdk.core.sync.state.ConversationState`) has received but cannot apply
yet, and the index that says which of them to recheck when more is applied or received.

Each held operation is indexed by **one** condition it waits for: a :class:`Dot` ``(device, need)``
(until ``need`` operations of ``device`` are applied) or an int ``base`` (until ``server_seq``
``1..base`` are received). Applying an operation or receiving more of the server order then
rechecks only the operations waiting for exactly that, not every held one. Whether an operation
is ready, and applying it, stay with the reducer: :meth:`HeldOps.drain` calls back into it. No I/O.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable

from saltline.client_sdk.core.sync.clock import Dot
from saltline.client_sdk.core.sync.ops import Op

__all__ = ["HeldOps"]

# what a held operation waits for: see the module docstring
Condition = Dot | int


class HeldOps:
    """The held operations by dot (each with the smallest ``server_seq`` it came with), in
    ``server_seq`` order, and their release index."""

    def __init__(self) -> None:
        self._waiting: dict[Dot, tuple[int, Op]] = {}
        # the same dots in server_seq order (``dots()``)
        self._seqs: list[int] = []
        self._dots: list[Dot] = []
        self._blocked_on: dict[Dot, int] = {}  # held dot -> token of its live index entry
        self._tokens = 0
        # heaps of (need, token, dot): wait until ``applied[device] >= need`` ...
        self._wait_applied: dict[bytes, list[tuple[int, int, Dot]]] = {}
        # ... or until ``received_contig >= base``
        self._wait_received: list[tuple[int, int, Dot]] = []
        self._released: list[Dot] = []  # held dots whose indexed condition now holds (to recheck)

    def __contains__(self, dot: Dot) -> bool:
        return dot in self._waiting

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def get(self, dot: Dot) -> tuple[int, Op]:
        """The held ``dot``'s smallest ``server_seq`` and its operation (KeyError: not held)."""
        return self._waiting[dot]

    def dots(self) -> tuple[Dot, ...]:
        """Every held dot, in ``server_seq`` order."""
        return tuple(self._dots)

    def hold(self, dot: Dot, seq: int, op: Op) -> None:
        """Hold ``op`` (not indexed yet: the next :meth:`drain` of it tries it)."""
        self._waiting[dot] = (seq, op)
        i = bisect.bisect_left(self._seqs, seq)
        self._seqs.insert(i, seq)
        self._dots.insert(i, dot)

    def unhold(self, dot: Dot) -> None:
        """Forget the held ``dot`` (applied, or to be held again under a smaller ``server_seq``)."""
        seq, _ = self._waiting.pop(dot)
        self._blocked_on.pop(dot, None)  # its index entry, if any, is now stale
        i = bisect.bisect_left(self._seqs, seq)
        del self._seqs[i]
        del self._dots[i]

    def wait_for(self, dot: Dot, condition: Condition) -> None:
        """Index the held ``dot`` by ``condition``; replaces its earlier index entry."""
        self._tokens += 1
        token = self._tokens
        self._blocked_on[dot] = token
        if isinstance(condition, Dot):
            heap = self._wait_applied.setdefault(condition.device, [])
            heapq.heappush(heap, (condition.n, token, dot))
        else:
            heapq.heappush(self._wait_received, (condition, token, dot))

    def waiting_for_received(self) -> list[tuple[int, Dot]]:
        """``(base, dot)`` of every held operation indexed by a ``base`` (waiting for ``server_seq``
        ``1..base`` to be received), smallest base first."""
        live = [(base, dot) for base, token, dot in self._wait_received if self._blocked_on.get(dot) == token]
        return sorted(live)

    def applied(self, device: bytes, n: int) -> None:
        """``n`` operations of ``device`` are now applied: release the dots waiting for that."""
        heap = self._wait_applied.get(device)
        while heap and heap[0][0] <= n:
            _, token, dot = heapq.heappop(heap)
            self._release(dot, token)

    def received(self, contig: int) -> None:
        """``server_seq`` ``1..contig`` are now received: release the dots waiting for that."""
        heap = self._wait_received
        while heap and heap[0][0] <= contig:
            _, token, dot = heapq.heappop(heap)
            self._release(dot, token)

    def _release(self, dot: Dot, token: int) -> None:
        if self._blocked_on.get(dot) == token:
            del self._blocked_on[dot]
            self._released.append(dot)

    def drain(self, new: Dot, attempt: Callable[[Dot], bool]) -> list[Dot]:
        """Apply what became ready: the new operation, then the held operations whose indexed
        condition now holds, rechecked in passes in ``server_seq`` order until nothing more applies
        (the same order as rescanning every held operation in ``server_seq`` order, pass after
        pass: an op released behind the current position waits for the next pass).

        ``attempt(dot)`` applies the held ``dot`` and returns True (after :meth:`unhold` and
        :meth:`applied`), or indexes it by what it waits for (:meth:`wait_for`) and returns False.
        Returns the dots applied, in order."""
        applied: list[Dot] = []
        if new in self._waiting and attempt(new):
            applied.append(new)
        while self._released:
            released, self._released = self._released, []
            current = [(self._waiting[d][0], d) for d in set(released) if d in self._waiting]
            heapq.heapify(current)
            later: list[Dot] = []
            while current:
                seq, dot = heapq.heappop(current)
                if dot not in self._waiting or not attempt(dot):
                    continue
                applied.append(dot)
                for d in self._released:
                    if d in self._waiting:
                        if self._waiting[d][0] > seq:
                            heapq.heappush(current, (self._waiting[d][0], d))
                        else:
                            later.append(d)
                self._released = []
            self._released = later
        return applied
