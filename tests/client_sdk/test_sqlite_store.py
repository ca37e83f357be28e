"""The device stores: one contract run over every implementation (memory, SQLite plain, SQLite
encrypted), then what only the durable store promises: restarts, encryption at rest, wrong keys,
locking across processes, schema migrations."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from saltline.client_sdk.errors import (
    StoreCorruptError,
    StoreError,
    StoreKeyError,
    StoreLockedError,
    StoreVersionError,
)
from saltline.client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    DeviceRecord,
    HandlerInboxStore,
    MessageRecord,
    OutboxItem,
    PendingDelivery,
    PreKeyMeta,
    SessionRecord,
    Store,
)
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteStore
from saltline.crypto import private_state as ps

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET_TEXT = "the eagle lands at midnight, bring the blue umbrella"
SECRET_BODY = b'{"op":"message","text":"operation body 7f3a9c"}'
OUTBOX_BODY = b'{"op":"message","text":"unsent outbox body 51c2e8"}'
OUTBOX_REQUEST = b'{"envelope_id":"request-bytes-d41d8c"}'
SESSION_STATE = b"ratchet state: root key 0123456789abcdef chain keys fedcba9876543210"
REFRESH_TOKEN = "refresh-token-9b8d7e6f5a4c3b2a"
FAILED_REASON = "rejected by the server: payload too large c7e1f0"


# -- sample records --------------------------------------------------------------------------------


def device_record() -> DeviceRecord:
    state = ps.generate_device(one_time_prekeys=3)
    return DeviceRecord(
        device_id="ZGV2aWNlLWlkLTAwMDAwMQ",
        state=state.encode(),
        username="alice",
        account_id="YWNjb3VudC1hbGljZS0wMQ",
        refresh_token=REFRESH_TOKEN,
        created_at_ms=1_700_000_000_000,
    )


def contact(account_id: str = "acct-bob", username: str = "bob", **kw: Any) -> ContactRecord:
    fields: dict[str, Any] = {
        "account_id": account_id,
        "username": username,
        "account_key": b"K" * 32,
        "signed_list": b"signed-list-v1",
        "updated_at_ms": 5,
    }
    fields.update(kw)
    return ContactRecord(**fields)


def session(
    peer: str = "dev-bob-1", base_key: bytes = b"B" * 32, updated: int = 10, **kw: Any
) -> SessionRecord:
    fields: dict[str, Any] = {
        "peer_device_id": peer,
        "base_key": base_key,
        "state": SESSION_STATE,
        "peer_account_id": "acct-bob",
        "updated_at_ms": updated,
    }
    fields.update(kw)
    return SessionRecord(**fields)


def message(
    envelope_id: str, server_seq: int | None, sent_at: int, conv: str = "conv-1", **kw: Any
) -> MessageRecord:
    fields: dict[str, Any] = {
        "conversation_id": conv,
        "envelope_id": envelope_id,
        "sender_account_id": "acct-alice",
        "sender_device_id": "dev-alice-1",
        "text": f"hello {envelope_id}",
        "sent_at_ms": sent_at,
        "sent_by_me": server_seq is None,
        "status": "received" if server_seq is not None else "pending",
        "server_seq": server_seq,
        "server_ts_ms": None if server_seq is None else sent_at + 1,
        "body": b'{"op":"message"}',
    }
    fields.update(kw)
    return MessageRecord(**fields)


def outbox_item(envelope_id: str, created: int, **kw: Any) -> OutboxItem:
    fields: dict[str, Any] = {
        "envelope_id": envelope_id,
        "conversation_id": "conv-1",
        "body": OUTBOX_BODY,
        "clock": b"\x01\x00\x00",
        "created_at_ms": created,
    }
    fields.update(kw)
    return OutboxItem(**fields)


# -- the contract, over every implementation -------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "sqlite-encrypted"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    key = KEY if request.param == "sqlite-encrypted" else None
    s = SqliteStore.open(tmp_path / "store.db", key=key)
    try:
        yield s
    finally:
        s.close()


def test_is_a_store(store: Any) -> None:
    assert isinstance(store, Store)


def test_identity(store: Any) -> None:
    assert store.identity.get_device() is None
    record = device_record()
    store.identity.put_device(record)
    assert store.identity.get_device() == record
    assert ps.decode(store.identity.get_device().state).device_id == ps.decode(record.state).device_id
    relinked = DeviceRecord(device_id=record.device_id, state=record.state)  # defaults: None, 0
    store.identity.put_device(relinked)
    assert store.identity.get_device() == relinked


def test_device_lists(store: Any) -> None:
    dl = store.device_lists
    assert dl.get_contact("acct-bob") is None
    assert dl.get_contact_by_username("bob") is None
    assert dl.contacts() == []
    bob = contact()
    carol = contact(
        "acct-carol",
        "carol",
        trust_policy="block",
        verified=True,
        pending_account_key=b"P" * 32,
        pending_signed_list=b"pending-list",
    )
    dl.put_contact(bob)
    dl.put_contact(carol)
    assert dl.get_contact("acct-bob") == bob
    assert dl.get_contact("acct-carol") == carol
    assert dl.get_contact_by_username("BOB") == bob
    assert dl.get_contact_by_username("nobody") is None
    newer = contact(signed_list=b"signed-list-v2", updated_at_ms=9)
    dl.put_contact(newer)
    assert dl.get_contact("acct-bob") == newer
    assert sorted(c.account_id for c in dl.contacts()) == ["acct-bob", "acct-carol"]
    assert len(dl.contacts()) == 2


def test_sessions_most_recent_first(store: Any) -> None:
    ss = store.sessions
    assert ss.sessions_for("dev-bob-1") == []
    a = session(base_key=b"A" * 32, updated=10)
    b = session(base_key=b"B" * 32, updated=20)
    c = session(base_key=b"C" * 32, updated=20)  # same time as b, put later: first
    for record in (a, b, c):
        ss.put_session(record)
    ss.put_session(session("dev-bob-2", updated=99))
    assert ss.sessions_for("dev-bob-1") == [c, b, a]
    a2 = session(base_key=b"A" * 32, updated=30, state=b"advanced")
    ss.put_session(a2)  # replaces (peer, base_key) and becomes the most recent
    assert ss.sessions_for("dev-bob-1") == [a2, c, b]
    b2 = session(base_key=b"B" * 32, updated=20, state=b"b again")  # ties c on time, put later
    ss.put_session(b2)
    assert ss.sessions_for("dev-bob-1") == [a2, b2, c]
    ss.delete_sessions("dev-bob-1")
    assert ss.sessions_for("dev-bob-1") == []
    assert len(ss.sessions_for("dev-bob-2")) == 1
    ss.delete_sessions("never-seen")  # no error


def test_conversations(store: Any) -> None:
    cs = store.conversations
    assert cs.get_conversation("conv-1") is None
    assert cs.conversations() == []
    direct = ConversationRecord("conv-1", "direct", ("acct-alice", "acct-bob"), b"\x01clock", 7)
    group = ConversationRecord("conv-2", "group", ("acct-a", "acct-b", "acct-c"))
    cs.put_conversation(direct)
    cs.put_conversation(group)
    assert cs.get_conversation("conv-1") == direct
    assert cs.get_conversation("conv-2") == group
    ticked = ConversationRecord("conv-1", "direct", ("acct-alice", "acct-bob"), b"\x01clock2", 7)
    cs.put_conversation(ticked)
    assert cs.get_conversation("conv-1") == ticked
    assert sorted(c.conversation_id for c in cs.conversations()) == ["conv-1", "conv-2"]
    assert isinstance(cs.get_conversation("conv-2").members, tuple)


def test_messages_display_order_and_limit(store: Any) -> None:
    cs = store.conversations
    assert cs.get_message("e1") is None
    assert cs.messages("conv-1") == []
    # Pending messages come after every stored one, whatever their sent_at / server_seq values.
    pending_late = message("p2", None, sent_at=5)
    pending_early = message("p1", None, sent_at=1)
    stored_2 = message("s2", 20, sent_at=900)
    stored_1 = message("s1", 10, sent_at=950)
    other = message("o1", 1, sent_at=1, conv="conv-2")
    for record in (pending_late, stored_2, pending_early, other, stored_1):
        cs.put_message(record)
    assert [m.envelope_id for m in cs.messages("conv-1")] == ["s1", "s2", "p1", "p2"]
    assert [m.envelope_id for m in cs.messages("conv-1", limit=3)] == ["s2", "p1", "p2"]
    assert [m.envelope_id for m in cs.messages("conv-1", limit=1)] == ["p2"]
    assert cs.messages("conv-1", limit=0) == []
    assert cs.messages("conv-2") == [other]
    assert cs.get_message("s2") == stored_2
    # The server stored p1 (seq 30): it moves among the stored messages; the record is replaced.
    p1_sent = message("p1", 30, sent_at=1, status="sent", sent_by_me=True, text="hello p1")
    cs.put_message(p1_sent)
    assert cs.get_message("p1") == p1_sent
    assert [m.envelope_id for m in cs.messages("conv-1")] == ["s1", "s2", "p1", "p2"]
    assert cs.messages("conv-1")[2] == p1_sent
    cs.put_message(message("s0", 3, sent_at=999))  # arrives late, displays by server_seq
    assert [m.envelope_id for m in cs.messages("conv-1")] == ["s0", "s1", "s2", "p1", "p2"]
    # Equal sent_at among pending ones: first inserted first, even after a replace.
    cs.put_message(message("q1", None, sent_at=5))
    cs.put_message(message("p2", None, sent_at=5, text="edited"))
    assert [m.envelope_id for m in cs.messages("conv-1")][-2:] == ["p2", "q1"]


def test_delete_message(store: Any) -> None:
    cs = store.conversations
    for record in (
        message("s1", 1, sent_at=1),
        message("p1", None, sent_at=2),
        message("p2", None, sent_at=3),
    ):
        cs.put_message(record)
    cs.delete_message("p1")
    cs.delete_message("p1")  # idempotent
    cs.delete_message("never-there")
    assert cs.get_message("p1") is None
    assert [m.envelope_id for m in cs.messages("conv-1")] == ["s1", "p2"]
    cs.put_message(message("p1", None, sent_at=2))  # the id can be used again
    assert [m.envelope_id for m in cs.messages("conv-1")] == ["s1", "p1", "p2"]
    with pytest.raises(RuntimeError), store.transaction():
        cs.delete_message("s1")
        raise RuntimeError("rolled back")
    assert cs.get_message("s1") is not None


def test_message_text_unicode_and_empty_body(store: Any) -> None:
    record = message("u1", 1, sent_at=1, text="héllo 👋 \x00 end", body=b"")
    store.conversations.put_message(record)
    assert store.conversations.get_message("u1") == record


def test_outbox(store: Any) -> None:
    ob = store.outbox
    assert ob.outbox() == []
    assert ob.get_outbox("e1") is None
    late = outbox_item("e-late", created=20)
    first = outbox_item("e-first", created=10)
    tie = outbox_item("e-tie", created=20)
    for item in (late, first, tie):
        ob.put_outbox(item)
    assert [i.envelope_id for i in ob.outbox()] == ["e-first", "e-late", "e-tie"]
    retried = outbox_item("e-late", created=20, request=OUTBOX_REQUEST, attempts=2)
    ob.put_outbox(retried)  # keeps its place
    assert ob.get_outbox("e-late") == retried
    assert [i.envelope_id for i in ob.outbox()] == ["e-first", "e-late", "e-tie"]
    ob.remove_outbox("e-first")
    ob.remove_outbox("never-there")
    assert ob.outbox() == [retried, tie]


def test_outbox_failed_items_and_back_off(store: Any) -> None:
    ob = store.outbox
    plain = outbox_item("e-plain", created=10)
    assert (plain.failed_reason, plain.failed_status, plain.failed_code, plain.next_attempt_ms) == (
        None,
        None,
        None,
        0,
    )
    assert not plain.failed
    waiting = outbox_item("e-wait", created=20, request=OUTBOX_REQUEST, attempts=3, next_attempt_ms=12_345)
    failed = outbox_item(
        "e-failed",
        created=5,
        request=OUTBOX_REQUEST,
        attempts=1,
        failed_reason="the message is larger than the server accepts (262144 bytes); shorten it",
        failed_status=413,
        failed_code="payload_too_large",
    )
    for item in (plain, waiting, failed):
        ob.put_outbox(item)
    assert failed.failed
    # every item, failed ones included, oldest first
    assert ob.outbox() == [failed, plain, waiting]
    assert ob.get_outbox("e-failed") == failed
    assert ob.get_outbox("e-wait") == waiting
    # the app retries the failed item: its failure is cleared, it keeps its place
    retried = OutboxItem(
        failed.envelope_id, failed.conversation_id, failed.body, failed.clock, failed.created_at_ms
    )
    ob.put_outbox(retried)
    assert ob.get_outbox("e-failed") == retried and not retried.failed
    assert [i.envelope_id for i in ob.outbox()] == ["e-failed", "e-plain", "e-wait"]
    # a reason without status or code (a failure the client decided on its own)
    local = outbox_item("e-local", created=30, failed_reason="héllo: no devices to send to 👋")
    ob.put_outbox(local)
    assert ob.get_outbox("e-local") == local
    ob.remove_outbox("e-local")  # discarded by the app
    assert ob.get_outbox("e-local") is None


def test_handler_inbox(store: Any) -> None:
    hi: HandlerInboxStore = store.handler_inbox
    assert hi.pending() == []
    hi.add_pending("e2", "conv-1", 20)
    hi.add_pending("e1", "conv-2", 10)
    hi.add_pending("e3", "conv-1", 20)  # same time as e2, added later: after it
    hi.add_pending("e2", "conv-1", 99)  # idempotent: keeps its time, place and attempts
    assert hi.pending() == [
        PendingDelivery("e1", "conv-2", 10),
        PendingDelivery("e2", "conv-1", 20),
        PendingDelivery("e3", "conv-1", 20),
    ]
    assert [p.envelope_id for p in hi.pending(limit=2)] == ["e1", "e2"]
    assert hi.pending(limit=0) == []
    hi.bump_attempts("e2")
    hi.bump_attempts("e2")
    hi.bump_attempts("never-there")  # no error, no entry
    hi.add_pending("e2", "conv-1", 20)
    assert hi.pending()[1] == PendingDelivery("e2", "conv-1", 20, attempts=2)
    hi.remove_pending("e1")
    hi.remove_pending("e1")  # idempotent
    assert [p.envelope_id for p in hi.pending()] == ["e2", "e3"]


def test_handler_inbox_joins_transactions(store: Any) -> None:
    with store.transaction():
        store.conversations.put_message(message("m1", 1, sent_at=1))
        store.handler_inbox.add_pending("m1", "conv-1", 1)
    assert [p.envelope_id for p in store.handler_inbox.pending()] == ["m1"]
    with pytest.raises(RuntimeError), store.transaction():
        store.handler_inbox.add_pending("m2", "conv-1", 2)
        store.handler_inbox.bump_attempts("m1")
        store.handler_inbox.remove_pending("m1")
        raise RuntimeError("crash before the end of the transaction")
    assert store.handler_inbox.pending() == [PendingDelivery("m1", "conv-1", 1)]


def test_cursors(store: Any) -> None:
    cur = store.cursors
    assert cur.get_acked_queue_seq() == 0
    assert cur.get_server_seq("conv-1") == 0
    cur.set_acked_queue_seq(41)
    cur.set_acked_queue_seq(42)
    cur.set_server_seq("conv-1", 7)
    cur.set_server_seq("conv-2", 3)
    assert cur.get_acked_queue_seq() == 42
    assert (cur.get_server_seq("conv-1"), cur.get_server_seq("conv-2")) == (7, 3)


def test_prekey_meta(store: Any) -> None:
    assert store.prekeys.get_prekey_meta() == PreKeyMeta()
    meta = PreKeyMeta(uploaded_through_id=103, signed_prekey_rotated_at_ms=5, last_count_check_ms=6)
    store.prekeys.put_prekey_meta(meta)
    assert store.prekeys.get_prekey_meta() == meta


def test_transaction_commits_together(store: Any) -> None:
    with store.transaction():
        store.sessions.put_session(session())
        store.cursors.set_acked_queue_seq(5)
        with store.transaction():  # nested: joins the outer one
            store.conversations.put_message(message("m1", 1, sent_at=1))
    assert store.cursors.get_acked_queue_seq() == 5
    assert store.conversations.get_message("m1") is not None
    assert len(store.sessions.sessions_for("dev-bob-1")) == 1


def test_transaction_rolls_back_everything(store: Any) -> None:
    store.cursors.set_acked_queue_seq(1)
    with pytest.raises(RuntimeError), store.transaction():
        store.cursors.set_acked_queue_seq(2)
        store.sessions.put_session(session())
        with store.transaction():
            store.outbox.put_outbox(outbox_item("e1", 1))
        raise RuntimeError("crash before the end of the transaction")
    assert store.cursors.get_acked_queue_seq() == 1
    assert store.sessions.sessions_for("dev-bob-1") == []
    assert store.outbox.outbox() == []


def test_inner_exception_caught_inside_keeps_outer_transaction(store: Any) -> None:
    with store.transaction():
        store.cursors.set_acked_queue_seq(3)
        try:
            with store.transaction():
                store.cursors.set_server_seq("conv-1", 9)
                raise ValueError("handled by the caller")
        except ValueError:
            pass
    assert store.cursors.get_acked_queue_seq() == 3
    assert store.cursors.get_server_seq("conv-1") == 9  # joined the outer one, which committed


def test_acquire_is_exclusive(store: Any) -> None:
    store.acquire()
    with pytest.raises(StoreLockedError):
        store.acquire()
    store.release()
    store.release()  # idempotent
    store.acquire()
    store.release()


# -- durability ------------------------------------------------------------------------------------


def put_legacy_outbox(s: SqliteStore, item: OutboxItem) -> None:
    """Write an outbox item as schema versions 1 to 4 stored it (no failure or back-off columns)."""
    c, conn = s._cipher, s._conn
    assert conn is not None
    conn.execute(
        "INSERT INTO outbox (envelope_id, conversation_id, body, clock, created_at_ms, request, attempts, "
        "seq) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM outbox))",
        (
            item.envelope_id,
            item.conversation_id,
            c.seal(item.body, "outbox", "body", item.envelope_id),
            item.clock,
            item.created_at_ms,
            c.seal_opt(item.request, "outbox", "request", item.envelope_id),
            item.attempts,
        ),
    )


def fill(s: SqliteStore, *, schema: int = SCHEMA_VERSION) -> dict[str, Any]:
    """Write one of everything the schema version ``schema`` holds; return what was written."""
    written: dict[str, Any] = {
        "device": device_record(),
        "contact": contact(pending_account_key=b"P" * 32),
        "sessions": [session(base_key=b"X" * 32, updated=2), session(base_key=b"Y" * 32, updated=1)],
        "conversation": ConversationRecord("conv-1", "direct", ("acct-alice", "acct-bob"), b"\x01c", 3),
        "messages": [
            message("m1", 1, sent_at=10, text=SECRET_TEXT, body=SECRET_BODY),
            message("m2", None, sent_at=20),
        ],
        "outbox": [outbox_item("o1", 1, request=OUTBOX_REQUEST, attempts=1), outbox_item("o2", 2)],
        "prekeys": PreKeyMeta(100, 200, 300),
        "pending": [],
    }
    if schema >= 5:
        written["outbox"].append(
            outbox_item(
                "o3",
                3,
                request=OUTBOX_REQUEST,
                failed_reason=FAILED_REASON,
                failed_status=413,
                failed_code="payload_too_large",
                next_attempt_ms=9,
            )
        )
        written["pending"] = [PendingDelivery("m1", "conv-1", 10, attempts=1)]
    with s.transaction():
        s.identity.put_device(written["device"])
        s.device_lists.put_contact(written["contact"])
        for record in written["sessions"]:
            s.sessions.put_session(record)
        s.conversations.put_conversation(written["conversation"])
        for m in written["messages"]:
            s.conversations.put_message(m)
        for item in written["outbox"]:
            if schema >= 5:
                s.outbox.put_outbox(item)
            else:
                put_legacy_outbox(s, item)
        for entry in written["pending"]:
            s.handler_inbox.add_pending(entry.envelope_id, entry.conversation_id, entry.added_at_ms)
            for _ in range(entry.attempts):
                s.handler_inbox.bump_attempts(entry.envelope_id)
        s.cursors.set_acked_queue_seq(77)
        s.cursors.set_server_seq("conv-1", 1)
        s.prekeys.put_prekey_meta(written["prekeys"])
    return written


def check_filled(s: SqliteStore, written: dict[str, Any]) -> None:
    assert s.identity.get_device() == written["device"]
    assert s.device_lists.get_contact("acct-bob") == written["contact"]
    assert s.device_lists.get_contact_by_username("bob") == written["contact"]
    assert s.sessions.sessions_for("dev-bob-1") == written["sessions"]
    assert s.conversations.conversations() == [written["conversation"]]
    assert s.conversations.messages("conv-1") == written["messages"]
    assert s.outbox.outbox() == written["outbox"]
    assert s.cursors.get_acked_queue_seq() == 77
    assert s.cursors.get_server_seq("conv-1") == 1
    assert s.prekeys.get_prekey_meta() == written["prekeys"]
    assert s.handler_inbox.pending() == written["pending"]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_survives_close_and_reopen(tmp_path: Path, key: bytes | None) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=key) as s:
        written = fill(s)
    with SqliteStore.open(path, key=key) as s:
        assert s.encrypted is (key is not None)
        check_filled(s, written)


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_survives_a_killed_process(tmp_path: Path) -> None:
    """Committed writes survive a process that dies without closing; the write it was in the
    middle of (an open transaction) does not appear."""
    path = tmp_path / "store.db"
    result = run_python(
        f"""
        import os
        from saltline.client_sdk.stores.sqlite import SqliteStore
        s = SqliteStore.open({str(path)!r}, key={KEY!r})
        s.cursors.set_acked_queue_seq(10)
        with s.transaction():
            s.cursors.set_acked_queue_seq(11)
            s.cursors.set_server_seq("conv-1", 5)
            os._exit(0)  # dies mid-transaction, no close, no checkpoint
        """
    )
    assert result.returncode == 0, result.stderr
    with SqliteStore.open(path, key=KEY) as s:  # the dead process's lock is gone
        assert s.cursors.get_acked_queue_seq() == 10
        assert s.cursors.get_server_seq("conv-1") == 0


def test_durability_pragmas(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "store.db") as s:
        conn = s._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.db"
    with SqliteStore.open(path) as s:
        s.cursors.set_acked_queue_seq(1)
        for name in ("store.db", "store.db.lock"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = SqliteStore.open(tmp_path / "store.db")
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(StoreError, match="closed"):
        s.cursors.get_acked_queue_seq()


# -- encryption at rest ----------------------------------------------------------------------------


def store_bytes(directory: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(directory.iterdir()) if f.is_file())


SECRETS = [
    FAILED_REASON.encode(),
    SECRET_TEXT.encode(),
    SECRET_BODY,
    OUTBOX_BODY,
    OUTBOX_REQUEST,
    SESSION_STATE,
    REFRESH_TOKEN.encode(),
]


def test_encrypted_files_hold_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        written = fill(s)
        device_state = written["device"].state
        while_open = store_bytes(tmp_path)  # the database and its WAL, before any checkpoint
    after_close = store_bytes(tmp_path)
    for data in (while_open, after_close):
        for secret in [*SECRETS, device_state, device_state[10:40]]:
            assert secret not in data


def test_plain_store_search_finds_plaintext(tmp_path: Path) -> None:
    """The control for the test above: without a key the same search does find the secrets."""
    with SqliteStore.open(tmp_path / "store.db") as s:
        fill(s)
    data = store_bytes(tmp_path)
    for secret in SECRETS:
        assert secret in data


def test_wrong_or_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.cursors.set_acked_queue_seq(1)
    with pytest.raises(StoreKeyError, match="wrong key"):
        SqliteStore.open(path, key=OTHER_KEY)
    with pytest.raises(StoreKeyError, match="encrypted"):
        SqliteStore.open(path)
    with pytest.raises(StoreKeyError, match="32 bytes"):
        SqliteStore.open(path, key=b"short")
    with SqliteStore.open(path, key=KEY) as s:  # the failed opens released the lock
        assert s.cursors.get_acked_queue_seq() == 1


def test_key_for_a_plain_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore.open(path).close()
    with pytest.raises(StoreKeyError, match="not encrypted"):
        SqliteStore.open(path, key=KEY)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_swapped_rows_fail_authentication(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.conversations.put_message(message("m1", 1, sent_at=1, text="first"))
        s.conversations.put_message(message("m2", 2, sent_at=2, text="second"))
    conn = raw(path)
    (text_1,) = conn.execute("SELECT text FROM messages WHERE envelope_id = 'm1'").fetchone()
    conn.execute("UPDATE messages SET text = ? WHERE envelope_id = 'm2'", (text_1,))
    conn.close()
    with SqliteStore.open(path, key=KEY) as s:
        assert s.conversations.get_message("m1") is not None
        with pytest.raises(StoreCorruptError, match=r"messages"):
            s.conversations.get_message("m2")


def test_column_swap_and_bit_flip_fail_authentication(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=KEY) as s:
        s.outbox.put_outbox(outbox_item("o1", 1, request=OUTBOX_REQUEST))
        s.sessions.put_session(session())
    conn = raw(path)
    conn.execute("UPDATE outbox SET request = body")  # a body moved into another column
    conn.close()
    with SqliteStore.open(path, key=KEY) as s:  # outbox rows are verified when read
        with pytest.raises(StoreCorruptError):
            s.outbox.get_outbox("o1")
    conn = raw(path)
    (state,) = conn.execute("SELECT state FROM sessions").fetchone()
    flipped = bytes(state[:-1]) + bytes([state[-1] ^ 1])
    conn.execute("UPDATE sessions SET state = ?", (flipped,))
    conn.close()
    with pytest.raises(StoreCorruptError, match="sessions"):  # sessions are verified on open
        SqliteStore.open(path, key=KEY)


# -- locking ---------------------------------------------------------------------------------------

OPEN_IN_CHILD = """
import sys
from saltline.client_sdk.errors import StoreLockedError
from saltline.client_sdk.stores.sqlite import SqliteStore
try:
    SqliteStore.open({path!r}).close()
