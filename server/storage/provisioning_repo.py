"""SQL for provisioning channels: short-lived one-slot mailboxes that carry sealed linking
messages between a new device and an existing one, in both directions. The server stores only
ciphertext and the SHA-256 of the channel's two secrets (put and take)."""

from __future__ import annotations

import hmac
from enum import Enum

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from saltline.server.storage.db import Database
from saltline.server.storage.schema import provisioning_channels as pc


class PutOutcome(Enum):
    STORED = "stored"
    NOT_FOUND = "not_found"  # unknown, expired, or not the put secret
    SLOT_FULL = "slot_full"  # a message is waiting: take it first
    TOO_MANY_PUTS = "too_many_puts"  # the channel's lifetime put budget is spent


class TakeOutcome(Enum):
    TAKEN = "taken"
    EMPTY = "empty"  # channel exists, nothing waiting
    NOT_FOUND = "not_found"  # unknown, expired, or not the take secret


class ProvisioningRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, channel_id: bytes, put_hash: bytes, take_hash: bytes, now_ms: int, expires_at_ms: int
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(pc).where(pc.c.expires_at_ms <= now_ms))
            await conn.execute(
                insert(pc).values(
                    id=channel_id,
                    put_hash=put_hash,
                    take_hash=take_hash,
                    put_count=0,
                    payload=None,
                    created_at_ms=now_ms,
                    expires_at_ms=expires_at_ms,
                )
            )

    async def put(
        self, channel_id: bytes, put_hash: bytes, payload: bytes, now_ms: int, max_puts: int
    ) -> PutOutcome:
        """Fill the empty slot, if ``put_hash`` is the channel's put hash (constant-time). The
        store is one ``UPDATE ... WHERE payload IS NULL AND put_count < max``: of two concurrent
        puts exactly one wins, and the lifetime budget cannot be overrun."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(pc.c.put_hash, pc.c.put_count).where(
                        and_(pc.c.id == channel_id, pc.c.expires_at_ms > now_ms)
                    )
                )
            ).first()
            if row is None or not hmac.compare_digest(bytes(row.put_hash), put_hash):
                return PutOutcome.NOT_FOUND
            if row.put_count >= max_puts:
                return PutOutcome.TOO_MANY_PUTS
            stored = await conn.execute(
                update(pc)
                .where(
                    and_(
                        pc.c.id == channel_id,
                        pc.c.expires_at_ms > now_ms,
                        pc.c.payload.is_(None),
                        pc.c.put_count < max_puts,
                    )
                )
                .values(payload=payload, put_count=pc.c.put_count + 1)
            )
            return PutOutcome.STORED if stored.rowcount == 1 else PutOutcome.SLOT_FULL

    async def _check_take(
        self, conn: AsyncConnection, channel_id: bytes, take_hash: bytes, now_ms: int
    ) -> bool:
        row = (
            await conn.execute(
                select(pc.c.take_hash).where(and_(pc.c.id == channel_id, pc.c.expires_at_ms > now_ms))
            )
        ).first()
        return row is not None and hmac.compare_digest(bytes(row.take_hash), take_hash)

    async def take(
        self, channel_id: bytes, take_hash: bytes, now_ms: int
    ) -> tuple[TakeOutcome, bytes | None]:
        """Empty the slot and return what was in it, if ``take_hash`` is the channel's take hash.

        The message is read, then emptied with a compare-and-set ``UPDATE ... SET payload = NULL
        WHERE payload IS NOT NULL AND put_count = <the count read>``, so it is handed out once
        even to concurrent takers; the channel lives on for further messages."""
        async with self._db.write() as conn:
            if not await self._check_take(conn, channel_id, take_hash, now_ms):
                return TakeOutcome.NOT_FOUND, None
            row = (
                await conn.execute(
                    select(pc.c.payload, pc.c.put_count).where(
                        and_(pc.c.id == channel_id, pc.c.payload.is_not(None))
                    )
                )
            ).first()
            if row is None:
                return TakeOutcome.EMPTY, None
            payload = row.payload
            emptied = await conn.execute(  # put_count names the message: each put increments it
                update(pc)
                .where(
                    and_(pc.c.id == channel_id, pc.c.payload.is_not(None), pc.c.put_count == row.put_count)
                )
                .values(payload=None)
            )
            if emptied.rowcount != 1:  # a concurrent taker won (PostgreSQL read committed)
                return TakeOutcome.EMPTY, None
            return TakeOutcome.TAKEN, bytes(payload)

    async def delete(self, channel_id: bytes, take_hash: bytes, now_ms: int) -> bool:
        """Delete the channel, if ``take_hash`` is its take hash; False if unknown or wrong."""
        async with self._db.write() as conn:
            if not await self._check_take(conn, channel_id, take_hash, now_ms):
                return False
            await conn.execute(delete(pc).where(pc.c.id == channel_id))
            return True
