"""SQL for the key directory: upload, count and claim prekeys.

Claiming a one-time prekey hands it out exactly once, even under concurrent claims:
- PostgreSQL: ``DELETE FROM prekeys WHERE id = (SELECT id ... ORDER BY id LIMIT 1 FOR UPDATE
  SKIP LOCKED) RETURNING encoded``: concurrent claimers lock different rows, never the same one;
- SQLite: the write transaction is ``BEGIN IMMEDIATE`` so claims are serialised by the single
  writer lock (``FOR UPDATE SKIP LOCKED`` is not rendered for SQLite).

Uploads for one device are serialised by locking its ``devices`` row first (``SELECT ... FOR
UPDATE`` on PostgreSQL; the writer lock on SQLite), so overlapping uploads cannot both delete
and re-insert the same prekeys (a unique-constraint failure) or leave two signed prekeys.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from saltline.server.storage.db import Database
from saltline.server.storage.schema import devices, prekeys

SIGNED = 0x04  # saltline.crypto.keys.KeyKind.SIGNED_PREKEY
ONE_TIME = 0x05  # saltline.crypto.keys.KeyKind.ONE_TIME_PREKEY
LAST_RESORT = 0x06  # saltline.crypto.keys.KeyKind.LAST_RESORT_PREKEY


@dataclass(frozen=True, slots=True)
class PreKeyRow:
    kind: int
    key_id: int
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ClaimedPreKeys:
    signed: bytes | None
    one_time: bytes | None  # None: none left (the caller falls back to the last-resort key)
    last_resort: bytes | None
    one_time_remaining: int


@dataclass(frozen=True, slots=True)
class PreKeyCounts:
    one_time: int
    signed_key_id: int | None
    last_resort_key_id: int | None


class StoreFullError(Exception):
    """The upload would exceed the per-device cap on stored one-time prekeys."""

    def __init__(self, stored: int) -> None:
        super().__init__(stored)
        self.stored = stored


class PreKeysRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upload(
        self,
        device_id: bytes,
        signed: PreKeyRow | None,
        last_resort: PreKeyRow | None,
        one_time: Sequence[PreKeyRow],
        now_ms: int,
        *,
        max_one_time: int | None = None,
    ) -> None:
        """Replace the signed and last-resort prekeys (when given) and add one-time prekeys (an
        upload of an id that exists replaces it). Raises :class:`StoreFullError` (nothing
        stored) when the device would then hold more than ``max_one_time`` one-time prekeys."""
        async with self._db.write() as conn:
            # Serialise uploads of this device (a no-op clause on SQLite: BEGIN IMMEDIATE).
            await conn.execute(
                select(devices.c.device_id).where(devices.c.device_id == device_id).with_for_update()
            )
            if one_time and max_one_time is not None:
                ids = [k.key_id for k in one_time]
                kept = await conn.scalar(
                    select(func.count())
                    .select_from(prekeys)
                    .where(
                        and_(
                            prekeys.c.device_id == device_id,
                            prekeys.c.kind == ONE_TIME,
                            prekeys.c.key_id.not_in(ids),
                        )
                    )
                )
                if int(kept or 0) + len(one_time) > max_one_time:
                    raise StoreFullError(int(kept or 0))
            for single in (signed, last_resort):
                if single is not None:
                    await conn.execute(
                        delete(prekeys).where(
                            and_(prekeys.c.device_id == device_id, prekeys.c.kind == single.kind)
                        )
                    )
            if one_time:
                await conn.execute(
                    delete(prekeys).where(
                        and_(
                            prekeys.c.device_id == device_id,
                            prekeys.c.kind == ONE_TIME,
                            prekeys.c.key_id.in_([k.key_id for k in one_time]),
                        )
                    )
                )
            rows = [k for k in (signed, last_resort, *one_time) if k is not None]
            if rows:
                await conn.execute(
                    insert(prekeys),
                    [
                        {
                            "device_id": device_id,
                            "kind": k.kind,
                            "key_id": k.key_id,
                            "encoded": k.encoded,
                            "uploaded_at_ms": now_ms,
                        }
                        for k in rows
                    ],
                )

    async def counts(self, device_id: bytes) -> PreKeyCounts:
        async with self._db.read() as conn:
            one_time = await conn.scalar(
                select(func.count())
                .select_from(prekeys)
                .where(and_(prekeys.c.device_id == device_id, prekeys.c.kind == ONE_TIME))
            )
            singles = {
                r.kind: r.key_id
                for r in await conn.execute(
                    select(prekeys.c.kind, prekeys.c.key_id).where(
                        and_(prekeys.c.device_id == device_id, prekeys.c.kind.in_([SIGNED, LAST_RESORT]))
                    )
                )
            }
        return PreKeyCounts(int(one_time or 0), singles.get(SIGNED), singles.get(LAST_RESORT))

    async def claim(self, device_id: bytes) -> ClaimedPreKeys:
        return (await self.claim_many([device_id]))[device_id]

    async def claim_many(
        self, device_ids: Sequence[bytes], *, without_one_time: Collection[bytes] = ()
    ) -> dict[bytes, ClaimedPreKeys]:
        """For each (distinct) device, in ONE write transaction: take one one-time prekey
        (deleted; none for the devices in ``without_one_time``) plus the signed and last-resort
        prekeys, and count what is left. When any device has no signed prekey, nothing is taken
        from any device (its entry has ``signed=None``), so a failed claim consumes no one-time
        prekeys."""
        ids = list(dict.fromkeys(device_ids))
        async with self._db.write() as conn:
            singles = await self._singles(conn, ids)
            if any(singles.get((d, SIGNED)) is None for d in ids):
                return {
                    d: ClaimedPreKeys(singles.get((d, SIGNED)), None, singles.get((d, LAST_RESORT)), 0)
                    for d in ids
                }
            out: dict[bytes, ClaimedPreKeys] = {}
            for device_id in ids:
                if device_id in without_one_time:
                    one_time = None
                else:
                    one_time = await self._take_one_time(conn, device_id)
                remaining = await conn.scalar(
                    select(func.count())
                    .select_from(prekeys)
                    .where(and_(prekeys.c.device_id == device_id, prekeys.c.kind == ONE_TIME))
                )
                out[device_id] = ClaimedPreKeys(
                    singles.get((device_id, SIGNED)),
                    one_time,
                    singles.get((device_id, LAST_RESORT)),
                    int(remaining or 0),
                )
        return out

    @staticmethod
    async def _take_one_time(conn: AsyncConnection, device_id: bytes) -> bytes | None:
        pick = (
            select(prekeys.c.id)
            .where(and_(prekeys.c.device_id == device_id, prekeys.c.kind == ONE_TIME))
            .order_by(prekeys.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        encoded = await conn.scalar(delete(prekeys).where(prekeys.c.id == pick).returning(prekeys.c.encoded))
        return None if encoded is None else bytes(encoded)

    async def peek(self, device_id: bytes) -> ClaimedPreKeys:
        """The signed and last-resort prekeys and the one-time count, changing nothing."""
        async with self._db.read() as conn:
            singles = await self._singles(conn, [device_id])
            remaining = await conn.scalar(
                select(func.count())
                .select_from(prekeys)
                .where(and_(prekeys.c.device_id == device_id, prekeys.c.kind == ONE_TIME))
            )
        return ClaimedPreKeys(
            singles.get((device_id, SIGNED)), None, singles.get((device_id, LAST_RESORT)), int(remaining or 0)
        )

    @staticmethod
    async def _singles(conn: AsyncConnection, device_ids: Sequence[bytes]) -> dict[tuple[bytes, int], bytes]:
        return {
            (bytes(r.device_id), r.kind): bytes(r.encoded)
            for r in await conn.execute(
                select(prekeys.c.device_id, prekeys.c.kind, prekeys.c.encoded).where(
                    and_(prekeys.c.device_id.in_(device_ids), prekeys.c.kind.in_([SIGNED, LAST_RESORT]))
                )
            )
        }
