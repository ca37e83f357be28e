"""SQL for accounts, devices and signed device lists. Each method is one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from saltline.server.storage.db import Database
from saltline.server.storage.schema import (
    accounts,
    device_grants,
    device_lists,
    device_names,
    devices,
    key_handoffs,
    prekeys,
    refresh_tokens,
)


class StorageConflict(Exception):
    """A uniqueness rule or a compare-and-set failed; ``what`` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: bytes
    username: str
    username_lower: str
    password_hash: str
    account_key: bytes
    device_list_version: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: bytes
    account_id: bytes
    signing_key: bytes
    dh_key: bytes
    added_at_ms: int
    removed_at_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.removed_at_ms is None


@dataclass(frozen=True, slots=True)
class DeviceListRow:
    account_id: bytes
    version: int
    list_hash: bytes
    signed: bytes
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ListExtras:
    """What a device-list update stores in the same transaction as the list."""

    #: The SHA-256 of the one-time device grant the update consumes (linking), if any.
    consume_grant: bytes | None = None
    #: Sealed account-key handoffs for this version: device id -> ciphertext.
    handoffs: dict[bytes, bytes] | None = None
    #: Encrypted device names to set: device id -> ciphertext.
    names: dict[bytes, bytes] | None = None
    #: ACCOUNT-KEY SUCCESSION HOOK: the new encoded account key, when the list (verified by
    #: saltline.crypto.device_list under the old key) hands the account over to a new key. Replaced in
    #: the same transaction as the list; only ever set on the authenticated ``me`` path.
    new_account_key: bytes | None = None


def _account(row: object) -> AccountRow:
    m = row._mapping  # type: ignore[attr-defined]
    return AccountRow(**{k: m[k] for k in AccountRow.__slots__})


def _device(row: object) -> DeviceRow:
    m = row._mapping  # type: ignore[attr-defined]
    return DeviceRow(**{k: m[k] for k in DeviceRow.__slots__})


def _list(row: object) -> DeviceListRow:
    m = row._mapping  # type: ignore[attr-defined]
    return DeviceListRow(**{k: m[k] for k in DeviceListRow.__slots__})


class AccountsRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- accounts ----------------------------------------------------------------------------

    async def create(
        self, account: AccountRow, first_devices: Sequence[DeviceRow], first_list: DeviceListRow
    ) -> None:
        """Insert an account with its first devices and list; raises :class:`StorageConflict`
        (``"username"`` or ``"device_id"``)."""
        try:
            async with self._db.write() as conn:
                taken = await conn.scalar(
                    select(func.count())
                    .select_from(accounts)
                    .where(accounts.c.username_lower == account.username_lower)
                )
                if taken:
                    raise StorageConflict("username")
                ids = [d.device_id for d in first_devices]
                if await conn.scalar(
                    select(func.count()).select_from(devices).where(devices.c.device_id.in_(ids))
                ):
                    raise StorageConflict("device_id")
                await conn.execute(insert(accounts).values(**_asdict(account)))
                await conn.execute(insert(devices), [_asdict(d) for d in first_devices])
                await conn.execute(insert(device_lists).values(**_asdict(first_list)))
        except IntegrityError as exc:  # a concurrent registration won the race
            text = str(exc.orig).lower()
            raise StorageConflict("username" if "username" in text else "device_id") from exc

    async def get(self, account_id: bytes) -> AccountRow | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return None if row is None else _account(row)

    async def get_by_username(self, username_lower: str) -> AccountRow | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(accounts).where(accounts.c.username_lower == username_lower))
            ).first()
        return None if row is None else _account(row)

    # -- devices -----------------------------------------------------------------------------

    async def get_device(self, device_id: bytes) -> DeviceRow | None:
        # On every authenticated request: one hand-off on SQLite (Database.run_read).
        def read(conn: Connection) -> DeviceRow | None:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
            return None if row is None else _device(row)

        return await self._db.run_read(read)

    async def active_devices(self, account_id: bytes) -> list[DeviceRow]:
        """The routable devices of an account (named by its current signed list), by device id."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(devices)
                .where(and_(devices.c.account_id == account_id, devices.c.removed_at_ms.is_(None)))
                .order_by(devices.c.device_id)
            )
            return [_device(r) for r in rows]

    async def existing_device_ids(self, device_ids: Sequence[bytes]) -> dict[bytes, DeviceRow]:
        if not device_ids:
            return {}
        async with self._db.read() as conn:
            rows = await conn.execute(select(devices).where(devices.c.device_id.in_(list(device_ids))))
            return {r.device_id: _device(r) for r in rows}

    # -- device lists ------------------------------------------------------------------------

    async def current_list(self, account_id: bytes) -> DeviceListRow | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(device_lists)
                    .join(accounts, accounts.c.id == device_lists.c.account_id)
                    .where(
                        and_(
                            device_lists.c.account_id == account_id,
                            device_lists.c.version == accounts.c.device_list_version,
                        )
                    )
                )
            ).first()
        return None if row is None else _list(row)

    async def list_chain(self, account_id: bytes, since: int, limit: int) -> list[DeviceListRow]:
        """Lists with ``version > since``, oldest first, at most ``limit``."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(device_lists)
                .where(and_(device_lists.c.account_id == account_id, device_lists.c.version > since))
                .order_by(device_lists.c.version)
                .limit(limit)
            )
            return [_list(r) for r in rows]

    async def replace_list(
        self,
        account_id: bytes,
        new_list: DeviceListRow,
        added: Sequence[DeviceRow],
        removed: Sequence[bytes],
        now_ms: int,
        extras: ListExtras | None = None,
    ) -> None:
        """Adopt ``new_list`` (whose version must be current + 1), insert ``added`` devices, and
        mark ``removed`` devices removed (their prekeys deleted, their refresh tokens revoked).

        ``extras`` (a grant to consume, key handoffs, device names, a new account key) are
        stored in the same transaction.

        Raises :class:`StorageConflict` ``"version"`` if another update won, ``"device_id"`` if an
        added device id exists already, ``"grant"`` if the grant to consume is gone (used by a
        concurrent update, or expired).
        """
        extras = extras or ListExtras()
        try:
            async with self._db.write() as conn:
                if extras.consume_grant is not None:
                    consumed = await conn.execute(
                        device_grants.delete().where(
                            and_(
                                device_grants.c.grant_hash == extras.consume_grant,
                                device_grants.c.account_id == account_id,
                                device_grants.c.expires_at_ms > now_ms,
                            )
                        )
                    )
                    if consumed.rowcount != 1:
                        raise StorageConflict("grant")
                values: dict[str, object] = {"device_list_version": new_list.version}
                if extras.new_account_key is not None:  # account-key succession (see ListExtras)
                    values["account_key"] = extras.new_account_key
                result = await conn.execute(
                    update(accounts)
                    .where(
                        and_(
                            accounts.c.id == account_id,
                            accounts.c.device_list_version == new_list.version - 1,
                        )
                    )
                    .values(**values)
                )
                if result.rowcount != 1:
                    raise StorageConflict("version")
                await conn.execute(insert(device_lists).values(**_asdict(new_list)))
                if added:
                    ids = [d.device_id for d in added]
                    if await conn.scalar(
                        select(func.count()).select_from(devices).where(devices.c.device_id.in_(ids))
                    ):
                        raise StorageConflict("device_id")
                    await conn.execute(insert(devices), [_asdict(d) for d in added])
                if removed:
                    await conn.execute(
                        update(devices)
                        .where(
                            and_(devices.c.device_id.in_(list(removed)), devices.c.removed_at_ms.is_(None))
                        )
                        .values(removed_at_ms=now_ms)
                    )
                    await conn.execute(
                        update(refresh_tokens)
                        .where(refresh_tokens.c.device_id.in_(list(removed)))
                        .values(revoked=True)
                    )
                    await conn.execute(prekeys.delete().where(prekeys.c.device_id.in_(list(removed))))
                if extras.handoffs:
                    await conn.execute(
                        insert(key_handoffs),
                        [
                            {
                                "device_id": device_id,
                                "version": new_list.version,
                                "account_id": account_id,
                                "sealed": sealed,
                                "created_at_ms": now_ms,
                            }
                            for device_id, sealed in extras.handoffs.items()
                        ],
                    )
                if extras.names:  # lock the rows as LinkingRepo.set_name does: renames take turns
                    await conn.execute(
                        select(devices.c.device_id)
                        .where(devices.c.device_id.in_(list(extras.names)))
                        .with_for_update()
                    )
                for device_id, sealed in (extras.names or {}).items():
                    await conn.execute(device_names.delete().where(device_names.c.device_id == device_id))
                    await conn.execute(
                        insert(device_names).values(device_id=device_id, sealed=sealed, updated_at_ms=now_ms)
                    )
        except IntegrityError as exc:
            raise StorageConflict("version") from exc


def _asdict(obj: object) -> dict[str, object]:
    return {k: getattr(obj, k) for k in obj.__slots__}  # type: ignore[attr-defined]
