"""Alembic owns the schema: upgrade to head and back to base on SQLite and PostgreSQL; the
server refuses to start on a database that is behind."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import inspect

from saltline.server.storage import migrate
from saltline.server.storage.db import create_engine
from saltline.server.storage.schema import metadata
from tests.live import LiveServer


def _tables(url: str) -> set[str]:
    async def go() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_upgrade_to_head_and_down_to_base(db_url: str) -> None:
    assert migrate.current(db_url) == ()
    assert not migrate.is_up_to_date(db_url)
    migrate.upgrade(db_url)
    assert set(migrate.current(db_url)) == set(migrate.head_revisions())
    assert migrate.is_up_to_date(db_url)
    tables = _tables(db_url)
    assert {"accounts", "devices", "device_lists", "prekeys", "refresh_tokens"} <= tables
    assert set(metadata.tables) <= tables  # every table the code declares is migrated

    migrate.downgrade(db_url, "0001_initial")
    assert migrate.current(db_url) == ("0001_initial",)
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) == ()
    assert _tables(db_url) <= {"alembic_version"}
    migrate.upgrade(db_url)  # and up again from base
    assert migrate.is_up_to_date(db_url)


def _columns(url: str) -> dict[str, set[str]]:
    async def go() -> dict[str, set[str]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:

                def read(c: Any) -> dict[str, set[str]]:
                    i = inspect(c)
                    return {t: {col["name"] for col in i.get_columns(t)} for t in i.get_table_names()}

                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_migrated_columns_match_the_models(db_url: str) -> None:
    """Every declared table has exactly the declared columns once migrated (issue 12 added
    grants, handoffs, names and split provisioning secrets in 0004_linking); and 0004 goes down
    to the single-secret channel table."""
    migrate.upgrade(db_url)
    migrated = _columns(db_url)
    for name, table in metadata.tables.items():
        assert migrated[name] == {c.name for c in table.columns}, name
    migrate.downgrade(db_url, "0003_blobs")
    old = _columns(db_url)
    assert "secret_hash" in old["provisioning_channels"]
    assert not {"device_grants", "key_handoffs", "device_names"} & set(old)
    migrate.upgrade(db_url)
    assert _columns(db_url) == migrated


def test_check_names_the_upgrade_command(sqlite_url: str) -> None:
    async def go() -> None:
        engine = create_engine(sqlite_url)
        try:
            await migrate.check_up_to_date(engine)
        finally:
            await engine.dispose()

    with pytest.raises(migrate.DatabaseNotMigratedError, match="saltline db upgrade"):
        asyncio.run(go())
    migrate.upgrade(sqlite_url, "0001_initial")
    if migrate.head_revisions() != ("0001_initial",):  # behind head, not just empty
        with pytest.raises(migrate.DatabaseNotMigratedError, match="saltline db upgrade"):
            asyncio.run(go())


def test_app_refuses_to_start_unmigrated(make_server: Callable[..., LiveServer]) -> None:
    with pytest.raises(RuntimeError, match="failed to start"):
        make_server(migrate=False)


def _cli(*args: str, env_url: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SALTLINE_DATABASE_URL": env_url, "SALTLINE_DATA_DIR": data_dir}
    return subprocess.run(
        [sys.executable, "-m", "saltline.server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_cli_serve_refuses_a_database_behind_head_then_db_upgrade(
    sqlite_url: str, tmp_path: os.PathLike[str]
) -> None:
    """A database that holds something and is behind head (or any PostgreSQL database) is
    migrated only by ``saltline db upgrade``: ``serve`` refuses, naming the command."""
    migrate.upgrade(sqlite_url, "0001_initial")
    refused = _cli("serve", "--port", "1", env_url=sqlite_url, data_dir=os.fspath(tmp_path))
    assert refused.returncode == 2
    assert "saltline db upgrade" in refused.stderr
    upgraded = _cli("db", "upgrade", env_url=sqlite_url, data_dir=os.fspath(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    status = _cli("db", "current", env_url=sqlite_url, data_dir=os.fspath(tmp_path))
    assert "up to date" in status.stdout


def test_serve_creates_the_schema_of_a_fresh_embedded_database(
    sqlite_url: str, tmp_path: os.PathLike[str], pg_url: str
) -> None:
    """A newcomer's first command works: on a fresh embedded SQLite database ``serve`` creates the
    schema (the start-up then proceeds; the port is taken here so that it stops right after). A
    fresh PostgreSQL database is never migrated by ``serve``."""
    assert migrate.is_fresh_sqlite(sqlite_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        started = _cli("serve", "--port", port, env_url=sqlite_url, data_dir=os.fspath(tmp_path))
    assert "created the database schema" in started.stderr
    assert migrate.is_up_to_date(sqlite_url) and not migrate.is_fresh_sqlite(sqlite_url)
    assert not migrate.is_fresh_sqlite(pg_url)  # empty, but PostgreSQL
    refused = _cli("serve", "--port", port, env_url=pg_url, data_dir=os.fspath(tmp_path))
    assert refused.returncode == 2 and "saltline db upgrade" in refused.stderr
