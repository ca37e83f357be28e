"""SQL for what linking and device lists carry besides the list itself: one-time device grants,
sealed account-key handoffs and encrypted device names. All values are ciphertext or public
keys; grants are stored as their SHA-256 only."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select

from saltline.server.storage.db import Database
from saltline.server.storage.schema import accounts, device_grants, device_names, devices, key_handoffs


@dataclass(frozen=True, slots=True)
class GrantRow:
    grant_hash: bytes
    account_id: bytes
    device_id: bytes
    signing_key: bytes  # raw Ed25519, 32 bytes
    created_at_ms: int
    expires_at_ms: int


class TooManyGrants(Exception):
    """The account holds the maximum number of unexpired grants already."""


class LinkingRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- grants ------------------------------------------------------------------------------

    async def add_grant(self, grant: GrantRow, max_unexpired: int) -> None:
        """Store ``grant`` unless the account already holds ``max_unexpired`` unexpired grants
        (raises :class:`TooManyGrants`); expired grants of the account are swept first. The
        account row is locked first (PostgreSQL), so concurrent issuers cannot both pass the
        count."""
        async with self._db.write() as conn:
            await conn.execute(
                select(accounts.c.id).where(accounts.c.id == grant.account_id).with_for_update()
            )
            await conn.execute(
                delete(device_grants).where(
                    and_(
                        device_grants.c.account_id == grant.account_id,
                        device_grants.c.expires_at_ms <= grant.created_at_ms,
                    )
                )
            )
            held = await conn.scalar(
                select(func.count())
                .select_from(device_grants)
                .where(device_grants.c.account_id == grant.account_id)
            )
            if (held or 0) >= max_unexpired:
                raise TooManyGrants
            values = {k: getattr(grant, k) for k in GrantRow.__slots__}
            await conn.execute(insert(device_grants).values(**values))

    async def get_grant(self, grant_hash: bytes, now_ms: int) -> GrantRow | None:
        """The unexpired, unused grant with this hash (used grants are deleted)."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(device_grants).where(
                        and_(device_grants.c.grant_hash == grant_hash, device_grants.c.expires_at_ms > now_ms)
                    )
                )
            ).first()
        if row is None:
            return None
        return GrantRow(
            bytes(row.grant_hash),
            bytes(row.account_id),
            bytes(row.device_id),
            bytes(row.signing_key),
            int(row.created_at_ms),
            int(row.expires_at_ms),
        )

    # -- key handoffs ------------------------------------------------------------------------

    async def handoffs_for(
        self, account_id: bytes, device_id: bytes, since: int, limit: int, cutoff_ms: int
    ) -> list[tuple[int, bytes]]:
        """``(version, sealed)`` for ``device_id`` with ``version > since``, ascending, at most
        ``limit``; the account's handoffs created at or before ``cutoff_ms`` are deleted first."""
        async with self._db.write() as conn:
            await conn.execute(
                delete(key_handoffs).where(
                    and_(key_handoffs.c.account_id == account_id, key_handoffs.c.created_at_ms <= cutoff_ms)
                )
            )
            rows = await conn.execute(
                select(key_handoffs.c.version, key_handoffs.c.sealed)
                .where(
                    and_(
                        key_handoffs.c.account_id == account_id,
                        key_handoffs.c.device_id == device_id,
                        key_handoffs.c.version > since,
                    )
                )
                .order_by(key_handoffs.c.version)
                .limit(limit)
            )
            return [(int(r.version), bytes(r.sealed)) for r in rows]

    # -- device names ------------------------------------------------------------------------

    async def set_name(self, device_id: bytes, sealed: bytes, now_ms: int) -> None:
        """Replace the device's name (its device row is locked first: concurrent renames of one
        device take turns instead of colliding on the primary key)."""
        async with self._db.write() as conn:
            await conn.execute(
                select(devices.c.device_id).where(devices.c.device_id == device_id).with_for_update()
            )
            await conn.execute(delete(device_names).where(device_names.c.device_id == device_id))
            await conn.execute(
                insert(device_names).values(device_id=device_id, sealed=sealed, updated_at_ms=now_ms)
            )

    async def active_names(self, account_id: bytes) -> list[tuple[bytes, bytes]]:
        """``(device_id, sealed name)`` of the account's active devices that have a name."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(device_names.c.device_id, device_names.c.sealed)
                .join(devices, devices.c.device_id == device_names.c.device_id)
                .where(and_(devices.c.account_id == account_id, devices.c.removed_at_ms.is_(None)))
                .order_by(device_names.c.device_id)
            )
            return [(bytes(r.device_id), bytes(r.sealed)) for r in rows]
