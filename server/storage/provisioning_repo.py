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

    async def put(self, channel_id: bytes, payload: bytes, now_ms: int) -> PutOutcome:
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(provisioning_channels.c.payload).where(
                        and_(
                            provisioning_channels.c.id == channel_id,
                            provisioning_channels.c.expires_at_ms > now_ms,
                        )
                    )
                )
            ).first()
            if row is None:
                return PutOutcome.NOT_FOUND
            if row.payload is not None:
                return PutOutcome.ALREADY_SET
            await conn.execute(
                update(provisioning_channels)
                .where(provisioning_channels.c.id == channel_id)
                .values(payload=payload)
            )
            return PutOutcome.STORED

    async def take(
        self, channel_id: bytes, secret_hash: bytes, now_ms: int
    ) -> tuple[TakeOutcome, bytes | None]:
        """Return the payload and delete the channel, if the secret matches and a payload is there.

        The secret hash is compared by the database lookup on the (random, 16-byte) channel id
        first, then here in constant time."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(provisioning_channels).where(
                        and_(
                            provisioning_channels.c.id == channel_id,
                            provisioning_channels.c.expires_at_ms > now_ms,
                        )
                    )
                )
            ).first()
            if row is None or not hmac.compare_digest(row.secret_hash, secret_hash):
                return TakeOutcome.NOT_FOUND, None
            if row.payload is None:
                return TakeOutcome.EMPTY, None
            await conn.execute(delete(provisioning_channels).where(provisioning_channels.c.id == channel_id))
            return TakeOutcome.TAKEN, bytes(row.payload)
