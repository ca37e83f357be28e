"""The async Saltline client: the SDK's public API, a façade over the facets.

::

    store = MemoryStore()                       # or the durable SQLite store
    client = await Client.create("http://127.0.0.1:8000", store)
    await client.register("alice", "a long passphrase")
    await client.connect()                      # delivery socket (reconnects by itself)
    cid = await client.create_conversation(["bob"])
    await client.send_text(cid, "hi bob")
    async for event in client.events():         # or client.on(MessageReceived, callback)
        ...
    await client.close()

Everything the client learns is written to the store before it is acknowledged to the server
or emitted as an event; messages are written to the outbox before the network sees them. The rules
live in :mod:`saltline.client_sdk.core`; the facets in :mod:`saltline.client_sdk.facets` apply them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from saltline.client_sdk.context import DeviceContext, now_ms
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.backoff import BackoffPolicy
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.emoji import require_emoji
from saltline.client_sdk.core.events import (
    AttachmentDownloaded,
    AttachmentDownloadFailed,
    Event,
    MarkedRead,
    MessageReceived,
    Reaction,
)
from saltline.client_sdk.core.views import ConversationView, MessageItem
from saltline.client_sdk.errors import (
    AttachmentError,
    NetworkError,
    ProtocolError,
    SaltlineError,
    ServerError,
    UsageError,
)
from saltline.client_sdk.facets.attachments import Attachments, Progress, Source
from saltline.client_sdk.facets.contacts import Contacts
from saltline.client_sdk.facets.delivery import Delivery
from saltline.client_sdk.facets.inbound import Inbound
from saltline.client_sdk.facets.linking import (
    LINK_FOLLOW_UP_WAIT_S,
    LINK_REPLY_WAIT_S,
    Confirm,
    HistoryDepth,
    LinkConfirmation,
    Linking,
    LinkRequest,
    OnCode,
)
from saltline.client_sdk.facets.outbound import Outbound, OutboxEntry
from saltline.client_sdk.facets.own_devices import DeviceInfo, OwnDevices
from saltline.client_sdk.facets.prekeys import Prekeys
from saltline.client_sdk.facets.timeline import ConversationDirectory, ConversationSummary, TimelineMessage
from saltline.client_sdk.stores.base import DeviceRecord, MessageRecord, PreKeyMeta, Store
from saltline.client_sdk.transport.http import HttpTransport
from saltline.crypto import primitives as p
from saltline.crypto import private_state, safety
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.bot import Bot

E = TypeVar("E", bound=Event)
T = TypeVar("T")
log = logging.getLogger("saltline.client_sdk.client")

#: One-time prekeys generated with a new device.
PREKEY_BATCH = 100


class Client:
    """One device of one account. Create with :meth:`create`; close with :meth:`close`."""

    def __init__(self, ctx: DeviceContext, ws_url: str, backoff: BackoffPolicy | None = None) -> None:
        self._ctx = ctx
        self.store = ctx.store
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the disappearing-messages timer (runs until :meth:`close`; not one of the tasks that end)
        self._expiry: asyncio.Task[None] | None = None
        self._closed = False
        self.prekeys = Prekeys(ctx)
        self.contacts = Contacts(ctx, self.prekeys)
        self.own_devices = OwnDevices(ctx, self.contacts)
        #: the conversations facet; ``client.conversations()`` lists the conversations
        self.conversations = ConversationDirectory(ctx, self.contacts)
        self.outbound = Outbound(ctx, self.contacts, self.conversations, lambda: self.delivery.socket)
        self.inbound = Inbound(
            ctx, self.contacts, self.conversations, self.prekeys, self.outbound, self._spawn
        )
        self.outbound.fill_gap = self.inbound.fill_conversation
        self.conversations.disappearing.send_outbox = self.outbound.flush
        self.linking = Linking(ctx, self.contacts, self.conversations, self.prekeys, self.inbound, self._task)
        self.linking.remember_name = self.own_devices.remember_name
        self.delivery = Delivery(ctx, self.inbound, ws_url, backoff, self._task)
        self.attachments = Attachments(ctx, self.outbound)
        ctx.bus.on(MessageReceived, self._auto_download)

    # -- lifecycle --------------------------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        server_url: str,
        store: Store,
        *,
        ws_url: str | None = None,
        http_transport: httpx.AsyncBaseTransport | None = None,
        rng: p.Rng = p.random_bytes,
        clock: Callable[[], int] = now_ms,
        backoff: BackoffPolicy | None = None,
    ) -> Client:
        """Open ``store`` (taking exclusive use of it) and create this device's keys if it has none.
        An existing store continues where it stopped (sessions, outbox, cursors). ``backoff``: the
        reconnect policy of the delivery socket."""
        store.acquire()
        try:
            if store.identity.get_device() is None:
                state = private_state.generate_device(one_time_prekeys=PREKEY_BATCH, rng=rng)
                store.identity.put_device(
                    DeviceRecord(b64encode(state.device_id), state.encode(), created_at_ms=clock())
                )
        except BaseException:
            store.release()
            raise
        ws = ws_url or server_url.replace("https://", "wss://").replace("http://", "ws://")
        ctx = DeviceContext(store, HttpTransport(server_url, transport=http_transport), rng, clock)
        client = cls(ctx, ws, backoff)
        # disappearing messages (sync.md § 5.8): what expired while closed goes now, then a timer
        client.conversations.disappearing.purge_all()
        client._expiry = asyncio.get_running_loop().create_task(client.conversations.disappearing.run())
        await ctx.flush()
        return client

    async def close(self) -> None:
        """Stop the socket and release the store. Unsent messages stay in the outbox."""
        if self._closed:
            return
        self._closed = True
        self.outbound.stop()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(BaseException):
                await self._expiry
        await self.disconnect()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._ctx.http.aclose()
        self.store.release()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if (
                not t.cancelled()
                and t.exception() is not None
                and not isinstance(t.exception(), SaltlineError)
            ):
                log.error("background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._task(coro)

    # -- identity ---------------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self._ctx.device_id

    @property
    def account_id(self) -> str:
        return self._ctx.account_id

    @property
    def username(self) -> str:
        return self._ctx.username

    # -- events ----------------------------------------------------------------------------------------

    def on(self, event_type: type[E], callback: Callable[[E], Any], *, at_least_once: bool = False) -> None:
        """Call ``callback(event)`` (a function or coroutine function) for every event of
        ``event_type`` or a subclass. A callback that raises is logged and never stops delivery.
        ``at_least_once`` (for :class:`MessageReceived`): a message is acknowledged only after the
        callback returned, and offered again after a restart or reconnection if it raised."""
        self._ctx.bus.on(event_type, callback, at_least_once=at_least_once)

    def events(self) -> AsyncIterator[Event]:
        """Every event, in order (buffered up to a bound: the oldest go first when nobody reads)."""
        return self._ctx.bus.events()

    async def next_event(self, event_type: type[E], wait_s: float = 10.0) -> E:
        """The next event of ``event_type``; other events stay buffered. :class:`TimeoutError`."""
        return await self._ctx.bus.next_event(event_type, wait_s)

    # -- accounts, prekeys, contacts ---------------------------------------------------------------------

    async def register(self, username: str, password: str) -> str:
        """Create an account with this device as its first device; returns the account id."""
        return await self._flushed(self.contacts.register(username, password))

    async def login(self, username: str | None = None, password: str | None = None) -> None:
        """Log in: with a password, or (no password) by device-key challenge."""
        await self._flushed(self.contacts.login(username, password))

    async def replenish_prekeys(self) -> int:
        return await self.prekeys.replenish()

    async def rotate_signed_prekey_if_due(self) -> bool:
        return await self.prekeys.rotate_if_due()

    async def expire_previous_prekeys_if_due(self) -> bool:
        return await self.prekeys.expire_if_due()

    async def maintain_prekeys(self) -> None:
        """Replenish one-time prekeys, delete expired replaced prekeys, rotate the signed prekey."""
        await self.prekeys.maintain()

    async def devices(self) -> list[DeviceInfo]:
        """This account's devices, from its verified device list, with their names."""
        return await self._flushed(self.own_devices.devices())

    async def remove_device(self, device_id: str, *, rotate_account_key: bool = True) -> None:
        """Sign and publish a device list without ``device_id``; nobody encrypts to it any more.
        By default the account key rotates too, so the removed device (which held the old key)
        can sign nothing any contact accepts; the remaining devices receive the new key."""
        await self._flushed(self.own_devices.remove(device_id, rotate=rotate_account_key))

    async def set_device_name(self, name: str) -> None:
        """Name this device (1..64 characters, end-to-end encrypted: only the account's devices
        read it); the account's other devices show it in their device list and events."""
        await self._flushed(self.own_devices.set_name(name))

    async def safety_number(
        self, username: str | None = None, *, account_id: str | None = None
    ) -> safety.SafetyNumber:
        """The safety number with a contact named by its pinned username or its account id."""
        return await self._flushed(self.contacts.safety_number(username, account_id))

    async def verify_contact(self, username: str | None = None, *, account_id: str | None = None) -> None:
        """Mark the contact verified (after comparing safety numbers); accepts a pending new key.
        Name it by its pinned username or its account id."""
        await self._flushed(self.contacts.verify(username, account_id))

    async def set_trust_policy(
        self, username: str | None, policy: str, *, account_id: str | None = None
    ) -> None:
        await self._flushed(self.contacts.set_trust_policy(username, policy, account_id))

    # -- conversations -----------------------------------------------------------------------------------

    async def create_conversation(self, usernames: Sequence[str]) -> str:
        """A conversation with these people (a direct one for one person); returns its id. A new
        conversation starts with this device's genesis operation (its authenticated members)."""
        cid, genesis = await self._flushed(self.conversations.create(usernames))
        if genesis is not None:
            await self.outbound.send_op(cid, genesis)
        return cid

    def messages(self, conversation_id: str, limit: int = 1000) -> Sequence[MessageRecord]:
        """The stored messages of a conversation in display order, with their current text (an
        edit's; ``""`` once deleted). :meth:`timeline` has the whole current state."""
        return self.conversations.current(self.conversations.messages(conversation_id, limit))

    async def timeline(self, conversation_id: str, limit: int = 1000) -> list[TimelineMessage]:
        """The last ``limit`` messages as they stand now: edited text, deletion tombstones,
        reactions, replies, read state, pending and failed sends (text ids, usernames)."""
        return await self._flushed(self.conversations.timeline(conversation_id, limit))

    def username_of(self, account_id: str) -> str | None:
        """The username this device pinned for ``account_id`` (None: not a contact yet)."""
        return self.conversations.username_of(account_id)

    async def conversation(self, conversation_id: str) -> ConversationView:
        """The materialised state (messages with current text, edited and deleted flags, reactions,
        read markers, settings, members), replayed from the store; text ids, usernames included."""
        return await self._flushed(self.conversations.public_view(conversation_id))

    async def unread(self, conversation_id: str) -> int:
        """Messages of other accounts after this account's read marker (any of its devices)."""
        return (await self.conversation(conversation_id)).unread(self.account_id)

    async def _flushed(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        finally:
            await self._ctx.flush()

    # -- attachments (client_sdk/facets/attachments.py) ---------------------------------------------------

    async def send_file(
        self,
        conversation_id: str,
        source: Source,
        *,
        name: str | None = None,
        mime: str | None = None,
        caption: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Encrypt ``source`` (a path, bytes or an async iterator of bytes) with a fresh key,
        upload it resumably, then send the message through the outbox; returns its envelope id.
        :class:`~saltline.client_sdk.errors.AttachmentError` and its subclasses for what went wrong."""
        try:
            return await self._flushed(
                self.attachments.send_file(
                    conversation_id, source, name=name, mime=mime, caption=caption, progress=progress
                )
            )
        except OSError as exc:  # the file could not be read (or spooled)
            raise AttachmentError(f"cannot send {source!r}: {exc}") from exc

    async def download(
        self, attachment: AttachmentPointer, destination: str | Path, progress: Progress | None = None
    ) -> Path:
        """Fetch, verify and decrypt an attachment (``MessageReceived.attachment``) to
        ``destination`` (a file, or a directory to keep its name in); resumes an earlier try."""
        return await self.attachments.download(attachment, destination, progress)

    async def resume_uploads(self) -> list[str]:
        """Finish uploads a restart interrupted (and send their messages); their envelope ids."""
        return await self._flushed(self.attachments.resume_uploads())

    def set_auto_download(self, max_bytes: int, directory: str | Path | None) -> None:
        """Download received attachments up to ``max_bytes`` into ``directory`` by themselves."""
        self.attachments.auto_download_bytes = max_bytes
        self.attachments.download_dir = None if directory is None else Path(directory)

    async def _auto_download(self, event: MessageReceived) -> None:
        pointer = event.attachment
        if pointer is None or event.sent_by_me:
            return
        try:
            path = await self.attachments.auto_download(event.conversation_id, event.envelope_id, pointer)
        except (SaltlineError, OSError) as exc:
            cid, eid, ref = event.conversation_id, event.envelope_id, event.message_ref
            self._ctx.emit(AttachmentDownloadFailed(cid, eid, str(exc), ref))
        else:
            if path is not None:
                cid, eid, ref = event.conversation_id, event.envelope_id, event.message_ref
                self._ctx.emit(AttachmentDownloaded(cid, eid, str(path), ref))
        await self._ctx.flush()

    # -- operations ---------------------------------------------------------------------------------------

    async def send_text(self, conversation_id: str, text: str) -> str:
        """Write the message to the outbox, then try to send it; returns its envelope id. A message
        too large for its recipients raises :class:`~saltline.client_sdk.errors.MessageTooLargeError` and is
        not queued. If the server cannot be reached it stays in the outbox and is sent later."""
        return await self.outbound.send_op(conversation_id, sync.Message(text, None, self._ctx.clock()))

    async def reply(self, conversation_id: str, message_ref: str, text: str) -> str:
        dot = self.conversations.message_dot(conversation_id, message_ref)
        return await self.outbound.send_op(conversation_id, sync.Message(text, dot, self._ctx.clock()))

    async def edit(self, conversation_id: str, message_ref: str, text: str) -> str:
        """Edit a message of this account (last writer wins; a concurrent delete wins)."""
        dot = self.conversations.message_dot(conversation_id, message_ref)
        return await self.outbound.send_op(conversation_id, sync.Edit(dot, text))

    async def delete(self, conversation_id: str, message_ref: str) -> str:
        dot = self.conversations.message_dot(conversation_id, message_ref)
        return await self.outbound.send_op(conversation_id, sync.Delete(dot))

    async def react(self, conversation_id: str, message_ref: str, emoji: str) -> str:
        """React with exactly one emoji (:class:`UsageError` otherwise; a peer's invalid reaction
        is never shown: :class:`OperationRejected` with reason ``invalid_reaction``)."""
        require_emoji(emoji)
        dot = self.conversations.message_dot(conversation_id, message_ref)
        return await self.outbound.send_op(conversation_id, sync.ReactionAdd(dot, emoji))

    async def unreact(self, conversation_id: str, message_ref: str, emoji: str) -> str:
        require_emoji(emoji)
        dot = self.conversations.message_dot(conversation_id, message_ref)
        return await self.outbound.send_op(conversation_id, sync.ReactionRemove(dot, emoji))

    def set_read_receipts(self, enabled: bool) -> None:
        """Whether this device's read markers are shown to other members as read receipts."""
        self.store.sync.put_setting("read_receipts", "1" if enabled else "0")

    async def mark_read(self, conversation_id: str, up_to_server_seq: int | None = None) -> str:
        """Move this account's read marker (default: the newest message); every device of the
        account clears its unread count, other members see a read receipt unless turned off."""
        state = self.conversations.state(await self.conversations.record(conversation_id))
        up_to = up_to_server_seq
        if up_to is None:
            up_to = max((m.seq for m in state.view().messages), default=state.received_seq)
        receipts = self.store.sync.get_setting("read_receipts") != "0"
        envelope_id = await self.outbound.send_op(conversation_id, sync.ReadMarker(up_to, receipts))
        await self._ctx.bus.publish(MarkedRead(conversation_id, up_to))
        return envelope_id

    async def set_title(self, conversation_id: str, title: str | None) -> str:
        return await self.outbound.send_op(conversation_id, sync.SettingsChange("title", title))

    async def set_mute(self, conversation_id: str, muted: bool) -> str:
        return await self.outbound.send_op(conversation_id, sync.SettingsChange("mute", muted))

    async def set_disappearing_timer(self, conversation_id: str, ms: int | None) -> str:
        """Messages sent from now on (in this conversation's causal order) disappear ``ms`` after
        they were sent, on every device; None or 0: never (docs/protocol/sync.md § 5.8)."""
        return await self.outbound.send_op(conversation_id, sync.SettingsChange("disappearing_ms", ms))

    async def expire_messages(self) -> int:
        """Purge the messages whose timer ran out now (the client also does it by itself: on
        open, after every operation and on a timer); returns how many went."""
        async with self._ctx.lock:
            count = self.conversations.disappearing.purge_all()
            voided = self.conversations.disappearing.purged_outbox
        await self._ctx.flush()
        if voided:
            await self.outbound.flush()
        return count

    async def add_member(self, conversation_id: str, username: str, *, admin: bool = False) -> str:
        """Add an account to a group (``admin``: as an admin; promotes a member). Only an admin
        may (:class:`NotAllowedError` otherwise): on the server, then as a membership operation
        that every member's device checks (docs/protocol/sync.md § 5.7)."""
        from saltline.client_sdk.core import api

        contact = await self._flushed(self.contacts.by_username(username))
        change = sync.MembershipChange(b64decode(contact.account_id), True, admin, key=contact.account_key)
        await self._check_may(conversation_id, change)
        r = await self._ctx.call(api.add_member(conversation_id, contact.account_id))
        with self._ctx.transaction():
            self.conversations.put(api.parse_conversation(r.body))
        return await self.outbound.send_op(conversation_id, change)

    async def remove_member(self, conversation_id: str, username: str) -> str:
        """Remove an account from a group (an admin only): a membership operation, then on the
        server. Its devices get the removal and nothing after it."""
        contact = await self._flushed(self.contacts.by_username(username))
        return await self._remove(conversation_id, contact.account_id)

    async def leave(self, conversation_id: str) -> str:
        """Leave a group (any member may)."""
        return await self._remove(conversation_id, self._ctx.account_id)

    async def _check_may(self, conversation_id: str, body: sync.ops.Body) -> None:
        state = self.conversations.state(await self.conversations.record(conversation_id))
        self.conversations.check_may_compose(state, body)

    async def _remove(self, conversation_id: str, account_id: str) -> str:
        from saltline.client_sdk.core import api

        change = sync.MembershipChange(b64decode(account_id), False)
        await self._check_may(conversation_id, change)
        envelope_id = await self.outbound.send_op(conversation_id, change)
        r = await self._ctx.call(api.remove_member(conversation_id, account_id))
        if isinstance(r.body, dict):
            with self._ctx.transaction():
                self.conversations.put(api.parse_conversation(r.body))
        return envelope_id

    async def typing(self, conversation_id: str, typing: bool = True) -> None:
        """A typing indicator: encrypted, delivered to the devices online now, never stored."""
        await self.outbound.typing(conversation_id, typing)

    # -- the outbox ----------------------------------------------------------------------------------------

    async def flush_outbox(self) -> int:
        """Send every due outbox item now (oldest first, those backing off included); returns how
        many the server stored. Raises the first error of an item held for the user (a blocked
        identity change, a refused device list) after the rest was sent."""
        sent, errors = await self.outbound.flush(force=True)
        for eid, error in errors.items():
            item = self.store.outbox.get_outbox(eid)
            if item is not None and item.failed_reason is None:
                raise error  # held for the user; failed items are reported by OutboxItemFailed
        return sent

    def outbox(self) -> list[OutboxEntry]:
        """The items not yet stored by the server: "queued" (sent automatically, with back-off) or
        "failed" (refused for good, with the reason; retry or discard them)."""
        return self.outbound.entries()

    async def retry_outbox(self, envelope_id: str) -> str:
        """Send an outbox item again now; a failed one is composed again as a new operation.
        Returns the envelope id it is sent under."""
        return await self.outbound.retry(envelope_id)

    async def discard_outbox(self, envelope_id: str) -> None:
        """Remove an outbox item: it is never sent."""
        await self.outbound.discard(envelope_id)

    # -- delivery -----------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the delivery socket (in the background; it reconnects by itself with back-off).
        Returns once a connection is ready. After the socket stopped (the device was removed, or
        :meth:`disconnect`), it starts a new one."""
        if self._closed:
            raise UsageError("the client is closed")
        await self.delivery.connect()

    async def run_forever(self, bot: Bot | None = None) -> None:
        """Serve until SIGINT/SIGTERM (with ``bot``'s handlers: :mod:`saltline.client_sdk.bot`),
        then close cleanly: the outbox is kept, the store released (and closed when it can be)."""
        from saltline.client_sdk.bot import run_forever

        await run_forever(self, bot)

    async def disconnect(self) -> None:
        """Close the delivery socket (the client stays usable; :meth:`connect` again later)."""
        await self.delivery.disconnect()

    async def fill_gaps(self) -> None:
        """Fetch from the server every envelope of every conversation after this device's stored
        per-conversation cursor (e.g. after a :class:`DeliveryGap`)."""
        await self.inbound.fill_gaps()

    # -- linking ------------------------------------------------------------------------------------------

    async def begin_link(self, device_name: str = "New device") -> str:
        """New device: a link code to show (text; also fits a QR code), then :meth:`complete_link`.
        ``device_name`` (1..64 characters) is what the approving device and the account's other
        devices show for this one; it travels end-to-end encrypted."""
        return await self.linking.begin(device_name)

    async def approve_link(
        self,
        code_text: str,
        *,
        history: HistoryDepth,
        confirm: Confirm,
        wait_s: float = LINK_REPLY_WAIT_S,
    ) -> None:
        """Existing device: handshake with the device that shows ``code_text``, then call
        ``confirm(request)`` with its name and the confirmation code it shows too. Only if that
        returns ``True`` is the sealed linking payload sent (account key, contacts, conversations,
        an encrypted history bundle: ``history`` "all", "none" or a number of days) with a
        one-time grant to join; then, in the background, the follow-up with what was sent
        meanwhile. Keep the client open until :meth:`finish_link` returns. Raises
        :class:`~saltline.client_sdk.errors.LinkNotConfirmedError` when not confirmed."""
        await self._flushed(self.linking.approve(code_text, history, confirm, wait_s))

    async def finish_link(self, wait_s: float = LINK_FOLLOW_UP_WAIT_S) -> None:
        """Wait for this client's linking follow-ups; raises what one failed with."""
        await self.linking.finish(wait_s)

    async def complete_link(self, wait_s: float = 120.0, on_code: OnCode | None = None) -> str:
        """New device: answer the approving device, call ``on_code(confirmation)`` with the code to
        show and the account about to be joined (username, fingerprint) — returning ``False``
        refuses that account (:class:`~saltline.client_sdk.errors.LinkNotConfirmedError`, nothing is
        answered) — wait for the approval,
        join the account, log in and publish prekeys (reachable from then on), then fetch the
        history (retried in the background when it fails: :class:`HistoryDownloadFailed`)."""
        account_id = await self._flushed(self.linking.complete(wait_s, on_code))
        with contextlib.suppress(NetworkError, ServerError, ProtocolError):
            await self.own_devices.refresh_names()  # the names of the devices it joins
        return account_id


__all__ = [
    "Client",
    "ConversationSummary",
    "ConversationView",
    "DeviceInfo",
    "LinkConfirmation",
    "LinkRequest",
    "MessageItem",
    "OutboxEntry",
    "PreKeyMeta",
    "Reaction",
    "TimelineMessage",
    "message_ref",
]
