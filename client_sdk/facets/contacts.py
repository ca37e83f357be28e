"""Accounts, contacts and trust: registration and login, verified device lists (rules:
:mod:`saltline.client_sdk.core.trust`), identity changes, safety numbers, this account's devices."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, trust
from saltline.client_sdk.core.events import (
    AccountKeyRotated,
    DeviceListChanged,
    IdentityChanged,
    UntrustedDeviceList,
)
from saltline.client_sdk.errors import (
    IdentityChangedError,
    NetworkError,
    ProtocolError,
    ServerError,
    UntrustedDeviceListError,
    UsageError,
)
from saltline.client_sdk.stores.base import ContactRecord
from saltline.crypto import device_list as dl
from saltline.crypto import safety
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountKey, AccountPublicKey, b64decode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.prekeys import Prekeys

#: Lists per page of ``GET /v1/accounts/{id}/device-lists``.
CHAIN_PAGE = 100
#: Lists fetched in one refresh at most (versions are one per change; an account that changed its
#: devices more often than this is refused rather than followed without bound).
MAX_CHAIN = 10_000
#: Times a refresh starts again because another one pinned a newer list while it fetched.
PIN_RACES = 4


log = logging.getLogger(__name__)


def normalize_username(username: str) -> str:
    try:
        return dl.normalize_username(username)
    except CryptoError as exc:
        raise UsageError(f"not a valid username: {username!r} ({exc})") from exc


class Contacts:
    def __init__(self, ctx: DeviceContext, prekeys: Prekeys) -> None:
        self.ctx = ctx
        self.prekeys = prekeys
        #: Called after this account's own verified list changed (the own-devices facet: key
        #: handoff after a rotation, linked/unlinked events with names).
        self.on_own_list: Callable[[trust.Verified, list[bytes]], Awaitable[None]] | None = None

    # -- accounts ------------------------------------------------------------------------------------

    async def register(self, username: str, password: str) -> str:
        ctx = self.ctx
        if ctx.device.account_id is not None:
            raise UsageError("this device already belongs to an account")
        username = normalize_username(username)
        state = ctx.state
        account_key = state.account_key or AccountKey.generate(ctx.rng)
        state = state.with_account_key(account_key)
        signed = dl.first(account_key, username, [state.device_entry(account_key.public_key, ctx.clock())])
        ctx.put_device(replace(ctx.device, state=state.encode(), username=username), state)
        r = await ctx.call(
            api.register(username, password, account_key.public_key.to_b64(), signed.to_b64(), ctx.device_id)
        )
        tokens = api.parse_register(r.body)
        with ctx.transaction():
            ctx.put_device(replace(ctx.device, account_id=tokens.account_id))
            ctx.adopt_tokens(tokens)
            self.put_own_contact(signed)
        await self.prekeys.upload_all()
        return tokens.account_id

    async def login(self, username: str | None, password: str | None) -> None:
        ctx = self.ctx
        if password is None:
            await ctx.device_login()
            return
        name = normalize_username(username or ctx.username)
        r = await ctx.call(api.login(name, password, ctx.device_id))
        tokens = api.parse_tokens(r.body)
        ctx.put_device(replace(ctx.device, username=name, account_id=tokens.account_id))
        ctx.adopt_tokens(tokens)

    def put_own_contact(self, signed: dl.SignedDeviceList) -> None:
        ctx = self.ctx
        old = ctx.store.device_lists.get_contact(ctx.account_id)
        record = ContactRecord(
            account_id=ctx.account_id,
            username=ctx.username,
            account_key=bytes(ctx.account_key().public_key),
            signed_list=signed.encode(),
            verified=True,
            updated_at_ms=ctx.clock(),
        )
        if old is not None:
            record = replace(
                old,
                account_key=bytes(signed.content.account_key),  # moved on by a rotation this device made
                signed_list=signed.encode(),
                updated_at_ms=ctx.clock(),
            )
        ctx.store.device_lists.put_contact(record)

    # -- device lists ---------------------------------------------------------------------------------

    async def _fetch_chain(self, account_id: str, since: int) -> list[bytes]:
        """The lists after version ``since``, page by page. Each page must continue the versions
        (``since + 1``, ``since + 2``, ...) and the whole chain is bounded (:data:`MAX_CHAIN`), so a
        server cannot keep a client paging for ever or fill its memory."""
        out: list[bytes] = []
        while True:
            r = await self.ctx.call(api.device_list_chain(account_id, since, CHAIN_PAGE))
            try:
                page = [b64decode(s) for s in api.parse_chain(r.body)]
                for raw in page:
                    version = dl.SignedDeviceList.decode(raw).version
                    if version != since + 1:
                        raise UntrustedDeviceListError(
                            f"the server's device-list chain jumps from version {since} to {version}"
                        )
                    since = version
                out.extend(page)
                if len(out) > MAX_CHAIN:
                    raise UntrustedDeviceListError(f"the device-list chain is longer than {MAX_CHAIN} lists")
                if len(page) < CHAIN_PAGE:
                    return out
            except CryptoError as exc:
                raise UntrustedDeviceListError(f"the server sent a malformed device list: {exc}") from exc

    async def refresh(
        self, account_id: str, username: str | None = None, *, vouched_key: bytes | None = None
    ) -> ContactRecord:
        """Fetch and verify the account's newest device list (rules in :mod:`saltline.client_sdk.core.trust`).
        ``vouched_key``: the account key a conversation's genesis or add names for a contact this
        device meets for the first time; a first list under another key is refused, not pinned
        (docs/protocol/sync.md § 5.7). Events are queued on the context (published by the
        caller's flush)."""
        # The fetches below are awaited: another refresh of the same account (a pushed list, a
        # send, this device's own add or remove) may pin a newer list meanwhile. Verifying against
        # the pin read before the await would announce that change a second time or put the older
        # list back, so a refresh whose pin moved starts again from the new one.
        for _ in range(PIN_RACES):
            contact = await self._refresh_once(account_id, username, vouched_key)
            if contact is not None:
                return contact
        contact = self.ctx.store.device_lists.get_contact(account_id)
        if contact is None:  # pinned and then forgotten, again and again: nothing to trust
            raise UntrustedDeviceListError(f"the device list of account {account_id} kept changing")
        return contact

    def _pin_moved(self, account_id: str, before: ContactRecord | None) -> bool:
        now = self.ctx.store.device_lists.get_contact(account_id)
        if before is None or now is None:
            return (before is None) != (now is None)
        return (now.signed_list, now.account_key, now.pending_signed_list) != (
            before.signed_list,
            before.account_key,
            before.pending_signed_list,
        )

    async def _refresh_once(
        self, account_id: str, username: str | None, vouched_key: bytes | None
    ) -> ContactRecord | None:
        """One refresh; ``None`` when the pin moved while the chain was fetched."""
        ctx = self.ctx
        contact = ctx.store.device_lists.get_contact(account_id)
        if contact is None:
            if username is None:
                username = api.parse_account((await ctx.call(api.account(account_id))).body).username
            chain = await self._fetch_chain(account_id, 0)
            if self._pin_moved(account_id, None):
                return None
            try:
                v = trust.first_contact(username, chain)
            except UntrustedDeviceListError as exc:
                ctx.emit(UntrustedDeviceList(account_id, str(exc)))
                raise
            name = normalize_username(username)
            pinned = ctx.store.device_lists.get_contact_by_username(name)
            if trust.username_taken(name, account_id, None if pinned is None else pinned.account_id):
                assert pinned is not None
                ctx.emit(IdentityChanged(account_id, name, pinned.trust_policy, True, pinned.account_id))
                raise UntrustedDeviceListError(
                    f"account {account_id} claims the username {name!r}, which this device pinned to "
                    f"account {pinned.account_id}: refused"
                )
            self._refuse_collisions(account_id, v.signed_list, v.account_key)
            if vouched_key is not None and vouched_key not in v.keys:
                reason = (
                    f"the server's device list for {account_id} is signed by another account key "
                    "than the one the conversation's membership names: refused, not pinned"
                )
                ctx.emit(UntrustedDeviceList(account_id, reason))
                raise UntrustedDeviceListError(reason)
            contact = ContactRecord(
                account_id,
                name,
                v.account_key,
                v.signed_list,
                updated_at_ms=ctx.clock(),
            )
            ctx.store.device_lists.put_contact(contact)
            return contact
        try:
            known = dl.SignedDeviceList.decode(contact.signed_list)
        except CryptoError as exc:
            raise UntrustedDeviceListError(f"a stored device list no longer decodes: {exc}") from exc
        chain = await self._fetch_chain(account_id, known.version)
        if self._pin_moved(account_id, contact):
            return None
        try:
            v = trust.advance(contact.username, contact.account_key, contact.signed_list, chain)
        except UntrustedDeviceListError as exc:
            ctx.emit(UntrustedDeviceList(account_id, str(exc)))
            raise
        except trust.KeyMismatch:
            return await self._identity_changed(contact)
        if v.changed:
            self._refuse_collisions(account_id, v.signed_list, v.account_key)
            # a verified succession moves the pinned key on; verified flag and policy are kept
            contact = replace(
                contact, account_key=v.account_key, signed_list=v.signed_list, updated_at_ms=ctx.clock()
            )
            with ctx.transaction():
                ctx.store.device_lists.put_contact(contact)
                for device_id in v.removed:
                    ctx.store.sessions.delete_sessions(device_id)
                ctx.emit(DeviceListChanged(account_id, contact.username, v.version, v.added, v.removed))
                if v.rotated:
                    ctx.emit(AccountKeyRotated(account_id, contact.username, v.version, contact.verified))
            if account_id == ctx.device.account_id and self.on_own_list is not None:
                await self.on_own_list(v, chain)
        else:
            contact = replace(contact, updated_at_ms=ctx.clock())  # verified as current now
            ctx.store.device_lists.put_contact(contact)
        return contact

    def _refuse_collisions(self, account_id: str, signed_list: bytes, account_key: bytes) -> None:
        """Rule 5 of :mod:`saltline.client_sdk.core.trust`: refuse a list naming another account's device."""
        ctx = self.ctx
        content = trust.verified_content(account_key, signed_list)
        others = {}
        for c in ctx.store.device_lists.contacts():
            if c.account_id != account_id:
                with contextlib.suppress(UntrustedDeviceListError):
                    others[c.account_id] = trust.verified_content(c.account_key, c.signed_list)
        clashes = trust.device_id_collisions(account_id, content, others)
        if clashes:
            device_id, other = clashes[0]
            reason = f"its device list names device {device_id}, which belongs to account {other}"
            ctx.emit(UntrustedDeviceList(account_id, reason))
            raise UntrustedDeviceListError(f"device list of account {account_id} refused: {reason}")

    async def _identity_changed(self, contact: ContactRecord) -> ContactRecord | None:
        ctx = self.ctx
        chain = await self._fetch_chain(contact.account_id, 0)
        if self._pin_moved(contact.account_id, contact):
            return None
        try:
            v = trust.first_contact(contact.username, chain)
            trust.refuse_fork(contact.signed_list, chain)
        except UntrustedDeviceListError as exc:
            ctx.emit(UntrustedDeviceList(contact.account_id, str(exc)))
            raise
        self._refuse_collisions(contact.account_id, v.signed_list, v.account_key)
        adopt = trust.identity_change(
            contact.trust_policy,
            own_account=contact.account_id == ctx.device.account_id,
            verified=contact.verified,
        )
        if adopt:
            contact = replace(
                contact,
                account_key=v.account_key,
                signed_list=v.signed_list,
                verified=False,
                updated_at_ms=ctx.clock(),
            )
        else:
            contact = replace(contact, pending_account_key=v.account_key, pending_signed_list=v.signed_list)
        with ctx.transaction():
            ctx.store.device_lists.put_contact(contact)
            ctx.emit(IdentityChanged(contact.account_id, contact.username, contact.trust_policy, not adopt))
        return contact

    async def verified_lists(
        self, members: list[str], vouched: Callable[[bytes], bytes | None] = lambda _: None
    ) -> dict[str, dl.DeviceList]:
        """Every member's verified device list. ``vouched``: the account key the conversation's
        genesis or add named for an account: a contact met here for the first time must have it
        (a contact pinned before keeps its own trust state and policy, sync.md § 5.7)."""
        lists: dict[str, dl.DeviceList] = {}
        for account_id in members:
            contact = self.ctx.store.device_lists.get_contact(account_id)
            if contact is None:  # first met here: the key the membership names is the anchor
                contact = await self.refresh(account_id, vouched_key=vouched(b64decode(account_id)))
            elif trust.refresh_due(contact.updated_at_ms, self.ctx.clock()):
                try:
                    contact = await self.refresh(account_id)
                except (NetworkError, ServerError, ProtocolError, UntrustedDeviceListError) as exc:
                    # unreachable, or a newer list that does not verify (reported by refresh):
                    # send with the list verified last
                    log.info("device list of %s not refreshed: %s", account_id, exc)
            if trust.send_blocked(contact.pending_account_key):
                raise IdentityChangedError(contact.username)
            lists[account_id] = trust.verified_content(contact.account_key, contact.signed_list)
        return lists

    async def by_username(self, username: str) -> ContactRecord:
        ctx = self.ctx
        name = normalize_username(username)
        contact = ctx.store.device_lists.get_contact_by_username(name)
        if contact is not None:
            return contact
        info = api.parse_account((await ctx.call(api.account_by_username(name))).body)
        if normalize_username(info.username) != name:
            reason = f"the server answered a lookup of {name!r} with the account of {info.username!r}"
            ctx.emit(UntrustedDeviceList(info.account_id, reason))
            raise UntrustedDeviceListError(reason)
        contact = await self.refresh(info.account_id, name)
        if AccountPublicKey(contact.account_key).to_b64() != info.account_key:
            raise UntrustedDeviceListError(f"the server gave two different account keys for {name!r}")
        return contact

    async def resolve(self, username: str | None, account_id: str | None) -> ContactRecord:
        """A contact named by exactly one of its pinned username or its account id (verification
        and safety numbers work by account id: a username is only a pinned alias of one)."""
        if (username is None) == (account_id is None):
            raise UsageError("name a contact by its username or by its account id (exactly one)")
        if account_id is not None:
            contact = self.ctx.store.device_lists.get_contact(account_id)
            return contact if contact is not None else await self.refresh(account_id)
        assert username is not None
        return await self.by_username(username)

    async def safety_number(
        self, username: str | None = None, account_id: str | None = None
    ) -> safety.SafetyNumber:
        ctx = self.ctx
        contact = await self.resolve(username, account_id)
        return safety.safety_number(
            ctx.account_key().public_key,
            ctx.username,
            AccountPublicKey(contact.account_key),
            contact.username,
        )

    async def verify(self, username: str | None = None, account_id: str | None = None) -> None:
        contact = await self.resolve(username, account_id)
        if contact.pending_account_key is not None and contact.pending_signed_list is not None:
            contact = replace(
                contact,
                account_key=contact.pending_account_key,
                signed_list=contact.pending_signed_list,
                pending_account_key=None,
                pending_signed_list=None,
            )
        self.ctx.store.device_lists.put_contact(replace(contact, verified=True))

    async def set_trust_policy(
        self, username: str | None, policy: str, account_id: str | None = None
    ) -> None:
        if policy not in ("warn", "block"):
            raise UsageError('trust policy must be "warn" or "block"')
        contact = await self.resolve(username, account_id)
        self.ctx.store.device_lists.put_contact(replace(contact, trust_policy=policy))  # type: ignore[arg-type]
