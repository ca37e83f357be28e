"""Linking a new device and its history (formats: :mod:`saltline.client_sdk.core.history` and
:mod:`saltline.client_sdk.core.linking`; docs/protocol/messages.md § linking, sync.md § history bundles)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import account_keys, api, linking, trust, wire
from saltline.client_sdk.core import history as fmt
from saltline.client_sdk.core.events import HistoryDownloadFailed
from saltline.client_sdk.errors import (
    LinkError,
    LinkNotConfirmedError,
    NetworkError,
    NotFoundError,
    ProtocolError,
    SaltlineError,
    ServerError,
    UsageError,
)
from saltline.client_sdk.facets.history_bundles import HistoryBundles, Sent
from saltline.client_sdk.facets.history_bundles import HistoryDepth as HistoryDepth
from saltline.client_sdk.stores.base import ContactRecord, ConversationRecord
from saltline.crypto import attachments
from saltline.crypto import device_list as dl
from saltline.crypto import primitives as p
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountKey, EphemeralKey, b64decode, b64encode
from saltline.crypto.safety import fingerprint_digits

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts
    from saltline.client_sdk.facets.conversations import Conversations
    from saltline.client_sdk.facets.inbound import Inbound
    from saltline.client_sdk.facets.prekeys import Prekeys

#: Ciphertext bytes per history bundle blob (a server with a smaller ``max_blob_bytes`` says so in
#: its 413 problem and the parts are made smaller).
HISTORY_PART_BYTES = 256 * 1024
#: How long both devices wait for the other in the follow-up (the provisioning channel lives 10
#: minutes) and how often they look (backing off from the first to the second interval).
LINK_FOLLOW_UP_WAIT_S = 600.0
LINK_POLL_S = 0.25
LINK_POLL_MAX_S = 5.0

#: How often a new device tries its history bundle, and the first pause between tries (doubling).
HISTORY_ATTEMPTS = 5
HISTORY_RETRY_S = 1.0
#: How long the approving device waits for the new device's answer to its hello.
LINK_REPLY_WAIT_S = 120.0


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What the approving device shows before anything is sent: the new device's id and name,
    and the confirmation code the new device shows too. Confirm only if both match."""

    device_id: str
    name: str
    code: str


@dataclass(frozen=True, slots=True)
class LinkConfirmation:
    """What the new device shows: the confirmation code, and the account it is about to join
    (username, id and the account's fingerprint digits, as in its safety numbers)."""

    code: str
    username: str
    account_id: str
    fingerprint: str


Confirm = Callable[[LinkRequest], "bool | Awaitable[bool]"]
OnCode = Callable[[LinkConfirmation], "bool | Awaitable[bool | None] | None"]


