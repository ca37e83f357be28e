"""The durable store: one SQLite file per device, optionally encrypted at rest.

Use::

    store = SqliteStore.open("~/.saltline/desktop/store.db", key=app_key)   # key: 32 bytes or None
    try:
        ...                          # every Protocol of saltline.client_sdk.stores.base
    finally:
        store.close()                # or: with SqliteStore.open(...) as store: ...

**The store holds secrets** (the device's private keys, ratchet states, refresh token, message
texts). Apps should pass ``key`` (32 random bytes kept in the platform keystore). Without a key the
secrets are written in plain form and only file permissions (the files are created ``0600``)
protect them.

Durability. The standard :mod:`sqlite3` module, journal_mode=WAL, synchronous=FULL, every public
write one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) unless it runs inside
:meth:`SqliteStore.transaction`, whose outermost block commits everything together (or rolls
everything back on an exception). ``secure_delete`` is on, so a replaced ratchet state's freed
page is zeroed in the database file (copies may survive in the WAL until the next checkpoint, and
in the file system: that is the limit of what a library can erase).

Encryption at rest (when ``key`` is given). The SECRET fields of :mod:`saltline.client_sdk.stores.base`
(``DeviceRecord.state`` and ``refresh_token``, ``SessionRecord.state``, ``MessageRecord.text`` and
``body``, ``OutboxItem.body``, ``request`` and ``failed_reason``, ``SyncOpRecord.plaintext``) are
stored as::

    0x01 || nonce (24 random bytes) || XChaCha20-Poly1305(row_key, nonce, plaintext, AD)
    AD = "saltline-store-v1" || lp(table) || lp(column) || lp(row key part)...   lp(x) = u16be(len x) || x
    row_key = HKDF-SHA256(ikm=app key, salt=store salt (16 random bytes, table meta),
                          info="saltline store v1 row key", 32)

so a ciphertext moved to another row, column or table fails authentication
(:class:`~saltline.client_sdk.errors.StoreCorruptError`). A value the store must look rows up by (the
digests of the ``seen_base_keys`` table) cannot be sealed with a random nonce; it is stored as the
deterministic tag ``HMAC-SHA256(tag_key, AD(table, column) || value)``, with ``tag_key =
HKDF-SHA256(ikm=row_key, salt="", info="saltline store v1 lookup tag key", 32)``. The ``meta``
table also holds a key check value (the AEAD of a fixed string under the row key); opening with a
wrong key, without the key of an encrypted store, or with a key for a plain store raises
:class:`~saltline.client_sdk.errors.StoreKeyError` before anything is read. Identifiers, timestamps,
sequence numbers, conversation members, clocks and the public contact data (account keys, signed
device lists) are not encrypted: they are metadata the server knows as well, and the store queries
and orders by them.

Integrity (encrypted stores; :mod:`saltline.client_sdk.stores.integrity`, docs/protocol/keys.md § 5.1).
Every row carries a MAC under a key derived from the row key over all its columns (so it is bound
to its table and primary key); the trust anchors, membership, sessions and cursors also carry a
version from a monotonic write counter and are listed in a keyed manifest digest that a MAC'd
state row (written once per transaction) commits to. :meth:`SqliteStore.open` verifies all of them
and raises :class:`~saltline.client_sdk.errors.StoreTamperedError` if a row was changed, moved, added,
deleted or rolled back; bulk rows (messages, outbox, sync ops, handler inbox) are verified when
read. A consistent rollback of the whole file is detected only with ``min_write_counter``.

Locking. :meth:`SqliteStore.open` takes an exclusive ``fcntl.flock`` on ``<path>.lock`` (non-
blocking) and holds it until :meth:`SqliteStore.close`. A second open of the same store, from this
process or another, raises :class:`~saltline.client_sdk.errors.StoreLockedError` naming the path and the
process id written in the lock file. The kernel drops the lock when the process dies, so a crash
leaves no stale lock. :meth:`SqliteStore.acquire`/:meth:`~SqliteStore.release` add the Protocol's
one-client-per-store rule inside the process that opened it.

Schema versions. ``PRAGMA user_version`` is the number of :data:`MIGRATIONS` applied; opening
applies the missing ones in one transaction each, and refuses a file written by a newer version
(:class:`~saltline.client_sdk.errors.StoreVersionError`).

Modules: this one holds :class:`SqliteStore` (open, close, transactions); the schema and its
migrations are in :mod:`saltline.client_sdk.stores.sqlite_schema`, the encryption in
:mod:`saltline.client_sdk.stores.sqlite_cipher`, the file lock in
:mod:`saltline.client_sdk.stores.sqlite_lock`, and one class per aggregate in
:mod:`saltline.client_sdk.stores.sqlite_repos`.

POSIX only (``fcntl``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from saltline.client_sdk.errors import StoreError, StoreKeyError, StoreLockedError, StoreTamperedError
from saltline.client_sdk.stores.integrity import Integrity
from saltline.client_sdk.stores.sqlite_cipher import KEY_SIZE, Cipher, setup_key, write_key_check
from saltline.client_sdk.stores.sqlite_lock import lock, unlock
from saltline.client_sdk.stores.sqlite_repos import (
    SqliteConversationStore,
    SqliteCursorStore,
    SqliteDeviceListStore,
    SqliteHandlerInboxStore,
    SqliteIdentityStore,
    SqliteOutboxStore,
    SqlitePreKeyStore,
    SqliteSessionStore,
    SqliteSyncStore,
)
from saltline.client_sdk.stores.sqlite_schema import (
    INTEGRITY_SCHEMA,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    migrate,
)

__all__ = ["KEY_SIZE", "MIGRATIONS", "SCHEMA_VERSION", "SqliteStore", "migrate"]


class SqliteStore:
    """A :class:`~saltline.client_sdk.stores.base.Store` in one SQLite file; see the module docstring.

    Create it with :meth:`open` (not the constructor) and :meth:`close` it (or use ``with``).
    One thread at a time: calls are serialised by a lock, and a :meth:`transaction` belongs to
    the thread that opened it.
    """

    def __init__(
        self, path: str, conn: sqlite3.Connection, cipher: Cipher, integrity: Integrity, lock_fd: int
    ) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._cipher = cipher
        self._integrity = integrity
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._depth = 0
        self._acquired = False
        self.identity = SqliteIdentityStore(self)
        self.device_lists = SqliteDeviceListStore(self)
        self.sessions = SqliteSessionStore(self)
        self.conversations = SqliteConversationStore(self)
        self.outbox = SqliteOutboxStore(self)
        self.cursors = SqliteCursorStore(self)
        self.prekeys = SqlitePreKeyStore(self)
        self.sync = SqliteSyncStore(self)
        self.handler_inbox = SqliteHandlerInboxStore(self)

    # -- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        min_write_counter: int | None = None,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SqliteStore:
        """Open (creating if needed) the store at ``path``, migrate it, and lock it for this
        process until :meth:`close`.

        ``key``: 32 bytes to encrypt the secrets at rest with (see the module docstring). A new
        store is created encrypted if and only if a key is given; an existing store must be opened
        the same way (otherwise :class:`~saltline.client_sdk.errors.StoreKeyError`). An encrypted store is
        verified (:mod:`saltline.client_sdk.stores.integrity`) before it is returned.
        ``min_write_counter``: the :attr:`write_counter` the app saved (in its keystore, next to
        the key) when it last closed the store; a lower counter means the whole file was rolled
        back (:class:`~saltline.client_sdk.errors.StoreTamperedError`).
        ``migrations``: for tests only.
        Raises :class:`~saltline.client_sdk.errors.StoreLockedError`, ``StoreKeyError``,
        ``StoreVersionError``, ``StoreTamperedError`` or ``StoreError``.
        """
        if key is not None and (not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE):
            raise StoreKeyError(f"the store key must be {KEY_SIZE} bytes (from a keystore or a KDF)")
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        parent = Path(real).parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = lock(real)
        conn: sqlite3.Connection | None = None
        try:
            # Create the file ourselves so that it (and the -wal/-shm files SQLite derives from
            # it) is private to the user.
            os.close(os.open(real, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(real, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not put the store {real} in WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, migrations)
            protect = len(migrations) >= INTEGRITY_SCHEMA
            found = setup_key(conn, real, None if key is None else bytes(key), integrity=protect)
            cipher = Cipher(found.row_key)
            integrity = Integrity(real, found.row_key if protect else None)
            row_key = found.row_key
            integrity.open(
                conn,
                adopt=found.legacy or found.created,
                on_adopt=None
                if row_key is None or not found.legacy
                else (lambda c: write_key_check(c, row_key)),
            )
            if min_write_counter is not None and integrity.enabled and integrity.counter < min_write_counter:
                raise StoreTamperedError(
                    f"the store {real} is older than the last one this app closed (write counter "
                    f"{integrity.counter} < {min_write_counter}): the whole file was rolled back to an "
                    "earlier copy. Restore the latest backup, or delete it and link this device again"
                )
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            unlock(real, lock_fd)
            raise StoreError(f"{real} is not a readable Saltline store: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            unlock(real, lock_fd)
            raise
        return cls(real, conn, cipher, integrity, lock_fd)

    def close(self) -> None:
        """Checkpoint, close the database and release the lock (idempotent)."""
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                if self._depth == 0:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            finally:
                conn.close()
                self._acquired = False
                unlock(self.path, self._lock_fd)

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def encrypted(self) -> bool:
        return self._cipher.encrypted

    @property
    def write_counter(self) -> int:
        """The store's monotonic count of protected writes (0 for a plain store). An app that can
        keep it outside the file (the platform keystore, after :meth:`close`) passes it to
        :meth:`open` as ``min_write_counter`` to detect a rollback of the whole file."""
        return self._integrity.counter if self._integrity.enabled else 0

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else ("encrypted" if self.encrypted else "plain")
        return f"SqliteStore({self.path!r}, {state})"

    def acquire(self) -> None:
        with self._mutex:
            self._require_open()
            if self._acquired:
                raise StoreLockedError(
                    f"the store {self.path} is already in use by another client in this process; "
                    "close that client first"
                )
            self._acquired = True

    def release(self) -> None:
        self._acquired = False

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._mutex:
            conn = self._require_open()
            if self._depth == 0:
                conn.execute("BEGIN IMMEDIATE")
                self._integrity.begin()
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    conn.execute("ROLLBACK")
                    self._integrity.rollback()
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._integrity.flush(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._integrity.rollback()
                    raise

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    def _put(self, table: str, sql: str, params: Sequence[Any] = ()) -> None:
        """Write rows of ``table`` with ``sql`` (INSERT, upsert or UPDATE, no RETURNING clause) and
        authenticate them (one transaction unless inside one)."""
        with self.transaction():
            self._integrity.write(self._require_open(), table, sql, params)

    def _delete(self, table: str, where: str, params: Sequence[Any] = ()) -> int:
        """``DELETE FROM table WHERE where``, keeping the integrity state; returns the row count."""
        with self.transaction():
            conn = self._require_open()
            self._integrity.before_delete(conn, table, where, params)
            sql = f"DELETE FROM {table} WHERE {where}"  # noqa: S608 (names from sqlite_repos, not input)
            return int(conn.execute(sql, params).rowcount)

    def _get(self, table: str, sql: str, params: Sequence[Any] = ()) -> Any:
        """One row of ``SELECT <columns>, * FROM table ...``, verified (or None)."""
        with self._mutex:
            row = self._require_open().execute(sql, params).fetchone()
            if row is not None:
                self._integrity.check(table, row)
            return row

    def _get_all(self, table: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of ``SELECT <columns>, * FROM table ...``, each verified."""
        with self._mutex:
            rows = self._require_open().execute(sql, params).fetchall()
            check = self._integrity.check
            for row in rows:
                check(table, row)
            return rows
