"""Outbound: composing operations into the outbox, encrypting them for every verified device and
sending them; the fate of every attempt is :func:`saltline.client_sdk.core.outbox.fate`.

An item that fails for good is kept (failed, with its reason) and never blocks the items behind
it; a void operation takes its dot so the author's later operations do not wait for it anywhere.
Items that failed transiently wait out a back-off (a timer resends them; a reconnection resends
them at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, sync, trust, wire
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core import outbox as rules
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import ForkDetected, MessageSent, OutboxItemFailed
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
from saltline.client_sdk.stores.base import MessageRecord, OutboxItem, SessionRecord, SyncOpRecord
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import DeviceDHPublicKey, DeviceSigningPublicKey, PreKeyPublic, b64decode, b64encode
from saltline.crypto.ratchet import Session
from saltline.crypto.x3dh import PreKeyBundle

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts
    from saltline.client_sdk.facets.conversations import Conversations
    from saltline.client_sdk.transport.ws import DeliverySocket

log = logging.getLogger("client_sdk.outbound")
#: Composed operations kept decoded until their first send attempt ends.
COMPOSED_CACHE_SIZE = 256


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


def _bundle(b: api.BundleInfo) -> PreKeyBundle:
    try:
        return PreKeyBundle(
            b64decode(b.device_id),
            DeviceSigningPublicKey.decode(b64decode(b.signing_key)),
            DeviceDHPublicKey.decode(b64decode(b.dh_key)),
            PreKeyPublic.from_b64(b.signed_prekey),
            None if b.one_time_prekey is None else PreKeyPublic.from_b64(b.one_time_prekey),
        )
    except CryptoError as exc:
        raise UntrustedDeviceListError(
            f"the server sent a malformed bundle for device {b.device_id}"
        ) from exc


def _candidate(i: OutboxItem) -> rules.Candidate:
    return rules.Candidate(i.envelope_id, i.failed_reason is not None, i.next_attempt_ms)


def _is_void(plaintext: bytes) -> bool:
    try:
        return wire.loads_object(plaintext).get("type") == rules.VOID_TYPE
    except ValueError:
        return False


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
        self.closed = False
        #: Operations composed by this client and not yet sent, by envelope id (saves decoding the
        #: stored plaintext again when the server accepts them; the outbox stays the truth).
        self._composed: dict[str, sync.Op] = {}

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
                body, sessions = await self._encrypt_request(item, ephemeral=True)
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
            if not _is_void(i.body)
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
                if item.failed_reason is None and not _is_void(item.body):
                    self._queue_void(item)
        await self.flush()

    def _queue_void(self, item: OutboxItem) -> None:
        ctx = self.ctx
        void = OutboxItem(
            b64encode(ctx.rng(16)),
            item.conversation_id,
            rules.void_plaintext(item.body),
            item.clock,
            item.created_at_ms,
        )
        ctx.store.outbox.put_outbox(void)

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
        finally:
            await ctx.flush()
        return sent, errors

    def _schedule(self) -> None:
        """A timer for the earliest item that waits out a back-off."""
        if self.closed:
            return
        items = self.ctx.store.outbox.outbox()
        wake = rules.next_wakeup(_candidate(i) for i in items)
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None
        if wake is None:
            return
        delay = max(0.0, (wake - self.ctx.clock()) / 1000)

        async def later() -> None:
            await asyncio.sleep(delay)
            self._timer = None
            try:
                await self.flush()
            except Exception:
                log.exception("resending the outbox failed")

        self._timer = asyncio.get_running_loop().create_task(later())

    def stop(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()

    async def _attempt(self, item: OutboxItem) -> tuple[OutboxItem, rules.Outcome, SaltlineError | None]:
        """One attempt: encrypt if needed, send; the outcome for :func:`rules.fate`."""
        try:
            if item.request is None:
                item = await self._encrypt_item(item)
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
                        self._mark_sent(item, seq, ts)
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
                    self._fail(item, reason, status, code, getattr(error, "body", None))
            return fate, error

    def _fail(
        self, item: OutboxItem, reason: str, status: int | None, code: str | None, outcome_body: Any
    ) -> None:
        ctx = self.ctx
        if status == 413 and isinstance(outcome_body, dict):
            limit = outcome_body.get("limit")
            if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < self.envelope_limit:
                self.envelope_limit = limit  # the server's own limit: checked before queueing from now on
        with ctx.transaction():
            if _is_void(item.body):
                # the conversation refuses even an empty operation: nothing can wait for it
                ctx.store.outbox.remove_outbox(item.envelope_id)
                log.warning("void operation %s refused (%s): dropped", item.envelope_id, reason)
                return
            ctx.store.outbox.put_outbox(
                replace(item, failed_reason=reason, failed_status=status, failed_code=code)
            )
            old = ctx.store.conversations.get_message(item.envelope_id)
            if old is not None:
                ctx.store.conversations.put_message(replace(old, status="failed"))
            self._queue_void(item)
            op = decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)
            ref = None if op is None else message_ref(op.dot)
            ctx.emit(OutboxItemFailed(item.conversation_id, item.envelope_id, reason, status, code, ref))

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

    def _mark_sent(self, item: OutboxItem, server_seq: int, server_ts: int) -> None:
        ctx = self.ctx
        op = self._composed.pop(item.envelope_id, None)
        void = op is None and _is_void(item.body)  # composed here: never a void operation
        if op is None:
            op = decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)
        with ctx.transaction():
            old = ctx.store.conversations.get_message(item.envelope_id)
            if old is not None:
                ctx.store.conversations.put_message(
                    replace(old, server_seq=server_seq, server_ts_ms=server_ts, status="sent")
                )
            ctx.store.outbox.remove_outbox(item.envelope_id)
            if server_seq == ctx.store.cursors.get_server_seq(item.conversation_id) + 1:
                ctx.store.cursors.set_server_seq(item.conversation_id, server_seq)
            if op is not None:
                ctx.store.sync.put_sync_op(
                    SyncOpRecord(
                        item.conversation_id,
                        server_seq,
                        item.envelope_id,
                        ctx.account_id,
                        ctx.device_id,
                        item.clock,
                        item.body,
                    )
                )
            record = self.conversations.known(item.conversation_id)
            if op is not None and record is not None:
                self.conversations.apply(record, server_seq, op, item.envelope_id)
            if not void:
                ref = message_ref(op.dot) if op is not None else ""
                ctx.emit(MessageSent(item.conversation_id, ref, item.envelope_id, server_seq))

    # -- encryption ----------------------------------------------------------------------------------

    async def _encrypt_item(self, item: OutboxItem) -> OutboxItem:
        """Encrypt for every device of the verified lists; persist the advanced sessions and the
        exact request body together (so a retry resends the same bytes)."""
        body, sessions = await self._encrypt_request(item)
        item = replace(item, request=wire.canonical_json(body))
        with self.ctx.transaction():
            for record, session in sessions:
                self.ctx.put_session(record, session)
            self.ctx.store.outbox.put_outbox(item)
        return item

    async def _encrypt_request(
        self, item: OutboxItem, *, ephemeral: bool = False
    ) -> tuple[dict[str, Any], list[tuple[SessionRecord, Session]]]:
        ctx = self.ctx
        record = await self.conversations.record(item.conversation_id)
        op = self._composed.get(item.envelope_id) or decode_op(
            item.body, item.clock, ctx.device_id, ctx.account_id
        )
        if op is None:
            raise ProtocolError("an outbox item does not decode")
        lists = await self.contacts.verified_lists(
            self.conversations.recipients(record, op.body), self.conversations.state(record).vouched_key
        )
        recipients = trust.fan_out(b64decode(ctx.device_id), lists)
        own = ctx.identity
        sendable = {r.device_id: self._sendable_session(r, own) for r in recipients}
        need = [r for r in recipients if not sendable[r.device_id]]
        bundles: dict[str, PreKeyBundle] = {}
        if need:
            claimed = api.parse_claim(
                (await ctx.call(api.claim((r.account_id, r.device_id) for r in need))).body
            )
            for b in claimed:
                bundles[b.device_id] = _bundle(b)
        header = msg.EnvelopeHeader(
            b64decode(item.conversation_id),
            b64decode(item.envelope_id),
            b64decode(ctx.account_id),
            b64decode(ctx.device_id),
            item.clock,
            ephemeral=ephemeral,
        )
        padded = msg.pad(item.body)
        local = msg.identity_keys(ctx.state) if bundles else None  # only a new session needs it
        ciphertexts: dict[str, bytes] = {}
        sessions: list[tuple[SessionRecord, Session]] = []
        for r in recipients:
            existing = sendable[r.device_id]
            bundle = bundles.get(r.device_id)
            if existing is None and bundle is None:
                continue  # no prekeys published yet: the server's 409 will say so
            try:
                enc = msg.encrypt_to_device(
                    local,
                    existing,
                    bundle,
                    r.entry,
                    padded,
                    header.associated_data(b64decode(r.device_id)),
                    ctx.rng,
                )
            except CryptoError as exc:
                raise UntrustedDeviceListError(f"refusing the keys of device {r.device_id}: {exc}") from exc
            ciphertexts[r.device_id] = enc.ciphertext
            state_bytes = enc.session.to_bytes()
            written = SessionRecord(r.device_id, enc.session.base_key, state_bytes, r.account_id, ctx.clock())
            sessions.append((written, enc.session))
        body = api.envelope_body(b64decode(item.envelope_id), item.clock, trust.versions(lists), ciphertexts)
        return body, sessions

    def _sendable_session(self, r: trust.Recipient, own: bytes) -> Session | None:
        """The newest session that can send and binds exactly this account's listed device."""
        for record in self.ctx.store.sessions.sessions_for(r.device_id):
            if record.peer_account_id != r.account_id:
                continue
            session = self.ctx.session(record)
            if session.can_send and msg.session_binds(session, own, r.entry):
                return session
        return None