class Linking:
    def __init__(
        self,
        ctx: DeviceContext,
        contacts: Contacts,
        conversations: Conversations,
        prekeys: Prekeys,
        inbound: Inbound,
        task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.ctx = ctx
        self.contacts = contacts
        self.conversations = conversations
        self.prekeys = prekeys
        self.inbound = inbound
        self._task = task
        self._link: tuple[linking.LinkCode, EphemeralKey, str, str] | None = None
        #: First pause between history download attempts (doubling); tests shorten it.
        self.history_retry_s = HISTORY_RETRY_S
        #: Remembers a device's name (set by the client to the own-devices facet).
        self.remember_name: Callable[[str, str], None] = lambda _device_id, _name: None
        self.tasks: set[asyncio.Task[None]] = set()
        self.bundles = HistoryBundles(ctx, conversations)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._task(coro)
        self.tasks.add(task)

    # -- history bundles (built and merged by :mod:`saltline.client_sdk.facets.history_bundles`) --

    def history_bundle(self, depth: HistoryDepth, sent: Sent | None = None) -> dict[str, Any]:
        return self.bundles.history_bundle(depth, sent)

    def seed_history(self, bundle: dict[str, Any]) -> None:
        self.bundles.seed_history(bundle)

    async def merge_follow_up(self, bundle: dict[str, Any]) -> None:
        await self.bundles.merge_follow_up(bundle)

    async def _seal_bundle(self, bundle: dict[str, Any]) -> fmt.HistoryRef:
        encrypted = attachments.encrypt(wire.canonical_json(bundle), rng=self.ctx.rng)
        ids = await self._upload_parts(encrypted.ciphertext)
        return fmt.HistoryRef(tuple(ids), encrypted.key.encode(), encrypted.key.digest)

    async def _upload_parts(self, ciphertext: bytes) -> list[str]:
        part = HISTORY_PART_BYTES
        while True:
            ids: list[str] = []
            try:
                for start in range(0, len(ciphertext), part):
                    chunk = ciphertext[start : start + part]
                    ids.append(api.parse_blob_id((await self.ctx.call(api.upload_blob(chunk))).body))
                return ids
            except ServerError as exc:
                limit = exc.body.get("limit")
                if exc.status != 413 or not isinstance(limit, int) or not 0 < limit < part:
                    raise
                part = limit  # the parts already uploaded expire with the server's retention

    async def _download_bundle(self, ref: fmt.HistoryRef) -> dict[str, Any]:
        parts = [api.parse_blob((await self.ctx.call(api.download_blob(i))).body) for i in ref.blob_ids]
        ciphertext = b"".join(parts)
        try:
            key = attachments.AttachmentKey.decode(ref.key)
            if key.digest != ref.digest or p.sha256(ciphertext) != key.digest:
                raise LinkError("the history bundle does not match its digest")
            return wire.loads_object(attachments.decrypt(ciphertext, key))
        except (CryptoError, ValueError) as exc:
            raise LinkError(f"the history bundle is not valid: {exc}") from exc

    # -- the approving device ----------------------------------------------------------------------------

    async def _take(self, channel_id: str, take_secret: str, wait_s: float, what: str) -> bytes:
        """Wait for the next message on a channel this device can take from."""
        ctx = self.ctx
        deadline = time.monotonic() + wait_s
        delay = LINK_POLL_S
        while True:
            try:
                box = api.parse_provisioning(await ctx.call(api.take_provisioning(channel_id, take_secret)))
            except NotFoundError as exc:
                raise LinkError(f"the link expired before {what} came; show a new code") from exc
            if box is not None:
                try:
                    return b64decode(box)
                except CryptoError as exc:
                    raise LinkError(f"{what} is damaged; show a new code") from exc
            if time.monotonic() > deadline:
                raise LinkError(f"{what} did not come in time; show a new code")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, LINK_POLL_MAX_S)

    async def _put(self, channel_id: str, put_secret: str, box: bytes) -> None:
        try:
            await self.ctx.call(api.put_provisioning(channel_id, put_secret, b64encode(box)))
        except ServerError as exc:
            if exc.status == 409:
                raise LinkError(
                    "someone else answered this link code first (was it photographed?); "
                    "show a new code on the new device"
                ) from exc
            if exc.status == 404:
                raise LinkError("the link code expired or is not valid; show a new code") from exc
            raise

    async def approve(self, code_text: str, history: HistoryDepth, confirm: Confirm, wait_s: float) -> None:
        """Handshake with the new device (hello, its authenticated reply), ask the person to
        confirm its name and code, and only then issue a one-time grant and seal the account key,
        contacts and history to it."""
        ctx = self.ctx
        code = linking.LinkCode.parse(code_text)
        try:
            fmt.depth_cutoff(history, ctx.clock())
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        own = await self.contacts.refresh(ctx.account_id)
        account_pk = ctx.account_key().public_key
        if own.account_key != bytes(account_pk):
            raise LinkError(
                "this device does not hold the account's current key (it rotated while this device "
                "was away and no handoff reached it): approve the new device from another device"
            )
        approver = EphemeralKey.generate(ctx.rng)
        reply_channel = api.parse_provisioning_channel((await ctx.call(api.create_channel())).body)
        hello = linking.Hello(
            bytes(approver.public_key),
            reply_channel.channel_id,
            reply_channel.put_secret,
            ctx.account_id,
            ctx.username,
            account_pk,
        )
        code_channel = b64encode(code.channel_id)
        await self._put(code_channel, code.secret, linking.seal_payload(code, linking.encode_hello(hello)))
        raw = await self._take(
            reply_channel.channel_id, reply_channel.take_secret, wait_s, "the new device's answer"
        )
        reply = linking.open_reply(approver, code.link_public_key, raw)
        if reply.device_id != code.device_id:
            raise LinkError("the new device answered with another device id than its code names")
        try:
            name = account_keys.check_name(reply.name)
        except UsageError:
            name = account_keys.UNKNOWN_NAME
        request = LinkRequest(
            b64encode(reply.device_id),
            name,
            linking.confirmation_code(
                code.link_public_key, bytes(approver.public_key), reply.device_id, account_pk
            ),
        )
        decision = confirm(request)
        confirmed = await decision if inspect.isawaitable(decision) else decision
        if confirmed is not True:
            with contextlib.suppress(SaltlineError):
                await ctx.call(api.delete_provisioning(reply_channel.channel_id, reply_channel.take_secret))
            raise LinkNotConfirmedError("linking was not confirmed: nothing was sent to the new device")
        grant = api.parse_device_grant(
            (await ctx.call(api.device_grant(request.device_id, reply.signing_key))).body
        )
        ref: fmt.HistoryRef | None = None
        sent: Sent = {}
        if ctx.store.conversations.conversations():
            bundle = self.history_bundle(history)
            await ctx.flush()  # building it purged what expired: MessageExpired goes out now
            sent = {
                c["conversation_id"]: (c["floor_seq"], frozenset(o["seq"] for o in c["ops"]))
                for c in bundle["conversations"]
            }
            ref = await self._seal_bundle(bundle)
        follow_up = api.parse_provisioning_channel((await ctx.call(api.create_channel())).body)
        follow_up_key = ctx.rng(32)
        own = await self.contacts.refresh(ctx.account_id)
        payload = fmt.LinkPayload(
            ctx.account_id,
            ctx.username,
            bytes(ctx.account_key()),
            own.signed_list,
            tuple(
                fmt.LinkContact(c.account_id, c.username, c.account_key, c.signed_list)
                for c in ctx.store.device_lists.contacts()
                if c.account_id != ctx.account_id
            ),
            tuple(
                (c.conversation_id, c.kind, tuple(c.members)) for c in ctx.store.conversations.conversations()
            ),
            ref,
            (follow_up.channel_id, follow_up.take_secret, b64encode(follow_up_key)),
            grant.grant,
        )
        self.remember_name(request.device_id, name)
        box = linking.seal_payload(code, fmt.encode_link_payload(payload))
        await self._put(code_channel, code.secret, box)
        self._background(self._send_follow_up(follow_up_key, code, follow_up, history, sent))
        await ctx.flush()

    async def _send_follow_up(
        self,
        key: bytes,
        code: linking.LinkCode,
        channel: api.ProvisioningChannel,
        depth: HistoryDepth,
        sent: Sent,
    ) -> None:
        """Wait until the new device is in the verified device list, fetch what was stored until
        now and put the follow-up bundle (what the first one lacked) on the follow-up channel."""
        ctx = self.ctx
        deadline = time.monotonic() + LINK_FOLLOW_UP_WAIT_S
        delay = LINK_POLL_S
        while True:
            own = await self.contacts.refresh(ctx.account_id)
            if trust.verified_content(own.account_key, own.signed_list).device(code.device_id) is not None:
                break
            if time.monotonic() > deadline:
                raise LinkError("the new device did not join the account in time")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, LINK_POLL_MAX_S)
        await self.inbound.fill_gaps()
        async with ctx.lock:
            bundle = self.history_bundle(depth, sent)
        await ctx.flush()  # building it purged what expired: MessageExpired goes out now
        doc: dict[str, Any] = {"kind": fmt.FOLLOW_UP_KIND, "history": None}
        if bundle["conversations"]:
            doc["history"] = fmt.encode_ref(await self._seal_bundle(bundle))
        box = linking.seal_follow_up(key, doc, ctx.rng)
        await ctx.call(api.put_provisioning(channel.channel_id, channel.put_secret, b64encode(box)))

    # -- the new device ------------------------------------------------------------------------------------

    async def begin(self, name: str) -> str:
        ctx = self.ctx
        if ctx.device.account_id is not None:
            raise UsageError("this device is already linked to an account")
        name = account_keys.check_name(name)
        channel = api.parse_provisioning_channel((await ctx.call(api.create_channel())).body)
        link_key = EphemeralKey.generate(ctx.rng)
        code = linking.LinkCode(
            b64decode(channel.channel_id),
            channel.put_secret,
            bytes(link_key.public_key),
            b64decode(ctx.device_id),
        )
        self._link = (code, link_key, channel.take_secret, name)
        return code.to_text()

    async def complete(self, wait_s: float, on_code: OnCode | None) -> str:
        """Answer the approving device's hello (showing the account and the confirmation code),
        wait for the payload it seals once the person confirmed, join the account with the grant,
        log in and publish prekeys (reachable from then on), then download the history (retried
        in the background when it fails). Returns the account id."""
        ctx = self.ctx
        if self._link is None:
            raise UsageError("call begin_link() first")
        code, link_key, take_secret, name = self._link
        channel_id = b64encode(code.channel_id)
        raw = await self._take(channel_id, take_secret, wait_s, "an approval from your other device")
        hello = linking.parse_hello(linking.open_payload(link_key, code.secret, raw))
        shown = LinkConfirmation(
            linking.confirmation_code(
                code.link_public_key, hello.approver_key, code.device_id, hello.account_key
            ),
            hello.username,
            hello.account_id,
            fingerprint_digits(hello.account_key, hello.username),
        )
        if on_code is not None:
            result = on_code(shown)
            if inspect.isawaitable(result):
                result = await result
            if result is False:  # the person refused the account shown: it learns nothing of us
                with contextlib.suppress(SaltlineError):
                    await ctx.call(api.delete_provisioning(channel_id, take_secret))
                self._link = None
                raise LinkNotConfirmedError(
                    f"you did not accept joining {hello.username!r}: nothing was sent to it"
                )
        state = ctx.state
        reply = linking.Reply(
            code.device_id, name, bytes(state.signing_key.public_key), bytes(state.dh_key.public_key)
        )
        await self._put(
            hello.reply_channel,
            hello.reply_secret,
            linking.seal_reply(link_key, hello.approver_key, reply, ctx.rng),
        )
        raw = await self._take(channel_id, take_secret, wait_s, "the account from your other device")
        self._link = None
        payload = fmt.parse_link_payload(linking.open_payload(link_key, code.secret, raw))
        try:
            account_key = AccountKey(payload.account_key)
            username = dl.normalize_username(payload.username)
            current = dl.SignedDeviceList.decode(payload.device_list)
            dl.verify(current, account_key.public_key, username)
        except CryptoError as exc:
            raise LinkError(f"the linking payload is not valid: {exc}") from exc
        if (
            payload.account_id != hello.account_id
            or username != dl.normalize_username(hello.username)
            or account_key.public_key != hello.account_key
        ):
            raise LinkError("the linking payload names another account than the one shown; show a new code")
        with contextlib.suppress(SaltlineError):
            await ctx.call(api.delete_provisioning(channel_id, take_secret))
        state = state.with_account_key(account_key)
        entry = state.device_entry(current.content.root, ctx.clock(), current.version + 1)
        new = dl.with_device_added(current, account_key, entry)
        ctx.put_device(
            replace(ctx.device, state=state.encode(), username=username, account_id=payload.account_id), state
        )
        self.remember_name(ctx.device_id, name)
        sealed_name = b64encode(account_keys.seal_name(account_key, code.device_id, name, ctx.rng))
        await ctx.call(
            api.put_signed_device_list(payload.account_id, new.to_b64(), payload.grant, sealed_name)
        )
        with ctx.transaction():
            self.contacts.put_own_contact(new)
            for c in payload.contacts:
                trust.verified_content(c.account_key, c.signed_list)
                ctx.store.device_lists.put_contact(
                    ContactRecord(
                        c.account_id, c.username, c.account_key, c.signed_list, updated_at_ms=ctx.clock()
                    )
                )
            for cid, kind, members in payload.conversations:
                ctx.store.conversations.put_conversation(ConversationRecord(cid, kind, members))
        # reachable first: log in and publish prekeys before anything that can fail
        await ctx.device_login()
        await self.prekeys.upload_all()
        ctx.store.prekeys.put_prekey_meta(replace(ctx.store.prekeys.get_prekey_meta(), last_count_check_ms=0))
        seeded = True
        if payload.history is not None:
            seeded = await self._seed_once(payload.history, 1)
        if not seeded or payload.follow_up is not None:
            self._background(self._history_then_follow_up(payload, seeded))
        return payload.account_id

    async def _seed_once(self, ref: fmt.HistoryRef, attempt: int) -> bool:
        ctx = self.ctx
        try:
            bundle = await self._download_bundle(ref)
            with ctx.transaction():
                self.seed_history(bundle)
            return True
        except (LinkError, NetworkError, ServerError, ProtocolError) as exc:
            retrying = attempt < HISTORY_ATTEMPTS
            ctx.emit(HistoryDownloadFailed(attempt, HISTORY_ATTEMPTS, str(exc), retrying))
            await ctx.flush()
            return False

    async def _history_then_follow_up(self, payload: fmt.LinkPayload, seeded: bool) -> None:
        attempt = 1
        delay = self.history_retry_s
        while not seeded and payload.history is not None and attempt < HISTORY_ATTEMPTS:
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1
            seeded = await self._seed_once(payload.history, attempt)
        if not seeded:
            raise LinkError("the history could not be downloaded; this device works without it")
        if payload.follow_up is not None:
            await self._receive_follow_up(payload.follow_up)

    async def _receive_follow_up(self, channel: tuple[str, str, str]) -> None:
        channel_id, secret, key_b64 = channel
        raw = await self._take(channel_id, secret, LINK_FOLLOW_UP_WAIT_S, "the follow-up of the link")
        try:
            key = b64decode(key_b64)
        except CryptoError as exc:
            raise LinkError("the follow-up of the link is damaged") from exc
        ref = fmt.parse_follow_up(linking.open_follow_up(key, raw))
        if ref is not None:
            await self.merge_follow_up(await self._download_bundle(ref))

    async def finish(self, wait_s: float) -> None:
        tasks = list(self.tasks)
        if not tasks:
            return
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), wait_s)
        finally:
            self.tasks.difference_update(t for t in tasks if t.done())
