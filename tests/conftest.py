"""Fixtures shared by every test package.

- ``pg_cluster`` (session): a throwaway PostgreSQL cluster, or skip/fail (see ``tests/pg.py``).
- ``db_url``: parametrised over ``sqlite`` (a file in tmp_path) and ``postgresql`` (a fresh
  database in ``pg_cluster``); an empty database, not migrated.
- ``sqlite_url``: the SQLite case only; ``pg_url``: a fresh PostgreSQL database only.
- ``clock``: a ``ManualClock`` used by every app the fixtures start.
- ``make_settings(**overrides)``, ``make_server(migrate=True, **overrides)``, ``live_server``
  (a real uvicorn on a free port, see ``tests/live.py``) and ``client`` (an ``httpx.Client`` on it).
- ``redis_server`` (session): a throwaway redis-server (``tests/redis_fixture.py``);
  ``start_nginx_for([port, port])``: nginx running ``deploy/nginx.conf`` (``tests/nginx_fixture.py``).
  Both skip without the binaries, or fail with ``SALTLINE_REQUIRE_REDIS=1`` / ``SALTLINE_REQUIRE_NGINX=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from saltline.server.settings import Settings
from saltline.server.storage.migrate import upgrade
from tests.live import LiveServer, ManualClock
from tests.nginx_fixture import Nginx, start_nginx
from tests.pg import PgCluster, start_cluster
from tests.redis_fixture import RedisServer, start_redis

REQUIRE_POSTGRES = os.environ.get("SALTLINE_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    try:
        cluster = start_cluster()
    except (FileNotFoundError, OSError) as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (SALTLINE_REQUIRE_POSTGRES=1) but unavailable: {exc}")
        pytest.skip(f"PostgreSQL not available ({exc}); install it or set PATH to its bin directory")
    except Exception as exc:  # initdb/pg_ctl failed
        if REQUIRE_POSTGRES:
            pytest.fail(f"could not start a PostgreSQL cluster: {exc}")
        pytest.skip(f"could not start a PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    return f"sqlite+aiosqlite:///{os.fspath(tmp_path)}/saltline.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh PostgreSQL database (for tests that only make sense on PostgreSQL)."""
    return pg_cluster.create_database()


# -- live servers ---------------------------------------------------------------------------------

TEST_SETTINGS: dict[str, object] = {
    "jwt_secret": "test-secret-" + "x" * 40,
    "argon2_time_cost": 1,
    "argon2_memory_cost_kib": 8,
    "argon2_parallelism": 1,
    "rate_limit_login_per_account": "1000/minute",
    "rate_limit_login_per_ip": "1000/minute",
    "rate_limit_register_per_ip": "1000/minute",
    "rate_limit_provisioning_per_ip": "1000/minute",
    "rate_limit_provisioning_puts_per_ip": "1000/minute",
    "rate_limit_device_grants_per_account": "1000/minute",
    "rate_limit_signed_list_per_ip": "1000/minute",
    "rate_limit_signed_list_per_account": "1000/minute",
    "heartbeat_interval_s": 15.0,
    "log_level": "warning",
}


@pytest.fixture
def clock() -> ManualClock:
    """The clock every app started by ``make_server`` uses; ``clock.advance(seconds)``."""
    return ManualClock()


@pytest.fixture
def make_settings(tmp_path: os.PathLike[str], db_url: str) -> Callable[..., Settings]:
    """``make_settings(**overrides)``: test Settings on ``db_url`` (cheap argon2, high rate limits)."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": tmp_path, "database_url": db_url, "port": 0, **TEST_SETTINGS}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_server(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> Iterator[Callable[..., LiveServer]]:
    """``make_server(migrate=True, **settings_overrides)``: migrate ``db_url`` to head and start a
    live server on it (stopped at teardown). Call ``server.restart()`` to restart it."""
    servers: list[LiveServer] = []

    def make(*, migrate: bool = True, **overrides: object) -> LiveServer:
        settings = make_settings(**overrides)
        if migrate:
            upgrade(settings.database_url)
        server = LiveServer(settings, clock)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    """A migrated live server on ``db_url`` with the default test settings."""
    return make_server()


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as c:
        yield c


# -- Redis and nginx (multi-instance tests) -------------------------------------------------------

REQUIRE_REDIS = os.environ.get("SALTLINE_REQUIRE_REDIS") == "1"
REQUIRE_NGINX = os.environ.get("SALTLINE_REQUIRE_NGINX") == "1"


def _missing(what: str, required: bool, env: str, exc: BaseException) -> None:
    if required:
        pytest.fail(f"{what} is required ({env}=1) but unavailable: {exc}")
    pytest.skip(f"{what} not available ({exc}); install it to run this test")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server (session-wide); skipped without Redis unless required (CI)."""
    try:
        server = start_redis()
    except Exception as exc:
        _missing("Redis (redis-server)", REQUIRE_REDIS, "SALTLINE_REQUIRE_REDIS", exc)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def start_nginx_for() -> Iterator[Callable[[list[int]], Nginx]]:
    """``start_nginx_for([port1, port2])``: nginx running deploy/nginx.conf in front of them."""
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        try:
            nginx = start_nginx(upstreams)
        except (FileNotFoundError, OSError) as exc:
            _missing("nginx", REQUIRE_NGINX, "SALTLINE_REQUIRE_NGINX", exc)
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()
