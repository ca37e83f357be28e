"""SQL for refresh tokens (stored as SHA-256 hashes) and device-login challenges.

Refresh-token rows are bounded per device: a rotation deletes the device's expired rows and keeps
only the newest :data:`USED_ROWS_KEPT` used rows of its family (for reuse detection; an older
used token is then simply unknown: 401, never accepted); a login deletes the device's expired rows
and the rows of its families beyond the newest ``max_families`` (logins of the same device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from saltline.server.storage import connect_reads
from saltline.server.storage.db import Database
from saltline.server.storage.schema import devices, login_challenges, refresh_tokens


@dataclass(frozen=True, slots=True)
class RefreshTokenRow:
    token_hash: bytes
    family_id: bytes
    device_id: bytes
    account_id: bytes
    issued_at_ms: int
    expires_at_ms: int
    used: bool = False
    revoked: bool = False


class RotateOutcome(Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"  # revoked family, or the device is no longer active
    REUSED = "reused"  # an already-rotated token: the family has now been revoked


@dataclass(frozen=True, slots=True)
class RotateResult:
    outcome: RotateOutcome
    old: RefreshTokenRow | None = None


@dataclass(frozen=True, slots=True)
class ChallengeRow:
    nonce: bytes
    username_lower: str
    device_id: bytes
    expires_at_ms: int


#: Used (rotated) refresh-token rows kept per family, newest first, to detect a reused token.
USED_ROWS_KEPT = 8


class AuthRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_refresh(self, row: RefreshTokenRow, *, max_families: int | None = None) -> None:
        """Store a new family's first token; forget the device's expired rows and, beyond
        ``max_families`` families of the device (the newest kept, this one included), the rest."""
        async with self._db.write() as conn:
            await conn.execute(insert(refresh_tokens).values(**_asdict(row)))
            await _delete_expired(conn, row.device_id, row.issued_at_ms)
            if max_families is not None:
                newest = (
                    select(refresh_tokens.c.family_id)
                    .where(refresh_tokens.c.device_id == row.device_id)
                    .group_by(refresh_tokens.c.family_id)
                    .order_by(func.max(refresh_tokens.c.issued_at_ms).desc(), refresh_tokens.c.family_id)
                    .limit(max_families)
                )
                keep = [r.family_id for r in (await conn.execute(newest)).all()]
                await conn.execute(
                    delete(refresh_tokens).where(
                        and_(
                            refresh_tokens.c.device_id == row.device_id,
                            refresh_tokens.c.family_id.not_in(keep),
                        )
                    )
                )

    async def refresh_owner(self, token_hash: bytes) -> bytes | None:
        """The device a refresh token was issued to (``None``: unknown), to count its rotations."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(refresh_tokens.c.device_id).where(refresh_tokens.c.token_hash == token_hash)
                )
            ).first()
        return None if row is None else bytes(row.device_id)

    async def count_refresh_rows(self, device_id: bytes) -> int:
        async with self._db.read() as conn:
            n = (
                await conn.execute(
                    select(func.count())
                    .select_from(refresh_tokens)
                    .where(refresh_tokens.c.device_id == device_id)
                )
            ).scalar_one()
        return int(n)

    async def rotate_refresh(
        self, token_hash: bytes, make_new: Callable[[RefreshTokenRow], RefreshTokenRow], now_ms: int
    ) -> RotateResult:
        """Mark the token used and insert its successor (built by ``make_new`` from the old row),
        in one transaction. Presenting a used token revokes its whole family."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(refresh_tokens, devices.c.removed_at_ms)
                    .join(devices, devices.c.device_id == refresh_tokens.c.device_id)
                    .where(refresh_tokens.c.token_hash == token_hash)
                )
            ).first()
            if row is None:
                return RotateResult(RotateOutcome.UNKNOWN)
            old = RefreshTokenRow(**{k: row._mapping[k] for k in RefreshTokenRow.__slots__})
            if old.revoked or row.removed_at_ms is not None:
                return RotateResult(RotateOutcome.REVOKED, old)
            if old.used:
                await conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.family_id == old.family_id)
                    .values(revoked=True)
                )
                return RotateResult(RotateOutcome.REUSED, old)
            if old.expires_at_ms <= now_ms:
                return RotateResult(RotateOutcome.EXPIRED, old)
            claimed = await conn.execute(
                update(refresh_tokens)
                .where(and_(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used.is_(False)))
                .values(used=True)
            )
            if claimed.rowcount != 1:  # a concurrent rotation of the same token: that is reuse
                await conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.family_id == old.family_id)
                    .values(revoked=True)
                )
                return RotateResult(RotateOutcome.REUSED, old)
            await conn.execute(insert(refresh_tokens).values(**_asdict(make_new(old))))
            # Forget rows that can no longer matter: the device's expired ones, and this family's
            # used ones beyond the newest USED_ROWS_KEPT.
            await _delete_expired(conn, old.device_id, now_ms)
            kept_used = (
                select(refresh_tokens.c.token_hash)
                .where(and_(refresh_tokens.c.family_id == old.family_id, refresh_tokens.c.used.is_(True)))
                .order_by(refresh_tokens.c.issued_at_ms.desc(), refresh_tokens.c.token_hash)
                .limit(USED_ROWS_KEPT)
            )
            keep = [r.token_hash for r in (await conn.execute(kept_used)).all()]
            await conn.execute(
                delete(refresh_tokens).where(
                    and_(
                        refresh_tokens.c.family_id == old.family_id,
                        refresh_tokens.c.used.is_(True),
                        refresh_tokens.c.token_hash.not_in(keep),
                    )
                )
            )
            return RotateResult(RotateOutcome.ROTATED, old)

    async def family_revoked(self, family_id: bytes) -> bool:
        """Whether a refresh-token family was revoked (its rows are kept once revoked)."""

        # On every authenticated request: one hand-off on SQLite (Database.run_read).
        def read(conn: Connection) -> bool:
            row = conn.execute(
                select(refresh_tokens.c.token_hash)
                .where(and_(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked.is_(True)))
                .limit(1)
            ).first()
            return row is not None

        return await self._db.run_read(read)

    async def token_holder_state(self, device_id: bytes, family_id: bytes) -> tuple[bytes | None, bool]:
        """For an access token's check, in ONE read: the account of the device if it is active
        (None if unknown or removed), and whether the token's refresh-token family was revoked."""
        state = await self._db.run_small_read(
            lambda conn: connect_reads.holder_state(conn, device_id, family_id)
        )
        return state.account_id, state.revoked

    async def revoke_device_tokens(self, device_id: bytes) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(refresh_tokens).where(refresh_tokens.c.device_id == device_id).values(revoked=True)
            )

    async def insert_challenge(self, row: ChallengeRow, now_ms: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(login_challenges).where(login_challenges.c.expires_at_ms <= now_ms))
            await conn.execute(insert(login_challenges).values(**_asdict(row)))

    async def consume_challenge(self, nonce: bytes) -> ChallengeRow | None:
        """Delete and return the challenge: each one can be consumed exactly once."""
        async with self._db.write() as conn:
            row = (
                await conn.execute(select(login_challenges).where(login_challenges.c.nonce == nonce))
            ).first()
            if row is None:
                return None
            deleted = await conn.execute(delete(login_challenges).where(login_challenges.c.nonce == nonce))
            if deleted.rowcount != 1:
                return None
            return ChallengeRow(**{k: row._mapping[k] for k in ChallengeRow.__slots__})


async def _delete_expired(conn: AsyncConnection, device_id: bytes, now_ms: int) -> None:
    await conn.execute(
        delete(refresh_tokens).where(
            and_(refresh_tokens.c.device_id == device_id, refresh_tokens.c.expires_at_ms <= now_ms)
        )
    )


def _asdict(obj: object) -> dict[str, object]:
    return {k: getattr(obj, k) for k in obj.__slots__}  # type: ignore[attr-defined]
