"""Rate limits: ``limits`` moving windows, shared by every server instance through Redis, or kept
per process in memory.

Storage (``Settings.resolved_rate_limit_storage_url()``):

- ``memory://``: windows live in this process (the default for a single instance). With N
  instances behind a load balancer every limit would effectively be N times higher.
- ``redis://...`` (``rediss://``, ``unix://``): windows live in Redis, shared by all instances
  (the default when ``SALTLINE_REDIS_URL`` is set). Keys are ``<key_prefix>:LIMITER/<scope>/...``
  so several deployments can share one Redis.

Redis unavailable (an error, or no answer within :data:`STORAGE_TIMEOUT_S`): the call falls back
to this process's memory windows, so a Redis outage neither turns requests into 500s nor locks
everyone out; limits then hold per instance until Redis answers again. After a failure Redis is
left alone for :data:`RETRY_AFTER_ERROR_S` (calls go to memory straight away), failures are
counted in ``saltline_rate_limit_storage_errors_total`` and logged at most once per
:data:`WARN_INTERVAL_S`.

Two strategies: counts of events (:meth:`RateLimiter.hit` and friends) use moving windows (exact,
one entry per event); quotas of amounts (:meth:`RateLimiter.hit_amount`: bytes sent, bytes
uploaded) use sliding-window counters, whose cost is two integers per key whatever the amount (a
moving window would keep one entry per byte).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from prometheus_client import CollectorRegistry, Counter

from saltline.server.errors import Problem, ProblemCode

log = logging.getLogger(__name__)

MEMORY_URL = "memory://"
DEFAULT_KEY_PREFIX = "saltline:rl"
#: A rate-limit decision waits at most this long for Redis before using the memory windows.
STORAGE_TIMEOUT_S = 0.5
#: Redis connections per process for rate-limit checks.
MAX_REDIS_CONNECTIONS = 32
#: After a Redis failure, calls use the memory windows for this long before trying Redis again.
RETRY_AFTER_ERROR_S = 2.0
#: At most one "Redis unavailable" warning per this many seconds.
WARN_INTERVAL_S = 60.0

#: What a failing storage raises: redis errors (wrapped by ``limits``), our timeout, sockets.
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (StorageError, TimeoutError, OSError)

T = TypeVar("T")
_Limiter = MovingWindowRateLimiter | SlidingWindowCounterRateLimiter


def is_memory_url(url: str) -> bool:
    return url.startswith("memory://")


def _limits_redis_uri(url: str) -> str:
    """``limits``' async storage URI for a redis-py URL (only parsed: we hand it our own pool)."""
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


