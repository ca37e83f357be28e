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

Hot path (both databases): the group-commit writer's transactions (:meth:`Database.run_write`)
and the per-request reads (:meth:`Database.run_read`) run on :class:`SyncThreads`: long-lived
connections of a synchronous driver (pysqlite with the same PRAGMAs; psycopg for PostgreSQL when
installed), the whole transaction as one synchronous function on a dedicated thread. Through
aiosqlite every statement costs several thread hand-offs, and through asyncpg one round trip, each
waiting for a turn of the busy event loop (measured: ~20 ms per batch transaction on SQLite,
~33 ms on PostgreSQL, the throughput limit); here a transaction costs one hand-off.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from saltline.server.storage.read_batch import ReadBatcher

T = TypeVar("T")

#: Threads (each with its own connection) that run :meth:`Database.run_read`.
SYNC_READER_THREADS = 3

_WRITE_OPTION = "saltline_write"
#: SQLite: how often the writer asks for a PASSIVE WAL checkpoint (it never checkpoints itself).
CHECKPOINT_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0").close()


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
        file_db = bool(parsed.database) and parsed.database != ":memory:"
        # A fixed pool for a file database: every aiosqlite connection is its own thread plus a
        # connect and four PRAGMAs, so an overflow that opens and closes connections under load
        # churns threads (measured: ~66 new connections/s at 20 concurrent senders, with the event
        # loop starved of the GIL). Callers wait for a pooled connection instead.
        pool_args: dict[str, Any] = (
            {"pool_size": max(2, pool_size), "max_overflow": 0, "pool_timeout": 60} if file_db else {}
        )
        engine = create_async_engine(
            url, connect_args={"timeout": busy_timeout_ms / 1000}, hide_parameters=True, **pool_args
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


def _install_sqlite_hooks(engine: AsyncEngine | Engine, synchronous: str, busy_timeout_ms: int) -> None:
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("sqlite synchronous must be FULL or NORMAL")
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (the driver's implicit BEGIN is always deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class SyncThreads:
    """Synchronous transactions on long-lived connections of a synchronous driver (pysqlite;
    psycopg for PostgreSQL), each run whole on one of ``threads`` dedicated threads (see the
    module doc): the group-commit writer (one thread; ``BEGIN IMMEDIATE`` on SQLite) and the hot
    path's small reads. Off the event loop, a transaction's statements do not each wait for a
    turn of the loop: one hand-off per transaction."""

    def __init__(
        self,
        url: str,
        *,
        threads: int = 1,
        write: bool = True,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            self.engine = create_sync_engine(
                parsed.set(drivername="sqlite"),
                connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
                pool_size=threads,
                max_overflow=0,
                hide_parameters=True,
            )
            _install_sqlite_hooks(self.engine, synchronous, busy_timeout_ms)
            if write:
                # The writer never checkpoints inside a commit (under synchronous=FULL a
                # checkpoint copies and fsyncs up to ~4 MB of pages: measured as ~100 ms stalls
                # of the send that crossed the threshold); :meth:`checkpoint_soon` runs a PASSIVE
                # checkpoint on another connection instead. The WAL is still fsynced per commit.
                event.listen(self.engine, "connect", _no_autocheckpoint)
        else:
            self.engine = create_sync_engine(
                parsed.set(drivername="postgresql+psycopg"),
                pool_size=threads,
                max_overflow=0,
                pool_pre_ping=True,
                hide_parameters=True,
            )
        self._write = write
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._last_checkpoint = 0.0
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="db-writer" if write else "db-reader"
        )

    def _run(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            if self._write:
                conn = conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                return fn(conn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def checkpoint_soon(self, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        """SQLite: queue a PASSIVE WAL checkpoint on one of these threads, at most once per
        ``interval_s`` (it never blocks the writer; readers keep their snapshots)."""
        if not self._sqlite:
            return
        now = time.monotonic()
        if now - self._last_checkpoint < interval_s:
            return
        self._last_checkpoint = now
        self._executor.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()  # type: ignore[union-attr]
        except Exception:
            log.warning("WAL checkpoint failed", exc_info=True)
        finally:
            raw.close()

    async def dispose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.dispose)
        self._executor.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class Database:
    """The engine plus the ways repositories open transactions."""

    engine: AsyncEngine
    #: Where :meth:`run_write` and :meth:`run_read` run (None: on ``engine``): SQLite files, and
    #: PostgreSQL when psycopg is installed.
    sync_writer: SyncThreads | None = None
    sync_readers: SyncThreads | None = None
    #: Batches :meth:`run_small_read` calls into one hand-off to the reader threads.
    small_reads: ReadBatcher | None = None

    @classmethod
    def open(
        cls, url: str, *, sqlite_synchronous: str = "FULL", busy_timeout_ms: int = 10_000, pool_size: int = 10
    ) -> Database:
        """The engine of ``url`` and its :class:`SyncThreads` (SQLite file; PostgreSQL if
        psycopg is installed, else everything runs on the asyncpg engine)."""
        engine = create_engine(
            url, sqlite_synchronous=sqlite_synchronous, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size
        )
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if not parsed.database or parsed.database == ":memory:":
                return cls(engine)
        elif importlib.util.find_spec("psycopg") is None:
            return cls(engine)
        writer = SyncThreads(url, synchronous=sqlite_synchronous, busy_timeout_ms=busy_timeout_ms)
        readers = SyncThreads(
            url,
            threads=SYNC_READER_THREADS,
            write=False,
            synchronous=sqlite_synchronous,
            busy_timeout_ms=busy_timeout_ms,
        )
        return cls(engine, writer, readers, ReadBatcher(readers.run))

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` (synchronous SQLAlchemy Core on a sync ``Connection``) in one write
        transaction (``BEGIN IMMEDIATE`` on SQLite), committed if it returns."""
        if self.sync_writer is not None:
            result = await self.sync_writer.run(fn)
            if self.sync_readers is not None:
                self.sync_readers.checkpoint_soon()
            return result
        async with self.write() as conn:
            return await conn.run_sync(fn)

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

    async def run_read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` (synchronous SQLAlchemy Core) in one read transaction. For the hot path's
        small reads: on SQLite one thread hand-off for the whole transaction."""
        if self.sync_readers is not None:
            return await self.sync_readers.run(fn)
        async with self.read() as conn:
            return await conn.run_sync(fn)

    async def run_small_read(self, fn: Callable[[Connection], T]) -> T:
        """As :meth:`run_read`, for the hot path's tiny reads (a socket open, a token's holder):
        reads that arrive while others are on the reader thread share their next hand-off and
        read transaction (:mod:`saltline.server.storage.read_batch`). Never for reads that take long."""
        if self.small_reads is not None:
            return await self.small_reads.read(fn)
        return await self.run_read(fn)

    async def dispose(self) -> None:
        if self.sync_readers is not None:
            await self.sync_readers.dispose()
        if self.sync_writer is not None:
            await self.sync_writer.dispose()
        await self.engine.dispose()
