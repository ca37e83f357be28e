"""Reconnect and retry back-off: exponential with full jitter, reset after a healthy period.

A pure state machine: the caller passes the time (monotonic seconds) and a ``random()`` source, so
tests are deterministic. Used by the delivery socket (reconnects), the outbox (automatic resends)
and the inbound path (transient lookup failures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """``delay(attempt) = uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))`` for the
    ``attempt``-th consecutive failure (1, 2, ...). A connection that stayed healthy for
    ``healthy_after_s`` resets the count, so a long-lived client's reconnects stay fast."""

    base_s: float = 0.2
    cap_s: float = 30.0
    healthy_after_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.cap_s >= self.base_s and self.healthy_after_s >= 0):
            raise ValueError("back-off needs 0 < base_s <= cap_s and healthy_after_s >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest delay of the ``attempt``-th consecutive failure (``attempt >= 1``)."""
        exponent = min(max(attempt, 1) - 1, 62)
        return min(self.cap_s, self.base_s * (2.0**exponent))

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """Full jitter (``random()`` in [0, 1))."""
        return self.ceiling(attempt) * random()


@dataclass(slots=True)
class Backoff:
    """Counts consecutive failures of one activity (e.g. the delivery socket).

    * :meth:`healthy` when it became healthy (e.g. the socket's ``ready`` frame) at time ``now``;
    * :meth:`failed` when it failed at ``now``: returns ``(attempt, delay)``. A failure after a
      healthy period of at least ``policy.healthy_after_s`` counts as the first failure again.
    """

    policy: BackoffPolicy
    attempt: int = 0
    healthy_since: float | None = None

    def healthy(self, now: float) -> None:
        if self.healthy_since is None:
            self.healthy_since = now

    def failed(self, now: float, random: Callable[[], float]) -> tuple[int, float]:
        since = self.healthy_since
        if since is not None and now - since >= self.policy.healthy_after_s:
            self.attempt = 0
        self.healthy_since = None
        self.attempt += 1
        return self.attempt, self.policy.delay(self.attempt, random)

    def reset(self) -> None:
        self.attempt = 0
        self.healthy_since = None
