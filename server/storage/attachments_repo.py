"""SQL for attachment uploads (metadata only; the ciphertext is in an
:class:`~saltline.server.storage.attachment_store.AttachmentStore`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from saltline.server.storage.db import Database
from saltline.server.storage.schema import accounts, attachments


@dataclass(frozen=True, slots=True)
class AttachmentRow:
    id: bytes
    account_id: bytes
    device_id: bytes
    length: int
    offset: int
    created_at_ms: int
    completed_at_ms: int | None
    purged: bool


async def advance_offset(
    conn: AsyncConnection, attachment_id: bytes, old: int, new: int, completed_at_ms: int | None
) -> bool:
    """Inside ``conn``'s transaction: the offset from ``old`` to ``new`` if it is ``old``."""
    result = await conn.execute(
        update(attachments)
        .where(attachments.c.id == attachment_id, attachments.c.upload_offset == old)
        .values(upload_offset=new, completed_at_ms=completed_at_ms)
    )
    return bool(result.rowcount)


class AttachmentsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        attachment_id: bytes,
        account_id: bytes,
        device_id: bytes,
        length: int,
        now_ms: int,
        *,
        quota_bytes: int,
        created_after_ms: int,
    ) -> int | None:
        """Record an upload, unless the announced lengths of the account's unexpired uploads plus
        ``length`` would pass ``quota_bytes``: then nothing and the bytes already counted. The
        account row is locked (PostgreSQL) so concurrent creations cannot both pass."""
        async with self._db.write() as conn:
            await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())
            stored = (
                await conn.execute(
                    select(func.coalesce(func.sum(attachments.c.length), 0)).where(
                        attachments.c.account_id == account_id,
                        attachments.c.created_at_ms > created_after_ms,
                    )
                )
            ).scalar_one()
            if int(stored) + length > quota_bytes:
                return int(stored)
            await conn.execute(
                insert(attachments).values(
                    id=attachment_id,
                    account_id=account_id,
                    device_id=device_id,
                    length=length,
                    upload_offset=0,
                    created_at_ms=now_ms,
                    completed_at_ms=now_ms if length == 0 else None,
                    purged=False,
                )
            )
        return None

    async def get(self, attachment_id: bytes) -> AttachmentRow | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(attachments).where(attachments.c.id == attachment_id))).first()
        if row is None:
            return None
        return AttachmentRow(
            bytes(row.id),
            bytes(row.account_id),
            bytes(row.device_id),
            int(row.length),
            int(row.upload_offset),
            int(row.created_at_ms),
            None if row.completed_at_ms is None else int(row.completed_at_ms),
            bool(row.purged),
        )

    async def advance(self, attachment_id: bytes, old: int, new: int, completed_at_ms: int | None) -> bool:
        """Move the offset from ``old`` to ``new`` (compare-and-set); ``False`` if it was not ``old``."""
        async with self._db.write() as conn:
            return await advance_offset(conn, attachment_id, old, new, completed_at_ms)

    async def expired_ids(self, cutoff_ms: int, limit: int = 500) -> list[bytes]:
        """Ids of unpurged uploads created at or before ``cutoff_ms``."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(attachments.c.id)
                .where(attachments.c.created_at_ms <= cutoff_ms, attachments.c.purged.is_(False))
                .limit(limit)
            )
            return [bytes(r.id) for r in rows]

    async def mark_purged(self, ids: list[bytes]) -> None:
        if ids:
            async with self._db.write() as conn:
                await conn.execute(update(attachments).where(attachments.c.id.in_(ids)).values(purged=True))

    async def delete_tombstones(self, cutoff_ms: int) -> int:
        """Forget purged uploads created at or before ``cutoff_ms`` (their ids then get 404)."""
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(attachments).where(
                    attachments.c.created_at_ms <= cutoff_ms, attachments.c.purged.is_(True)
                )
            )
        return int(result.rowcount or 0)
