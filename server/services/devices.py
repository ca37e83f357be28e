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

from saltline.crypto import device_list as dl
from saltline.crypto import primitives as p
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountPublicKey, b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.accounts import device_rows, verify_signed_list
from saltline.server.services.common import (
    AuthedDevice,
    DeviceListChangedHook,
    DeviceRemovedHook,
    decode_id,
    decode_sealed,
    encode_id,
)
from saltline.server.storage.accounts_repo import AccountsRepo, DeviceListRow, ListExtras, StorageConflict
from saltline.server.storage.linking_repo import GrantRow

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
        return await self.update_account_list(
            caller.account_id_bytes, device_list_b64, caller=caller.device_id_bytes
        )

    async def update_account_list(
        self,
        account_id: bytes,
        device_list_b64: str,
        *,
        on_verified: Callable[[], Awaitable[None]] | None = None,
        caller: bytes | None = None,
        grant: GrantRow | None = None,
        key_handoffs: dict[str, str] | None = None,
        sealed_name: str | None = None,
    ) -> ListUpdate:
        """Adopt ``device_list_b64`` for ``account_id``. It must verify under the stored account
        key and username and extend the current list (version + 1, predecessor hash), and it
        needs a live, listed device or a grant behind it:

        - ``caller`` (``PUT /v1/accounts/me/device-list``): the authenticated device, which must
          be active in the current list (it may remove itself). Only this path may carry key
          handoffs, and only it may hand the account over to a new account key;
        - ``grant`` (``PUT /v1/accounts/{account_id}/device-list/signed``, linking): a valid
          one-time device grant of this account, checked by the caller; the list must be the
          current list plus exactly the granted device (id and signing key). The grant is
          consumed in the same transaction as the list.

        ``sealed_name`` is the encrypted name of the caller (``me``) or of the granted device.
        ``on_verified`` is awaited once the signature has verified and before anything else (the
        per-account rate limits count there, so junk never uses up the owner's allowance)."""
        if (caller is None) == (grant is None):
            raise ValueError("exactly one of caller and grant")
        account = await self._repo.get(account_id)
        current = await self._repo.current_list(account_id)
        if account is None or current is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        if caller is not None and not await self.is_active(caller, account_id):
            raise Problem(
                403, ProblemCode.DEVICE_NOT_ACTIVE, "this device is not in the account's device list"
            )
        account_key = AccountPublicKey.decode(account.account_key)
        signed = verify_signed_list(
            device_list_b64, account_key, account.username_lower, self._max_list_bytes, self._max_devices
        )
        if on_verified is not None:
            await on_verified()
        new_key = signed.content.account_key.encode()
        new_account_key = None if p.constant_time_equal(new_key, account.account_key) else new_key
        if new_account_key is not None and grant is not None:
            raise grant_invalid("a device grant cannot hand the account over to a new account key")
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
        try:  # the whole chain rule clients apply (root, succession, joined versions, carried entries)
            dl.check_successor(dl.SignedDeviceList.decode(current.signed), signed)
        except CryptoError as exc:
            raise Problem(
                422, ProblemCode.DEVICE_LIST_INVALID, f"the list does not extend the current one: {exc}"
            ) from exc
        removed = [i for i in active if i not in named]
        if grant is not None:
            _check_grant_fits(grant, new_ids, removed, named)
        if key_handoffs and caller is None:
            raise Problem(422, ProblemCode.VALIDATION_FAILED, "key handoffs need the authenticated path")
        subject = caller if caller is not None else grant.device_id if grant is not None else b""
        if sealed_name is not None and subject not in named:
            raise Problem(
                422, ProblemCode.VALIDATION_FAILED, "a device the list drops has no name", field="sealed_name"
            )
        extras = ListExtras(
            consume_grant=grant.grant_hash if grant is not None else None,
            handoffs=_handoffs(key_handoffs, caller, named, self._max_devices) if key_handoffs else None,
            names=None if sealed_name is None else {subject: decode_sealed(sealed_name, "sealed_name")},
            new_account_key=new_account_key,
        )
        now = self._clock()
        added_rows = device_rows(account_id, tuple(named[i] for i in new_ids), now)
        try:
            await self._repo.replace_list(
                account_id,
                DeviceListRow(account_id, signed.version, new_hash, signed.encode(), now),
                added_rows,
                removed,
                now,
                extras,
            )
        except StorageConflict as exc:
            if exc.what == "device_id":
                raise Problem(
                    409, ProblemCode.DEVICE_ID_TAKEN, "a device id in the list is already in use"
                ) from exc
            if exc.what == "grant":
                raise grant_invalid("the device grant was used or expired") from exc
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


def grant_invalid(detail: str) -> Problem:
    return Problem(403, ProblemCode.DEVICE_GRANT_INVALID, detail)


def _check_grant_fits(
    grant: GrantRow, new_ids: list[bytes], removed: list[bytes], named: dict[bytes, dl.DeviceEntry]
) -> None:
    """A grant adds exactly its device (same id and signing key) and changes nothing else."""
    if removed or new_ids != [grant.device_id]:
        raise grant_invalid("with a device grant the list may only add the granted device")
    if not p.constant_time_equal(bytes(named[grant.device_id].signing_key), grant.signing_key):
        raise grant_invalid("the added device's signing key is not the granted one")


def _handoffs(
    given: dict[str, str], caller: bytes | None, named: dict[bytes, dl.DeviceEntry], max_devices: int
) -> dict[bytes, bytes]:
    """Decode and check ``key_handoffs``: only for devices of the new list (the caller's own is
    its copy of a rotated key, in case it crashes before storing it)."""
    if len(given) > max_devices:
        raise Problem(
            422, ProblemCode.VALIDATION_FAILED, f"at most {max_devices} key handoffs", field="key_handoffs"
        )
    out: dict[bytes, bytes] = {}
    for device_b64, sealed_b64 in given.items():
        device_id = decode_id(device_b64, "key_handoffs", status=422)
        if device_id not in named:
            raise Problem(
                422,
                ProblemCode.VALIDATION_FAILED,
                "key handoffs are only for the new list's devices",
                field="key_handoffs",
                device_id=device_b64,
            )
        out[device_id] = decode_sealed(sealed_b64, "key_handoffs")
    return out
