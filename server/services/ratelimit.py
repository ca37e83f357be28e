"""Rate limits (``limits`` library, in-memory moving windows: per process)."""

from __future__ import annotations

import math
import time
from typing import NoReturn

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from server.errors import Problem, ProblemCode


class RateLimiter:
    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)

    def hit(self, limit: str, scope: str, key: str, *, cost: int = 1) -> None:
        """Count ``cost`` attempts for ``(scope, key)``; raise a 429 problem when over ``limit``."""
        if not self._enabled:
            return
        item = parse(limit)
        if not self._limiter.hit(item, scope, key, cost=cost):
            self._raise(item, limit, scope, key)

    def check(self, limit: str, scope: str, key: str) -> None:
        """Raise a 429 problem when ``(scope, key)`` is already at ``limit``, without counting."""
        if not self._enabled:
            return
        item = parse(limit)
        if not self._limiter.test(item, scope, key):
            self._raise(item, limit, scope, key)

    def record(self, limit: str, scope: str, key: str) -> None:
        """Count one event for ``(scope, key)`` (e.g. a failed login) without raising."""
        if not self._enabled:
            return
        self._limiter.hit(parse(limit), scope, key)

    def _raise(self, item: RateLimitItem, limit: str, scope: str, key: str) -> NoReturn:
        reset_at, _remaining = self._limiter.get_window_stats(item, scope, key)
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise Problem(
            429,
            ProblemCode.RATE_LIMITED,
            f"too many attempts ({limit}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )

    def reset(self) -> None:
        self._storage.reset()
