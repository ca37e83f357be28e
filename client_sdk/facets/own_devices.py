"""This account's own devices: removal with account-key rotation, the key handoff a remaining
device adopts, end-to-end encrypted device names, and the events every device of the account
sees when a device joins or leaves (formats: :mod:`saltline.client_sdk.core.account_keys`;
docs/protocol/messages.md § Account-key handoff, § Device names)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import account_keys, api, trust
from saltline.client_sdk.core.events import (
    AccountKeyRotated,
    AccountKeyUnavailable,
    OwnDeviceLinked,
    OwnDeviceUnlinked,
)
from saltline.client_sdk.errors import NetworkError, ProtocolError, ServerError, UsageError
from saltline.client_sdk.facets.contacts import Contacts
from saltline.crypto import device_list as dl
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountKey, AccountPublicKey, b64decode, b64encode

log = logging.getLogger(__name__)

_NAME_SETTING = "device-name:"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    added_at: int
    this_device: bool
    name: str = account_keys.UNKNOWN_NAME
    joined_version: int = 1


class OwnDevices:
    def __init__(self, ctx: DeviceContext, contacts: Contacts) -> None:
        self.ctx = ctx
        self.contacts = contacts
        contacts.on_own_list = self.own_list_changed

    # -- names ------------------------------------------------------------------------------------------

    def name_of(self, device_id: str) -> str:
        """The last name this device learnt for ``device_id`` (kept after the device left)."""
        name = self.ctx.store.sync.get_setting(_NAME_SETTING + device_id)
        return name if name else account_keys.UNKNOWN_NAME

    def _remember(self, device_id: str, name: str) -> None:
        self.ctx.store.sync.put_setting(_NAME_SETTING + device_id, name)

    def sealed_own_name(self, key: AccountKey | None = None) -> str | None:
        """This device's name sealed under ``key`` (default: the current account key), if it has one."""
        ctx = self.ctx
        name = ctx.store.sync.get_setting(_NAME_SETTING + ctx.device_id)
        if not name:
            return None
        key = key or ctx.account_key()
        return b64encode(account_keys.seal_name(key, b64decode(ctx.device_id), name, ctx.rng))

    def remember_own_name(self, name: str) -> None:
        self._remember(self.ctx.device_id, account_keys.check_name(name))

    def remember_name(self, device_id: str, name: str) -> None:
        self._remember(device_id, name)

    async def set_name(self, name: str) -> None:
        """Name this device (1..64 characters); only the account's devices can read it."""
        self.remember_own_name(name)
        sealed = self.sealed_own_name()
        assert sealed is not None
        await self.ctx.call(api.set_device_name(sealed))

    async def refresh_names(self) -> dict[str, str]:
        """Fetch and open the names of the account's devices (a name that does not open under the
        current account key is left as it was known)."""
        ctx = self.ctx
        key = ctx.state.account_key
        if key is None:
            return {}
        names = api.parse_device_names((await ctx.call(api.device_names())).body)
        out: dict[str, str] = {}
        for device_id, sealed in names.items():
            try:
                raw = b64decode(sealed)
                opened = account_keys.open_name(key, b64decode(device_id), raw)
            except CryptoError:
                opened = None
            if opened is not None:
                self._remember(device_id, opened)
                out[device_id] = opened
        return out

    # -- listing and removal --------------------------------------------------------------------------

    async def devices(self) -> list[DeviceInfo]:
        ctx = self.ctx
        contact = await self.contacts.refresh(ctx.account_id)
        content = trust.verified_content(contact.account_key, contact.signed_list)
        try:
            await self.refresh_names()
        except (NetworkError, ServerError, ProtocolError) as exc:
            log.info("device names not refreshed: %s", exc)
        return [
            DeviceInfo(
                b64encode(d.device_id),
                d.added_at,
                b64encode(d.device_id) == ctx.device_id,
                self.name_of(b64encode(d.device_id)),
                d.joined_version,
            )
            for d in content.devices
        ]

    async def remove(self, device_id: str, *, rotate: bool = True) -> None:
        """Remove a device of this account. By default the account key rotates: the old key signs
        a succession to a fresh key, which is handed to every remaining device sealed to its DH key
        (the removed device keeps a key nobody accepts any more)."""
        ctx = self.ctx
        contact = await self.contacts.refresh(ctx.account_id)
        current = dl.SignedDeviceList.decode(contact.signed_list)
        new_key = AccountKey.generate(ctx.rng) if rotate else None
        try:
            new = dl.with_device_removed(current, ctx.account_key(), b64decode(device_id), rotate_to=new_key)
        except CryptoError as exc:
            raise UsageError(f"cannot remove device {device_id}: {exc}") from exc
        handoffs: dict[str, str] | None = None
        sealed_name = None
        if new_key is not None:
            account = b64decode(ctx.account_id)
            handoffs = {
                b64encode(e.device_id): b64encode(
                    account_keys.seal_handoff(e.dh_key, account, new.version, new_key, ctx.rng)
                )
                for e in new.content.devices  # this device's own copy too: a crash before the
            }  # commit below would otherwise lose the new key (it is fetched back on the next check)
            sealed_name = self.sealed_own_name(new_key)
        await ctx.call(api.put_device_list(new.to_b64(), handoffs, sealed_name))
        with ctx.transaction():
            if new_key is not None:
                ctx.put_state(ctx.state.with_account_key(new_key))
            # The server's push of the new list may have been verified meanwhile (the request
            # above is awaited without the lock): then the pin is there already and the removal
            # was announced by own_list_changed; announce it once, never pin an older list.
            pinned = ctx.store.device_lists.get_contact(ctx.account_id)
            pinned_version = 0 if pinned is None else dl.SignedDeviceList.decode(pinned.signed_list).version
            seen = pinned_version >= new.version
            if not seen:
                self.contacts.put_own_contact(new)
            ctx.store.sessions.delete_sessions(device_id)
            if not seen:
                ctx.emit(OwnDeviceUnlinked(device_id, self.name_of(device_id), new.version))
            if new_key is not None:
                ctx.emit(AccountKeyRotated(ctx.account_id, ctx.username, new.version, True))

    # -- another device changed the list --------------------------------------------------------------

    async def own_list_changed(self, v: trust.Verified, chain: list[bytes]) -> None:
        """After this account's verified list moved on: adopt a rotated key from its handoff, then
        tell the user which devices joined or left (with their names)."""
        ctx = self.ctx
        if v.rotated:
            await self._adopt_rotated_key(v, chain)
        if v.added:
            try:
                await self.refresh_names()
            except (NetworkError, ServerError, ProtocolError) as exc:
                log.info("device names not refreshed: %s", exc)
        for device_id in v.added:
            if device_id != ctx.device_id:
                ctx.emit(OwnDeviceLinked(device_id, self.name_of(device_id), v.version))
        for device_id in v.removed:
            ctx.emit(OwnDeviceUnlinked(device_id, self.name_of(device_id), v.version))

    async def _adopt_rotated_key(self, v: trust.Verified, chain: list[bytes]) -> None:
        ctx = self.ctx
        target = AccountPublicKey(v.account_key)
        mine = ctx.state.account_key
        if mine is not None and mine.public_key == target:
            return
        version = max(
            (s.version for s in map(dl.SignedDeviceList.decode, chain) if s.content.succession is not None),
            default=v.version,
        )
        reason = "no account-key handoff for this device"
        try:
            answer = await ctx.call(api.key_handoffs(version - 1))
            handoffs = api.parse_key_handoffs(answer.body)
        except (NetworkError, ServerError, ProtocolError) as exc:
            handoffs, reason = [], f"the account-key handoff could not be fetched: {exc}"
        for handoff_version, sealed in handoffs:
            if handoff_version != version:
                continue
            try:
                key = account_keys.open_handoff(
                    ctx.state.dh_key, b64decode(sealed), b64decode(ctx.account_id), version, target
                )
            except (account_keys.HandoffError, CryptoError) as exc:
                reason = str(exc)
                continue
            ctx.put_state(ctx.state.with_account_key(key))
            sealed_name = self.sealed_own_name(key)
            if sealed_name is not None:
                try:
                    await ctx.call(api.set_device_name(sealed_name))
                except (NetworkError, ServerError, ProtocolError) as exc:
                    log.info("device name not sealed again: %s", exc)
            return
        ctx.emit(AccountKeyUnavailable(version, reason))
