"""Outbound: composing operations into the outbox and sending them; the fate of every attempt is
:func:`saltline.client_sdk.core.outbox.fate`. Encrypting an item for every verified device is
:mod:`saltline.client_sdk.facets.outbound_encryption`; what a final answer does to the store
(sent, failed for good) is :mod:`saltline.client_sdk.facets.outbound_results`.

An item that fails for good is kept (failed, with its reason) and never blocks the items behind
it; a void operation takes its dot so the author's later operations do not wait for it anywhere.
Items that failed transiently wait out a back-off (a timer resends them; a reconnection resends
them at once). A flush that raises outside any item's attempt (a store write that failed, a bug)
arms the timer too, after a back-off of its own (:data:`FLUSH_RETRY`), so queued items never wait
for the user's next send."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, sync, trust, wire
from saltline.client_sdk.core import outbox as rules
from saltline.client_sdk.core.backoff import Backoff, BackoffPolicy
from saltline.client_sdk.core.events import ForkDetected
from saltline.client_sdk.core.outgoing import check_accepted, encode_checked
from saltline.client_sdk.core.sync.ops import Body as SyncBody
from saltline.client_sdk.errors import (
    IdentityChangedError,
    MembershipUnknownError,
    MessageTooLargeError,
    NetworkError,
    NotFoundError,
    ProtocolError,
    SaltlineError,
    ServerError,
    UntrustedDeviceListError,
    UsageError,
)
from saltline.client_sdk.facets.conversations import decode_op
from saltline.client_sdk.facets.outbound_encryption import OutboundEncryption
from saltline.client_sdk.facets.outbound_results import SendResults, is_void, queue_void
from saltline.client_sdk.stores.base import MessageRecord, OutboxItem
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts
    from saltline.client_sdk.facets.conversations import Conversations
    from saltline.client_sdk.transport.ws import DeliverySocket

log = logging.getLogger("client_sdk.outbound")
#: Composed operations kept decoded until their first send attempt ends.
COMPOSED_CACHE_SIZE = 256
#: Back-off of the resend timer after a flush that raised (not after a send the server refused or
#: could not take: those items carry their own back-off, :mod:`saltline.client_sdk.core.outbox`).
FLUSH_RETRY = BackoffPolicy(base_s=1.0, cap_s=300.0)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An outbox item as the app sees it (no plaintext)."""

    envelope_id: str
    conversation_id: str
    state: str  # "queued" or "failed"
    attempts: int
    created_at_ms: int
    next_attempt_ms: int
    failed_reason: str | None
    failed_status: int | None


def _candidate(i: OutboxItem) -> rules.Candidate:
    return rules.Candidate(i.envelope_id, i.failed_reason is not None, i.next_attempt_ms)


class Outbound:
    def __init__(
        self,
        ctx: DeviceContext,
        contacts: Contacts,
        conversations: Conversations,
        socket: Callable[[], DeliverySocket | None],
    ) -> None:
        self.ctx = ctx
        self.contacts = contacts
        self.conversations = conversations
        self._socket = socket
        #: Fetches a conversation's history (set by the client: the inbound facet's gap fill).
        self.fill_gap: Callable[[str], Awaitable[None]] | None = None
        #: The envelope limit: the server's default until a 413 names another.
        self.envelope_limit = wire.DEFAULT_MAX_ENVELOPE_BYTES
        self._timer: asyncio.Task[None] | None = None
        #: Consecutive flushes that raised (a store that cannot be written, a bug): the timer is
        #: armed after a back-off (reset by a flush that completes), so the outbox neither waits
        #: for the next send or reconnection to be tried again nor spins on an error that repeats.
        self._flush_failures = Backoff(FLUSH_RETRY)
        self.closed = False
        #: Operations composed by this client and not yet sent, by envelope id (saves decoding the
        #: stored plaintext again when the server accepts them; the outbox stays the truth).
        self._composed: dict[str, sync.Op] = {}
        self.encryption = OutboundEncryption(ctx, contacts, conversations, self._composed)
        self.results = SendResults(ctx, conversations, self._composed)

    # -- composing -------------------------------------------------------------------------------------

    def _check_size(self, members: tuple[str, ...], plaintext: bytes, clock: bytes) -> None:
        ctx = self.ctx
        devices = 0
        for account_id in set(members) | {ctx.account_id}:
            contact = ctx.store.device_lists.get_contact(account_id)
            try:
                n = (
                    len(trust.verified_content(contact.account_key, contact.signed_list).devices)
                    if contact
                    else 1
                )
            except UntrustedDeviceListError:
                n = 1
            devices += n
        devices = max(devices - 1, 1)  # not this device
        size = rules.envelope_size(len(plaintext), len(clock), devices)
        if size > self.envelope_limit:
            largest = rules.largest_body(self.envelope_limit, len(clock), devices)
            raise MessageTooLargeError(size, self.envelope_limit, devices, largest)

    async def send_op(
        self, conversation_id: str, body: SyncBody, *, also: Callable[[], None] | None = None
    ) -> str:
        """Compose this device's next operation, write it to the outbox (with the counter and
        lamport number it used), then try to send it; returns its envelope id. ``also`` runs in
        the same store transaction as the outbox write (an attachment's upload record is
        settled with it: a restart never sends the message twice)."""
        ctx = self.ctx
        record = await self.conversations.record(conversation_id)
        if self.fill_gap is not None and not isinstance(body, sync.Genesis):
            if self.conversations.state(record).roles() is None:
                # its authenticated start (the genesis) has not been fetched yet
                with contextlib.suppress(NetworkError, ServerError, ProtocolError):
                    await self.fill_gap(conversation_id)
        async with ctx.lock:
            state = self.conversations.state(record)
            meta = self.conversations.meta(conversation_id)
            composer = sync.Composer(
                b64decode(ctx.device_id), b64decode(ctx.account_id), meta.counter, meta.lamport
            )
            self.conversations.check_may_compose(state, body)
            if isinstance(body, sync.MembershipChange) and body.add and body.welcome is None:
                body = replace(body, welcome=state.welcome())  # what the added account starts from
            op = composer.compose(state, body)
            plaintext, clock = encode_checked(op)
            self._check_size(record.members, plaintext, clock)
            check_accepted(op, plaintext, clock, composer.device_id, composer.account_id)
            envelope_id = b64encode(ctx.rng(16))
            now = ctx.clock()
            with ctx.transaction():
                ctx.store.sync.put_sync_meta(
                    replace(meta, counter=composer.counter, lamport=composer.lamport)
                )
                ctx.store.outbox.put_outbox(OutboxItem(envelope_id, conversation_id, plaintext, clock, now))
                if also is not None:
                    also()
                if isinstance(body, sync.Message):
                    ctx.store.conversations.put_message(
                        MessageRecord(
                            conversation_id,
                            envelope_id,
                            ctx.account_id,
                            ctx.device_id,
                            body.text,
                            now,
                            True,
                            "pending",
                            body=plaintext,
                        )
                    )
        self._composed[envelope_id] = op
        if len(self._composed) > COMPOSED_CACHE_SIZE:
            del self._composed[next(iter(self._composed))]
        _, errors = await self.flush(only=envelope_id)
        self._composed.pop(envelope_id, None)
        item = ctx.store.outbox.get_outbox(envelope_id)
        if envelope_id in errors and item is not None and item.failed_reason is None:
            # held for the user (a blocked identity change, a refused device list): it stays
            # queued until the contact is verified. A failed item is reported by OutboxItemFailed.
            raise errors[envelope_id]
        return envelope_id

    async def typing(self, conversation_id: str, typing: bool) -> None:
        ctx = self.ctx
        record = await self.conversations.record(conversation_id)
        async with ctx.lock:
            state = self.conversations.state(record)
            meta = self.conversations.meta(conversation_id)
            composer = sync.Composer(
                b64decode(ctx.device_id), b64decode(ctx.account_id), meta.counter, meta.lamport
            )
            plaintext, clock = sync.encode(composer.compose(state, sync.Typing(typing)))
            item = OutboxItem(b64encode(ctx.rng(16)), conversation_id, plaintext, clock, ctx.clock())
            try:
                body, sessions = await self.encryption.encrypt_request(item, ephemeral=True)
            except MembershipUnknownError:
                return  # nobody to tell yet
            body["ephemeral"] = True
            with ctx.transaction():
                for session_record, session in sessions:
                    ctx.put_session(session_record, session)
        with contextlib.suppress(SaltlineError):  # best effort: online devices only, never stored
            await self._send_envelope(conversation_id, body)
        await ctx.flush()

    # -- the outbox API ------------------------------------------------------------------------------

    def entries(self) -> list[OutboxEntry]:
        return [
            OutboxEntry(
                i.envelope_id,
                i.conversation_id,
                "failed" if i.failed_reason is not None else "queued",
                i.attempts,
                i.created_at_ms,
                i.next_attempt_ms,
                i.failed_reason,
                i.failed_status,
            )
            for i in self.ctx.store.outbox.outbox()
            if not is_void(i.body)
        ]

    def _item(self, envelope_id: str) -> OutboxItem:
        item = self.ctx.store.outbox.get_outbox(envelope_id)
        if item is None:
            raise UsageError(f"no outbox item {envelope_id!r} (it was sent or discarded)")
        return item

    async def retry(self, envelope_id: str) -> str:
        """Send an item again now. A failed item is composed again as a new operation (its first
        dot went to a void operation); returns the envelope id it is sent under."""
        ctx = self.ctx
        item = self._item(envelope_id)
        if item.failed_reason is None:
            async with ctx.lock:
                ctx.store.outbox.put_outbox(replace(item, next_attempt_ms=0))
            await self.flush(only=envelope_id)
            return envelope_id
        op = decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)
        if op is None:
            raise UsageError("the failed item cannot be composed again")
        with ctx.transaction():
            ctx.store.outbox.remove_outbox(envelope_id)
            ctx.store.conversations.delete_message(envelope_id)
        body = op.body
        if isinstance(body, sync.Message):
            body = replace(body, sent_at_ms=ctx.clock())
        return await self.send_op(item.conversation_id, body)

    async def discard(self, envelope_id: str) -> None:
        """Remove an item (queued or failed): it is never sent. A queued operation's dot goes to
        a void operation."""
        ctx = self.ctx
        async with ctx.lock:
            item = self._item(envelope_id)
            with ctx.transaction():
                ctx.store.outbox.remove_outbox(envelope_id)
                ctx.store.conversations.delete_message(envelope_id)
                if item.failed_reason is None and not is_void(item.body):
                    queue_void(ctx, item)
        await self.flush()

    # -- sending -------------------------------------------------------------------------------------

    async def flush(
        self, *, force: bool = False, only: str | None = None
    ) -> tuple[int, dict[str, SaltlineError]]:
        """Attempt the due outbox items (oldest first; ``force``: those backing off too; ``only``:
        that item as well, even if it backs off). Returns (sent, errors): the errors of items held
        for the user (a blocked identity change, a refused device list: they stay queued) and of
        items that failed for good (kept as failed)."""
        ctx = self.ctx
        sent = 0
        errors: dict[str, SaltlineError] = {}
        try:
            async with ctx.lock:
                now = ctx.clock()
                items = {i.envelope_id: i for i in ctx.store.outbox.outbox()}
                due = rules.due((_candidate(i) for i in items.values()), now, force=force)
                if (
                    only is not None
                    and only in items
                    and only not in due
                    and items[only].failed_reason is None
                ):
                    due.append(only)
                for eid in due:
                    fate, error = await self._send_item(items[eid])
                    if isinstance(fate, rules.Sent):
                        sent += 1
                    elif isinstance(fate, rules.Hold | rules.Failed) and error is not None:
                        errors[eid] = error
                    elif isinstance(error, NetworkError):
                        break  # the server cannot be reached: the rest would fail the same way
                self._schedule()
                self._flush_failures.reset()
        except Exception:
            # Whatever raised (a store that cannot be written, a bug) left the items queued: try
            # again after a back-off rather than wait for the next send or reconnection.
            _attempt, retry_s = self._flush_failures.failed(ctx.clock() / 1000, ctx.jitter)
            self._arm(retry_s)
            raise
        finally:
            await ctx.flush()
        return sent, errors

    def _schedule(self) -> None:
        """A timer for the earliest item that waits out a back-off."""
        if self.closed:
            return
        items = self.ctx.store.outbox.outbox()
        wake = rules.next_wakeup(_candidate(i) for i in items)
        if wake is None:
            self._arm(None)
            return
        self._arm(max(0.0, (wake - self.ctx.clock()) / 1000))

    def _arm(self, delay: float | None) -> None:
        """Replace the timer: a resend in ``delay`` seconds (``None``: no timer)."""
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        if delay is None or self.closed:
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            self._timer = None  # from here on a flush elsewhere arms its own timer, never cancels this
            try:
                await self.flush()
            except Exception:  # flush armed the retry
                log.exception("resending the outbox failed; trying again after a back-off")

        self._timer = asyncio.get_running_loop().create_task(later())

    def stop(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()

    async def _attempt(self, item: OutboxItem) -> tuple[OutboxItem, rules.Outcome, SaltlineError | None]:
        """One attempt: encrypt if needed, send; the outcome for :func:`rules.fate`."""
        try:
            if item.request is None:
                item = await self.encryption.encrypt_item(item)
            r = await self._send_envelope(item.conversation_id, item.request or b"{}")
            result = api.parse_send(r.body, item.envelope_id)
            held = self.conversations.envelope_at(item.conversation_id, result.server_seq)
            if held is not None and held != item.envelope_id:
                self.ctx.emit(
                    ForkDetected(
                        item.conversation_id,
                        "the server answered a send with a server_seq that holds another envelope",
                        result.server_seq,
                        self.ctx.account_id,
                        None,
                    )
                )
                raise ProtocolError("the send answer's server_seq holds another envelope")
            return item, rules.Accepted(result.server_seq, result.server_ts), None
        except (IdentityChangedError, UntrustedDeviceListError) as exc:
            return item, rules.TrustHold(str(exc)), exc
        except MembershipUnknownError as exc:
            return item, rules.Unreachable(str(exc)), exc
        except NotFoundError as exc:
            if item.request is None:  # the claim: a device of a stale list is gone
                return item, rules.Refused(409, wire.PROBLEM_RECIPIENTS_MISMATCH, exc.detail, {}), exc
            return item, rules.Refused(exc.status, exc.code, exc.detail, exc.body), exc
        except ServerError as exc:
            return item, rules.Refused(exc.status, exc.code, exc.detail, exc.body), exc
        except NetworkError as exc:
            return item, rules.Unreachable(str(exc)), exc
        except ProtocolError as exc:
            # an answer that cannot be true: nothing of it is written; the same envelope is sent
            # again later (a replay), and the items behind it go on
            return item, rules.Unreachable(f"the server's answer was refused: {exc}"), exc

    async def _send_item(self, item: OutboxItem) -> tuple[rules.Fate, SaltlineError | None]:
        ctx = self.ctx
        reencrypts = 0
        while True:
            error: SaltlineError | None = None
            try:
                item, outcome, error = await self._attempt(item)
                fate = rules.fate(
                    outcome,
                    attempts=item.attempts,
                    reencrypts=reencrypts,
                    now_ms=ctx.clock(),
                    random=ctx.jitter,
                )
            except Exception as exc:  # a bug or a corrupt item: fail it, never the whole outbox
                log.exception("outbox item %s could not be sent", item.envelope_id)
                fate = rules.Failed(f"the client could not send it: {exc}", None, None)
            if isinstance(fate, rules.Reencrypt):
                reencrypts += 1
                try:
                    await self._refresh_members(item.conversation_id, set(fate.accounts))
                except (NetworkError, ServerError) as exc:
                    error = exc
                    fate = rules.fate(
                        rules.Unreachable(str(exc)),
                        attempts=item.attempts,
                        reencrypts=0,
                        now_ms=ctx.clock(),
                        random=ctx.jitter,
                    )
                else:
                    item = replace(item, request=None)
                    continue
            match fate:
                case rules.Sent(seq, ts):
                    try:
                        self.results.mark_sent(item, seq, ts)
                    except Exception as exc:  # never let one item stop the outbox
                        log.exception("outbox item %s could not be recorded as sent", item.envelope_id)
                        fate = rules.fate(
                            rules.Unreachable(f"could not record the send: {exc}"),
                            attempts=item.attempts,
                            reencrypts=0,
                            now_ms=ctx.clock(),
                            random=ctx.jitter,
                        )
                        assert isinstance(fate, rules.RetryLater)
                        ctx.store.outbox.put_outbox(
                            replace(item, attempts=item.attempts + 1, next_attempt_ms=fate.next_attempt_ms)
                        )
                case rules.RetryLater(next_ms, _):
                    ctx.store.outbox.put_outbox(
                        replace(item, attempts=item.attempts + 1, next_attempt_ms=next_ms)
                    )
                case rules.Failed(reason, status, code):
                    self._learn_limit(status, getattr(error, "body", None))
                    self.results.mark_failed(item, reason, status, code)
            return fate, error

    def _learn_limit(self, status: int | None, outcome_body: Any) -> None:
        """A 413 that names the server's envelope limit: checked before queueing from now on."""
        if status == 413 and isinstance(outcome_body, dict):
            limit = outcome_body.get("limit")
            if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < self.envelope_limit:
                self.envelope_limit = limit

    async def _send_envelope(self, conversation_id: str, body: dict[str, Any] | bytes) -> api.Response:
        """Over the delivery socket when it is ready (its ``send_result`` carries the HTTP route's
        status and body), else, or when the socket cannot carry it, over HTTP. A second sending of
        the same body is a replay the server answers with the first result."""
        from saltline.client_sdk.transport.ws import SocketUnavailable

        socket = self._socket()
        if socket is not None and socket.ready:
            try:
                frame = await socket.send_envelope(conversation_id, body)
            except (SocketUnavailable, TimeoutError):
                pass  # HTTP below: the envelope id makes a second sending a replay
            else:
                return api.check(api.send_result_response(frame))
        if isinstance(body, bytes):
            body = wire.loads_object(body)
        return await self.ctx.call(api.send_envelope(conversation_id, body))

    async def _refresh_members(self, conversation_id: str, accounts: set[str]) -> None:
        """The server says the recipients changed: its member list is fetched again (for the
        mismatch report) and the device lists of the authenticated members it named are
        refreshed; an account outside the authenticated membership is never fetched for sending."""
        ctx = self.ctx
        info = api.parse_conversation((await ctx.call(api.conversation(conversation_id))).body)
        with ctx.transaction():
            record = self.conversations.put(info)
        roles = self.conversations.state(record).roles()
        members = {b64encode(a) for a in roles.members} if roles else set()
        for account_id in sorted((accounts & members) | {ctx.account_id}):
            await self.contacts.refresh(account_id)
