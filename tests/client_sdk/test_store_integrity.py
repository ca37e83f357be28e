"""Integrity of the encrypted SQLite store (client_sdk/stores/integrity.py, docs/protocol/keys.md
§ 5.1): every trust anchor tampered with in the raw file — a pinned account key changed, a
verified mark flipped, a member list edited, a row copied onto another key, an older copy of a row
put back, a row deleted — is refused on open with StoreTamperedError; bulk rows fail when read;
stores from before integrity are migrated (trust on first migration); new columns are covered
without listing them."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from saltline.client_sdk.errors import StoreCorruptError, StoreKeyError, StoreTamperedError
from saltline.client_sdk.stores.base import ConversationRecord, SessionRecord, SyncMeta
from saltline.client_sdk.stores.integrity import MANIFEST, PLACE, UNPROTECTED
from saltline.client_sdk.stores.sqlite import MIGRATIONS, SqliteStore
from saltline.client_sdk.stores.sqlite_schema import INTEGRITY_SCHEMA
from tests.client_sdk.test_sqlite_store import KEY, check_filled, contact, fill, message, session

# -- raw access to the file ------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def edit(path: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = raw(path)
    try:
        assert conn.execute(sql, params).rowcount >= 1, "the tamper changed nothing"
    finally:
        conn.close()


def row_of(path: Path, table: str, where: str, params: tuple[Any, ...]) -> tuple[list[str], tuple[Any, ...]]:
    conn = raw(path)
    try:
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        row = conn.execute(f"SELECT * FROM {table} WHERE {where}", params).fetchone()
        assert row is not None
        return names, tuple(row)
    finally:
        conn.close()


def put_back(path: Path, table: str, names: list[str], row: tuple[Any, ...]) -> None:
    """Write ``row`` (every column, as read) over whatever has its primary key."""
    marks = ", ".join("?" for _ in names)
    edit(path, f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({marks})", row)


def opens(path: Path, **kw: Any) -> None:
    SqliteStore.open(path, key=KEY, **kw).close()


def refused(path: Path, **kw: Any) -> StoreTamperedError:
    with pytest.raises(StoreTamperedError) as info:
        opens(path, **kw)
    return info.value


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        written = fill(s)
        s.device_lists.put_contact(contact("acct-carol", "carol", account_key=b"C" * 32))
        s.sync.put_sync_meta(
            SyncMeta("conv-1", 1, 1, 0, b"", ("acct-alice", "acct-bob"), ("acct-alice",), "group")
        )
        s.sync.put_setting("disappearing:conv-1", "3600")
    return path, written


# -- an untouched store ----------------------------------------------------------------------------


def test_untouched_store_opens_and_reads_back(filled: tuple[Path, dict[str, Any]]) -> None:
    path, written = filled
    for _ in range(2):
        with SqliteStore.open(path, key=KEY) as s:
            check_filled(s, written)
            assert s.write_counter > 0


def test_every_table_has_a_policy(tmp_path: Path) -> None:
    """A table added by a later migration must be classified (integrity.MANIFEST or PLACE)."""
    path = tmp_path / "store.db"
    opens(path)
    conn = raw(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == set(MANIFEST) | set(PLACE) | set(UNPROTECTED)


# -- trust anchors tampered in the file: refused on open -------------------------------------------

TAMPERS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "pinned account key": ("UPDATE contacts SET account_key = ? WHERE account_id = 'acct-bob'", (b"E" * 32,)),
    "verified flag": ("UPDATE contacts SET verified = 1 WHERE account_id = 'acct-bob'", ()),
    "trust policy": ("UPDATE contacts SET trust_policy = 'block' WHERE account_id = 'acct-bob'", ()),
    "signed device list": ("UPDATE contacts SET signed_list = ? WHERE account_id = 'acct-bob'", (b"forged",)),
    "pending key cleared": (
        "UPDATE contacts SET pending_account_key = NULL WHERE account_id = 'acct-bob'",
        (),
    ),
    "conversation members": (
        "UPDATE conversations SET members = ? WHERE conversation_id = 'conv-1'",
        (json.dumps(["acct-alice", "acct-bob", "acct-mallory"]),),
    ),
    "conversation kind": ("UPDATE conversations SET kind = 'group' WHERE conversation_id = 'conv-1'", ()),
    "sync meta members": (
        "UPDATE sync_meta SET members = ? WHERE conversation_id = 'conv-1'",
        (
            json.dumps(
                {"members": ["acct-alice", "acct-mallory"], "admins": ["acct-mallory"], "kind": "group"}
            ),
        ),
    ),
    "sync meta floor": ("UPDATE sync_meta SET floor_seq = 99 WHERE conversation_id = 'conv-1'", ()),
    "device account": ("UPDATE device SET account_id = 'acct-mallory'", ()),
    "setting": ("UPDATE settings SET value = '0' WHERE name = 'disappearing:conv-1'", ()),
    "session owner": ("UPDATE sessions SET peer_account_id = 'acct-mallory'", ()),
    "cursor": ("UPDATE queue_cursor SET acked_queue_seq = 1", ()),
    "prekey meta": ("UPDATE prekey_meta SET uploaded_through_id = 1", ()),
    "contact deleted": ("DELETE FROM contacts WHERE account_id = 'acct-carol'", ()),
    "session deleted": ("DELETE FROM sessions WHERE base_key = ?", (b"Y" * 32,)),
    "contact version bumped": ("UPDATE contacts SET ver = ver + 1 WHERE account_id = 'acct-bob'", ()),
    "integrity state deleted": ("DELETE FROM meta WHERE name = 'integrity'", ()),
    "integrity state flipped": ("UPDATE meta SET value = zeroblob(105) WHERE name = 'integrity'", ()),
    "column list edited": (
        "UPDATE meta SET value = CAST(replace(CAST(value AS TEXT), ',\"verified\"', '') AS BLOB) "
        "WHERE name = 'integrity_columns'",
        (),
    ),
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_tampered_trust_anchor_is_refused_on_open(filled: tuple[Path, dict[str, Any]], name: str) -> None:
    path, _ = filled
    sql, params = TAMPERS[name]
    edit(path, sql, params)
    error = refused(path)
    assert isinstance(error, StoreCorruptError)  # and so a StoreError
    assert "failed its integrity check" in str(error) and "backup" in str(error)


def test_contact_row_copied_onto_another_key_is_refused(filled: tuple[Path, dict[str, Any]]) -> None:
    """Carol's row replaced by Bob's (key, list, mac, version), keeping Carol's account id."""
    path, _ = filled
    names, bob = row_of(path, "contacts", "account_id = ?", ("acct-bob",))
    forged = tuple("acct-carol" if n == "account_id" else v for n, v in zip(names, bob, strict=True))
    edit(path, "DELETE FROM contacts WHERE account_id = 'acct-carol'")
    put_back(path, "contacts", names, forged)
    refused(path)


