"""The server order as one device has received it (docs/protocol/sync.md § 3-4, § 9): which dot
each ``server_seq`` names, the received contiguous prefix, the clock implied by any received
prefix ``1..base`` (to expand compact clocks) and the transcript hashes ``T(n)`` along it.

:class:`ServerOrder` is the part of the reducer
(:class:`~saltline.client_sdk.core.sync.state.ConversationState`) that depends only on positions,
not on what the operations say. No I/O.
"""

from __future__ import annotations

import bisect

from saltline.client_sdk.core.sync import transcript
from saltline.client_sdk.core.sync.clock import Dot, FullClock

__all__ = ["ServerOrder"]


class ServerOrder:
    """``server_seq`` -> dot for one conversation, from a floor (0: the start of the log).

    Everything up to ``floor_seq`` counts as received; ``floor_clock`` is the clock of that
    prefix and ``floor_hash`` its transcript hash ``T(floor_seq)`` (None: unknown; at floor 0 it
    is the conversation's genesis hash)."""

    def __init__(
        self,
        conversation_id: bytes,
        floor_seq: int = 0,
        floor_clock: FullClock | None = None,
        floor_hash: bytes | None = None,
    ) -> None:
        self.floor_seq = floor_seq
        self._floor_clock: dict[bytes, int] = dict(floor_clock or {})
        self._seq_dot: dict[int, Dot] = {}
        self._received_contig = floor_seq
        self._max_seq = floor_seq
        # per device: the received_contig positions of its dots, and the running maximum of their n
        self._dev_seqs: dict[bytes, list[int]] = {}
        self._dev_runmax: dict[bytes, list[int]] = {}
        # transcript hashes T(n) for floor_seq <= n <= received_contig (unknown below a floor
        # that came without its hash)
        self._transcript: list[bytes] = []
        if floor_seq == 0:
            self._transcript.append(transcript.genesis(conversation_id))
        elif floor_hash is not None:
            self._transcript.append(floor_hash)

    @property
    def received_seq(self) -> int:
        """Every ``server_seq <= received_seq`` has been received."""
        return self._received_contig

    @property
    def max_seq(self) -> int:
        """The highest ``server_seq`` received (``floor_seq`` before any)."""
        return self._max_seq

    def floor_clock(self) -> dict[bytes, int]:
        """The clock of the prefix ``1..floor_seq`` (a copy)."""
        return dict(self._floor_clock)

    def dot_at(self, seq: int) -> Dot | None:
        """The dot received at ``seq`` (None: not received, or at or below the floor)."""
        return self._seq_dot.get(seq)

    def add(self, seq: int, dot: Dot) -> None:
        """Record that ``seq`` names ``dot`` (the caller checked it names nothing else yet) and
        extend the received prefix as far as it now reaches."""
        self._seq_dot[seq] = dot
        self._max_seq = max(self._max_seq, seq)
        while (at := self._seq_dot.get(self._received_contig + 1)) is not None:
            self._received_contig += 1
            seqs = self._dev_seqs.setdefault(at.device, [])
            runmax = self._dev_runmax.setdefault(at.device, [])
            seqs.append(self._received_contig)
            runmax.append(max(runmax[-1] if runmax else 0, at.n))
            if self._transcript:
                self._transcript.append(transcript.step(self._transcript[-1], self._received_contig, at))

    def transcript(self, seq: int) -> bytes | None:
        """``T(seq)`` (None when unknown: beyond the received prefix, or below a floor that came
        without its hash)."""
        i = seq - self.floor_seq
        if not self._transcript or i < 0 or i >= len(self._transcript):
            return None
        return self._transcript[i]

    def attests(self, base: int, log_hash: bytes, claims: dict[int, Dot]) -> list[int] | None:
        """The claimed positions (``server_seq`` -> unauthenticated dot, sync.md § 2.3) in
        ``received_seq + 1 .. base`` that an authenticated ``log_hash == T(base)`` attests: those
        positions, when every position up to ``base`` is received or claimed and ``T(base)``
        computed with the claims in place equals ``log_hash``; ``[]`` when the hash differs or
        nothing is claimed there; None when a position up to ``base`` is neither (a larger base
        cannot do better)."""
        start = self._received_contig
        t = self.transcript(start)
        if t is None or base <= start:
            return []
        used: list[int] = []
        for seq in range(start + 1, base + 1):
            dot = self._seq_dot.get(seq)
            if dot is None:
                dot = claims.get(seq)
                if dot is None:
                    return None
                used.append(seq)
            t = transcript.step(t, seq, dot)
        return used if t == log_hash else []

    def missing(self, limit: int = 100) -> tuple[int, ...]:
        """The server_seqs not received between the received prefix and the highest one seen."""
        out: list[int] = []
        for seq in range(self._received_contig + 1, self._max_seq):
            if seq not in self._seq_dot:
                out.append(seq)
                if len(out) >= limit:
                    break
        return tuple(out)

    def prefix(self, base: int) -> dict[bytes, int]:
        """The clock implied by the operations with ``server_seq <= base`` (needs them received)."""
        if base > self._received_contig:
            raise ValueError("prefix not received yet")
        out = dict(self._floor_clock)
        if base <= self.floor_seq:
            return out
        for device, seqs in self._dev_seqs.items():
            i = bisect.bisect_right(seqs, base)
            if i and self._dev_runmax[device][i - 1] > out.get(device, 0):
                out[device] = self._dev_runmax[device][i - 1]
        return out
