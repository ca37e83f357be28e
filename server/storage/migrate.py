"""Run Alembic programmatically: ``saltline db upgrade|downgrade|current`` and the start-up check.

The async functions take an engine (the app uses them on its own engine); the sync wrappers take a
URL and are for the CLI and for tests outside an event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from saltline.server.storage.db import create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
UPGRADE_COMMAND = "saltline db upgrade"
T = TypeVar("T")


class DatabaseNotMigratedError(RuntimeError):
    """The database schema is behind (or ahead of) this server's migrations."""


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


async def _with_connection(engine: AsyncEngine, fn: Callable[[Connection], T], *, commit: bool) -> T:
    async with engine.connect() as conn:
        result = await conn.run_sync(fn)
        if commit:
            await conn.commit()
        return result


def _command_runner(cmd: Callable[..., Any], *args: Any) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        cmd(cfg, *args)

    return run


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    await _with_connection(engine, _command_runner(command.upgrade, revision), commit=True)


async def downgrade_engine(engine: AsyncEngine, revision: str) -> None:
    await _with_connection(engine, _command_runner(command.downgrade, revision), commit=True)


async def current_engine(engine: AsyncEngine) -> tuple[str, ...]:
    return await _with_connection(engine, _current_revisions, commit=False)


async def check_up_to_date(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseNotMigratedError` (naming the command to run) unless at head."""
    current = set(await current_engine(engine))
    heads = set(head_revisions())
    if current != heads:
        have = ", ".join(sorted(current)) or "empty (no migrations applied)"
        raise DatabaseNotMigratedError(
            f"database schema is at {have} but this server needs {', '.join(sorted(heads))}: "
            f"run `{UPGRADE_COMMAND}` (with the same --database-url) first"
        )


def _run(url: str, fn: Callable[[AsyncEngine], Any]) -> Any:
    async def go() -> Any:
        engine = create_engine(url)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, lambda e: upgrade_engine(e, revision))


def downgrade(url: str, revision: str) -> None:
    _run(url, lambda e: downgrade_engine(e, revision))


def current(url: str) -> tuple[str, ...]:
    result: tuple[str, ...] = _run(url, current_engine)
    return result


def is_up_to_date(url: str) -> bool:
    return set(current(url)) == set(head_revisions())


def _table_names(connection: Connection) -> tuple[str, ...]:
    from sqlalchemy import inspect

    return tuple(inspect(connection).get_table_names())


def is_fresh_sqlite(url: str) -> bool:
    """An embedded SQLite database with nothing in it yet (no table, no migration applied): the
    only case ``serve`` creates the schema by itself. PostgreSQL, and any database that holds
    something, is migrated only by ``saltline db upgrade``."""
    if not url.startswith("sqlite"):
        return False

    async def tables(engine: AsyncEngine) -> tuple[str, ...]:
        return await _with_connection(engine, _table_names, commit=False)

    return not current(url) and not _run(url, tables)
