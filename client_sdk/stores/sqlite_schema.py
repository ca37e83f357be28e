"""The schema of :class:`~saltline.client_sdk.stores.sqlite.SqliteStore`: its migration steps, in order.

``PRAGMA user_version`` is the number of :data:`MIGRATIONS` applied; :func:`migrate` applies the
missing ones in one transaction each and refuses a file written by a newer version.

Integrity (:mod:`saltline.client_sdk.stores.integrity`) covers whole rows: a step may add tables and
columns freely (after the step, the rows are verified over the columns their MACs were computed
on and authenticated again over all of them; a new table needs a policy in ``integrity.MANIFEST``
or ``PLACE``, which a test checks). A step must not rewrite existing values of a protected
table or drop its columns: the store would then fail its integrity check.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from saltline.client_sdk.errors import StoreVersionError

__all__ = ["INTEGRITY_SCHEMA", "MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

Migration = Callable[[sqlite3.Connection], None]


def _v1_initial(conn: sqlite3.Connection) -> None:
    """Version 1: one table per aggregate. ``seq`` columns are insertion ticks (tie-breakers)."""
    for statement in (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
        """CREATE TABLE device (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            device_id TEXT NOT NULL,
            state BLOB NOT NULL,
            username TEXT,
            account_id TEXT,
            refresh_token BLOB,
            created_at_ms INTEGER NOT NULL)""",
        """CREATE TABLE contacts (
            account_id TEXT PRIMARY KEY,
            username TEXT NOT NULL,
            account_key BLOB NOT NULL,
            signed_list BLOB NOT NULL,
            trust_policy TEXT NOT NULL,
            verified INTEGER NOT NULL,
            pending_account_key BLOB,
            pending_signed_list BLOB,
            updated_at_ms INTEGER NOT NULL,
            seq INTEGER NOT NULL)""",
        """CREATE TABLE sessions (
            peer_device_id TEXT NOT NULL,
            base_key BLOB NOT NULL,
            state BLOB NOT NULL,
            peer_account_id TEXT NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (peer_device_id, base_key))""",
        """CREATE TABLE conversations (
            conversation_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            members TEXT NOT NULL,
            clock BLOB NOT NULL,
            created_at_ms INTEGER NOT NULL,
            seq INTEGER NOT NULL)""",
        """CREATE TABLE messages (
            envelope_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            sender_account_id TEXT NOT NULL,
            sender_device_id TEXT NOT NULL,
            text BLOB NOT NULL,
            sent_at_ms INTEGER NOT NULL,
            sent_by_me INTEGER NOT NULL,
            status TEXT NOT NULL,
            server_seq INTEGER,
            server_ts_ms INTEGER,
            body BLOB NOT NULL,
            seq INTEGER NOT NULL)""",
        """CREATE TABLE outbox (
            envelope_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            body BLOB NOT NULL,
            clock BLOB NOT NULL,
            created_at_ms INTEGER NOT NULL,
            request BLOB,
            attempts INTEGER NOT NULL,
            seq INTEGER NOT NULL)""",
        "CREATE TABLE queue_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), acked_queue_seq INTEGER NOT NULL)",
        "CREATE TABLE server_seqs (conversation_id TEXT PRIMARY KEY, server_seq INTEGER NOT NULL)",
        """CREATE TABLE prekey_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            uploaded_through_id INTEGER NOT NULL,
            signed_prekey_rotated_at_ms INTEGER NOT NULL,
            last_count_check_ms INTEGER NOT NULL)""",
    ):
        conn.execute(statement)


def _v2_indexes(conn: sqlite3.Connection) -> None:
    """Version 2: indexes for the per-conversation message listing, contact lookup by username
    and the outbox order."""
    conn.execute("CREATE INDEX messages_by_conversation ON messages (conversation_id, server_seq, seq)")
    conn.execute("CREATE INDEX contacts_by_username ON contacts (lower(username))")
    conn.execute("CREATE INDEX outbox_order ON outbox (created_at_ms, seq)")
    conn.execute("CREATE INDEX messages_by_seq ON messages (seq)")  # max(seq) on insert


def _v3_sync(conn: sqlite3.Connection) -> None:
    """Version 3: conversation sync (docs/protocol/sync.md): sequenced operations, per-conversation
    sync bookkeeping, per-account settings."""
    conn.execute(
        """CREATE TABLE sync_ops (
            conversation_id TEXT NOT NULL,
            server_seq INTEGER NOT NULL,
            envelope_id TEXT NOT NULL,
            sender_account_id TEXT NOT NULL,
            sender_device_id TEXT NOT NULL,
            clock BLOB NOT NULL,
            plaintext BLOB NOT NULL,
            PRIMARY KEY (conversation_id, server_seq))"""
    )
    conn.execute(
        """CREATE TABLE sync_meta (
            conversation_id TEXT PRIMARY KEY,
            counter INTEGER NOT NULL,
            lamport INTEGER NOT NULL,
            floor_seq INTEGER NOT NULL,
            floor_clock BLOB NOT NULL,
            members TEXT NOT NULL)"""
    )
    conn.execute("CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _v4_seen_base_keys(conn: sqlite3.Connection) -> None:
    """Version 4: the seen set of initial messages accepted with a reusable (signed or last-resort)
    prekey (docs/protocol/session-setup.md § 6.2). ``tag`` is the 32-byte digest, or in an
    encrypted store a keyed hash of it (:meth:`~saltline.client_sdk.stores.sqlite_cipher.Cipher.tag`)."""
    conn.execute(
        """CREATE TABLE seen_base_keys (
            prekey_id INTEGER NOT NULL,
            tag BLOB NOT NULL,
            PRIMARY KEY (prekey_id, tag))"""
    )


def _v5_outbox_failures_and_handler_inbox(conn: sqlite3.Connection) -> None:
    """Version 5: an outbox item's permanent failure (``failed_reason``, sealed like the body, its
    HTTP status and problem code) and back-off (``next_attempt_ms``); the handler inbox of
    at-least-once app delivery (:class:`~saltline.client_sdk.stores.base.HandlerInboxStore`)."""
    for statement in (
        "ALTER TABLE outbox ADD COLUMN failed_reason BLOB",
        "ALTER TABLE outbox ADD COLUMN failed_status INTEGER",
        "ALTER TABLE outbox ADD COLUMN failed_code TEXT",
        "ALTER TABLE outbox ADD COLUMN next_attempt_ms INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE handler_inbox (
            envelope_id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL,
            added_at_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            seq INTEGER NOT NULL)""",
        "CREATE INDEX handler_inbox_order ON handler_inbox (added_at_ms, seq)",
    ):
        conn.execute(statement)


