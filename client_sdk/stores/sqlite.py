"""The durable store: one SQLite file per device, optionally encrypted at rest.

Use::

    store = SqliteStore.open("~/.saltline/desktop/store.db", key=app_key)   # key: 32 bytes or None
    try:
        ...                          # every Protocol of client_sdk.stores.base
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

Encryption at rest (when ``key`` is given). The SECRET fields of :mod:`client_sdk.stores.base`
(``DeviceRecord.state`` and ``refresh_token``, ``SessionRecord.state``, ``MessageRecord.text`` and
``body``, ``OutboxItem.body`` and ``request``) are stored as::

    0x01 || nonce (24 random bytes) || XChaCha20-Poly1305(row_key, nonce, plaintext, AD)
    AD = "saltline-store-v1" || lp(table) || lp(column) || lp(row key part)...   lp(x) = u16be(len x) || x
    row_key = HKDF-SHA256(ikm=app key, salt=store salt (16 random bytes, table meta),
                          info="saltline store v1 row key", 32)

so a ciphertext moved to another row, column or table fails authentication
(:class:`~client_sdk.errors.StoreCorruptError`). A value the store must look rows up by (the
digests of the ``seen_base_keys`` table) cannot be sealed with a random nonce; it is stored as the
deterministic tag ``HMAC-SHA256(tag_key, AD(table, column) || value)``, with ``tag_key =
HKDF-SHA256(ikm=row_key, salt="", info="saltline store v1 lookup tag key", 32)``. The ``meta``
table also holds a key check value (the AEAD of a fixed string under the row key); opening with a
wrong key, without the key of an encrypted store, or with a key for a plain store raises
:class:`~client_sdk.errors.StoreKeyError` before anything is read. Identifiers, timestamps,
sequence numbers, conversation members, clocks and the public contact data (account keys, signed
device lists) are not encrypted: they are metadata the server knows as well, and the store queries
and orders by them.

Locking. :meth:`SqliteStore.open` takes an exclusive ``fcntl.flock`` on ``<path>.lock`` (non-
blocking) and holds it until :meth:`SqliteStore.close`. A second open of the same store, from this
process or another, raises :class:`~client_sdk.errors.StoreLockedError` naming the path and the
process id written in the lock file. The kernel drops the lock when the process dies, so a crash
leaves no stale lock. :meth:`SqliteStore.acquire`/:meth:`release` add the Protocol's
one-client-per-store rule inside the process that opened it.

Schema versions. ``PRAGMA user_version`` is the number of :data:`MIGRATIONS` applied; opening
applies the missing ones in one transaction each, and refuses a file written by a newer version
(:class:`~client_sdk.errors.StoreVersionError`).

POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from client_sdk.errors import (
    StoreCorruptError,
    StoreError,
    StoreKeyError,
    StoreLockedError,
    StoreVersionError,
)
from client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    DeviceRecord,
    MessageRecord,
    MessageStatus,
    OutboxItem,
    PreKeyMeta,
    SessionRecord,
    SyncMeta,
    SyncOpRecord,
    TrustPolicyName,
)
from crypto import primitives as p
from crypto.errors import DecryptionError

__all__ = ["KEY_SIZE", "MIGRATIONS", "SqliteStore", "migrate"]

KEY_SIZE = p.AEAD_KEY_SIZE  # 32
_SALT_SIZE = 16
_SEALED_VERSION = 1
_AD_PREFIX = b"saltline-store-v1"
_ROW_KEY_INFO = b"saltline store v1 row key"
_TAG_KEY_INFO = b"saltline store v1 lookup tag key"
_KEY_CHECK_PLAINTEXT = b"saltline store key check v1"
_ENC_NONE = b"none"
_ENC_XCHACHA = b"xchacha20poly1305-v1"

# -- schema -------------------------------------------------------------------------------------------

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
    encrypted store a keyed hash of it (:meth:`_Cipher.tag`)."""
    conn.execute(
        """CREATE TABLE seen_base_keys (
            prekey_id INTEGER NOT NULL,
            tag BLOB NOT NULL,
            PRIMARY KEY (prekey_id, tag))"""
    )


#: ``MIGRATIONS[n]`` turns a version-``n`` database into version ``n + 1`` (``PRAGMA user_version``).
#: Only ever append to this list; never edit a step that has shipped.
MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_indexes, _v3_sync, _v4_seen_base_keys)


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


