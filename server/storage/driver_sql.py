"""Raw DB-API SQL for the group-commit write path of :mod:`saltline.server.storage.envelopes_repo`: one
statement per step whatever the batch size (psycopg pipelines on PostgreSQL), with the driver's
placeholder style."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection


def _idempotency_lookup(keys: set[tuple[bytes, bytes]]) -> tuple[str, list[object]]:
    """The stored envelopes of these ``(sender_device_id, envelope_id)`` keys, as driver SQL:
    ``(sender_device_id = ? AND envelope_id IN (...)) OR ...`` per sending device (few per
    batch). It leads with the unique constraint's first column, so both PostgreSQL and SQLite look
    the keys up in its index instead of scanning ``envelopes`` (a row-value ``IN`` is scanned by
    SQLite)."""
    by_sender: dict[bytes, list[bytes]] = {}
    for sender_device_id, envelope_id in sorted(keys):
        by_sender.setdefault(sender_device_id, []).append(envelope_id)
    where = " OR ".join(
        f"(sender_device_id = ? AND envelope_id IN ({_DriverSql.marks(len(ids))}))"
        for ids in by_sender.values()
    )
    params: list[object] = []
    for sender, ids in by_sender.items():
        params.append(sender)
        params.extend(ids)
    statement = (
        "SELECT conversation_id, envelope_id, server_seq, server_ts_ms, request_hash, "  # noqa: S608 - placeholders only
        f"sender_device_id FROM envelopes WHERE {where}"
    )
    return statement, params


class _DriverSql:
    """The writer's statements as driver SQL on the transaction's own DBAPI connection.

    The group-commit transaction runs ~12 statements per batch; through SQLAlchemy's expression
    layer, building and executing them cost ~2.5-4 ms of CPU per batch of 10 sends and 10 acks
    (GIL time taken from the event loop), as driver SQL ~0.35 ms (``bench/group_commit.py``).
    The statements here are plain SQL that SQLite and PostgreSQL both accept, written with ``?``
    placeholders and rewritten for the driver's paramstyle (psycopg ``%s``, asyncpg ``$n``), run
    on a cursor of the connection SQLAlchemy opened the transaction on. The schema stays defined
    in :mod:`saltline.server.storage.delivery_schema` and migrated by Alembic.
    """

    __slots__ = ("cur", "dbapi", "for_update", "psycopg", "style")

    def __init__(self, conn: Connection) -> None:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self.dbapi: Any = dbapi
        self.cur = dbapi.cursor()
        self.style = conn.dialect.paramstyle
        self.for_update = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        self.psycopg = conn.dialect.driver == "psycopg"

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        """psycopg's pipeline mode: statements go out without waiting for each result, so the
        batch's reads (submitted together) cost one round trip, and its writes one more."""
        return self.dbapi.pipeline() if self.psycopg else contextlib.nullcontext()

    def submit(self, statement: str, params: Sequence[object]) -> Any:
        """Execute on a cursor of its own; fetch its rows later (``fetchall``)."""
        cur = self.dbapi.cursor()
        cur.execute(_placeholders(statement, self.style), tuple(params))
        return cur

    @staticmethod
    def marks(n: int) -> str:
        return ", ".join(["?"] * n)

    def all(self, statement: str, params: Sequence[object]) -> list[tuple[object, ...]]:
        self.cur.execute(_placeholders(statement, self.style), tuple(params))
        return list(self.cur.fetchall())

    def many(self, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
        if rows:
            self.cur.executemany(_placeholders(statement, self.style), rows)


@functools.lru_cache(maxsize=512)
def _placeholders(statement: str, style: str) -> str:
    """``?`` placeholders in the driver's paramstyle (the statements contain no other ``?``)."""
    if style == "qmark":
        return statement
    if style in ("format", "pyformat"):
        return statement.replace("?", "%s")
    if style in ("numeric_dollar", "numeric"):
        parts = statement.split("?")
        sigil = "$" if style == "numeric_dollar" else ":"
        return "".join(
            part + (f"{sigil}{i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1)
        )
    raise ValueError(f"unsupported DBAPI paramstyle {style!r}")


_CREATE_QUEUE_STATE = (
    "INSERT INTO device_queue_state (device_id, last_queue_seq, acked_through, purged_through) "
    "VALUES (?, 0, 0, 0) ON CONFLICT (device_id) DO NOTHING"
)


def _lock_queue_states_driver(sql: _DriverSql, devices: set[bytes]) -> dict[bytes, int]:
    """Lock the devices' queue-state rows in device-id order (``FOR UPDATE`` on PostgreSQL;
    SQLite has one writer); device -> ``last_queue_seq`` for the rows that exist."""
    if not devices:
        return {}
    ordered = sorted(devices)
    cur = sql.submit(
        "SELECT device_id, last_queue_seq FROM device_queue_state WHERE device_id IN "  # noqa: S608 - placeholders only
        f"({sql.marks(len(ordered))}) ORDER BY device_id{sql.for_update}",
        ordered,
    )
    return {bytes(d): int(n) for d, n in cur.fetchall()}


def _routing_lookup(conversation_ids: Sequence[bytes]) -> tuple[str, list[object]]:
    """The statement of :func:`saltline.server.storage.conversations_repo.load_routing_sync`, in driver
    SQL (its rows fold with :func:`~saltline.server.storage.conversations_repo.routing_from_rows`)."""
    return (
        "SELECT m.conversation_id, a.id, a.device_list_version, d.device_id "  # noqa: S608 - placeholders only
        "FROM conversation_members m JOIN accounts a ON a.id = m.account_id "
        "LEFT OUTER JOIN devices d ON d.account_id = a.id AND d.removed_at_ms IS NULL "
        f"WHERE m.conversation_id IN ({_DriverSql.marks(len(conversation_ids))})",
        list(conversation_ids),
    )