def test_conversation_row_moved_to_another_id_is_refused(filled: tuple[Path, dict[str, Any]]) -> None:
    path, _ = filled
    edit(path, "UPDATE conversations SET conversation_id = 'conv-2' WHERE conversation_id = 'conv-1'")
    refused(path)


@pytest.mark.parametrize(
    ("table", "where", "key", "rewrite"),
    [
        (
            "contacts",
            "account_id = ?",
            ("acct-bob",),
            lambda s: s.device_lists.put_contact(contact(verified=True)),
        ),
        (
            "conversations",
            "conversation_id = ?",
            ("conv-1",),
            lambda s: s.conversations.put_conversation(
                ConversationRecord("conv-1", "group", ("acct-alice", "acct-bob", "acct-dave"), b"\x02", 3)
            ),
        ),
        (
            "sync_meta",
            "conversation_id = ?",
            ("conv-1",),
            lambda s: s.sync.put_sync_meta(
                SyncMeta("conv-1", 2, 2, 0, b"", ("acct-alice",), ("acct-alice",), "group")
            ),
        ),
        (
            "sessions",
            "peer_device_id = ? AND base_key = ?",
            ("dev-bob-1", b"X" * 32),
            lambda s: s.sessions.put_session(
                session(base_key=b"X" * 32, updated=9, state=b"advanced ratchet")
            ),
        ),
    ],
    ids=["contact", "conversation", "sync_meta", "session"],
)
def test_older_copy_of_a_row_is_refused(
    filled: tuple[Path, dict[str, Any]],
    table: str,
    where: str,
    key: tuple[Any, ...],
    rewrite: Callable[[SqliteStore], None],
) -> None:
    path, _ = filled
    names, old = row_of(path, table, where, key)  # a valid row, MAC and all
    with SqliteStore.open(path, key=KEY) as s:
        rewrite(s)
    opens(path)  # the new version verifies
    put_back(path, table, names, old)
    refused(path)