except StoreLockedError as exc:
    print("LOCKED", exc)
    sys.exit(3)
print("OPENED")
"""


def test_second_open_in_this_process_fails(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with SqliteStore.open(path):
        with pytest.raises(StoreLockedError, match="already open in this process") as info:
            SqliteStore.open(path)
        assert str(path) in str(info.value)
        with pytest.raises(StoreLockedError):
            SqliteStore.open(tmp_path / "." / "store.db")  # same file, other spelling
    SqliteStore.open(path).close()  # released on close


def test_second_process_is_refused_until_close(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    s = SqliteStore.open(path)
    s.cursors.set_acked_queue_seq(1)
    try:
        child = run_python(OPEN_IN_CHILD.format(path=str(path)))
        assert child.returncode == 3, child.stdout + child.stderr
        assert "LOCKED" in child.stdout
        assert str(path) in child.stdout
        assert f"process {os.getpid()}" in child.stdout  # names the holder
        assert "Stop the other Saltline client" in child.stdout
    finally:
        s.close()
    child = run_python(OPEN_IN_CHILD.format(path=str(path)))
    assert child.returncode == 0, child.stdout + child.stderr
    assert "OPENED" in child.stdout


def test_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from saltline.client_sdk.stores.sqlite import SqliteStore; "
            f"s = SqliteStore.open({str(path)!r}); "
            "print('ready', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match="another process"):
            SqliteStore.open(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    SqliteStore.open(path).close()


# -- schema versions -------------------------------------------------------------------------------


def user_version(path: Path) -> int:
    conn = raw(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def index_names(path: Path) -> set[str]:
    conn = raw(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_v1_database_is_migrated_to_v2(tmp_path: Path, key: bytes | None) -> None:
    assert len(MIGRATIONS) >= 2
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=key, migrations=MIGRATIONS[:1]) as s:  # as the v1 SDK wrote it
        written = fill(s, schema=1)
    assert user_version(path) == 1
    assert "messages_by_conversation" not in index_names(path)
    with SqliteStore.open(path, key=key) as s:
        check_filled(s, written)
    assert user_version(path) == len(MIGRATIONS)
    assert {"messages_by_conversation", "contacts_by_username", "outbox_order"} <= index_names(path)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_v4_database_is_migrated_to_v5(tmp_path: Path, key: bytes | None) -> None:
    """Version 5 adds the outbox failure and back-off columns and the handler inbox: items an older
    SDK queued read back with the defaults, and the new fields work on the migrated file."""
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 5
    path = tmp_path / "store.db"
    with SqliteStore.open(path, key=key, migrations=MIGRATIONS[:4]) as s:  # as the v4 SDK wrote it
        written = fill(s, schema=4)
    assert user_version(path) == 4
    assert "handler_inbox_order" not in index_names(path)
    with SqliteStore.open(path, key=key) as s:
        check_filled(s, written)
        old = s.outbox.get_outbox("o1")
        assert old is not None and old.request == OUTBOX_REQUEST and old.attempts == 1
        assert (old.failed_reason, old.failed_status, old.failed_code, old.next_attempt_ms) == (
            None,
            None,
            None,
            0,
        )
        failed = OutboxItem(
            old.envelope_id,
            old.conversation_id,
            old.body,
            old.clock,
            old.created_at_ms,
            old.request,
            old.attempts,
            failed_reason=FAILED_REASON,
            failed_status=403,
            failed_code="conversation_not_found",
            next_attempt_ms=7,
        )
        s.outbox.put_outbox(failed)
        s.handler_inbox.add_pending("m1", "conv-1", 5)
    assert user_version(path) == len(MIGRATIONS)
    assert "handler_inbox_order" in index_names(path)
    with SqliteStore.open(path, key=key) as s:
        assert s.outbox.outbox() == [failed, written["outbox"][1]]
        assert s.handler_inbox.pending() == [PendingDelivery("m1", "conv-1", 5)]
    if key is not None:
        assert FAILED_REASON.encode() not in store_bytes(tmp_path)


def test_future_migration_step_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    calls: list[int] = []

    def v3(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE messages ADD COLUMN edited_at_ms INTEGER")

    migrations: tuple[Callable[[sqlite3.Connection], None], ...] = (*MIGRATIONS, v3)
    with SqliteStore.open(path) as s:
        s.conversations.put_message(message("m1", 1, sent_at=1))
    with SqliteStore.open(path, migrations=migrations) as s:
        assert s.conversations.get_message("m1") is not None
    with SqliteStore.open(path, migrations=migrations):
        pass
    assert calls == [1]
    assert user_version(path) == len(MIGRATIONS) + 1


def test_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore.open(path, migrations=MIGRATIONS[:1]).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError):
        SqliteStore.open(path, migrations=(MIGRATIONS[0], broken))
    assert user_version(path) == 1
    conn = raw(path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    conn.close()
    with SqliteStore.open(path):
        pass
    assert user_version(path) == len(MIGRATIONS)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    SqliteStore.open(path).close()
    conn = raw(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreVersionError, match="newer"):
        SqliteStore.open(path)
    assert user_version(path) == 99


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(StoreError, match="not a readable Saltline store"):
        SqliteStore.open(path)
    path.unlink()
    SqliteStore.open(path).close()  # the lock was released