# -- encryption -------------------------------------------------------------------------------------


def _lp(part: str | bytes) -> bytes:
    raw = part.encode("utf-8") if isinstance(part, str) else bytes(part)
    return struct.pack(">H", len(raw)) + raw


def _ad(table: str, column: str, row: Sequence[str | bytes]) -> bytes:
    return _AD_PREFIX + _lp(table) + _lp(column) + b"".join(_lp(part) for part in row)


class _Cipher:
    """Seals the SECRET columns (or passes them through when the store has no key)."""

    def __init__(self, row_key: bytes | None) -> None:
        self._key = row_key
        self._tag_key = (
            None if row_key is None else p.hkdf_sha256(row_key, salt=b"", info=_TAG_KEY_INFO, length=KEY_SIZE)
        )

    def tag(self, value: bytes, table: str, column: str) -> bytes:
        """A deterministic stand-in for ``value`` in a column the store looks rows up by: in an
        encrypted store ``HMAC-SHA256(tag_key, AD(table, column) || value)`` (``tag_key`` derived
        from the row key), so the file does not reveal it; in a plain store ``value`` itself."""
        if self._tag_key is None:
            return bytes(value)
        return p.hmac_sha256(self._tag_key, _ad(table, column, ()) + bytes(value))

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    def seal(self, plaintext: bytes, table: str, column: str, *row: str | bytes) -> bytes:
        if self._key is None:
            return plaintext
        nonce = p.random_bytes(p.AEAD_NONCE_SIZE)
        return (
            bytes([_SEALED_VERSION])
            + nonce
            + p.aead_encrypt(self._key, nonce, plaintext, _ad(table, column, row))
        )

    def open(self, sealed: bytes, table: str, column: str, *row: str | bytes) -> bytes:
        sealed = bytes(sealed)
        if self._key is None:
            return sealed
        header = 1 + p.AEAD_NONCE_SIZE
        if len(sealed) < header + p.AEAD_TAG_SIZE or sealed[0] != _SEALED_VERSION:
            raise StoreCorruptError(f"{table}.{column}: malformed encrypted value; the store file is damaged")
        try:
            return p.aead_decrypt(self._key, sealed[1:header], sealed[header:], _ad(table, column, row))
        except DecryptionError as exc:
            raise StoreCorruptError(
                f"{table}.{column}: an encrypted value failed authentication; the store file was "
                "modified or damaged (restore it from a backup, or link this device again)"
            ) from exc

    def seal_opt(self, plaintext: bytes | None, table: str, column: str, *row: str | bytes) -> bytes | None:
        return None if plaintext is None else self.seal(plaintext, table, column, *row)

    def open_opt(self, sealed: bytes | None, table: str, column: str, *row: str | bytes) -> bytes | None:
        return None if sealed is None else self.open(sealed, table, column, *row)


def _row_key(key: bytes, salt: bytes) -> bytes:
    return p.hkdf_sha256(key, salt=salt, info=_ROW_KEY_INFO, length=KEY_SIZE)


# -- locking -----------------------------------------------------------------------------------------

_OPEN_PATHS: set[str] = set()
_OPEN_PATHS_GUARD = threading.Lock()