def test_whole_file_rollback_is_refused_with_the_saved_counter(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.device_lists.put_contact(contact())
    old_file = path.read_bytes()
    with SqliteStore.open(path, key=KEY) as s:
        s.device_lists.put_contact(contact(verified=True))
        saved = s.write_counter
    path.write_bytes(old_file)
    opens(path)  # a consistent copy of an older file verifies: what the saved counter is for
    assert "rolled back" in str(refused(path, min_write_counter=saved))
    path.unlink()
    opens(path, min_write_counter=None)


# -- while the store is open ------------------------------------------------------------------------


def test_tampered_rows_read_while_open_raise(filled: tuple[Path, dict[str, Any]]) -> None:
    path, _ = filled
    names, old = row_of(path, "contacts", "account_id = ?", ("acct-bob",))
    with SqliteStore.open(path, key=KEY) as s:
        s.device_lists.put_contact(contact(verified=True))
        assert len(s.device_lists.contacts()) == 2  # both rows read (and remembered) once
        edit(path, "UPDATE contacts SET account_key = ? WHERE account_id = 'acct-carol'", (b"E" * 32,))
        with pytest.raises(StoreTamperedError):
            s.device_lists.get_contact("acct-carol")
        with pytest.raises(StoreTamperedError):
            s.device_lists.contacts()
        put_back(path, "contacts", names, old)  # Bob's older (unverified) row, a valid MAC
        with pytest.raises(StoreTamperedError, match="another copy"):
            s.device_lists.get_contact("acct-bob")


def test_a_deleted_row_put_back_while_open_raises(filled: tuple[Path, dict[str, Any]]) -> None:
    path, _ = filled
    names, row = row_of(path, "sessions", "base_key = ?", (b"X" * 32,))
    with SqliteStore.open(path, key=KEY) as s:
        assert len(s.sessions.sessions_for("dev-bob-1")) == 2
        s.sessions.delete_sessions("dev-bob-1")
        put_back(path, "sessions", names, row)
        with pytest.raises(StoreTamperedError):
            s.sessions.sessions_for("dev-bob-1")
        # a rolled-back write is forgotten too: the row as it was before it is what verifies
        s.device_lists.get_contact("acct-bob")
        with pytest.raises(RuntimeError), s.transaction():
            s.device_lists.put_contact(contact(verified=True))
            assert s.device_lists.get_contact("acct-bob") == contact(verified=True)
            raise RuntimeError("rolled back")
        assert s.device_lists.get_contact("acct-bob") == contact(pending_account_key=b"P" * 32)


def test_bulk_rows_are_bound_to_their_place(filled: tuple[Path, dict[str, Any]]) -> None:
    """Messages, outbox items, sync ops and handler-inbox entries: a changed column or a row moved
    to another key fails when the row is read (they are not in the manifest)."""
    path, _ = filled
    edit(path, "UPDATE messages SET sender_account_id = 'acct-mallory' WHERE envelope_id = 'm1'")
    names, m2 = row_of(path, "messages", "envelope_id = ?", ("m2",))
    put_back(
        path,
        "messages",
        names,
        tuple("m3" if n == "envelope_id" else v for n, v in zip(names, m2, strict=True)),
    )
    edit(path, "UPDATE handler_inbox SET conversation_id = 'conv-9'")
    with SqliteStore.open(path, key=KEY) as s:  # bulk rows are checked when read
        with pytest.raises(StoreTamperedError):
            s.conversations.get_message("m1")
        with pytest.raises(StoreTamperedError):
            s.conversations.get_message("m3")
        with pytest.raises(StoreTamperedError):
            s.conversations.messages("conv-1")
        with pytest.raises(StoreTamperedError):
            s.handler_inbox.pending()
        assert s.conversations.get_message("m2") is not None


def test_sync_op_sender_is_authenticated(tmp_path: Path) -> None:
    from saltline.client_sdk.stores.base import SyncOpRecord

    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.sync.put_sync_op(
            SyncOpRecord("conv-1", 1, "env-1", "acct-alice", "dev-1", b"\x02", b'{"op":"add"}')
        )
    edit(path, "UPDATE sync_ops SET sender_account_id = 'acct-admin'")
    with SqliteStore.open(path, key=KEY) as s, pytest.raises(StoreTamperedError):
        s.sync.sync_ops("conv-1")


def test_deletes_and_rolled_back_transactions_keep_the_state(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.sessions.put_session(session(base_key=b"A" * 32))
        s.sessions.put_session(session(base_key=b"B" * 32))
        s.prekeys.add_seen_base_key(1, b"d" * 32)
        s.prekeys.add_seen_base_key(2, b"e" * 32)
        s.sessions.delete_sessions("dev-bob-1")
        assert s.prekeys.drop_seen_base_keys([2]) == 1
        with pytest.raises(RuntimeError), s.transaction():
            s.device_lists.put_contact(contact())
            s.sessions.put_session(session())
            raise RuntimeError("rolled back")
        assert s.device_lists.get_contact("acct-bob") is None
        s.device_lists.put_contact(contact(username="bobby"))
    with SqliteStore.open(path, key=KEY) as s:
        assert s.prekeys.has_seen_base_key(2, b"e" * 32)
        assert not s.prekeys.has_seen_base_key(1, b"d" * 32)
        contact_row = s.device_lists.get_contact("acct-bob")
        assert contact_row is not None and contact_row.username == "bobby"


# -- formats and migrations ---------------------------------------------------------------------------


def test_old_format_store_is_migrated_then_protected(tmp_path: Path) -> None:
    """A store written before integrity (schema 5, key check v1) is authenticated as it stands on
    its first open (trust on first migration); from then on tampering is refused, and deleting the
    integrity state does not make it look old again."""
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY, migrations=MIGRATIONS[: INTEGRITY_SCHEMA - 1]) as s:
        written = fill(s)
    conn = raw(path)
    assert "mac" not in {r[1] for r in conn.execute("PRAGMA table_info(contacts)")}
    (v1_check,) = conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
    conn.close()
    with SqliteStore.open(path, key=KEY) as s:
        check_filled(s, written)
        migrated_counter = s.write_counter
    assert migrated_counter > 0
    opens(path)
    # the old key check put back does not make the store look unmigrated: it is renewed on open
    edit(path, "UPDATE meta SET value = ? WHERE name = 'key_check'", (v1_check,))
    opens(path)
    edit(path, "DELETE FROM meta WHERE name IN ('integrity', 'integrity_columns')")
    assert "integrity state is missing" in str(refused(path))


def test_plain_store_has_no_integrity(tmp_path: Path) -> None:
    """Without a key there is nothing to authenticate with: documented, not hidden."""
    path = tmp_path / "store.db"
    with SqliteStore.open(path) as s:
        s.device_lists.put_contact(contact())
        assert s.write_counter == 0
    edit(path, "UPDATE contacts SET verified = 1")
    with SqliteStore.open(path) as s:
        bob = s.device_lists.get_contact("acct-bob")
        assert bob is not None and bob.verified
    with pytest.raises(StoreKeyError):
        opens(path)


def test_a_column_added_later_is_covered(tmp_path: Path) -> None:
    """A later migration adds a column: existing rows are verified over the old columns and
    authenticated again over all of them; tampering the new column is then refused."""
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.device_lists.put_contact(contact())
        s.conversations.put_message(message("m1", 1, sent_at=1))

    def v_next(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE contacts ADD COLUMN nickname TEXT NOT NULL DEFAULT ''")
        conn.execute("ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER")

    migrations = (*MIGRATIONS, v_next)
    with SqliteStore.open(path, key=KEY, migrations=migrations) as s:
        assert s.device_lists.get_contact("acct-bob") == contact()
        assert s.conversations.get_message("m1") is not None
    opens(path, migrations=migrations)
    edit(path, "UPDATE contacts SET nickname = 'trusted friend'")
    with pytest.raises(StoreTamperedError):
        opens(path, migrations=migrations)


def test_migration_does_not_bless_a_tampered_row(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.conversations.put_message(message("m1", 1, sent_at=1))
    edit(path, "UPDATE messages SET sender_account_id = 'acct-mallory'")

    def v_next(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER")

    refused(path, migrations=(*MIGRATIONS, v_next))


# -- property: any single tamper of a protected row is detected ----------------------------------------

ACCOUNTS = ["acct-a", "acct-b", "acct-c"]
CONVS = ["conv-a", "conv-b"]

write_op = st.one_of(
    st.tuples(
        st.just("contact"), st.sampled_from(ACCOUNTS), st.booleans(), st.binary(min_size=32, max_size=32)
    ),
    st.tuples(
        st.just("conversation"), st.sampled_from(CONVS), st.lists(st.sampled_from(ACCOUNTS), max_size=3)
    ),
    st.tuples(st.just("sync_meta"), st.sampled_from(CONVS), st.lists(st.sampled_from(ACCOUNTS), max_size=3)),
    st.tuples(st.just("session"), st.sampled_from(["d1", "d2"]), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("setting"), st.sampled_from(["s1", "s2"]), st.text(max_size=5)),
    st.tuples(st.just("delete sessions"), st.sampled_from(["d1", "d2"])),
)

PROTECTED_ROWS: dict[str, tuple[str, str]] = {  # table: (primary-key columns, a column to change)
    "contacts": ("account_id", "account_key"),
    "conversations": ("conversation_id", "members"),
    "sync_meta": ("conversation_id", "members"),
    "sessions": ("peer_device_id, base_key", "state"),
    "settings": ("name", "value"),
}


def apply(s: SqliteStore, op: tuple[Any, ...]) -> None:
    kind, key = op[0], op[1]
    if kind == "contact":
        s.device_lists.put_contact(contact(key, key.upper(), verified=op[2], account_key=op[3]))
    elif kind == "conversation":
        s.conversations.put_conversation(ConversationRecord(key, "group", tuple(sorted(set(op[2])))))
    elif kind == "sync_meta":
        s.sync.put_sync_meta(SyncMeta(key, members=tuple(op[2]), kind="group"))
    elif kind == "session":
        s.sessions.put_session(SessionRecord(key, b"K" * 32, op[2], "acct-a"))
    elif kind == "delete sessions":
        s.sessions.delete_sessions(key)
    else:
        s.sync.put_setting(key, op[2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(write_op, min_size=1, max_size=8),
    after=st.lists(write_op, max_size=8),
    tamper=st.sampled_from(["change", "delete", "older copy", "copy onto another key"]),
    pick=st.integers(min_value=0),
)
def test_property_any_single_tamper_is_detected(
    before: list[tuple[Any, ...]], after: list[tuple[Any, ...]], tamper: str, pick: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        with SqliteStore.open(path, key=KEY) as s:
            for op in before:
                apply(s, op)
        snapshot = {}
        conn = raw(path)
        for table in PROTECTED_ROWS:
            names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for row in conn.execute(f"SELECT * FROM {table}"):
                snapshot[(table, row[names.index(PROTECTED_ROWS[table][0].split(",")[0])], row)] = names
        conn.close()
        with SqliteStore.open(path, key=KEY) as s:
            for op in after:
                apply(s, op)
        conn = raw(path)
        current = []
        for table in PROTECTED_ROWS:
            names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            current += [(table, names, tuple(row)) for row in conn.execute(f"SELECT * FROM {table}")]
        assume(current)  # something to tamper with (every session may have been deleted)
        if tamper == "older copy":
            # a row as it was before ``after``, where it has been written since (else it is no tamper)
            old = [
                (table, names, row)
                for (table, _, row), names in snapshot.items()
                if not any(t == table and r == row for t, _, r in current)
            ]
            if not old:
                tamper = "change"
            else:
                table, names, row = old[pick % len(old)]
                marks = ", ".join("?" for _ in names)
                conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({marks})", row)
        if tamper in ("change", "delete", "copy onto another key"):
            table, names, row = current[pick % len(current)]
            pk = PROTECTED_ROWS[table][0].split(", ")
            where = " AND ".join(f"{c} = ?" for c in pk)
            key = tuple(row[names.index(c)] for c in pk)
            if tamper == "delete":
                conn.execute(f"DELETE FROM {table} WHERE {where}", key)
            elif tamper == "change":
                column = PROTECTED_ROWS[table][1]
                value = row[names.index(column)]
                changed = (value + "x") if isinstance(value, str) else bytes(value) + b"x"
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (changed, *key))
            else:
                first = pk[0]
                moved = tuple(v + "-moved" if n == first else v for n, v in zip(names, row, strict=True))
                marks = ", ".join("?" for _ in names)
                conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", moved)
        conn.close()
        with pytest.raises(StoreTamperedError):
            opens(path)


# -- the specification, re-derived from docs/protocol/keys.md § 5.1 alone ---------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.digest(salt or b"\x00" * 32, ikm, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")  # L = 32: one block


def _lp(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def _enc(value: Any) -> bytes:
    if value is None:
        return b"\x00"
    if isinstance(value, int):
        return b"\x01" + struct.pack(">q", value)
    if isinstance(value, str):
        return b"\x03" + struct.pack(">I", len(value.encode())) + value.encode()
    return b"\x04" + struct.pack(">I", len(value)) + bytes(value)


def test_file_matches_the_specification(filled: tuple[Path, dict[str, Any]]) -> None:
    """Row MACs, the manifest digest and the state, recomputed from the text of keys.md § 5.1 with
    hashlib/hmac only (no SDK code), equal what the store wrote."""
    path, _ = filled
    conn = raw(path)
    salt = conn.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()[0]
    state = conn.execute("SELECT value FROM meta WHERE name = 'integrity'").fetchone()[0]
    columns_json = conn.execute("SELECT value FROM meta WHERE name = 'integrity_columns'").fetchone()[0]
    row_key = _hkdf(KEY, salt, b"saltline store v1 row key")
    k_mac, k_man, k_state = (
        _hkdf(row_key, b"", b"saltline store v2 " + purpose)
        for purpose in (b"row mac key", b"manifest key", b"state key")
    )
    digest = 0
    rows = 0
    for table in (*MANIFEST, *PLACE):
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        names = [r[1] for r in info]
        pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
        for row in conn.execute(f"SELECT * FROM {table}"):
            values = dict(zip(names, row, strict=True))
            data = (
                b"saltline-store-row-v1"
                + _lp(table.encode())
                + b"".join(_lp(n.encode()) + _enc(values[n]) for n in sorted(names) if n != "mac")
            )
            assert values["mac"] == hashlib.blake2b(data, digest_size=32, key=k_mac).digest(), table
            rows += 1
            if table in MANIFEST:
                entry = (
                    b"saltline-store-manifest-v1"
                    + _lp(table.encode())
                    + b"".join(_enc(values[c]) for c in pk)
                    + struct.pack(">Q", values["ver"])
                )
                digest ^= int.from_bytes(hashlib.blake2b(entry, digest_size=32, key=k_man).digest(), "big")
    conn.close()
    assert rows > 10
    body = state[:73]
    assert len(state) == 105 and body[0] == 1
    assert body[9:41] == digest.to_bytes(32, "big")
    assert body[41:73] == hashlib.sha256(columns_json).digest()
    assert (
        columns_json == json.dumps(json.loads(columns_json), sort_keys=True, separators=(",", ":")).encode()
    )
    assert state[73:] == hmac.digest(k_state, b"saltline-store-state-v1" + body, "sha256")
