"""Device-list updates: the only way devices join or leave an account.

A new signed list is accepted only if it verifies under the account key and extends the current
one (version + 1, previous hash = hash of the current list); that signature is the whole
authority (no bearer token is needed: see :meth:`DeviceService.update_account_list`). Devices it
names become routable; devices it drops are removed at once (refresh tokens revoked, prekeys
deleted, access tokens refused from the next request) and the ``on_device_removed`` hooks close
their sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crypto import primitives as p
from crypto.keys import AccountPublicKey, b64encode
from server.clock import Clock
from server.errors import Problem, ProblemCode
from server.services.accounts import device_rows, verify_signed_list
from server.services.common import AuthedDevice, DeviceListChangedHook, DeviceRemovedHook, encode_id
from server.storage.accounts_repo import AccountsRepo, DeviceListRow, StorageConflict

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    signing_key: str
    dh_key: str
    added_at_ms: int


@dataclass(frozen=True, slots=True)
class ListUpdate:
    version: int
    hash: str
    added: list[str]
    removed: list[str]


class DeviceService:
    def __init__(
        self,
        repo: AccountsRepo,
        clock: Clock,
        *,
        max_devices: int,
        max_list_bytes: int,
        on_device_removed: list[DeviceRemovedHook],
        on_device_list_changed: list[DeviceListChangedHook],
    ) -> None:
        self._repo = repo
        self._clock = clock
        self._max_devices = max_devices
        self._max_list_bytes = max_list_bytes
        self._on_removed = on_device_removed
        self._on_changed = on_device_list_changed

    async def is_active(self, device_id: bytes, account_id: bytes) -> bool:
        row = await self._repo.get_device(device_id)
        return row is not None and row.active and row.account_id == account_id

    async def active_devices(self, account_id: bytes) -> list[DeviceInfo]:
        return [
            DeviceInfo(encode_id(d.device_id), b64encode(d.signing_key), b64encode(d.dh_key), d.added_at_ms)
            for d in await self._repo.active_devices(account_id)
        ]

    async def update_list(self, caller: AuthedDevice, device_list_b64: str) -> ListUpdate:
        """The authenticated path: a device of the account publishes a new list."""
        return await self.update_account_list(caller.account_id_bytes, device_list_b64)

    async def update_account_list(
        self,
        account_id: bytes,
        device_list_b64: str,
        *,
        on_verified: Callable[[], Awaitable[None]] | None = None,
    ) -> ListUpdate:
        """Adopt ``device_list_b64`` for ``account_id``. Its authority is the account-key
        signature alone (the caller's token, if any, adds none): it must verify under the stored
        account key and username and extend the current list (version + 1, predecessor hash).
        Both ``PUT /v1/accounts/me/device-list`` and the token-less
        ``PUT /v1/accounts/{account_id}/device-list/signed`` (linking) come here.

        ``on_verified`` is awaited once the signature has verified and before anything else (the
        token-less route counts its per-account rate limit there, so junk signed by anyone but
        the account key never uses up the owner's allowance)."""
        account = await self._repo.get(account_id)
        current = await self._repo.current_list(account_id)
        if account is None or current is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        account_key = AccountPublicKey.decode(account.account_key)
        signed = verify_signed_list(
            device_list_b64, account_key, account.username_lower, self._max_list_bytes, self._max_devices
        )
        if on_verified is not None:
            await on_verified()
        new_hash = signed.hash()
        if signed.version == current.version and p.constant_time_equal(new_hash, current.list_hash):
            return ListUpdate(current.version, b64encode(current.list_hash), [], [])  # a retried PUT
        if signed.version != current.version + 1:
            raise Problem(
                409,
                ProblemCode.DEVICE_LIST_STALE,
                f"the new list must have version {current.version + 1}",
                current_version=current.version,
            )
        if not p.constant_time_equal(signed.content.previous_hash, current.list_hash):
            raise Problem(
                409,
                ProblemCode.DEVICE_LIST_CHAIN_BROKEN,
                "the new list does not name the current list's hash as its predecessor",
                current_version=current.version,
                current_hash=b64encode(current.list_hash),
            )

        active = {d.device_id: d for d in await self._repo.active_devices(account_id)}
        named = {e.device_id: e for e in signed.content.devices}
        new_ids = [i for i in named if i not in active]
        known = await self._repo.existing_device_ids(new_ids)
        if known:
            raise Problem(
                409,
                ProblemCode.DEVICE_ID_TAKEN,
                "a device id in the list was used before (device ids are never reused)",
                device_ids=[encode_id(i) for i in known],
            )
        for device_id, row in active.items():
            entry = named.get(device_id)
            if entry is not None and (
                entry.signing_key.encode() != row.signing_key or entry.dh_key.encode() != row.dh_key
            ):
                raise Problem(
                    422,
                    ProblemCode.DEVICE_LIST_INVALID,
                    "the list changes the keys of an existing device (add it under a new device id)",
                    device_id=encode_id(device_id),
                )
        removed = [i for i in active if i not in named]
        now = self._clock()
        added_rows = device_rows(account_id, tuple(named[i] for i in new_ids), now)
        try:
            await self._repo.replace_list(
                account_id,
                DeviceListRow(account_id, signed.version, new_hash, signed.encode(), now),
                added_rows,
                removed,
                now,
            )
        except StorageConflict as exc:
            if exc.what == "device_id":
                raise Problem(
                    409, ProblemCode.DEVICE_ID_TAKEN, "a device id in the list is already in use"
                ) from exc
            raise Problem(
                409, ProblemCode.DEVICE_LIST_STALE, "another device list update won; fetch the current list"
            ) from exc

        account_b64 = encode_id(account_id)
        removed_b64 = [encode_id(i) for i in removed]
        for device_b64 in removed_b64:
            for removed_hook in list(self._on_removed):
                try:
                    await removed_hook(account_b64, device_b64)
                except Exception:
                    log.exception("on_device_removed hook failed")
        for changed_hook in list(self._on_changed):
            try:
                await changed_hook(account_b64, signed.version)
            except Exception:
                log.exception("on_device_list_changed hook failed")
        return ListUpdate(signed.version, b64encode(new_hash), [encode_id(i) for i in new_ids], removed_b64)
