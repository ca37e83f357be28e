"""SQL for provisioning channels: short-lived mailboxes that carry one sealed linking payload
from an existing device to a new one. The server stores only the ciphertext."""

from __future__ import annotations

import hmac
from enum import Enum

from sqlalchemy import and_, delete, insert, select, update

from server.storage.db import Database
from server.storage.schema import provisioning_channels


class PutOutcome(Enum):
    STORED = "stored"
    NOT_FOUND = "not_found"
    ALREADY_SET = "already_set"


class TakeOutcome(Enum):
    TAKEN = "taken"
    EMPTY = "empty"  # channel exists, no payload yet
    NOT_FOUND = "not_found"  # unknown, expired, or wrong secret


class ProvisioningRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, channel_id: bytes, secret_hash: bytes, now_ms: int, expires_at_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                delete(provisioning_channels).where(provisioning_channels.c.expires_at_ms <= now_ms)
            )
            await conn.execute(
                insert(provisioning_channels).values(
                    id=channel_id,
                    secret_hash=secret_hash,
                    payload=None,
                    created_at_ms=now_ms,
                    expires_at_ms=expires_at_ms,
                )
            )

    async def put(self, channel_id: bytes, secret_hash: bytes, payload: bytes, now_ms: int) -> PutOutcome:
        """Store the payload once, if the secret matches (compared in constant time). The store
        is a single ``UPDATE ... WHERE payload IS NULL``: of two concurrent puts exactly one wins."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(provisioning_channels.c.secret_hash).where(
                        and_(
                            provisioning_channels.c.id == channel_id,
                            provisioning_channels.c.expires_at_ms > now_ms,
                        )
                    )
                )
            ).first()
            if row is None or not hmac.compare_digest(bytes(row.secret_hash), secret_hash):
                return PutOutcome.NOT_FOUND
            stored = await conn.execute(
                update(provisioning_channels)
                .where(
                    and_(
                        provisioning_channels.c.id == channel_id,
                        provisioning_channels.c.expires_at_ms > now_ms,
                        provisioning_channels.c.payload.is_(None),
                    )
                )
                .values(payload=payload)
            )
            return PutOutcome.STORED if stored.rowcount == 1 else PutOutcome.ALREADY_SET

    async def take(
        self, channel_id: bytes, secret_hash: bytes, now_ms: int
    ) -> tuple[TakeOutcome, bytes | None]:
        """Return the payload and delete the channel, if the secret matches and a payload is there.

        The secret hash is checked in constant time; the payload is then taken with a single
        ``DELETE ... WHERE payload IS NOT NULL RETURNING payload``, so it is handed out once
        even to concurrent takers."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(provisioning_channels.c.secret_hash).where(
                        and_(
                            provisioning_channels.c.id == channel_id,
                            provisioning_channels.c.expires_at_ms > now_ms,
                        )
                    )
                )
            ).first()
            if row is None or not hmac.compare_digest(bytes(row.secret_hash), secret_hash):
                return TakeOutcome.NOT_FOUND, None
            payload = await conn.scalar(
                delete(provisioning_channels)
                .where(
                    and_(
                        provisioning_channels.c.id == channel_id,
                        provisioning_channels.c.expires_at_ms > now_ms,
                        provisioning_channels.c.payload.is_not(None),
                    )
                )
                .returning(provisioning_channels.c.payload)
            )
            if payload is not None:
                return TakeOutcome.TAKEN, bytes(payload)
            still_there = await conn.scalar(
                select(provisioning_channels.c.id).where(provisioning_channels.c.id == channel_id)
            )
            return (TakeOutcome.EMPTY, None) if still_there is not None else (TakeOutcome.NOT_FOUND, None)
