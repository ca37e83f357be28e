"""SQL for conversations, their members, and the routing view a send is checked against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from saltline.server.storage import schema as s
from saltline.server.storage.db import Database
from saltline.server.storage.delivery_schema import conversation_members, conversations


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: bytes
    kind: str
    created_by: bytes
    created_at_ms: int
    last_server_seq: int
    members: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AccountRouting:
    """One member account as a send is checked against it."""

    account_id: bytes
    device_list_version: int
    active_devices: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class SignedListRow:
    account_id: bytes
    version: int
    signed: bytes


class ConversationsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def existing_accounts(self, account_ids: Iterable[bytes]) -> set[bytes]:
        ids = list(set(account_ids))
        if not ids:
            return set()
        async with self._db.read() as conn:
            rows = await conn.execute(select(s.accounts.c.id).where(s.accounts.c.id.in_(ids)))
            return {r[0] for r in rows}

    async def create(
        self,
        *,
        conversation_id: bytes,
        kind: str,
        direct_key: bytes | None,
        created_by: bytes,
        members: Sequence[bytes],
        now_ms: int,
    ) -> tuple[bytes, bool]:
        """Insert a conversation with its members. Returns ``(id, created)``; for a direct
        conversation that already exists between the same pair, its id and ``False``."""
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(conversations).values(
                        id=conversation_id,
                        kind=kind,
                        direct_key=direct_key,
                        created_by=created_by,
                        created_at_ms=now_ms,
                        last_server_seq=0,
                    )
                )
                await conn.execute(
                    insert(conversation_members),
                    [
                        {"conversation_id": conversation_id, "account_id": m, "added_at_ms": now_ms}
                        for m in dict.fromkeys(members)
                    ],
                )
            return conversation_id, True
        except IntegrityError:
            if direct_key is None:
                raise
            async with self._db.read() as conn:
                existing = await conn.scalar(
                    select(conversations.c.id).where(conversations.c.direct_key == direct_key)
                )
            if existing is None:
                raise
            return bytes(existing), False

    async def get(self, conversation_id: bytes) -> ConversationRow | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(conversations).where(conversations.c.id == conversation_id))
            ).first()
            if row is None:
                return None
            members = await conn.execute(
                select(conversation_members.c.account_id)
                .where(conversation_members.c.conversation_id == conversation_id)
                .order_by(conversation_members.c.added_at_ms, conversation_members.c.account_id)
            )
            return ConversationRow(
                id=bytes(row.id),
                kind=row.kind,
                created_by=bytes(row.created_by),
                created_at_ms=row.created_at_ms,
                last_server_seq=row.last_server_seq,
                members=tuple(bytes(m[0]) for m in members),
            )

    async def list_for_account(
        self, account_id: bytes, *, limit: int = 1000, after: tuple[int, bytes] | None = None
    ) -> list[ConversationRow]:
        """The account's conversations in ``(created_at_ms, id)`` order, at most ``limit``, those
        strictly after ``after`` (a ``(created_at_ms, id)`` position) when given."""
        mine = select(conversation_members.c.conversation_id).where(
            conversation_members.c.account_id == account_id
        )
        where: ColumnElement[bool] = conversations.c.id.in_(mine)
        if after is not None:
            at_ms, last_id = after
            where = and_(
                where,
                or_(
                    conversations.c.created_at_ms > at_ms,
                    and_(conversations.c.created_at_ms == at_ms, conversations.c.id > last_id),
                ),
            )
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(conversations)
                    .where(where)
                    .order_by(conversations.c.created_at_ms, conversations.c.id)
                    .limit(limit)
                )
            ).all()
            ids = [r.id for r in rows]
            members: dict[bytes, list[bytes]] = {bytes(i): [] for i in ids}
            if ids:
                mrows = await conn.execute(
                    select(conversation_members.c.conversation_id, conversation_members.c.account_id)
                    .where(conversation_members.c.conversation_id.in_(ids))
                    .order_by(conversation_members.c.added_at_ms, conversation_members.c.account_id)
                )
                for cid, aid in mrows:
                    members[bytes(cid)].append(bytes(aid))
        return [
            ConversationRow(
                id=bytes(r.id),
                kind=r.kind,
                created_by=bytes(r.created_by),
                created_at_ms=r.created_at_ms,
                last_server_seq=r.last_server_seq,
                members=tuple(members[bytes(r.id)]),
            )
            for r in rows
        ]

    async def is_member(self, conversation_id: bytes, account_id: bytes) -> bool:
        async with self._db.read() as conn:
            found = await conn.scalar(
                select(
                    exists().where(
                        and_(
                            conversation_members.c.conversation_id == conversation_id,
                            conversation_members.c.account_id == account_id,
                        )
                    )
                )
            )
            return bool(found)

    async def add_member(self, conversation_id: bytes, account_id: bytes, now_ms: int) -> bool:
        """Add a member; ``False`` if they already were one."""
        try:
            async with self._db.write() as conn:
                await conn.execute(
                    insert(conversation_members).values(
                        conversation_id=conversation_id, account_id=account_id, added_at_ms=now_ms
                    )
                )
            return True
        except IntegrityError:
            return False

    async def remove_member(self, conversation_id: bytes, account_id: bytes) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(conversation_members).where(
                    conversation_members.c.conversation_id == conversation_id,
                    conversation_members.c.account_id == account_id,
                )
            )
            return bool(result.rowcount)

    async def routing(self, conversation_id: bytes) -> list[AccountRouting] | None:
        """The members of a conversation, each with its current device-list version and the
        devices that are routable now (not removed). ``None`` if the conversation does not exist."""
        async with self._db.read() as conn:
            known = await conn.scalar(select(conversations.c.id).where(conversations.c.id == conversation_id))
            if known is None:
                return None
            routing = await conn.run_sync(load_routing_sync, [conversation_id])
            return routing.get(conversation_id, [])

    async def current_signed_lists(self, account_ids: Iterable[bytes]) -> list[SignedListRow]:
        ids = list(set(account_ids))
        if not ids:
            return []
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(s.device_lists.c.account_id, s.device_lists.c.version, s.device_lists.c.signed)
                .select_from(
                    s.device_lists.join(
                        s.accounts,
                        and_(
                            s.accounts.c.id == s.device_lists.c.account_id,
                            s.accounts.c.device_list_version == s.device_lists.c.version,
                        ),
                    )
                )
                .where(s.device_lists.c.account_id.in_(ids))
            )
            return [SignedListRow(bytes(a), int(v), bytes(sig)) for a, v, sig in rows]

    async def device_owners(self, device_ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """device id -> account id, for the ids that name a device (removed or not)."""
        ids = list(set(device_ids))
        if not ids:
            return {}
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(s.devices.c.device_id, s.devices.c.account_id).where(s.devices.c.device_id.in_(ids))
            )
            return {bytes(d): bytes(a) for d, a in rows}


def load_routing_sync(
    conn: Connection, conversation_ids: Sequence[bytes]
) -> dict[bytes, list[AccountRouting]]:
    """The routing view of several conversations in one statement, inside the caller's
    transaction (the group-commit writer checks a whole batch's recipients with it). A
    conversation without members is absent from the result."""
    if not conversation_ids:
        return {}
    rows = conn.execute(
        select(
            conversation_members.c.conversation_id,
            s.accounts.c.id,
            s.accounts.c.device_list_version,
            s.devices.c.device_id,
        )
        .select_from(
            conversation_members.join(
                s.accounts, s.accounts.c.id == conversation_members.c.account_id
            ).outerjoin(
                s.devices,
                and_(s.devices.c.account_id == s.accounts.c.id, s.devices.c.removed_at_ms.is_(None)),
            )
        )
        .where(conversation_members.c.conversation_id.in_(sorted(set(conversation_ids))))
    )
    return routing_from_rows(rows)


def routing_from_rows(rows: Iterable[Any]) -> dict[bytes, list[AccountRouting]]:
    """Routing views from ``(conversation_id, account_id, device_list_version, device_id | None)``
    rows (one per active device, or one with no device for a member without any)."""
    versions: dict[bytes, dict[bytes, int]] = {}
    devices: dict[tuple[bytes, bytes], set[bytes]] = {}
    for conversation_id, account_id, version, device_id in rows:
        cid = bytes(conversation_id)
        aid = bytes(account_id)
        versions.setdefault(cid, {})[aid] = int(version)
        devs = devices.setdefault((cid, aid), set())
        if device_id is not None:
            devs.add(bytes(device_id))
    return {
        cid: [AccountRouting(a, v, frozenset(devices[(cid, a)])) for a, v in accounts.items()]
        for cid, accounts in versions.items()
    }
