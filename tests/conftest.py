"""Fixtures shared by every test package.

- ``pg_cluster`` (session): a throwaway PostgreSQL cluster, or skip/fail (see ``tests/pg.py``).
- ``db_url``: parametrised over ``sqlite`` (a file in tmp_path) and ``postgresql`` (a fresh
  database in ``pg_cluster``); an empty database, not migrated.
- ``sqlite_url``: the SQLite case only; ``pg_url``: a fresh PostgreSQL database only.
- ``clock``: a ``ManualClock`` used by every app the fixtures start.
- ``make_settings(**overrides)``, ``make_server(migrate=True, **overrides)``, ``live_server``
  (a real uvicorn on a free port, see ``tests/live.py``) and ``client`` (an ``httpx.Client`` on it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from server.settings import Settings
from server.storage.migrate import upgrade
from tests.live import LiveServer, ManualClock
from tests.pg import PgCluster, start_cluster

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
