"""SQL for the delivery hot path: envelope inserts, device queues, acknowledgements, retention.

Everything here is SQLAlchemy Core (no ORM) and shaped for group commit: :meth:`EnvelopesRepo.write_batch`
applies many sends and acknowledgements with a fixed number of multi-row statements in ONE
transaction, whatever the batch size:

1. look up the idempotency keys already stored (``(sender_device_id, envelope_id) IN (...)``, in
   the unique index);
2. lock and read the conversations' ``last_server_seq`` (``FOR UPDATE`` on PostgreSQL, ordered by id
   so that two writers cannot deadlock; SQLite has one writer anyway), assign gap-free seqs;
3. lock and read the recipient devices' queue counters, and those of the batch's acks (same
   ordering; every path locks ``device_queue_state`` rows in device-id order after conversations),
   create the missing ones (``ON CONFLICT DO NOTHING``: another instance may create them at the
   same time), assign ``queue_seq``;
4. insert envelopes, ciphertext copies and queue rows (executemany), update the counters;
5. delete acknowledged queue rows and raise the acknowledged watermarks.

Because a device's queue counter row is locked until commit, its ``queue_seq`` values become visible
in increasing order: a reader that has seen ``queue_seq = n`` never later finds a smaller one
committed, so a cumulative acknowledgement can never delete a row the device has not seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from saltline.server.storage import connect_reads
from saltline.server.storage.conversations_repo import routing_from_rows
from saltline.server.storage.db import Database
from saltline.server.storage.delivery_schema import (
    conversations,
    device_queue,
    device_queue_state,
    envelope_copies,
    envelopes,
)
from saltline.server.storage.driver_sql import (
    _CREATE_QUEUE_STATE,
    _DriverSql,
    _idempotency_lookup,
    _lock_queue_states_driver,
    _routing_lookup,
)
from saltline.server.storage.envelope_records import (
    Accepted,
    AckRequest,
    AlreadyStored,
    ConnectSnapshot,
    ConversationGone,
    HistoryItem,
    NewEnvelope,
    QueueItem,
    QueueState,
    RoutingRejected,
    SendOutcome,
    StoredEnvelope,
    queue_items,
    routing_matches,
)

__all__ = [
    "Accepted",
    "AckRequest",
    "AlreadyStored",
    "ConnectSnapshot",
    "ConversationGone",
    "EnvelopesRepo",
    "HistoryItem",
    "NewEnvelope",
    "QueueItem",
    "QueueState",
    "RoutingRejected",
    "SendOutcome",
    "StoredEnvelope",
    "routing_matches",
]

_update_conversation_seq = (
    update(conversations)
    .where(conversations.c.id == bindparam("b_id"))
    .values(last_server_seq=bindparam("b_seq"))
)
_update_queue_counter = (
    update(device_queue_state)
    .where(device_queue_state.c.device_id == bindparam("b_device"))
    .values(last_queue_seq=bindparam("b_last"))
)
_delete_acked = delete(device_queue).where(
    device_queue.c.device_id == bindparam("b_device"), device_queue.c.queue_seq <= bindparam("b_through")
)
_raise_acked = (
    update(device_queue_state)
    .where(device_queue_state.c.device_id == bindparam("b_device"))
    .values(
        acked_through=case(
            (device_queue_state.c.acked_through < bindparam("b_through"), bindparam("b_through")),
            else_=device_queue_state.c.acked_through,
        )
    )
)
_raise_purged = (
    update(device_queue_state)
    .where(device_queue_state.c.device_id == bindparam("b_device"))
    .values(
        purged_through=case(
            (device_queue_state.c.purged_through < bindparam("b_through"), bindparam("b_through")),
            else_=device_queue_state.c.purged_through,
        )
    )
)


async def _lock_queue_states(conn: AsyncConnection, devices: set[bytes]) -> dict[bytes, int]:
    return await conn.run_sync(_lock_queue_states_sync, devices)


def _lock_queue_states_sync(conn: Connection, devices: set[bytes]) -> dict[bytes, int]:
    """Lock the devices' queue-state rows (``FOR UPDATE`` on PostgreSQL; SQLite has one writer)
    in device-id order, the order every path uses; returns device -> ``last_queue_seq`` for the
    rows that exist."""
    if not devices:
        return {}
    rows = conn.execute(
        select(device_queue_state.c.device_id, device_queue_state.c.last_queue_seq)
        .where(device_queue_state.c.device_id.in_(sorted(devices)))
        .order_by(device_queue_state.c.device_id)
        .with_for_update()
    )
    return {bytes(d): int(n) for d, n in rows}


async def create_queue_states(conn: AsyncConnection, devices: Sequence[bytes]) -> None:
    await conn.run_sync(_create_queue_states_sync, devices)


def _create_queue_states_sync(conn: Connection, devices: Sequence[bytes]) -> None:
    """Create the devices' queue-state rows if missing (``INSERT ... ON CONFLICT DO NOTHING``, in
    device-id order): another instance creating the same row concurrently is not an error."""
    if not devices:
        return
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    conn.execute(
        dialect_insert(device_queue_state).on_conflict_do_nothing(index_elements=["device_id"]),
        [
            {"device_id": d, "last_queue_seq": 0, "acked_through": 0, "purged_through": 0}
            for d in sorted(set(devices))
        ],
    )


class EnvelopesRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reads -------------------------------------------------------------------------------

    async def queue_state(self, device_id: bytes) -> QueueState:
        async with self._db.read() as conn:
            return await self._queue_state(conn, device_id)

    @staticmethod
    async def _queue_state(conn: AsyncConnection, device_id: bytes) -> QueueState:
        row = (
            await conn.execute(
                select(
                    device_queue_state.c.last_queue_seq,
                    device_queue_state.c.acked_through,
                    device_queue_state.c.purged_through,
                ).where(device_queue_state.c.device_id == device_id)
            )
        ).first()
        if row is None:
            return QueueState()
        return QueueState(int(row[0]), int(row[1]), int(row[2]))

    async def pending(self, device_id: bytes, after: int, limit: int) -> tuple[list[QueueItem], QueueState]:
        """Up to ``limit`` queued items with ``queue_seq > after``, in order, and the queue state."""
        q = _pending_query(device_id, after, limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).all()
            state = await self._queue_state(conn, device_id)
        return queue_items(rows), state

    async def connect_snapshot(self, device_id: bytes, cutoff_ms: int, limit: int) -> ConnectSnapshot:
        """What a (re)connecting device needs, in ONE read transaction (one hand-off on SQLite):
        its queue state, the first ``limit`` queued items, the queue depth and whether any entry
        was enqueued before ``cutoff_ms`` (then retention must run first)."""
        return await self._db.run_read(
            lambda conn: connect_reads.connect_snapshot(conn, device_id, cutoff_ms, limit)
        )

    async def holder_and_snapshot(
        self, device_id: bytes, family_id: bytes, cutoff_ms: int, limit: int
    ) -> tuple[connect_reads.HolderState, ConnectSnapshot]:
        """A socket's open: its token's holder (:meth:`AuthRepo.token_holder_state`) and
        :meth:`connect_snapshot`, in one read transaction."""
        return await self._db.run_small_read(
            lambda conn: connect_reads.holder_and_snapshot(conn, device_id, family_id, cutoff_ms, limit)
        )

    async def history(
        self, conversation_id: bytes, device_id: bytes, after: int, limit: int, max_bytes: int
    ) -> tuple[list[HistoryItem], bool]:
        """Envelopes of a conversation with ``server_seq > after`` that carry a copy for
        ``device_id`` (with only that copy), or that ``device_id`` sent itself (no copy). Envelopes
        from before the device joined (or addressed elsewhere) are not listed: their metadata is
        not the device's to see. ``server_seq`` values skipped in a page are such envelopes.

        At most ``limit`` items, and no more than ``max_bytes`` of ciphertext plus clock together
        unless the first item alone is larger (a page always has an item when one exists). The
        sizes are read first (no blobs), so the page's blobs are the only ones loaded. Returns the
        items and whether more follow them."""

        def query(*columns: Any) -> Any:
            return (
                select(*columns)
                .select_from(
                    envelopes.outerjoin(
                        envelope_copies,
                        and_(
                            envelope_copies.c.conversation_id == envelopes.c.conversation_id,
                            envelope_copies.c.server_seq == envelopes.c.server_seq,
                            envelope_copies.c.device_id == device_id,
                        ),
                    )
                )
                .where(
                    envelopes.c.conversation_id == conversation_id,
                    envelopes.c.server_seq > after,
                    or_(envelope_copies.c.device_id.is_not(None), envelopes.c.sender_device_id == device_id),
                )
                .order_by(envelopes.c.server_seq)
            )

        size = func.length(envelopes.c.clock) + func.coalesce(func.length(envelope_copies.c.ciphertext), 0)
        async with self._db.read() as conn:
            sizes = (await conn.execute(query(envelopes.c.server_seq, size).limit(limit + 1))).all()
            total, last, more = 0, None, False
            for n, (seq, nbytes) in enumerate(sizes):
                if n == limit or (last is not None and total + int(nbytes) > max_bytes):
                    more = True
                    break
                total += int(nbytes)
                last = int(seq)
            if last is None:
                return [], False
            rows = (
                await conn.execute(
                    query(
                        envelopes.c.server_seq,
                        envelopes.c.server_ts_ms,
                        envelopes.c.sender_account_id,
                        envelopes.c.sender_device_id,
                        envelopes.c.envelope_id,
                        envelopes.c.clock,
                        envelope_copies.c.ciphertext,
                    ).where(envelopes.c.server_seq <= last)
                )
            ).all()
        items = [
            HistoryItem(
                server_seq=int(r[0]),
                server_ts_ms=int(r[1]),
                sender_account_id=bytes(r[2]),
                sender_device_id=bytes(r[3]),
                envelope_id=bytes(r[4]),
                clock=bytes(r[5]),
                ciphertext=None if r[6] is None else bytes(r[6]),
            )
            for r in rows
        ]
        return items, more

    async def queue_depth(self) -> int:
        async with self._db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(device_queue)) or 0)

    async def pending_count(self, device_id: bytes) -> int:
        async with self._db.read() as conn:
            return int(
                await conn.scalar(
                    select(func.count())
                    .select_from(device_queue)
                    .where(device_queue.c.device_id == device_id)
                )
                or 0
            )

    # -- writes ------------------------------------------------------------------------------

    async def write_batch(
        self, sends: Sequence[NewEnvelope], acks: Sequence[AckRequest], now_ms: int
    ) -> list[SendOutcome]:
        """Apply ``sends`` and ``acks`` in one transaction; one outcome per send, in order.

        The whole batch is one synchronous function run in the write transaction
        (:meth:`Database.run_write`): on SQLite that is a single hand-off to the writer thread
        for all its statements, instead of one per statement and cursor call."""

        def apply(conn: Connection) -> list[SendOutcome]:
            ack_devices = {a.device_id for a in acks}
            sql = _DriverSql(conn)
            with sql.pipeline():
                outcomes = self._apply_sends(sql, sends, now_ms, ack_devices) if sends else []
                if acks:
                    # A batch with sends locked the ack devices' rows with its recipients'.
                    self._apply_acks(sql, acks, locked=bool(sends))
            return outcomes

        return await self._db.run_write(apply)

    def _apply_sends(
        self,
        sql: _DriverSql,
        sends: Sequence[NewEnvelope],
        now_ms: int,
        ack_devices: set[bytes] | frozenset[bytes] = frozenset(),
    ) -> list[SendOutcome]:
        keys = {(e.sender_device_id, e.envelope_id) for e in sends}
        conv_ids = sorted({e.conversation_id for e in sends})
        checked_ids = sorted({e.conversation_id for e in sends if e.device_list_versions is not None})
        # The queue-state rows this transaction may write are locked with the conversations,
        # before anything is written: those of the conversations' active member devices (the
        # only valid recipients; never the ids a send merely names) and of the batch's acks. The
        # global lock order is conversations, then device_queue_state by device id, then queue
        # rows. A recipient without a row yet is created and locked after the routing check.
        # The four reads are independent: submitted together (one round trip on PostgreSQL).
        existing_cur = sql.submit(*_idempotency_lookup(keys))
        conversations_cur = sql.submit(
            "SELECT id, last_server_seq FROM conversations WHERE id IN "  # noqa: S608 - placeholders only
            f"({sql.marks(len(conv_ids))}) ORDER BY id{sql.for_update}",
            conv_ids,
        )
        routing_cur = sql.submit(*_routing_lookup(checked_ids)) if checked_ids else None
        acking = sorted(ack_devices)
        states_cur = sql.submit(
            "SELECT device_id, last_queue_seq FROM device_queue_state WHERE device_id IN ("  # noqa: S608 - placeholders only
            "SELECT d.device_id FROM devices d JOIN conversation_members m ON m.account_id = d.account_id "
            f"WHERE m.conversation_id IN ({sql.marks(len(conv_ids))}) AND d.removed_at_ms IS NULL"
            # UNION, not OR: PostgreSQL plans "IN (subquery) OR IN (list)" as a scan of the table.
            + (
                " UNION ALL SELECT q.device_id FROM device_queue_state q WHERE q.device_id IN "  # noqa: S608 - placeholders only
                f"({sql.marks(len(acking))})"
                if acking
                else ""
            )
            + f") ORDER BY device_id{sql.for_update}",
            [*conv_ids, *acking],
        )

        existing: dict[tuple[bytes, bytes], StoredEnvelope] = {}
        for cid, eid, seq, ts, digest, sender in existing_cur.fetchall():
            key = (bytes(sender), bytes(eid))
            if key in keys:
                existing[key] = StoredEnvelope(bytes(cid), bytes(eid), int(seq), int(ts), bytes(digest))
        last_seq: dict[bytes, int] = {bytes(cid): int(seq) for cid, seq in conversations_cur.fetchall()}
        routing = routing_from_rows(routing_cur.fetchall()) if routing_cur is not None else {}
        counters = {bytes(d): int(n) for d, n in states_cur.fetchall()}

        # Decide each send's fate; assign server_seq to the fresh ones.
        outcomes: list[SendOutcome | None] = [None] * len(sends)
        fresh: list[tuple[int, NewEnvelope, int]] = []  # (index, envelope, server_seq)
        first_in_batch: dict[tuple[bytes, bytes], int] = {}
        for i, env in enumerate(sends):
            key = (env.sender_device_id, env.envelope_id)
            if key in existing:
                outcomes[i] = AlreadyStored(existing[key])
            elif key in first_in_batch:
                continue  # resolved below, from the first occurrence's outcome
            elif env.conversation_id not in last_seq:
                outcomes[i] = ConversationGone(env.conversation_id)
            elif env.device_list_versions is not None and not routing_matches(
                routing.get(env.conversation_id, []),
                env.sender_account_id,
                env.sender_device_id,
                env.device_list_versions,
                {d for d, _ in env.copies},
            ):
                outcomes[i] = RoutingRejected(routing.get(env.conversation_id, []))
            else:
                first_in_batch[key] = i
                last_seq[env.conversation_id] += 1
                fresh.append((i, env, last_seq[env.conversation_id]))

        if fresh:
            touched = {e.conversation_id for _, e, _ in fresh}
            sql.many(
                "UPDATE conversations SET last_server_seq = ? WHERE id = ?",
                [(last_seq[cid], cid) for cid in sorted(touched)],
            )
            devices = sorted({dev for _, env, _ in fresh for dev, _ in env.copies})
            missing = [d for d in devices if d not in counters]
            if missing:
                sql.many(_CREATE_QUEUE_STATE, [(d,) for d in sorted(missing)])
                counters.update(_lock_queue_states_driver(sql, set(missing)))

            env_rows = []
            copy_rows = []
            queue_rows = []
            for i, env, seq in fresh:
                cid = env.conversation_id
                env_rows.append(
                    (
                        cid,
                        seq,
                        env.envelope_id,
                        env.sender_account_id,
                        env.sender_device_id,
                        now_ms,
                        env.clock,
                        env.request_hash,
                    )
                )
                seqs: list[int] = []
                for dev, ciphertext in env.copies:
                    n = counters[dev] + 1
                    counters[dev] = n
                    seqs.append(n)
                    copy_rows.append((cid, seq, dev, ciphertext))
                    queue_rows.append((dev, n, cid, seq, now_ms))
                outcomes[i] = Accepted(
                    StoredEnvelope(cid, env.envelope_id, seq, now_ms, env.request_hash),
                    tuple(dev for dev, _ in env.copies),
                    tuple(seqs),
                )
            sql.many(
                "UPDATE device_queue_state SET last_queue_seq = ? WHERE device_id = ?",
                [(counters[d], d) for d in devices],
            )
            sql.many(
                "INSERT INTO envelopes (conversation_id, server_seq, envelope_id, sender_account_id, "
                "sender_device_id, server_ts_ms, clock, request_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                env_rows,
            )
            sql.many(
                "INSERT INTO envelope_copies (conversation_id, server_seq, device_id, ciphertext) "
                "VALUES (?, ?, ?, ?)",
                copy_rows,
            )
            sql.many(
                "INSERT INTO device_queue (device_id, queue_seq, conversation_id, server_seq, "
                "enqueued_at_ms) VALUES (?, ?, ?, ?, ?)",
                queue_rows,
            )

        # Later duplicates of a key first seen in this batch replay the first one's result.
        for i, env in enumerate(sends):
            if outcomes[i] is None:
                first = outcomes[first_in_batch[(env.sender_device_id, env.envelope_id)]]
                assert isinstance(first, Accepted)
                outcomes[i] = AlreadyStored(first.envelope)
        return [o for o in outcomes if o is not None]

    @staticmethod
    def _apply_acks(sql: _DriverSql, acks: Sequence[AckRequest], locked: bool = False) -> None:
        """Delete acknowledged queue rows and raise the watermarks. ``locked``: the sends of
        the same transaction already locked these devices' queue-state rows."""
        through: dict[bytes, int] = {}
        for a in acks:
            through[a.device_id] = max(through.get(a.device_id, 0), a.through)
        if not locked:
            _lock_queue_states_driver(sql, set(through))
        ordered = sorted(through.items())
        sql.many("DELETE FROM device_queue WHERE device_id = ? AND queue_seq <= ?", ordered)
        sql.many(
            "UPDATE device_queue_state SET acked_through = "
            "CASE WHEN acked_through < ? THEN ? ELSE acked_through END WHERE device_id = ?",
            [(t, t, d) for d, t in ordered],
        )

    async def purge_expired(self, cutoff_ms: int, device_id: bytes | None = None) -> int:
        """Drop queue entries enqueued before ``cutoff_ms`` (for one device, or all devices and
        then also the expired envelopes and copies). A queue is truncated as a prefix: every entry
        of a device up to its newest expired ``queue_seq`` goes, and ``purged_through`` records it
        so that the device is told about the gap. Returns the number of queue entries dropped."""
        expired = select(device_queue.c.device_id, func.max(device_queue.c.queue_seq)).where(
            device_queue.c.enqueued_at_ms < cutoff_ms
        )
        if device_id is not None:
            expired = expired.where(device_queue.c.device_id == device_id)
        expired = expired.group_by(device_queue.c.device_id)
        async with self._db.write() as conn:
            rows = sorted((bytes(d), int(m)) for d, m in await conn.execute(expired))
            marks: list[dict[str, object]] = [{"b_device": d, "b_through": m} for d, m in rows]
            dropped = 0
            if marks:
                await _lock_queue_states(conn, {d for d, _ in rows})
                result = await conn.execute(_delete_acked, marks)
                dropped = max(0, int(result.rowcount or 0))
                await conn.execute(_raise_purged, marks)
            if device_id is None:
                old = select(envelopes.c.conversation_id, envelopes.c.server_seq).where(
                    envelopes.c.server_ts_ms < cutoff_ms
                )
                await conn.execute(
                    delete(envelope_copies).where(
                        tuple_(envelope_copies.c.conversation_id, envelope_copies.c.server_seq).in_(old)
                    )
                )
                # Queue rows still pointing at an expired envelope (possible only when clocks
                # jump) go with it, and are accounted as purged above on the next run.
                await conn.execute(delete(envelopes).where(envelopes.c.server_ts_ms < cutoff_ms))
        return dropped

    async def drop_device(self, device_id: bytes) -> int:
        """Forget a removed device's queue (its entries can never be delivered)."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(device_queue).where(device_queue.c.device_id == device_id))
            return int(result.rowcount or 0)


def _pending_query(device_id: bytes, after: int, limit: int) -> Any:
    return (
        select(
            device_queue.c.queue_seq,
            device_queue.c.conversation_id,
            device_queue.c.server_seq,
            envelopes.c.server_ts_ms,
            envelopes.c.sender_account_id,
            envelopes.c.sender_device_id,
            envelopes.c.envelope_id,
            envelopes.c.clock,
            envelope_copies.c.ciphertext,
        )
        .select_from(
            device_queue.join(
                envelopes,
                and_(
                    envelopes.c.conversation_id == device_queue.c.conversation_id,
                    envelopes.c.server_seq == device_queue.c.server_seq,
                ),
            ).join(
                envelope_copies,
                and_(
                    envelope_copies.c.conversation_id == device_queue.c.conversation_id,
                    envelope_copies.c.server_seq == device_queue.c.server_seq,
                    envelope_copies.c.device_id == device_queue.c.device_id,
                ),
            )
        )
        .where(device_queue.c.device_id == device_id, device_queue.c.queue_seq > after)
        .order_by(device_queue.c.queue_seq)
        .limit(limit)
    )
