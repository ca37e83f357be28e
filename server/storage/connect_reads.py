"""The reads of a delivery socket's open, as driver SQL (the reconnect-storm path, issue 13).

After a restart every device reconnects at once; each open checks its token's holder (device
active, token family not revoked) and reads its queue. Through SQLAlchemy's expression layer
these five small statements cost the reader thread far more than SQLite does (statement cache
keys, result processing: ~1 ms of GIL-holding CPU per open against ~0.1 ms of SQLite), and the
check and the snapshot were two thread hand-offs. Here both are plain SQL on the transaction's
DBAPI cursor (``?`` placeholders rewritten for the driver, as the group-commit writer's
statements in :mod:`saltline.server.storage.driver_sql`), and :func:`holder_and_snapshot` runs them in one
read transaction. The schema stays defined in :mod:`saltline.server.storage.schema` and
:mod:`saltline.server.storage.delivery_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from saltline.server.storage.driver_sql import _DriverSql
from saltline.server.storage.envelope_records import ConnectSnapshot, QueueState, queue_items

_DEVICE = "SELECT account_id, removed_at_ms FROM devices WHERE device_id = ?"
_REVOKED = "SELECT 1 FROM refresh_tokens WHERE family_id = ? AND revoked = ? LIMIT 1"
_PENDING = (
    "SELECT q.queue_seq, q.conversation_id, q.server_seq, e.server_ts_ms, e.sender_account_id, "
    "e.sender_device_id, e.envelope_id, e.clock, c.ciphertext "
    "FROM device_queue q "
    "JOIN envelopes e ON e.conversation_id = q.conversation_id AND e.server_seq = q.server_seq "
    "JOIN envelope_copies c ON c.conversation_id = q.conversation_id AND c.server_seq = q.server_seq "
    "AND c.device_id = q.device_id "
    "WHERE q.device_id = ? AND q.queue_seq > ? ORDER BY q.queue_seq LIMIT ?"
)
_STATE = "SELECT last_queue_seq, acked_through, purged_through FROM device_queue_state WHERE device_id = ?"
_DEPTH = "SELECT count(*), min(enqueued_at_ms) FROM device_queue WHERE device_id = ?"


@dataclass(frozen=True, slots=True)
class HolderState:
    """An access token's holder as stored: the device's account if the device is active (None if
    unknown or removed), and whether the token's refresh-token family was revoked."""

    account_id: bytes | None
    revoked: bool


def holder_state(conn: Connection, device_id: bytes, family_id: bytes) -> HolderState:
    sql = _DriverSql(conn)
    row: list[Any] = sql.all(_DEVICE, (device_id,))
    revoked = sql.all(_REVOKED, (family_id, True))
    account = bytes(row[0][0]) if row and row[0][1] is None else None
    return HolderState(account, bool(revoked))


def connect_snapshot(conn: Connection, device_id: bytes, cutoff_ms: int, limit: int) -> ConnectSnapshot:
    """The device's queue state, its first ``limit`` items, its depth and whether an entry was
    enqueued before ``cutoff_ms`` (then retention runs first)."""
    sql = _DriverSql(conn)
    rows: list[Any] = sql.all(_PENDING, (device_id, 0, limit))
    st: list[Any] = sql.all(_STATE, (device_id,))
    depth: list[Any] = sql.all(_DEPTH, (device_id,))
    count, oldest = depth[0] if depth else (0, None)
    return ConnectSnapshot(
        state=QueueState() if not st else QueueState(int(st[0][0]), int(st[0][1]), int(st[0][2])),
        items=queue_items(rows),
        pending_count=int(count or 0),
        has_expired=oldest is not None and int(oldest) < cutoff_ms,
    )


def holder_and_snapshot(
    conn: Connection, device_id: bytes, family_id: bytes, cutoff_ms: int, limit: int
) -> tuple[HolderState, ConnectSnapshot]:
    """Both reads of a socket's open, in the one read transaction ``conn`` is in."""
    return holder_state(conn, device_id, family_id), connect_snapshot(conn, device_id, cutoff_ms, limit)
