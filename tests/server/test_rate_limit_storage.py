"""Rate-limit storage: shared by every instance through a real Redis, per process in memory, and
the fallback to per-process windows while Redis is unavailable."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable

import httpx
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.settings import Settings
from tests.live import LiveServer
from tests.pg import free_port
from tests.redis_fixture import RedisServer, start_redis
from tests.server.helpers import login, new_account, register, register_body

#: Two app instances share one database (SQLite is enough: the subject is the limiter storage).
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
ERRORS_METRIC = "saltline_rate_limit_storage_errors_total"
WRONG_PASSWORD = "not-the-password"


def _prefix() -> str:
    """A key prefix of its own: the session's redis-server is shared by other tests."""
    return f"test-rl-{os.urandom(4).hex()}"


def _wrong_login(client: httpx.Client, username: str, device_id: str) -> httpx.Response:
    return client.post(
        "/v1/auth/login", json={"username": username, "password": WRONG_PASSWORD, "device_id": device_id}
    )


def _storage_errors(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    match = re.search(rf"^{ERRORS_METRIC} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{ERRORS_METRIC} is missing from /metrics"
    return float(match.group(1))


def _keys(redis_server: RedisServer, prefix: str) -> list[bytes]:
    with redis.Redis.from_url(redis_server.url) as r:
        return list(r.scan_iter(match=f"{prefix}:*"))


def _two_instances(
    make_server: Callable[..., LiveServer], **settings: object
) -> tuple[LiveServer, LiveServer]:
    overrides = {
        "rate_limit_login_per_account": "4/minute",
        "rate_limit_login_failures_per_account_ip": "100/minute",  # all requests come from 127.0.0.1
        **settings,
    }
    one = make_server(**overrides)
    two = make_server(migrate=False, **overrides)
    return one, two


def test_storage_url_follows_redis_url_unless_overridden(tmp_path: os.PathLike[str]) -> None:
    base = {"data_dir": tmp_path}
    assert Settings(**base).resolved_rate_limit_storage_url() == "memory://"  # type: ignore[arg-type]
    url = "redis://127.0.0.1:6379/0"
    assert Settings(**base, redis_url=url).resolved_rate_limit_storage_url() == url  # type: ignore[arg-type]
    memory = Settings(**base, redis_url=url, rate_limit_storage_url="memory://")  # type: ignore[arg-type]
    assert memory.resolved_rate_limit_storage_url() == "memory://"
    other = "redis://10.0.0.2:6379/1"
    assert (
        Settings(**base, rate_limit_storage_url=other).resolved_rate_limit_storage_url() == other  # type: ignore[arg-type]
    )
    with pytest.raises(ValidationError, match="rate_limit_storage_url"):
        Settings(**base, rate_limit_storage_url="memcached://127.0.0.1")  # type: ignore[arg-type]


@sqlite_only
def test_login_failures_add_up_across_instances_through_redis(
    make_server: Callable[..., LiveServer], redis_server: RedisServer
) -> None:
    prefix = _prefix()
    one, two = _two_instances(make_server, redis_url=redis_server.url, rate_limit_key_prefix=prefix)
    assert one.ctx.rate_limiter.shared and two.ctx.rate_limiter.shared
    with one.client() as a, two.client() as b:
        account = register(a)
        user, dev = account.username, account.first.id
        # 4 failures, 2 on each instance: the account's limit (4/minute) is reached in total.
        for client in (a, b, a, b):
            assert _wrong_login(client, user, dev).status_code == 401
        r = _wrong_login(b, user, dev)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["retry_after"] == int(r.headers["Retry-After"])
        # ... on both instances, even with the right password.
        assert login(a, account, account.first).status_code == 429
        assert _storage_errors(a) == 0 and _storage_errors(b) == 0
    assert _keys(redis_server, prefix), "the windows should live in Redis under the key prefix"


@sqlite_only
def test_memory_storage_counts_per_instance(
    make_server: Callable[..., LiveServer], redis_server: RedisServer
) -> None:
    """The contrast: with per-process windows (``memory://`` overriding ``redis_url``) the same
    failures spread over two instances stay under the limit on each."""
    prefix = _prefix()
    one, two = _two_instances(
        make_server,
        redis_url=redis_server.url,
        rate_limit_storage_url="memory://",
        rate_limit_key_prefix=prefix,
    )
    assert not one.ctx.rate_limiter.shared and not two.ctx.rate_limiter.shared
    with one.client() as a, two.client() as b:
        account = register(a)
        user, dev = account.username, account.first.id
        codes = [_wrong_login(c, user, dev).status_code for c in (a, b, a, b, b, a)]
        assert codes == [401] * 6  # 3 failures per instance: each below 4/minute
        # Each instance still limits on its own.
        assert _wrong_login(a, user, dev).status_code == 401
        assert _wrong_login(a, user, dev).status_code == 429
    assert _keys(redis_server, prefix) == []


@sqlite_only
def test_redis_unreachable_falls_back_to_per_process_limits(make_server: Callable[..., LiveServer]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    one, two = _two_instances(make_server, rate_limit_storage_url=dead, rate_limit_register_per_ip="3/minute")
    assert one.ctx.rate_limiter.shared
    with one.client() as a, two.client() as b:
        account = register(a)  # normal answers, no 500
        user, dev = account.username, account.first.id
        assert login(a, account, account.first).status_code == 200
        assert [_wrong_login(a, user, dev).status_code for _ in range(5)] == [401] * 4 + [429]
        # Per process: the other instance has its own windows.
        assert _wrong_login(b, user, dev).status_code == 401
        # Other limits hold per process too (registration: 3/minute per IP, one used on `a`).
        codes = [b.post("/v1/accounts", json=register_body(new_account())).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]
        assert _storage_errors(a) >= 1 and _storage_errors(b) >= 1


# -- the limiter on its own, against a redis-server this test stops and restarts -----------------


async def _clients(url: str) -> int:
    r = redis.asyncio.Redis.from_url(url)
    try:
        return len(await r.client_list()) - 1  # minus this connection
    finally:
        await r.aclose()


async def test_limiter_survives_a_redis_outage_and_closes_its_connections(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    del redis_server  # only for the skip/fail rule when redis-server is missing
    private = start_redis()
    registry = CollectorRegistry()
    limiter = RateLimiter(
        storage_url=private.url, key_prefix=_prefix(), registry=registry, retry_after_error_s=0.0
    )

    def errors() -> float:
        return registry.get_sample_value(ERRORS_METRIC) or 0.0

    try:
        await limiter.hit("2/minute", "scope", "k")
        await limiter.hit("2/minute", "scope", "k")
        with pytest.raises(Problem) as over:
            await limiter.hit("2/minute", "scope", "k")
        assert (over.value.status, over.value.code) == (429, ProblemCode.RATE_LIMITED)
        assert 1 <= int(over.value.headers["Retry-After"]) <= 60
        assert errors() == 0

        await asyncio.to_thread(private.stop)
        caplog.set_level(logging.WARNING, logger="saltline.server.services.ratelimit")
        # Redis is gone: the memory windows answer (they have not seen the hits above).
        await limiter.hit("2/minute", "scope", "k")
        await limiter.record("2/minute", "scope", "k")
        with pytest.raises(Problem, match="too many attempts"):
            await limiter.check("2/minute", "scope", "k")
        assert errors() >= 3
        warnings = [r for r in caplog.records if "rate-limit storage" in r.getMessage()]
        assert len(warnings) == 1  # at most one warning per minute

        await asyncio.to_thread(private.start)  # empty again (no persistence)
        before = errors()
        await limiter.hit("2/minute", "scope", "k")  # Redis again: a fresh window
        await limiter.hit("2/minute", "scope", "k")
        assert errors() <= before + 1  # at most once, for the stale pooled connection
        with pytest.raises(Problem, match="too many attempts"):
            await limiter.hit("2/minute", "scope", "k")

        assert await _clients(private.url) >= 1
        await limiter.close()
        for _ in range(100):
            if await _clients(private.url) == 0:
                break
            await asyncio.sleep(0.02)
        assert await _clients(private.url) == 0
    finally:
        await limiter.close()
        private.close()
