"""SQL for blobs: encrypted uploads an account's devices share (history bundles)."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from server.storage.db import Database
from server.storage.schema import blobs


class BlobsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, blob_id: bytes, account_id: bytes, data: bytes, now_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(blobs).values(id=blob_id, account_id=account_id, data=data, created_at_ms=now_ms)
            )

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