def _lock(path: str) -> int:
    """Open ``<path>.lock`` and take an exclusive, non-blocking flock on it; return the fd."""
    lock_path = path + ".lock"
    with _OPEN_PATHS_GUARD:
        if path in _OPEN_PATHS:
            raise StoreLockedError(
                f"the store {path} is already open in this process; close the other SqliteStore "
                "(or client) on it first, or use a different store path per device profile"
            )
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if text:
                    holder = f" (held by process {text})"
            except OSError:
                pass
            os.close(fd)
            raise StoreLockedError(
                f"the store {path} is in use by another process{holder}; two clients on one store "
                f"would corrupt its ratchet state. Stop the other Saltline client using this store "
                f"(or use a different profile/store path) and try again. Lock file: {lock_path}"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the pid is only for the error message
        _OPEN_PATHS.add(path)
        return fd


def _unlock(path: str, fd: int) -> None:
    with _OPEN_PATHS_GUARD:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _OPEN_PATHS.discard(path)


# -- the store ------------------------------------------------------------------------------------------


class _Part:
    __slots__ = ("_s",)

    def __init__(self, store: SqliteStore) -> None:
        self._s = store


class SqliteIdentityStore(_Part):
    def get_device(self) -> DeviceRecord | None:
        s = self._s
        row = s._one(
            "SELECT device_id, state, username, account_id, refresh_token, created_at_ms FROM device"
        )
        if row is None:
            return None
        device_id = row[0]
        token = s._cipher.open_opt(row[4], "device", "refresh_token", device_id)
        return DeviceRecord(
            device_id=device_id,
            state=s._cipher.open(row[1], "device", "state", device_id),
            username=row[2],
            account_id=row[3],
            refresh_token=None if token is None else token.decode("utf-8"),
            created_at_ms=row[5],
        )

    def put_device(self, record: DeviceRecord) -> None:
        s = self._s
        c = s._cipher
        token = None if record.refresh_token is None else record.refresh_token.encode("utf-8")
        s._write(
            "INSERT OR REPLACE INTO device (id, device_id, state, username, account_id, refresh_token, "
            "created_at_ms) VALUES (1, ?, ?, ?, ?, ?, ?)",
            (
                record.device_id,
                c.seal(record.state, "device", "state", record.device_id),
                record.username,
                record.account_id,
                c.seal_opt(token, "device", "refresh_token", record.device_id),
                record.created_at_ms,
            ),
        )


_SELECT_CONTACT = (
    "SELECT account_id, username, account_key, signed_list, trust_policy, verified, pending_account_key, "
    "pending_signed_list, updated_at_ms FROM contacts "
)


def _contact(row: Sequence[Any]) -> ContactRecord:
    return ContactRecord(
        account_id=row[0],
        username=row[1],
        account_key=bytes(row[2]),
        signed_list=bytes(row[3]),
        trust_policy=cast(TrustPolicyName, row[4]),
        verified=bool(row[5]),
        pending_account_key=None if row[6] is None else bytes(row[6]),
        pending_signed_list=None if row[7] is None else bytes(row[7]),
        updated_at_ms=row[8],
    )


class SqliteDeviceListStore(_Part):
    def get_contact(self, account_id: str) -> ContactRecord | None:
        row = self._s._one(_SELECT_CONTACT + "WHERE account_id = ?", (account_id,))
        return None if row is None else _contact(row)

    def get_contact_by_username(self, username: str) -> ContactRecord | None:
        row = self._s._one(
            _SELECT_CONTACT + "WHERE lower(username) = lower(?) ORDER BY seq LIMIT 1",
            (username,),
        )
        return None if row is None else _contact(row)

    def put_contact(self, r: ContactRecord) -> None:
        self._s._write(
            "INSERT INTO contacts (account_id, username, account_key, signed_list, trust_policy, verified, "
            "pending_account_key, pending_signed_list, updated_at_ms, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM contacts)) "
            "ON CONFLICT (account_id) DO UPDATE SET username = excluded.username, "
            "account_key = excluded.account_key, signed_list = excluded.signed_list, "
            "trust_policy = excluded.trust_policy, verified = excluded.verified, "
            "pending_account_key = excluded.pending_account_key, "
            "pending_signed_list = excluded.pending_signed_list, updated_at_ms = excluded.updated_at_ms",
            (
                r.account_id,
                r.username,
                r.account_key,
                r.signed_list,
                r.trust_policy,
                int(r.verified),
                r.pending_account_key,
                r.pending_signed_list,
                r.updated_at_ms,
            ),
        )

    def contacts(self) -> Sequence[ContactRecord]:
        return [_contact(row) for row in self._s._all(_SELECT_CONTACT + "ORDER BY seq")]


class SqliteSessionStore(_Part):
    def sessions_for(self, peer_device_id: str) -> Sequence[SessionRecord]:
        s = self._s
        rows = s._all(
            "SELECT base_key, state, peer_account_id, updated_at_ms FROM sessions WHERE peer_device_id = ? "
            "ORDER BY updated_at_ms DESC, seq DESC",
            (peer_device_id,),
        )
        return [
            SessionRecord(
                peer_device_id=peer_device_id,
                base_key=bytes(base_key),
                state=s._cipher.open(state, "sessions", "state", peer_device_id, bytes(base_key)),
                peer_account_id=peer_account_id,
                updated_at_ms=updated_at_ms,
            )
            for base_key, state, peer_account_id, updated_at_ms in rows
        ]

    def put_session(self, r: SessionRecord) -> None:
        s = self._s
        s._write(
            "INSERT OR REPLACE INTO sessions (peer_device_id, base_key, state, peer_account_id, "
            "updated_at_ms, seq) VALUES (?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM sessions))",
            (
                r.peer_device_id,
                bytes(r.base_key),
                s._cipher.seal(r.state, "sessions", "state", r.peer_device_id, bytes(r.base_key)),
                r.peer_account_id,
                r.updated_at_ms,
            ),
        )

    def delete_sessions(self, peer_device_id: str) -> None:
        self._s._write("DELETE FROM sessions WHERE peer_device_id = ?", (peer_device_id,))


_SELECT_MESSAGE = (
    "SELECT conversation_id, envelope_id, sender_account_id, sender_device_id, text, sent_at_ms, sent_by_me, "
    "status, server_seq, server_ts_ms, body FROM messages "
)


class SqliteConversationStore(_Part):
    def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = self._s._one(
            "SELECT conversation_id, kind, members, clock, created_at_ms FROM conversations "
            "WHERE conversation_id = ?",
            (conversation_id,),
        )
        return None if row is None else self._conversation(row)

    @staticmethod
    def _conversation(row: Sequence[Any]) -> ConversationRecord:
        return ConversationRecord(
            conversation_id=row[0],
            kind=row[1],
            members=tuple(json.loads(row[2])),
            clock=bytes(row[3]),
            created_at_ms=row[4],
        )

    def put_conversation(self, r: ConversationRecord) -> None:
        self._s._write(
            "INSERT INTO conversations (conversation_id, kind, members, clock, created_at_ms, seq) "
            "VALUES (?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM conversations)) "
            "ON CONFLICT (conversation_id) DO UPDATE SET kind = excluded.kind, members = excluded.members, "
            "clock = excluded.clock, created_at_ms = excluded.created_at_ms",
            (r.conversation_id, r.kind, json.dumps(list(r.members)), bytes(r.clock), r.created_at_ms),
        )

    def conversations(self) -> Sequence[ConversationRecord]:
        return [
            self._conversation(row)
            for row in self._s._all(
                "SELECT conversation_id, kind, members, clock, created_at_ms FROM conversations ORDER BY seq"
            )
        ]

    def _message(self, row: Sequence[Any]) -> MessageRecord:
        c = self._s._cipher
        envelope_id = row[1]
        return MessageRecord(
            conversation_id=row[0],
            envelope_id=envelope_id,
            sender_account_id=row[2],
            sender_device_id=row[3],
            text=c.open(row[4], "messages", "text", envelope_id).decode("utf-8"),
            sent_at_ms=row[5],
            sent_by_me=bool(row[6]),
            status=cast(MessageStatus, row[7]),
            server_seq=row[8],
            server_ts_ms=row[9],
            body=c.open(row[10], "messages", "body", envelope_id),
        )

    def get_message(self, envelope_id: str) -> MessageRecord | None:
        row = self._s._one(_SELECT_MESSAGE + "WHERE envelope_id = ?", (envelope_id,))
        return None if row is None else self._message(row)

    def put_message(self, r: MessageRecord) -> None:
        c = self._s._cipher
        self._s._write(
            "INSERT INTO messages (conversation_id, envelope_id, sender_account_id, sender_device_id, text, "
            "sent_at_ms, sent_by_me, status, server_seq, server_ts_ms, body, seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM messages)) "
            "ON CONFLICT (envelope_id) DO UPDATE SET conversation_id = excluded.conversation_id, "
            "sender_account_id = excluded.sender_account_id, sender_device_id = excluded.sender_device_id, "
            "text = excluded.text, sent_at_ms = excluded.sent_at_ms, sent_by_me = excluded.sent_by_me, "
            "status = excluded.status, server_seq = excluded.server_seq, "
            "server_ts_ms = excluded.server_ts_ms, body = excluded.body",
            (
                r.conversation_id,
                r.envelope_id,
                r.sender_account_id,
                r.sender_device_id,
                c.seal(r.text.encode("utf-8"), "messages", "text", r.envelope_id),
                r.sent_at_ms,
                int(r.sent_by_me),
                r.status,
                r.server_seq,
                r.server_ts_ms,
                c.seal(bytes(r.body), "messages", "body", r.envelope_id),
            ),
        )

    def messages(self, conversation_id: str, *, limit: int = 1000) -> Sequence[MessageRecord]:
        if limit <= 0:
            return []
        # Display order: stored messages by server_seq, then pending ones by sent_at_ms; insertion
        # order breaks ties. The last ``limit``: the newest pending ones, then the newest stored
        # ones before them (both read backwards along an index).
        pending = self._s._all(
            _SELECT_MESSAGE + "WHERE conversation_id = ? AND server_seq IS NULL "
            "ORDER BY sent_at_ms DESC, seq DESC LIMIT ?",
            (conversation_id, limit),
        )
        stored = []
        if len(pending) < limit:
            stored = self._s._all(
                _SELECT_MESSAGE + "WHERE conversation_id = ? AND server_seq IS NOT NULL "
                "ORDER BY server_seq DESC, seq DESC LIMIT ?",
                (conversation_id, limit - len(pending)),
            )
        rows = pending + stored
        return [self._message(row) for row in reversed(rows)]


class SqliteOutboxStore(_Part):
    _SELECT = (
        "SELECT envelope_id, conversation_id, body, clock, created_at_ms, request, attempts FROM outbox "
    )

    def _item(self, row: Sequence[Any]) -> OutboxItem:
        c = self._s._cipher
        envelope_id = row[0]
        return OutboxItem(
            envelope_id=envelope_id,
            conversation_id=row[1],
            body=c.open(row[2], "outbox", "body", envelope_id),
            clock=bytes(row[3]),
            created_at_ms=row[4],
            request=c.open_opt(row[5], "outbox", "request", envelope_id),
            attempts=row[6],
        )

    def put_outbox(self, item: OutboxItem) -> None:
        c = self._s._cipher
        self._s._write(
            "INSERT INTO outbox (envelope_id, conversation_id, body, clock, created_at_ms, request, "
            "attempts, seq) VALUES (?, ?, ?, ?, ?, ?, ?, "
            "(SELECT coalesce(max(seq), 0) + 1 FROM outbox)) "
            "ON CONFLICT (envelope_id) DO UPDATE SET conversation_id = excluded.conversation_id, "
            "body = excluded.body, clock = excluded.clock, created_at_ms = excluded.created_at_ms, "
            "request = excluded.request, attempts = excluded.attempts",
            (
                item.envelope_id,
                item.conversation_id,
                c.seal(bytes(item.body), "outbox", "body", item.envelope_id),
                bytes(item.clock),
                item.created_at_ms,
                c.seal_opt(item.request, "outbox", "request", item.envelope_id),
                item.attempts,
            ),
        )

    def get_outbox(self, envelope_id: str) -> OutboxItem | None:
        row = self._s._one(self._SELECT + "WHERE envelope_id = ?", (envelope_id,))
        return None if row is None else self._item(row)

    def outbox(self) -> Sequence[OutboxItem]:
        return [self._item(row) for row in self._s._all(self._SELECT + "ORDER BY created_at_ms, seq")]

    def remove_outbox(self, envelope_id: str) -> None:
        self._s._write("DELETE FROM outbox WHERE envelope_id = ?", (envelope_id,))


class SqliteCursorStore(_Part):
    def get_acked_queue_seq(self) -> int:
        row = self._s._one("SELECT acked_queue_seq FROM queue_cursor")
        return 0 if row is None else int(row[0])

    def set_acked_queue_seq(self, queue_seq: int) -> None:
        self._s._write(
            "INSERT OR REPLACE INTO queue_cursor (id, acked_queue_seq) VALUES (1, ?)", (queue_seq,)
        )

    def get_server_seq(self, conversation_id: str) -> int:
        row = self._s._one("SELECT server_seq FROM server_seqs WHERE conversation_id = ?", (conversation_id,))
        return 0 if row is None else int(row[0])

    def set_server_seq(self, conversation_id: str, server_seq: int) -> None:
        self._s._write(
            "INSERT OR REPLACE INTO server_seqs (conversation_id, server_seq) VALUES (?, ?)",
            (conversation_id, server_seq),
        )


class SqlitePreKeyStore(_Part):
    def get_prekey_meta(self) -> PreKeyMeta:
        row = self._s._one(
            "SELECT uploaded_through_id, signed_prekey_rotated_at_ms, last_count_check_ms FROM prekey_meta"
        )
        return PreKeyMeta() if row is None else PreKeyMeta(*row)

    def put_prekey_meta(self, meta: PreKeyMeta) -> None:
        self._s._write(
            "INSERT OR REPLACE INTO prekey_meta (id, uploaded_through_id, signed_prekey_rotated_at_ms, "
            "last_count_check_ms) VALUES (1, ?, ?, ?)",
            (meta.uploaded_through_id, meta.signed_prekey_rotated_at_ms, meta.last_count_check_ms),
        )

    def _tag(self, digest: bytes) -> bytes:
        return self._s._cipher.tag(digest, "seen_base_keys", "tag")

    def has_seen_base_key(self, prekey_id: int, digest: bytes) -> bool:
        row = self._s._one(
            "SELECT 1 FROM seen_base_keys WHERE prekey_id = ? AND tag = ?", (prekey_id, self._tag(digest))
        )
        return row is not None

    def add_seen_base_key(self, prekey_id: int, digest: bytes) -> None:
        self._s._write(
            "INSERT OR IGNORE INTO seen_base_keys (prekey_id, tag) VALUES (?, ?)",
            (prekey_id, self._tag(digest)),
        )

    def drop_seen_base_keys(self, keep_prekey_ids: Collection[int]) -> int:
        keep = {int(i) for i in keep_prekey_ids}
        s = self._s
        with s.transaction():
            conn = s._require_open()
            held = [int(row[0]) for row in conn.execute("SELECT DISTINCT prekey_id FROM seen_base_keys")]
            dropped = 0
            for prekey_id in held:
                if prekey_id not in keep:
                    cursor = conn.execute("DELETE FROM seen_base_keys WHERE prekey_id = ?", (prekey_id,))
                    dropped += int(cursor.rowcount)
            return dropped


class SqliteSyncStore(_Part):
    def get_sync_meta(self, conversation_id: str) -> SyncMeta | None:
        row = self._s._one(
            "SELECT conversation_id, counter, lamport, floor_seq, floor_clock, members FROM sync_meta "
            "WHERE conversation_id = ?",
            (conversation_id,),
        )
        if row is None:
            return None
        return SyncMeta(row[0], row[1], row[2], row[3], bytes(row[4]), tuple(json.loads(row[5])))

    def put_sync_meta(self, meta: SyncMeta) -> None:
        self._s._write(
            "INSERT OR REPLACE INTO sync_meta (conversation_id, counter, lamport, floor_seq, floor_clock, "
            "members) VALUES (?, ?, ?, ?, ?, ?)",
            (
                meta.conversation_id,
                meta.counter,
                meta.lamport,
                meta.floor_seq,
                bytes(meta.floor_clock),
                json.dumps(list(meta.members)),
            ),
        )

    def put_sync_op(self, r: SyncOpRecord) -> None:
        c = self._s._cipher
        self._s._write(
            "INSERT OR REPLACE INTO sync_ops (conversation_id, server_seq, envelope_id, sender_account_id, "
            "sender_device_id, clock, plaintext) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                r.conversation_id,
                r.server_seq,
                r.envelope_id,
                r.sender_account_id,
                r.sender_device_id,
                bytes(r.clock),
                c.seal(bytes(r.plaintext), "sync_ops", "plaintext", r.conversation_id, str(r.server_seq)),
            ),
        )

    def sync_ops(self, conversation_id: str) -> Sequence[SyncOpRecord]:
        c = self._s._cipher
        return [
            SyncOpRecord(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                bytes(row[5]),
                c.open(row[6], "sync_ops", "plaintext", row[0], str(row[1])),
            )
            for row in self._s._all(
                "SELECT conversation_id, server_seq, envelope_id, sender_account_id, sender_device_id, "
                "clock, plaintext FROM sync_ops WHERE conversation_id = ? ORDER BY server_seq",
                (conversation_id,),
            )
        ]

    def get_setting(self, name: str) -> str | None:
        row = self._s._one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def put_setting(self, name: str, value: str) -> None:
        self._s._write("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value))


class SqliteStore:
    """A :class:`~client_sdk.stores.base.Store` in one SQLite file; see the module docstring.

    Create it with :meth:`open` (not the constructor) and :meth:`close` it (or use ``with``).
    One thread at a time: calls are serialised by a lock, and a :meth:`transaction` belongs to
    the thread that opened it.
    """

    def __init__(self, path: str, conn: sqlite3.Connection, cipher: _Cipher, lock_fd: int) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._cipher = cipher
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

    # -- lifecycle ----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> SqliteStore:
        """Open (creating if needed) the store at ``path``, migrate it, and lock it for this
        process until :meth:`close`.

        ``key``: 32 bytes to encrypt the secrets at rest with (see the module docstring). A new
        store is created encrypted if and only if a key is given; an existing store must be opened
        the same way (otherwise :class:`~client_sdk.errors.StoreKeyError`).
        ``migrations``: for tests only.
        Raises :class:`~client_sdk.errors.StoreLockedError`, ``StoreKeyError``,
        ``StoreVersionError`` or ``StoreError``.
        """
        if key is not None and (not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE):
            raise StoreKeyError(f"the store key must be {KEY_SIZE} bytes (from a keystore or a KDF)")
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
        parent = Path(real).parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _lock(real)
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
            cipher = _Cipher(_setup_key(conn, real, None if key is None else bytes(key)))
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            _unlock(real, lock_fd)
            raise StoreError(f"{real} is not a readable Saltline store: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            _unlock(real, lock_fd)
            raise
        return cls(real, conn, cipher, lock_fd)

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
                _unlock(self.path, self._lock_fd)

    @property
    def closed(self) -> bool:
        return self._conn is None

    @property
    def encrypted(self) -> bool:
        return self._cipher.encrypted

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
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._conn

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.transaction():
            self._require_open().execute(sql, params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._mutex:
            return self._require_open().execute(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._mutex:
            return self._require_open().execute(sql, params).fetchall()


def _meta(conn: sqlite3.Connection, name: str) -> bytes | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])


def _setup_key(conn: sqlite3.Connection, path: str, key: bytes | None) -> bytes | None:
    """Check ``key`` against the store (or set the store's encryption up on first open); return
    the row key, or ``None`` for a plain store."""
    check_ad = _ad("meta", "key_check", ())
    encryption = _meta(conn, "encryption")
    if encryption is None:  # a new store: its mode is decided now, once
        conn.execute("BEGIN IMMEDIATE")
        try:
            if key is None:
                conn.execute("INSERT INTO meta (name, value) VALUES ('encryption', ?)", (_ENC_NONE,))
            else:
                new_salt = p.random_bytes(_SALT_SIZE)
                nonce = p.random_bytes(p.AEAD_NONCE_SIZE)
                new_check = nonce + p.aead_encrypt(
                    _row_key(key, new_salt), nonce, _KEY_CHECK_PLAINTEXT, check_ad
                )
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("encryption", _ENC_XCHACHA), ("salt", new_salt), ("key_check", new_check)],
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        encryption = _ENC_NONE if key is None else _ENC_XCHACHA
    if encryption == _ENC_NONE:
        if key is not None:
            raise StoreKeyError(
                f"the store {path} is not encrypted but a key was given; open it without a key "
                "(an existing plain store cannot be encrypted in place)"
            )
        return None
    if encryption != _ENC_XCHACHA:
        raise StoreVersionError(
            f"the store {path} uses an unknown encryption {encryption!r}; upgrade the SDK"
        )
    if key is None:
        raise StoreKeyError(f"the store {path} is encrypted; open it with its key")
    salt, check = _meta(conn, "salt"), _meta(conn, "key_check")
    if salt is None or check is None or len(check) < p.AEAD_NONCE_SIZE + p.AEAD_TAG_SIZE:
        raise StoreCorruptError(f"the store {path} lacks its key check value; the file is damaged")
    row_key = _row_key(key, salt)
    plain: bytes | None
    try:
        plain = p.aead_decrypt(row_key, check[: p.AEAD_NONCE_SIZE], check[p.AEAD_NONCE_SIZE :], check_ad)
    except DecryptionError:
        plain = None
    if plain is None or not p.constant_time_equal(plain, _KEY_CHECK_PLAINTEXT):
        raise StoreKeyError(
            f"wrong key for the store {path}: the key does not match the one it was created with"
        )
    return row_key
