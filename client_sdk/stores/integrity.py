"""Integrity of an encrypted :class:`~saltline.client_sdk.stores.sqlite.SqliteStore`: every row is
authenticated under the store key, bound to its place and (for the tables of the manifest) to its
version, and a MAC'd per-store state detects a row put back from an older copy or deleted.

The scheme (specified for reviewers in docs/protocol/keys.md § 5.1):

* Keys, from the row key of :mod:`saltline.client_sdk.stores.sqlite_cipher` (itself HKDF of the app key
  and the store salt): ``mac_key``, ``manifest_key`` and ``state_key`` =
  ``HKDF-SHA256(ikm=row_key, salt="", info="saltline store v2 " + purpose, 32)`` with purpose
  ``"row mac key"``, ``"manifest key"``, ``"state key"``.
* Row MAC, in the column ``mac`` of every table except ``meta``: keyed BLAKE2b-256 (RFC 7693,
  ``key = mac_key``) of ``"saltline-store-row-v1" || lp(table) || (lp(name) || enc(value))...``
  over **every other column of the row**, sorted by column name (so a column added by a later
  migration is covered without listing it). The row's primary key is among the columns, so a row
  copied under another key, or into another table, fails. ``enc``: NULL ``00``; integer ``01 ||
  i64be``; real ``02 || f64be``; text ``03 || u32be(len) || utf8``; blob ``04 || u32be(len) || bytes``.
* Versions (tables of :data:`MANIFEST`): every write of a row sets its column ``ver`` to the next
  value of the store's write counter (before the row MAC is computed), so two writes of one row
  never carry the same version.
* Manifest digest: ``D = XOR over the rows of MANIFEST of BLAKE2b-256(key=manifest_key,
  "saltline-store-manifest-v1" || lp(table) || enc(primary key values)... || u64be(ver))``, kept
  up to date incrementally (a write XORs the old entry out and the new one in). ``lp(x) =
  u16be(len x) || x``. (Keyed BLAKE2b rather than HMAC: half the cost on short rows, and these run
  on every read and write.)
* State (meta row ``integrity``): ``01 || u64be(counter) || D || SHA-256(columns) || HMAC-SHA256(
  state_key, "saltline-store-state-v1" || those first 73 bytes)``; ``columns`` is the canonical
  JSON of the column names each table's MACs cover (meta row ``integrity_columns``). Written once
  per transaction, in it.

On open every row of :data:`MANIFEST` is verified (its MAC, and ``D`` recomputed against the
state), so a changed trust anchor, an old copy of a row, a deleted or an added row is
:class:`~saltline.client_sdk.errors.StoreTamperedError` before anything is read. Rows of :data:`PLACE`
tables (the bulk history) are verified when read. While the store is open the expected version of
every manifest row is kept in memory, so a row changed under a running client fails when read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from saltline.client_sdk.errors import StoreTamperedError
from saltline.crypto import primitives as p

__all__ = ["MANIFEST", "PLACE", "UNPROTECTED", "Integrity"]

#: Tables whose rows carry a version and are listed in the manifest (trust anchors, membership,
#: ratchet sessions, replay and cursor state): rollback, deletion and insertion of a single row
#: are detected on open.
MANIFEST: tuple[str, ...] = (
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
)
#: Bulk tables: each row is authenticated and bound to its place (checked when read); rollback or
#: deletion of a row is not detected.
PLACE: tuple[str, ...] = ("messages", "outbox", "sync_ops", "handler_inbox")
#: Tables outside the scheme (``meta`` authenticates itself: key check value, state MAC).
UNPROTECTED: tuple[str, ...] = ("meta",)

_MAC = "mac"
_VER = "ver"
_STATE_ROW = "integrity"
_COLUMNS_ROW = "integrity_columns"
_STATE_VERSION = 1
_KNOWN_ROWS = 2048  # manifest rows remembered as verified (see Integrity._known)
_ROW_PREFIX = b"saltline-store-row-v1"
_MANIFEST_PREFIX = b"saltline-store-manifest-v1"
_STATE_PREFIX = b"saltline-store-state-v1"
_ADVICE = (
    "it was modified outside Saltline, so the contacts' keys, verified marks and conversation "
    "members it holds cannot be trusted. Restore the store from a backup, or delete it and link "
    "this device again"
)


def _lp(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


_U32 = struct.Struct(">I").pack
_U64 = struct.Struct(">Q").pack
_I64 = struct.Struct(">q").pack


def _enc(value: Any) -> bytes:
    if value is None:
        return b"\x00"
    if isinstance(value, int):
        return b"\x01" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\x02" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"\x03" + struct.pack(">I", len(raw)) + raw
    raw = bytes(value)
    return b"\x04" + struct.pack(">I", len(raw)) + raw


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    pk: tuple[int, ...]  # indexes of the primary-key columns, in key order
    mac: int
    ver: int | None  # index of ``ver`` (tables of MANIFEST)
    entry_prefix: bytes = b""  # "saltline-store-manifest-v1" || lp(table)
    update: str = ""  # the statement that stores the MAC (and version) of a row by rowid


def _table_info(conn: sqlite3.Connection, table: str) -> _Table | None:
    rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
    if not rows:
        return None
    columns = tuple(str(r[1]) for r in rows)
    pk = tuple(i for _, i in sorted((int(r[5]), i) for i, r in enumerate(rows) if int(r[5]) > 0))
    if not pk:
        raise StoreTamperedError(f"the table {table} has no primary key; {_ADVICE}")
    mac = columns.index(_MAC) if _MAC in columns else -1
    ver = columns.index(_VER) if _VER in columns else None
    update = (
        f"UPDATE {table} SET {_MAC} = ? WHERE rowid = ?"
        if ver is None
        else f"UPDATE {table} SET {_MAC} = ?, {_VER} = ? WHERE rowid = ?"
    )
    return _Table(table, columns, pk, mac, ver, _MANIFEST_PREFIX + _lp(table.encode()), update)


class Integrity:
    """The integrity state of one open store; a disabled instance (plain store, or a schema from
    before integrity) does nothing. Methods that write run inside the store's transaction."""

    def __init__(self, path: str, row_key: bytes | None) -> None:
        self.path = path
        self.enabled = row_key is not None
        key = row_key or b"\x00" * 32
        self._mac_key = p.hkdf_sha256(key, salt=b"", info=b"saltline store v2 row mac key", length=32)
        self._manifest_key = p.hkdf_sha256(key, salt=b"", info=b"saltline store v2 manifest key", length=32)
        self._state_key = p.hkdf_sha256(key, salt=b"", info=b"saltline store v2 state key", length=32)
        self._tables: dict[str, _Table] = {}
        self._plans: dict[tuple[str, tuple[str, ...]], tuple[bytes, tuple[tuple[bytes, int], ...]]] = {}
        self.counter = 0
        self._digest = 0
        self._columns_hash = b""
        # (table, primary key) -> (version, manifest entry) of every manifest row
        self._versions: dict[tuple[str, tuple[Any, ...]], tuple[int, int]] = {}
        self._undo: list[tuple[tuple[str, tuple[Any, ...]], tuple[int, int] | None]] = []
        self._saved: tuple[int, int] = (0, 0)
        self._dirty = False
        # (table, primary key) -> the whole manifest row as last verified or written: a read of a
        # row *equal* to it needs no MAC (the client reads its conversations and contacts several
        # times per message). Cleared on rollback; anything unequal is verified in full.
        self._known: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}

    # -- primitives ---------------------------------------------------------------------------------

    def _plan(self, t: _Table) -> tuple[bytes, tuple[tuple[bytes, int], ...]]:
        plan = self._plans.get((t.name, t.columns))
        if plan is None:
            order = sorted((name, i) for i, name in enumerate(t.columns) if name != _MAC)
            plan = (_ROW_PREFIX + _lp(t.name.encode()), tuple((_lp(n.encode()), i) for n, i in order))
            self._plans[(t.name, t.columns)] = plan
        return plan

    def _row_mac(self, t: _Table, row: Sequence[Any]) -> bytes:
        prefix, order = self._plan(t)
        parts = [prefix]
        add = parts.append
        for name, i in order:  # _enc inlined for the common types: this runs on every read and write
            add(name)
            value = row[i]
            kind = type(value)
            if kind is bytes:
                add(b"\x04" + _U32(len(value)))
                add(value)
            elif kind is str:
                raw = value.encode("utf-8")
                add(b"\x03" + _U32(len(raw)))
                add(raw)
            elif kind is int:
                add(b"\x01" + _I64(value))
            elif value is None:
                add(b"\x00")
            else:
                add(_enc(value))
        return blake2b(b"".join(parts), digest_size=32, key=self._mac_key).digest()

    def _entry(self, t: _Table, key: tuple[Any, ...], ver: int) -> int:
        data = t.entry_prefix + b"".join([_enc(v) for v in key]) + _U64(ver)
        return int.from_bytes(blake2b(data, digest_size=32, key=self._manifest_key).digest(), "big")

    def _state_bytes(self) -> bytes:
        body = (
            bytes([_STATE_VERSION])
            + struct.pack(">Q", self.counter)
            + self._digest.to_bytes(32, "big")
            + self._columns_hash
        )
        return body + hmac.digest(self._state_key, _STATE_PREFIX + body, "sha256")

    def _fail(self, what: str) -> StoreTamperedError:
        return StoreTamperedError(f"the store {self.path} failed its integrity check ({what}): {_ADVICE}")

    # -- open ---------------------------------------------------------------------------------------

    def load_tables(self, conn: sqlite3.Connection) -> None:
        for name in (*MANIFEST, *PLACE):
            t = _table_info(conn, name)
            if t is not None:
                self._tables[name] = t
        self._plans.clear()

    def _columns_json(self) -> bytes:
        return json.dumps(
            {name: list(t.columns) for name, t in sorted(self._tables.items())},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def open(
        self,
        conn: sqlite3.Connection,
        *,
        adopt: bool,
        on_adopt: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Verify the store (or, when ``adopt``, authenticate its current rows: the first open of a
        store from before integrity, or a new store). Raises StoreTamperedError."""
        if not self.enabled:
            return
        self._add_missing_columns(conn)
        self.load_tables(conn)
        state = conn.execute("SELECT value FROM meta WHERE name = ?", (_STATE_ROW,)).fetchone()
        if state is None:
            if not adopt and self._has_rows(conn):
                raise self._fail("its integrity state is missing")
            self._adopt(conn, self._tables.values(), on_adopt)
            return
        recorded = self._verify_state(conn, bytes(state[0]))
        verified = self._verify_manifest(conn, recorded)
        changed = [t for name, t in self._tables.items() if list(t.columns) != recorded.get(name)]
        if changed:  # a migration added columns or tables: verified rows, authenticated again
            for t in changed:
                if t.name in recorded and t.name not in verified:
                    self._verify_rows(conn, t.name, recorded[t.name])
            self._adopt(conn, changed, on_adopt)
        elif on_adopt is not None:  # a verified store with an old key check (put back): renew it
            conn.execute("BEGIN IMMEDIATE")
            try:
                on_adopt(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _add_missing_columns(self, conn: sqlite3.Connection) -> None:
        """A table given a policy after it was created gets its ``mac`` (and ``ver``) columns."""
        for name in (*MANIFEST, *PLACE):
            t = _table_info(conn, name)
            if t is None:
                continue
            if _MAC not in t.columns:
                conn.execute(f"ALTER TABLE {name} ADD COLUMN {_MAC} BLOB")
            if name in MANIFEST and _VER not in t.columns:
                conn.execute(f"ALTER TABLE {name} ADD COLUMN {_VER} INTEGER NOT NULL DEFAULT 0")

    def _has_rows(self, conn: sqlite3.Connection) -> bool:
        return any(conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() for name in self._tables)

    def _verify_state(self, conn: sqlite3.Connection, state: bytes) -> dict[str, list[str]]:
        if len(state) != 1 + 8 + 32 + 32 + 32 or state[0] != _STATE_VERSION:
            raise self._fail("its integrity state is malformed")
        body, mac = state[:-32], state[-32:]
        if not p.constant_time_equal(mac, p.hmac_sha256(self._state_key, _STATE_PREFIX + body)):
            raise self._fail("its integrity state does not authenticate")
        self.counter = struct.unpack(">Q", body[1:9])[0]
        self._digest = int.from_bytes(body[9:41], "big")
        self._columns_hash = body[41:73]
        row = conn.execute("SELECT value FROM meta WHERE name = ?", (_COLUMNS_ROW,)).fetchone()
        raw = b"" if row is None else bytes(row[0])
        if not p.constant_time_equal(hashlib.sha256(raw).digest(), self._columns_hash):
            raise self._fail("the list of authenticated columns was changed")
        recorded: dict[str, list[str]] = json.loads(raw)
        return recorded

    def _verify_manifest(self, conn: sqlite3.Connection, recorded: dict[str, list[str]]) -> set[str]:
        """Verify every row of the manifest tables (as their MACs were computed: over the recorded
        columns) and the digest; return the tables verified."""
        digest = 0
        verified: set[str] = set()
        for name in MANIFEST:
            columns = recorded.get(name)
            t = self._tables.get(name)
            if columns is None or _VER not in columns:
                continue  # not in the manifest when the state was written
            if t is None:
                raise self._fail(f"the table {name} is missing")
            old = _Table(name, tuple(columns), (), columns.index(_MAC), None)
            where = [columns.index(t.columns[i]) for i in t.pk]
            ver_at = columns.index(_VER)
            try:
                rows = conn.execute(f"SELECT {', '.join(columns)} FROM {name}").fetchall()
            except sqlite3.OperationalError as exc:
                raise self._fail(f"the table {name} lost a column: {exc}") from exc
            for values in rows:
                self._check_values(old, values)
                key = tuple(values[i] for i in where)
                ver = int(values[ver_at])
                if ver > self.counter:
                    raise self._fail(f"a row of {name} is newer than the store's write counter")
                entry = self._entry(t, key, ver)
                self._versions[(name, key)] = (ver, entry)
                digest ^= entry
            verified.add(name)
        if digest != self._digest:
            raise self._fail(
                "a contact, conversation, session or other protected row was rolled back to an older "
                "copy, deleted or added"
            )
        return verified

    def _check_values(self, t: _Table, values: Sequence[Any]) -> None:
        mac = values[t.mac]
        if mac is None or not p.constant_time_equal(bytes(mac), self._row_mac(t, values)):
            raise self._fail(f"a row of {t.name} does not authenticate")

    def _verify_rows(self, conn: sqlite3.Connection, name: str, columns: list[str]) -> None:
        old = _Table(name, tuple(columns), (), columns.index(_MAC), None)
        try:
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {name}")
            for values in rows:
                self._check_values(old, values)
        except sqlite3.OperationalError as exc:
            raise self._fail(f"the table {name} lost a column: {exc}") from exc

    def _adopt(
        self,
        conn: sqlite3.Connection,
        tables: Iterable[_Table],
        on_adopt: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Authenticate every row of ``tables`` as it stands (new versions for manifest rows) and
        write the state, in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            self.begin()
            for t in tables:
                for row in conn.execute(f"SELECT rowid, * FROM {t.name}").fetchall():
                    self._seal(conn, t, int(row[0]), list(row[1:]))
            columns = self._columns_json()
            conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (_COLUMNS_ROW, columns))
            self._columns_hash = hashlib.sha256(columns).digest()
            self._dirty = True
            self.flush(conn)
            if on_adopt is not None:
                on_adopt(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            self.rollback()
            raise
        conn.execute("COMMIT")

    # -- writes -------------------------------------------------------------------------------------

    def _seal(self, conn: sqlite3.Connection, t: _Table, rowid: int, row: list[Any]) -> None:
        if t.ver is None:
            conn.execute(t.update, (self._row_mac(t, row), rowid))
            return
        key = tuple([row[i] for i in t.pk])
        place = (t.name, key)
        old = self._versions.get(place)
        self.counter = counter = self.counter + 1
        row[t.ver] = counter
        entry = self._entry(t, key, counter)
        self._digest ^= entry if old is None else entry ^ old[1]
        self._undo.append((place, old))
        self._versions[place] = (counter, entry)
        self._dirty = True
        row[t.mac] = mac = self._row_mac(t, row)
        conn.execute(t.update, (mac, counter, rowid))
        self._remember(place, tuple(row))

    def write(self, conn: sqlite3.Connection, table: str, sql: str, params: Sequence[Any]) -> None:
        """Run ``sql`` (an INSERT, upsert or UPDATE of ``table``) and authenticate the rows it wrote,
        read back with ``RETURNING`` (inside the transaction)."""
        if not self.enabled:
            conn.execute(sql, params)
            return
        t = self._tables[table]
        for row in conn.execute(sql + " RETURNING rowid, *", params).fetchall():
            self._seal(conn, t, row[0], list(row[1:]))

    def before_delete(self, conn: sqlite3.Connection, table: str, where: str, params: Sequence[Any]) -> None:
        """Take the rows ``DELETE FROM table WHERE where`` is about to remove out of the manifest."""
        if not self.enabled:
            return
        t = self._tables[table]
        if t.ver is None:
            return
        keys = ", ".join(t.columns[i] for i in t.pk)
        for row in conn.execute(f"SELECT {keys} FROM {table} WHERE {where}", tuple(params)).fetchall():
            key = tuple(row)
            self._known.pop((table, key), None)
            old = self._versions.pop((table, key), None)
            if old is not None:
                self._digest ^= old[1]
                self._undo.append(((table, key), old))
                self._dirty = True

    # -- reads --------------------------------------------------------------------------------------

    def check(self, table: str, row: Sequence[Any]) -> None:
        """Verify a row read as ``SELECT <columns>, * FROM table``: its last columns are the whole
        row. Raises StoreTamperedError; never lets a forged row through."""
        if not self.enabled:
            return
        t = self._tables[table]
        full = tuple(row[len(row) - len(t.columns) :])
        ver = t.ver
        place = None
        if ver is not None:
            place = (table, tuple([full[i] for i in t.pk]))
            if self._known.get(place) == full:
                return
        mac = full[t.mac]
        if type(mac) is not bytes or not hmac.compare_digest(mac, self._row_mac(t, full)):
            raise self._fail(f"a row of {table} does not authenticate")
        if place is not None and ver is not None:
            known = self._versions.get(place)
            if known is None or known[0] != full[ver]:
                raise self._fail(f"a row of {table} was replaced by another copy while the store was open")
            self._remember(place, full)

    def _remember(self, place: tuple[str, tuple[Any, ...]], row: tuple[Any, ...]) -> None:
        if len(self._known) >= _KNOWN_ROWS:
            self._known.clear()
        self._known[place] = row

    # -- transactions -------------------------------------------------------------------------------

    def begin(self) -> None:
        self._undo.clear()
        self._saved = (self.counter, self._digest)
        self._dirty = False

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the state (before COMMIT) if the transaction changed it."""
        if self.enabled and self._dirty:
            conn.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (_STATE_ROW, self._state_bytes())
            )
            self._dirty = False

    def rollback(self) -> None:
        for place, old in reversed(self._undo):
            if old is None:
                self._versions.pop(place, None)
            else:
                self._versions[place] = old
        self._undo.clear()
        self._known.clear()
        self.counter, self._digest = self._saved
        self._dirty = False
