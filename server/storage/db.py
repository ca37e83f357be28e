"""Engine creation and transaction helpers for SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQLite choices:
- ``journal_mode=WAL``: readers never block the writer and vice versa.
- ``synchronous=FULL`` (configurable): in WAL mode NORMAL survives a process crash but a power
  loss can roll back the last commits. The server acknowledges a message only after its commit,
  so it uses FULL (one fsync of the WAL per commit, amortised by group commit).
- ``foreign_keys=ON`` (off by default in SQLite) and ``busy_timeout`` so that a second writer
  waits instead of failing at once.
- Write transactions start with ``BEGIN IMMEDIATE`` (:meth:`Database.write`): a deferred
  transaction that reads and then writes can fail with SQLITE_BUSY when another writer committed
  in between, which busy_timeout cannot fix. Reads use a plain deferred ``BEGIN``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

_WRITE_OPTION = "saltline_write"


def is_sqlite_url(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    busy_timeout_ms: int = 10_000,
    pool_size: int = 10,
) -> AsyncEngine:
    """An async engine for ``url`` with Saltline's connection settings.

    ``hide_parameters``: SQL errors never carry bound values (hashes, ciphertext) into logs."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": busy_timeout_ms / 1000}, hide_parameters=True
        )
        _install_sqlite_hooks(engine, sqlite_synchronous, busy_timeout_ms)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            raise ValueError("PostgreSQL URLs must use the asyncpg driver: postgresql+asyncpg://...")
        return create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
        )
    raise ValueError(f"unsupported database backend {backend!r}: use sqlite+aiosqlite or postgresql+asyncpg")


def _install_sqlite_hooks(engine: AsyncEngine, synchronous: str, busy_timeout_ms: int) -> None:
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("sqlite synchronous must be FULL or NORMAL")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (the driver's implicit BEGIN is always deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@dataclass(frozen=True, slots=True)
class Database:
    """The engine plus the two ways repositories open transactions."""

    engine: AsyncEngine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction (deferred on SQLite), rolled back at the end."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()