def _v6_integrity(conn: sqlite3.Connection) -> None:
    """Version 6: integrity protection (:mod:`saltline.client_sdk.stores.integrity`): a row MAC ``mac`` in
    every table but ``meta``, and a version ``ver`` in the tables of the manifest. The rows an older
    SDK wrote are authenticated on the first open with the key (trust on first migration)."""
    for table in (
        "device",
        "contacts",
        "conversations",
        "sync_meta",
        "settings",
        "prekey_meta",
        "queue_cursor",
        "server_seqs",
        "sessions",
        "seen_base_keys",
    ):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN mac BLOB")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN ver INTEGER NOT NULL DEFAULT 0")
    for table in ("messages", "outbox", "sync_ops", "handler_inbox"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN mac BLOB")


#: ``MIGRATIONS[n]`` turns a version-``n`` database into version ``n + 1`` (``PRAGMA user_version``).
#: Only ever append to this list; never edit a step that has shipped.
MIGRATIONS: tuple[Migration, ...] = (
    _v1_initial,
    _v2_indexes,
    _v3_sync,
    _v4_seen_base_keys,
    _v5_outbox_failures_and_handler_inbox,
    _v6_integrity,
)

#: The first schema version with integrity protection (6); a store opened with fewer migrations
#: (tests of older formats) is written as those SDKs wrote it, without.
INTEGRITY_SCHEMA = MIGRATIONS.index(_v6_integrity) + 1


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the steps of ``migrations`` the database lacks, each in its own transaction (the
    connection must be in autocommit mode). Returns the resulting version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise StoreVersionError(
            f"this store has schema version {version} but this Saltline knows only up to "
            f"{len(migrations)}: it was written by a newer Saltline; upgrade the SDK"
        )
    for number in range(version, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[number](conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(migrations)


#: The schema version this SDK writes (the number of migration steps).
SCHEMA_VERSION = len(MIGRATIONS)
