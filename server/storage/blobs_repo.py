"""SQL for blobs: encrypted uploads an account's devices share (history bundles)."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from saltline.server.storage.db import Database
from saltline.server.storage.schema import accounts, blobs


class BlobsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self,
        blob_id: bytes,
        account_id: bytes,
        data: bytes,
        now_ms: int,
        *,
        quota_bytes: int | None = None,
        created_after_ms: int = 0,
    ) -> int | None:
        """Store the blob, unless the account's unexpired blobs (created after
        ``created_after_ms``) plus this one would pass ``quota_bytes``: then store nothing and
        return the bytes the account has stored. The account row is locked (PostgreSQL) so that
        concurrent uploads of one account cannot both pass the quota."""
        async with self._db.write() as conn:
            if quota_bytes is not None:
                await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update())
                stored = (
                    await conn.execute(
                        select(func.coalesce(func.sum(func.length(blobs.c.data)), 0)).where(
                            blobs.c.account_id == account_id, blobs.c.created_at_ms > created_after_ms
                        )
                    )
                ).scalar_one()
                if int(stored) + len(data) > quota_bytes:
                    return int(stored)
            await conn.execute(
                insert(blobs).values(id=blob_id, account_id=account_id, data=data, created_at_ms=now_ms)
            )
        return None

    async def get(self, blob_id: bytes, *, created_after_ms: int) -> tuple[bytes, bytes] | None:
        """``(account_id, data)`` of a blob created after ``created_after_ms``, or ``None``."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(blobs.c.account_id, blobs.c.data).where(
                        blobs.c.id == blob_id, blobs.c.created_at_ms > created_after_ms
                    )
                )
            ).first()
        return None if row is None else (bytes(row.account_id), bytes(row.data))

    async def purge_created_before(self, cutoff_ms: int) -> int:
        """Delete blobs created at or before ``cutoff_ms``; how many."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(blobs).where(blobs.c.created_at_ms <= cutoff_ms))
        return int(result.rowcount or 0)