class RateLimiter:
    def __init__(
        self,
        enabled: bool = True,
        *,
        storage_url: str = MEMORY_URL,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        registry: CollectorRegistry | None = None,
        timeout_s: float = STORAGE_TIMEOUT_S,
        retry_after_error_s: float = RETRY_AFTER_ERROR_S,
    ) -> None:
        self._enabled = enabled
        #: Per-process windows: the storage for ``memory://``, the fallback for Redis.
        self._memory_storage = MemoryStorage()
        self._memory = MovingWindowRateLimiter(self._memory_storage)
        # Counters get their own storage: ``limits``' memory storage sweeps every moving window
        # (a thread hop per key) after each call, which the counters on the send path need not pay.
        self._counter_storage = MemoryStorage()
        self._memory_counter = SlidingWindowCounterRateLimiter(self._counter_storage)
        self._shared: MovingWindowRateLimiter | None = None
        self._shared_counter: SlidingWindowCounterRateLimiter | None = None
        self._shared_storage: Any = None
        self._pool: Any = None
        self._timeout_s = timeout_s
        self._retry_after_error_s = retry_after_error_s
        self._shared_retry_at = 0.0  # monotonic: no Redis call before this
        self._last_warning = -math.inf
        registry = registry if registry is not None else CollectorRegistry()
        self.storage_errors = Counter(
            "saltline_rate_limit_storage_errors",
            "Rate-limit storage (Redis) calls that failed or timed out; the per-process memory"
            " windows answered instead",
            registry=registry,
        )
        self.refused = Counter(
            "saltline_rate_limited",
            "Requests refused with 429 by a rate limit, by scope (e.g. login-fail-account-ip)",
            ["scope"],
            registry=registry,
        )
        if enabled and not is_memory_url(storage_url):
            self._open_redis(storage_url, key_prefix)

    def _open_redis(self, url: str, key_prefix: str) -> None:
        from limits.aio.storage import RedisStorage
        from redis.asyncio import BlockingConnectionPool
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Our own pool (closed in :meth:`close`); one immediate retry covers a connection that went
        # stale (Redis restarted), anything longer is bounded by ``timeout_s`` and falls back.
        # Bounded: a flood of checks while Redis is slow waits (at most ``timeout_s``) for one of
        # MAX_REDIS_CONNECTIONS connections instead of opening one per request.
        self._pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_REDIS_CONNECTIONS,
            timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            socket_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._shared_storage = RedisStorage(
            _limits_redis_uri(url),
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            connection_pool=self._pool,
        )
        self._shared = MovingWindowRateLimiter(self._shared_storage)
        self._shared_counter = SlidingWindowCounterRateLimiter(self._shared_storage)

    @property
    def shared(self) -> bool:
        """True when the windows live in Redis (shared by every instance)."""
        return self._shared is not None

    # -- the API -------------------------------------------------------------------------------

    async def hit(self, limit: str, scope: str, key: str, *, cost: int = 1) -> None:
        """Count ``cost`` attempts for ``(scope, key)``; raise a 429 problem when over ``limit``."""
        if not self._enabled:
            return
        item = parse(limit)
        limiter, ok = await self._call(lambda lim: lim.hit(item, scope, key, cost=cost))
        if not ok:
            await self._raise(limiter, item, limit, scope, key)

    async def hit_amount(self, limit: str, scope: str, key: str, amount: int) -> None:
        """Count ``amount`` units (bytes) for ``(scope, key)`` on a sliding-window counter; raise a
        429 problem (nothing counted) when that would pass ``limit``. An amount larger than the
        whole limit can never pass: the caller bounds single amounts below the limit."""
        if not self._enabled or amount <= 0:
            return
        item = parse(limit)
        limiter, ok = await self._call(lambda lim: lim.hit(item, scope, key, cost=amount), counter=True)
        if not ok:
            await self._raise(limiter, item, limit, scope, key)

    async def allow(self, limit: str, scope: str, key: str) -> bool:
        """Count one attempt for ``(scope, key)`` and say whether it was within ``limit``, without
        raising (for limits that degrade an answer rather than refuse it); a refusal counts in
        ``saltline_rate_limited_total`` like a 429."""
        if not self._enabled:
            return True
        item = parse(limit)
        _limiter, ok = await self._call(lambda lim: lim.hit(item, scope, key))
        if not ok:
            self.refused.labels(scope).inc()
        return ok

    async def check(self, limit: str, scope: str, key: str) -> None:
        """Raise a 429 problem when ``(scope, key)`` is already at ``limit``, without counting."""
        if not self._enabled:
            return
        item = parse(limit)
        limiter, ok = await self._call(lambda lim: lim.test(item, scope, key))
        if not ok:
            await self._raise(limiter, item, limit, scope, key)

    async def record(self, limit: str, scope: str, key: str) -> None:
        """Count one event for ``(scope, key)`` (e.g. a failed login) without raising."""
        if not self._enabled:
            return
        item = parse(limit)
        await self._call(lambda lim: lim.hit(item, scope, key))

    async def used(self, limit: str, scope: str, key: str) -> int:
        """How many events ``(scope, key)`` has in its current ``limit`` window (0 when disabled)."""
        if not self._enabled:
            return 0
        item = parse(limit)
        _limiter, (_reset_at, remaining) = await self._call(
            lambda lim: lim.get_window_stats(item, scope, key)
        )
        return max(0, item.amount - remaining)

    async def reset(self) -> None:
        await self._memory_storage.reset()
        await self._counter_storage.reset()
        if self._shared_storage is not None:
            await self._shared_storage.reset()

    async def close(self) -> None:
        """Close the Redis connections (an ``on_shutdown`` hook); the memory windows stay usable."""
        for storage in (self._memory_storage, self._counter_storage):
            timer = storage.timer  # the memory storage's expiry task, if one is running
            if timer is not None and not timer.done():
                timer.cancel()
        self._shared = None
        self._shared_counter = None
        self._shared_storage = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.aclose()
            except Exception as exc:  # closing a broken connection must not fail the shutdown
                log.debug("closing the rate-limit Redis pool: %s", type(exc).__name__)

    # -- internals -----------------------------------------------------------------------------

    async def _call(
        self, op: Callable[[_Limiter], Awaitable[T]], *, counter: bool = False
    ) -> tuple[_Limiter, T]:
        """``op`` on the shared (Redis) windows, or on the memory windows when Redis is not
        configured, failing, or backing off after a failure (``counter``: the sliding-window
        counters instead of the moving windows)."""
        shared: _Limiter | None = self._shared_counter if counter else self._shared
        memory: _Limiter = self._memory_counter if counter else self._memory
        if shared is not None and time.monotonic() >= self._shared_retry_at:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return shared, await op(shared)
            except _STORAGE_ERRORS as exc:
                self._storage_failed(exc)
        return memory, await op(memory)

    def _storage_failed(self, exc: BaseException) -> None:
        self.storage_errors.inc()
        now = time.monotonic()
        self._shared_retry_at = now + self._retry_after_error_s
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ else exc
            log.warning(
                "rate-limit storage (Redis) unavailable (%s: %s); using per-process limits",
                type(cause).__name__,
                cause,
            )

    async def _raise(
        self, limiter: _Limiter, item: RateLimitItem, limit: str, scope: str, key: str
    ) -> NoReturn:
        try:
            async with asyncio.timeout(self._timeout_s):
                reset_at, _remaining = await limiter.get_window_stats(item, scope, key)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)
            reset_at = time.time() + item.get_expiry()  # unknown: the whole window
        retry_after = max(1, math.ceil(reset_at - time.time()))
        self.refused.labels(scope).inc()
        raise Problem(
            429,
            ProblemCode.RATE_LIMITED,
            f"too many attempts ({limit}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )
