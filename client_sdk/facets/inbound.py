"""Inbound: every frame of the delivery socket and every envelope of a conversation's history,
through the rules of :mod:`saltline.client_sdk.core.inbound`. Nothing here ends the delivery task: a bad
frame or envelope is acknowledged with an event, a transient failure drops the connection so the
server redelivers (after a back-off), and an envelope that keeps failing is dropped with an event
after :data:`~saltline.client_sdk.core.inbound.MAX_TRANSIENT_TRIES` tries."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, sync, trust
from saltline.client_sdk.core import inbound as rules
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import (
    Connected,
    ConversationUnavailable,
    DecryptionFailed,
    DeliveryGap,
    Drained,
    ForkDetected,
    HistoryGap,
    MalformedFrame,
    MessageReceived,
    TypingChanged,
)
from saltline.client_sdk.errors import (
    AuthError,
    NetworkError,
    NotFoundError,
    ProtocolError,
    ServerError,
    UntrustedConversationError,
    UntrustedDeviceListError,
)
from saltline.client_sdk.facets.handler_delivery import HandlerDelivery
from saltline.client_sdk.facets.inbound_open import open_envelope
from saltline.client_sdk.stores.base import (
    ContactRecord,
    ConversationRecord,
    MessageRecord,
    SessionRecord,
    SyncOpRecord,
)
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts
    from saltline.client_sdk.facets.conversations import Conversations
    from saltline.client_sdk.facets.outbound import Outbound
    from saltline.client_sdk.facets.prekeys import Prekeys

log = logging.getLogger("client_sdk.inbound")

#: Page size of gap filling from ``GET /v1/conversations/{id}/envelopes``.
#: Pages one gap fill reads at most (with the lock held); a later trigger continues.
MAX_HISTORY_PAGES = 50
#: Conversation-list pages one gap fill reads at most (1000 conversations a page by default).
MAX_LIST_PAGES = 100
#: Envelopes whose transient failures are counted at most (see ``_bound_transient``).
MAX_TRANSIENT_TRACKED = 10_000
#: Undecryptable envelopes remembered as reported (one DecryptionFailed each per run).
MAX_UNDECRYPTABLE_TRACKED = 10_000
HISTORY_PAGE = 200


class RetryLater(Exception):
    """A transient failure: do not acknowledge; the connection is dropped and resumed later."""


class Inbound:
    def __init__(
        self,
        ctx: DeviceContext,
        contacts: Contacts,
        conversations: Conversations,
        prekeys: Prekeys,
        outbound: Outbound,
        spawn: Callable[[Any], None],
    ) -> None:
        self.ctx = ctx
        self.contacts = contacts
        self.conversations = conversations
        self.prekeys = prekeys
        self.outbound = outbound
        self._spawn = spawn
        self._transient: dict[str, int] = {}
        self._filling: set[str] = set()
        #: the last HistoryGap reported per conversation (missing seqs, held refs)
        self._gaps: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {}
        #: undecryptable envelopes already reported (a gap fill hands them again until attested)
        self._undecryptable: dict[str, None] = {}
        #: at-least-once delivery to app callbacks (the handler inbox)
        self.handlers = HandlerDelivery(ctx, conversations)
        self.redeliver_unhandled = self.handlers.redeliver_unhandled

    # -- frames ----------------------------------------------------------------------------------------

    async def own_list_check(self) -> None:
        """Fetch and verify this account's device list (the own-devices facet reacts to a change:
        events, key handoff). Failures are logged: the next connect or notice tries again."""
        try:
            async with self.ctx.lock:
                await self.contacts.refresh(self.ctx.account_id)
            await self.ctx.flush()
        except (NetworkError, ServerError, ProtocolError, UntrustedDeviceListError) as exc:
            log.info("own device list not refreshed: %s", exc)

    async def on_frame(self, raw: object) -> int | None:
        """Handle one server frame; the queue_seq to acknowledge (None: nothing). Raises
        :class:`RetryLater` when the connection must be dropped and resumed later."""
        ctx = self.ctx
        frame = rules.parse_frame(raw)
        try:
            match frame:
                case rules.Ready(acked, _):
                    self.prekeys.recheck = True  # count the prekeys when the backlog drained
                    ctx.emit(Connected(acked))
                    self._spawn(self.outbound.flush(force=True))
                    self._spawn(self.redeliver_unhandled())
                    self._spawn(self.own_list_check())  # a device change while this one was away
                    return None
                case rules.DeviceListNotice(account_id, _):
                    if account_id == ctx.device.account_id:
                        self._spawn(self.own_list_check())
                    return None
                case rules.Envelope(queue_seq=None):
                    async with ctx.lock:
                        await self._envelope(frame)
                    return None
                case rules.Envelope():
                    async with ctx.lock:
                        return await self._guarded(frame)
                case rules.Gap(start, end):
                    ctx.emit(DeliveryGap(start, end))
                    async with ctx.lock:
                        try:
                            await self._fill_all_gaps()
                        except (NetworkError, ServerError) as exc:
                            raise RetryLater(f"gap fill failed: {exc}") from exc
                        ctx.store.cursors.set_acked_queue_seq(end)
                    return end
                case rules.DrainedFrame(seq):
                    ctx.emit(Drained(seq))
                    if self.prekeys.work_due():
                        self._spawn(self.prekeys.maintain_if_due())
                    return None
                case rules.Malformed(kind, reason, seq, cid, eid):
                    ctx.emit(MalformedFrame(kind, reason))
                    if eid is not None:
                        ctx.emit(DecryptionFailed(cid or "", eid, "", reason, "malformed"))
                    if seq is not None:
                        ctx.store.cursors.set_acked_queue_seq(seq)
                    return seq
            return None
        finally:
            await ctx.flush()

    async def _guarded(self, env: rules.Envelope) -> int | None:
        """:meth:`_queued`; an unexpected error (a bug, a corrupt store row) counts as a transient
        failure of this envelope, so it is dropped with an event after a few tries instead of
        coming back forever."""
        try:
            return await self._queued(env)
        except RetryLater:
            raise
        except Exception as exc:
            log.exception("envelope %s could not be processed", env.envelope_id)
            tries = self._transient.get(env.envelope_id, 0) + 1
            self._transient[env.envelope_id] = tries
            self._bound_transient()
            if tries >= rules.MAX_TRANSIENT_TRIES:
                self._drop(env, rules.Drop("retries_exhausted", f"the client failed on it: {exc}"))
                return env.queue_seq
            raise RetryLater(f"processing failed: {exc}") from exc

    async def _queued(self, env: rules.Envelope) -> int | None:
        ctx = self.ctx
        seq = env.server_seq
        assert seq is not None and env.queue_seq is not None
        known = self.conversations.known(env.conversation_id)
        if (
            known is not None
            and seq > ctx.store.cursors.get_server_seq(env.conversation_id) + 1
            and ctx.store.conversations.get_message(env.envelope_id) is None
        ):
            # a jump in the conversation's server_seq: fetch what lies in between first (best
            # effort: operations whose predecessors are missing are held and fetched again)
            with contextlib.suppress(NetworkError, ServerError, ProtocolError):
                await self._fill_gap(env.conversation_id)
        decision = await self._envelope(env)
        if isinstance(decision, rules.RetryLater):
            raise RetryLater(decision.reason)
        return rules.ack_for(decision, env.queue_seq)

    # -- one envelope --------------------------------------------------------------------------------

    async def _lookup_conversation(self, cid: str) -> rules.Lookup:
        try:
            await self.conversations.record(cid)
        except (NotFoundError, AuthError) as exc:
            return rules.Lookup(
                "gone", f"the server refused the conversation: {exc.detail or exc.code}", exc.status
            )
        except UntrustedConversationError as exc:
            return rules.Lookup("gone", str(exc))
        except (NetworkError, ServerError, ProtocolError) as exc:
            return rules.Lookup("transient", str(exc))
        return rules.OK

    async def _lookup_sender(self, env: rules.Envelope) -> tuple[rules.Lookup, ContactRecord | None]:
        ctx = self.ctx
        try:
            contact = ctx.store.device_lists.get_contact(env.sender_account_id)
            content = (
                None if contact is None else trust.verified_content(contact.account_key, contact.signed_list)
            )
            if content is None or content.device(b64decode(env.sender_device_id)) is None:
                contact = await self.contacts.refresh(env.sender_account_id)
                content = trust.verified_content(contact.account_key, contact.signed_list)
        except UntrustedDeviceListError as exc:
            return rules.Lookup("refused", str(exc)), None
        except (NotFoundError, AuthError) as exc:
            return rules.Lookup(
                "refused", f"the server does not show the sender: {exc.detail or exc.code}"
            ), None
        except (NetworkError, ServerError, ProtocolError) as exc:
            return rules.Lookup("transient", str(exc)), None
        except CryptoError as exc:
            return rules.Lookup("refused", str(exc)), None
        if content.device(b64decode(env.sender_device_id)) is None:
            return rules.Lookup("unlisted"), contact
        return rules.OK, contact

    def _drop(self, env: rules.Envelope, drop: rules.Drop) -> None:
        ctx = self.ctx
        self._transient.pop(env.envelope_id, None)
        if env.queue_seq is not None:
            ctx.store.cursors.set_acked_queue_seq(env.queue_seq)
        if drop.code == "conversation_unavailable":
            ctx.emit(ConversationUnavailable(env.conversation_id, drop.status, drop.reason))
        elif drop.code == "seq_reused":
            ctx.emit(
                ForkDetected(
                    env.conversation_id, drop.reason, env.server_seq or 0, env.sender_account_id, None
                )
            )
        elif drop.code != "undecryptable" or env.envelope_id not in self._undecryptable:
            if drop.code == "undecryptable":
                self._undecryptable[env.envelope_id] = None
                while len(self._undecryptable) > MAX_UNDECRYPTABLE_TRACKED:
                    del self._undecryptable[next(iter(self._undecryptable))]
            ctx.emit(
                DecryptionFailed(
                    env.conversation_id, env.envelope_id, env.sender_device_id, drop.reason, drop.code
                )
            )

    async def _envelope(self, env: rules.Envelope) -> rules.Decision:
        """Decide and apply the fate of one envelope (the lock is held)."""
        ctx = self.ctx
        cid, eid = env.conversation_id, env.envelope_id
        if ctx.store.conversations.get_message(eid) is not None:
            return self._ack(env, rules.Duplicate())
        conversation = await self._lookup_conversation(cid)
        if conversation.kind == "ok" and env.server_seq is not None:
            at_seq = self.conversations.envelope_at(cid, env.server_seq)
            decision = rules.before_lookup(
                envelope_stored=False, seq_stored=at_seq is not None, same_envelope=at_seq == eid
            )
            if isinstance(decision, rules.Duplicate):
                return self._ack(env, decision)
            if isinstance(decision, rules.Drop):
                self._drop(env, decision)
                return decision
        sender, contact = (rules.OK, None) if conversation.kind != "ok" else await self._lookup_sender(env)
        record = self.conversations.known(cid)
        member = record is None or (
            (record.kind != "direct" or env.sender_account_id in record.members)
            and self._may_be_member(record, env)
        )
        decision = rules.after_lookup(conversation, sender, tries=self._transient.get(eid, 0), member=member)
        if isinstance(decision, rules.RetryLater):
            self._transient[eid] = self._transient.get(eid, 0) + 1
            self._bound_transient()
            return decision
        if isinstance(decision, rules.Drop):
            self._drop(env, decision)
            return decision
        assert contact is not None
        return self._decrypt_and_store(env, contact)

    def _may_be_member(self, record: ConversationRecord, env: rules.Envelope) -> bool:
        """False when the sending account cannot be a member where its operation sits: the
        authenticated membership never named it although everything before the envelope's
        position is applied (an account only the server added: nothing of it is stored). Otherwise
        the reducer decides when the operation applies (sync.md § 5.7)."""
        state = self.conversations.state(record)
        if state.roles() is None or state.ever_member(b64decode(env.sender_account_id)):
            return True
        return env.server_seq is not None and state.base_seq < env.server_seq - 1

    def _unvetted(
        self, record: ConversationRecord | None, received: sync.Received | None, op: sync.Op
    ) -> bool:
        """An operation still held whose author is not a member of the membership known now."""
        if record is None or received is None or op.dot not in received.held:
            return False
        roles = self.conversations.state(record).roles()
        return roles is not None and op.author not in roles.members

    def _ack(self, env: rules.Envelope, decision: rules.Decision) -> rules.Decision:
        self._transient.pop(env.envelope_id, None)
        if env.queue_seq is not None:
            self.ctx.store.cursors.set_acked_queue_seq(env.queue_seq)
        return decision

    def _decrypt_and_store(self, env: rules.Envelope, contact: ContactRecord) -> rules.Decision:
        content = trust.verified_content(contact.account_key, contact.signed_list)
        sender_entry = content.device(b64decode(env.sender_device_id))
        assert sender_entry is not None
        opened = open_envelope(self.ctx, env, sender_entry)
        op = opened.op
        decision = rules.after_decrypt(
            opened.kind,
            opened.reason,
            ephemeral=env.server_seq is None,
            typing=op is not None and isinstance(op.body, sync.Typing),
            dot=op is not None,
        )
        if isinstance(decision, rules.Drop):
            if opened.decrypted is None:
                with self.ctx.transaction():
                    self._drop(env, decision)
                    if decision.code == "undecryptable":
                        self._claim(env, decision.reason)
            else:  # it decrypted: its message key is spent, so a replay or gap fill is a duplicate
                with self.ctx.transaction():
                    self._spend(env, opened.decrypted)
                    self._drop(env, decision)
            return decision
        if isinstance(decision, rules.Duplicate):
            return self._ack(env, decision)
        assert op is not None and opened.decrypted is not None
        void = decision if isinstance(decision, rules.AcceptVoid) else None
        self._store(env, contact, opened.decrypted, opened.body, op, opened.clock, void)
        return decision

    def _claim(self, env: rules.Envelope, reason: str) -> None:
        """A stored envelope that does not decrypt claims its position for its header's dot
        (sync.md § 2.3): kept aside, and a void there once a later authenticated operation's
        transcript hash attests it (inside the caller's transaction)."""
        record = self.conversations.known(env.conversation_id)
        if env.server_seq is None or record is None:
            return
        try:
            op = sync.undecryptable(
                env.clock, b64decode(env.sender_device_id), b64decode(env.sender_account_id), reason
            )
        except (sync.SyncError, ValueError, CryptoError):
            return  # no dot to claim
        received = self.conversations.apply(record, env.server_seq, op, env.envelope_id)
        if received is not None and received.gap is not None and env.conversation_id not in self._filling:
            self._spawn(self._fill_held(env.conversation_id, received.gap.after_seq))

    def _spend(self, env: rules.Envelope, decrypted: msg.Decrypted) -> None:
        """Keep what decrypting ``env`` used up (inside the caller's transaction): the advanced
        session (its message key is spent: the same ciphertext again is a replay) and the prekeys."""
        ctx = self.ctx
        ctx.put_session(
            SessionRecord(
                env.sender_device_id,
                decrypted.base_key,
                decrypted.session.to_bytes(),
                env.sender_account_id,
                ctx.clock(),
            ),
            decrypted.session,
        )
        if decrypted.reusable_prekey_use is not None:  # replays of it are refused from now on
            ctx.store.prekeys.add_seen_base_key(*decrypted.reusable_prekey_use)
        otk = decrypted.one_time_prekey_id
        if otk is not None and otk in ctx.state.one_time_prekeys:
            ctx.put_state(ctx.state.remove_one_time_prekey(otk))
            self.prekeys.used_one()

    def _store(
        self,
        env: rules.Envelope,
        contact: ContactRecord,
        decrypted: msg.Decrypted,
        body: bytes,
        op: sync.Op,
        clock: bytes,
        void: rules.AcceptVoid | None = None,
    ) -> None:
        """Store and apply one operation in one transaction (a void too: sync.md § 2.2, its
        DecryptionFailed queued inside it, so published only after the commit)."""
        ctx = self.ctx
        cid, eid, seq = env.conversation_id, env.envelope_id, env.server_seq
        sent_by_me = env.sender_account_id == ctx.account_id
        received: sync.Received | None = None
        with ctx.transaction():
            self._spend(env, decrypted)
            if seq is None:
                if isinstance(op.body, sync.Typing):
                    ctx.emit(
                        TypingChanged(
                            cid,
                            env.sender_account_id,
                            env.sender_device_id,
                            op.body.typing,
                            contact.username,
                        )
                    )
                return
            if isinstance(op.body, sync.Message):
                ctx.store.conversations.put_message(
                    MessageRecord(
                        cid,
                        eid,
                        env.sender_account_id,
                        env.sender_device_id,
                        op.body.text,
                        op.body.sent_at_ms,
                        sent_by_me,
                        "received",
                        seq,
                        env.server_ts_ms,
                        body,
                    )
                )
            ctx.store.cursors.set_server_seq(cid, max(seq, ctx.store.cursors.get_server_seq(cid)))
            ctx.store.sync.put_sync_op(
                SyncOpRecord(cid, seq, eid, env.sender_account_id, env.sender_device_id, clock, body)
            )
            if env.queue_seq is not None:
                ctx.store.cursors.set_acked_queue_seq(env.queue_seq)
            if void is not None:
                ctx.emit(DecryptionFailed(cid, eid, env.sender_device_id, void.reason, void.code))
            record = self.conversations.known(cid)
            if record is not None:
                received = self.conversations.apply(record, seq, op, eid)
            rejected = received is not None and any(r.dot == op.dot for r in received.rejected)
            rejected = rejected or self.conversations.disappearing.expired_on_arrival(eid)  # § 5.8
            if isinstance(op.body, sync.Message) and not rejected and self._unvetted(record, received, op):
                # held, from an account that is not a member now: not shown before the reducer
                # decides (it is in the view if it applies; OperationRejected if it does not)
                ctx.store.conversations.delete_message(eid)
                rejected = True
            if isinstance(op.body, sync.Message) and not rejected:
                if ctx.bus.has_at_least_once(MessageReceived):
                    ctx.store.handler_inbox.add_pending(eid, cid, ctx.clock())
                    self.handlers.unoffered.add(eid)
                ctx.emit(
                    MessageReceived(
                        conversation_id=cid,
                        message_ref=message_ref(op.dot),
                        sender_account_id=env.sender_account_id,
                        sender_device_id=env.sender_device_id,
                        sender_username=contact.username,
                        text=op.body.text,
                        envelope_id=eid,
                        server_seq=seq,
                        sent_at_ms=op.body.sent_at_ms,
                        sent_by_me=sent_by_me,
                        attachment=op.body.attachment,
                        reply_to=None if op.body.reply_to is None else message_ref(op.body.reply_to),
                    )
                )
        self._transient.pop(eid, None)
        if received is not None and received.gap is not None and cid not in self._filling:
            self._spawn(self._fill_held(cid, received.gap.after_seq))

    async def fill_conversation(self, cid: str) -> None:
        """Fetch what this device lacks of one conversation now (before sending into one whose
        genesis it has not seen)."""
        try:
            async with self.ctx.lock:
                await self._fill_gap(cid)
        finally:
            await self.ctx.flush()

    async def _fill_held(self, cid: str, after: int) -> None:
        if cid in self._filling:
            return
        self._filling.add(cid)
        try:
            async with self.ctx.lock:
                try:
                    await self._fill_gap(cid, after)
                except (NetworkError, ServerError, ProtocolError) as exc:
                    log.info("gap fill of %s failed: %s", cid, exc)
                self._report_gap(cid)  # what the server did not supply, whether it answered or not
        finally:
            self._filling.discard(cid)
            await self.ctx.flush()

    def _bound_transient(self) -> None:
        """The retry counts of envelopes that failed transiently stay bounded (the oldest go: an
        envelope that comes back after that starts counting again)."""
        while len(self._transient) > MAX_TRANSIENT_TRACKED:
            del self._transient[next(iter(self._transient))]

    def _report_gap(self, cid: str) -> None:
        """After the server was asked: what is still missing is a :class:`HistoryGap` (once per
        distinct gap)."""
        record = self.conversations.known(cid)
        if record is None:
            return
        state = self.conversations.state(record)
        if state.gap() is None:
            self._gaps.pop(cid, None)
            return
        gap = (state.missing(), tuple(message_ref(d) for d in state.held()))
        if self._gaps.get(cid) != gap:
            self._gaps[cid] = gap
            self.ctx.emit(HistoryGap(cid, *gap))

    # -- gap filling -----------------------------------------------------------------------------------

    async def fill_gaps(self) -> None:
        async with self.ctx.lock:
            await self._fill_all_gaps()
        await self.ctx.flush()

    async def _fill_all_gaps(self) -> None:
        ctx = self.ctx
        listed: list[api.ConversationInfo] = []
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):  # every page (delivery.md § 4.4), bounded
            body = (await ctx.call(api.conversations(after))).body
            listed.extend(api.parse_conversations(body))
            cursor = api.parse_next_after(body)
            if cursor is None or cursor == after:
                break
            after = cursor
        for info in listed:
            if self.conversations.known(info.conversation_id) is None:
                with ctx.transaction():
                    record = self.conversations.put(info)
                    ctx.emit(self.conversations.added(record))
        for record in list(ctx.store.conversations.conversations()):
            try:
                await self._fill_gap(record.conversation_id)
            except (NotFoundError, AuthError):
                continue  # no longer shown to this device: nothing to fetch

    async def _fill_gap(self, conversation_id: str, start: int | None = None) -> None:
        """Page through the conversation's envelopes after the stored cursor (only those with a
        copy for this device come back) and process each through the same rules as a queued one."""
        ctx = self.ctx
        after = ctx.store.cursors.get_server_seq(conversation_id) if start is None else start
        for _ in range(MAX_HISTORY_PAGES):  # bounded: the lock is held (the next trigger goes on)
            body = (await ctx.call(api.history(conversation_id, after, HISTORY_PAGE))).body
            items = body.get("envelopes") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ProtocolError("server response lacks 'envelopes'")
            top = after
            for item in items:
                if not isinstance(item, dict):
                    ctx.emit(MalformedFrame("history", "an envelope of the history is not an object"))
                    continue
                seq = item.get("server_seq")
                if isinstance(seq, int) and not isinstance(seq, bool) and seq > top:
                    top = seq
                if item.get("ciphertext") is None:
                    continue  # stored without a copy for this device
                try:
                    env = rules.parse_envelope({**item, "conversation_id": conversation_id}, queued=False)
                except ValueError as exc:
                    ctx.emit(MalformedFrame("history", str(exc)))
                    continue
                try:
                    decision = await self._envelope(env)
                except (NetworkError, ServerError, ProtocolError):
                    raise
                except Exception as exc:  # one bad item never stops the fill (nor later delivery)
                    log.exception(
                        "history item %s of %s could not be processed", env.envelope_id, conversation_id
                    )
                    ctx.emit(
                        MalformedFrame("history", f"envelope {env.envelope_id}: {type(exc).__name__}: {exc}")
                    )
                    continue
                if isinstance(decision, rules.RetryLater):
                    raise NetworkError(decision.reason)
            if top > ctx.store.cursors.get_server_seq(conversation_id):
                ctx.store.cursors.set_server_seq(conversation_id, top)
            next_after = body.get("next_after")
            if (
                not isinstance(next_after, int)
                or isinstance(next_after, bool)
                or not items
                or next_after <= after
            ):
                return
            after = next_after
