"""Conversations: records, the materialised sync state (docs/protocol/sync.md) and its views.
The view diff that becomes events is :func:`saltline.client_sdk.core.diff.changes`."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api, diff, sync, views
from saltline.client_sdk.core.events import (
    AddedToConversation,
    ConversationAdded,
    ForkDetected,
    MembershipMismatch,
    OperationRejected,
)
from saltline.client_sdk.core.sync import membership
from saltline.client_sdk.errors import (
    MembershipUnknownError,
    NotAllowedError,
    UntrustedConversationError,
    UsageError,
)
from saltline.client_sdk.facets.disappearing import Disappearing, expiring_of, timers_of
from saltline.client_sdk.stores.base import ConversationRecord, MessageRecord, SyncMeta, SyncOpRecord
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.contacts import Contacts


_REFUSALS = {
    membership.NOT_A_MEMBER: "this account is not a member of the conversation (removed, or never added)",
    membership.NOT_AN_ADMIN: "only an admin of the group adds or removes others (any member may leave)",
    membership.DIRECT_FIXED: "a direct conversation's members never change",
}


def decode_op(plaintext: bytes, clock: bytes, device_id: str, account_id: str) -> sync.Op | None:
    """A stored operation (a :class:`~saltline.client_sdk.core.sync.ops.Void` when its plaintext
    does not decode but its clock gives it a dot: sync.md § 2.2, the same on every replay, bundle
    and device; an attested undecryptable position: § 2.3), or None when it has no dot (never
    raises)."""
    try:
        return sync.decode_stored(plaintext, clock, b64decode(device_id), b64decode(account_id))
    except (sync.SyncError, ValueError, CryptoError):
        return None


class Conversations:
    def __init__(self, ctx: DeviceContext, contacts: Contacts) -> None:
        self.ctx = ctx
        self.contacts = contacts
        self._states: dict[str, sync.ConversationState] = {}
        #: per conversation: server_seq -> envelope id of the stored operation
        self._seqs: dict[str, dict[int, str]] = {}
        #: per conversation: server_seq -> envelope id of an undecryptable envelope's claim
        #: (sync.md § 2.3), stored once a later operation attests it
        self._claims: dict[str, dict[int, str]] = {}
        self._me_cache: tuple[str, bytes] | None = None
        #: (conversation, authenticated members, server members) already reported
        self._mismatches: set[tuple[str, frozenset[str], frozenset[str]]] = set()
        self.disappearing = Disappearing(ctx, self)

    async def create(self, usernames: Sequence[str]) -> tuple[str, sync.Genesis | None]:
        """Create the conversation on the server; returns its id and, when the server created
        it (rather than returning the direct conversation that already existed), the genesis
        operation the caller must send as this device's first operation in it (sync.md § 5.7)."""
        ctx = self.ctx
        others = [await self.contacts.by_username(u) for u in usernames]
        if not others:
            raise UsageError("a conversation needs at least one other person")
        kind = "direct" if len(others) == 1 else "group"
        r = await ctx.call(api.create_conversation(kind, [c.account_id for c in others]))
        info = api.parse_conversation(r.body)
        existing = self.known(info.conversation_id)
        asked = {ctx.account_id, *(c.account_id for c in others)}
        if existing is not None and (kind == "group" or set(existing.members) != asked):
            # (a direct conversation asked for again is the same one, with the same two accounts)
            raise UntrustedConversationError(
                f"the server answered a new {kind} conversation with the id of an existing one "
                f"({info.conversation_id}): refused"
            )
        if info.kind != kind or set(info.members) != asked:
            raise UntrustedConversationError(
                f"the server created a {info.kind} conversation with {sorted(info.members)}, "
                f"not the {kind} conversation with {sorted(asked)} that was asked for: refused"
            )
        self.put(info)
        if existing is not None or info.last_server_seq != 0 or (r.status != 201 and kind == "group"):
            return info.conversation_id, None  # it has a history: its creator's genesis is in it
        # a new conversation, or a direct one nobody wrote to yet (either of its two accounts may
        # write its genesis: the one at server_seq 1 counts, a second is rejected harmlessly)
        me = b64decode(ctx.account_id)
        members = tuple(sorted({b64decode(m) for m in asked}))
        # each member's account key as this device trusts it: every member's device checks it
        trusted = {b64decode(c.account_id): c.account_key for c in others}
        trusted[me] = bytes(ctx.account_key().public_key)
        keys = tuple(trusted[m] for m in members)
        if kind == "direct":
            return info.conversation_id, sync.Genesis("direct", members, (), keys)
        return info.conversation_id, sync.Genesis("group", members, (me,), keys)

    def put(self, info: api.ConversationInfo) -> ConversationRecord:
        """Store what the server says of a conversation. A direct conversation's two accounts are
        pinned the first time: a later answer naming others keeps the pinned pair (with a
        :class:`MembershipMismatch` event), and a direct conversation that does not have exactly
        this account and one other is refused (:class:`UntrustedConversationError`)."""
        ctx = self.ctx
        store = ctx.store.conversations
        old = store.get_conversation(info.conversation_id)
        if old is not None and (old.kind == "direct" or info.kind != old.kind):
            # a direct conversation's accounts, and every conversation's kind, never change
            if info.kind != old.kind or set(info.members) != set(old.members):
                ctx.emit(
                    MembershipMismatch(
                        old.conversation_id,
                        tuple(old.members),
                        tuple(info.members),
                        diff.usernames((*old.members, *info.members), self.name_of),
                    )
                )
            return old
        if info.kind == "direct" and (len(set(info.members)) != 2 or ctx.account_id not in info.members):
            raise UntrustedConversationError(
                f"the server shows a direct conversation {info.conversation_id} with members "
                f"{sorted(info.members)}: a direct conversation has exactly this account and one other"
            )
        record = ConversationRecord(
            info.conversation_id, info.kind, info.members, old.clock if old else b"", info.created_at_ms
        )
        store.put_conversation(record)
        return record

    def known(self, conversation_id: str) -> ConversationRecord | None:
        return self.ctx.store.conversations.get_conversation(conversation_id)

    async def record(self, conversation_id: str) -> ConversationRecord:
        """The stored record, else fetched from the server (``ConversationAdded`` queued)."""
        record = self.known(conversation_id)
        if record is None:
            info = api.parse_conversation((await self.ctx.call(api.conversation(conversation_id))).body)
            with self.ctx.transaction():
                record = self.put(info)
                self.ctx.emit(self.added(record))
        return record

    def added(self, record: ConversationRecord) -> ConversationAdded:
        return ConversationAdded(
            record.conversation_id, record.members, diff.usernames(record.members, self.name_of)
        )

    def username_of(self, account_id: str) -> str | None:
        """The username this device pinned for ``account_id`` (its own account's, or a contact's
        from a verified device list; None: not a contact yet). Never a name the server asserts."""
        device = self.ctx.device
        if account_id == device.account_id:
            return device.username
        contact = self.ctx.store.device_lists.get_contact(account_id)
        return contact.username if contact is not None else None

    def name_of(self, account_id: str) -> str:
        """:meth:`username_of`, "" when this device knows none."""
        return self.username_of(account_id) or ""

    def messages(self, conversation_id: str, limit: int = 1000) -> Sequence[MessageRecord]:
        return self.ctx.store.conversations.messages(conversation_id, limit=limit)

    # -- sync state -----------------------------------------------------------------------------------

    def meta(self, cid: str) -> SyncMeta:
        return self.ctx.store.sync.get_sync_meta(cid) or SyncMeta(cid)

    def state(self, record: ConversationRecord) -> sync.ConversationState:
        """The conversation's state, replayed from the store once and then kept in memory."""
        cid = record.conversation_id
        state = self._states.get(cid)
        if state is not None:
            return state
        store = self.ctx.store.sync
        meta = store.get_sync_meta(cid)
        if meta is None:
            meta = SyncMeta(cid)
            store.put_sync_meta(meta)
        floor_clock = sync.CompactClock.decode(meta.floor_clock) if meta.floor_clock else None
        snapshot = None
        if meta.members:  # from this account's own history bundle; else wait for the genesis
            snapshot = sync.Roles.of(
                "direct" if meta.kind == "direct" else "group",
                (b64decode(m) for m in meta.members),
                (b64decode(a) for a in meta.admins),
            )
        state = sync.ConversationState(
            b64decode(cid),
            snapshot,
            floor_seq=meta.floor_seq,
            floor_clock=dict(floor_clock.extras) if floor_clock else {},
            floor_hash=floor_clock.log_hash if floor_clock else None,
        )
        state.expiry.seed(timers_of(meta))  # the timers set below the floor (sync.md § 5.8)
        state.expiry.seed_expiring(expiring_of(meta), self.ctx.clock())
        seqs: dict[int, str] = {}
        for r in store.sync_ops(cid):
            op = decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
            seqs[r.server_seq] = r.envelope_id
            if op is not None:
                with contextlib.suppress(sync.SyncError):
                    state.receive(r.server_seq, op)
        self._states[cid] = state
        self._seqs[cid] = seqs
        return state

    def loaded(self) -> list[sync.ConversationState]:
        """The states replayed into memory so far."""
        return list(self._states.values())

    @staticmethod
    def decode(r: SyncOpRecord) -> sync.Op | None:
        return decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)

    def forget(self, cid: str) -> None:
        """Drop the in-memory state (rebuilt from the store on next use)."""
        self._states.pop(cid, None)
        self._seqs.pop(cid, None)
        self._claims.pop(cid, None)

    def envelope_at(self, cid: str, seq: int) -> str | None:
        """The envelope id of the operation stored at ``seq`` (None: nothing stored there)."""
        record = self.known(cid)
        if record is None:
            return None
        self.state(record)
        return self._seqs.get(cid, {}).get(seq)

    def apply(
        self, record: ConversationRecord, seq: int, op: sync.Op, envelope_id: str
    ) -> sync.Received | None:
        """Apply one stored, sequenced operation to the in-memory state; queue what changed
        (view changes, and a :class:`ForkDetected` for an author shown another history)."""
        cid = record.conversation_id
        claim = isinstance(op.body, sync.Undecryptable) and not op.body.attested
        state = self.state(record) if claim else self._welcomed(record, seq, op) or self.state(record)
        claims = self._claims.setdefault(cid, {})
        if claim and (seq in claims or len(claims) < sync.MAX_CLAIMS):  # as the reducer keeps them
            claims[seq] = envelope_id
        try:
            received, delta = state.receive_changes(seq, op, self._me())
        except sync.SyncError:
            return None
        if not claim:
            self._seqs.setdefault(cid, {})[seq] = envelope_id
            claims.pop(seq, None)  # an operation received there replaces the claim
        self._store_attested(cid, received)
        if claim and not state.claimed(seq):
            claims.pop(seq, None)  # not kept (a position received already, or too many claims)
        if received.applied:
            for event in diff.delta_changes(cid, delta, self.name_of):
                self.ctx.emit(event)
        for rejection in received.rejected:
            rejected_eid = self._seqs[cid].get(rejection.seq)
            if rejected_eid is not None:  # a message that is not part of the conversation
                self.ctx.store.conversations.delete_message(rejected_eid)
            self.ctx.emit(
                OperationRejected(
                    cid,
                    b64encode(rejection.author),
                    b64encode(rejection.dot.device),
                    diff.message_ref(rejection.dot),
                    rejected_eid,
                    rejection.reason,
                )
            )
        for fork in received.forks:
            self.ctx.emit(
                ForkDetected(
                    cid,
                    f"the author of the operation at server_seq {fork.seq} was shown another history "
                    f"up to server_seq {fork.base} than this device",
                    fork.seq,
                    b64encode(fork.author),
                    diff.message_ref(fork.dot),
                )
            )
        if received.applied:  # what arrived already expired is purged before anyone sees it
            self.disappearing.purge(record, arriving=(envelope_id,))
        return received

    def _store_attested(self, cid: str, received: sync.Received) -> None:
        """Store the positions ``received`` attested (sync.md § 2.3) as what every replay and
        history bundle reads back as the same attested void (inside the caller's transaction)."""
        claims = self._claims.get(cid, {})
        for seq, op in received.attested:
            envelope_id = claims.pop(seq, None)
            if envelope_id is None:  # (kept as long as the reducer keeps the claim)
                continue
            self.ctx.store.sync.put_sync_op(
                SyncOpRecord(
                    cid,
                    seq,
                    envelope_id,
                    b64encode(op.author),
                    b64encode(op.dot.device),
                    sync.attested_clock(op.dot.n),
                    b"",
                )
            )
            self._seqs.setdefault(cid, {})[seq] = envelope_id
            if seq > self.ctx.store.cursors.get_server_seq(cid):
                self.ctx.store.cursors.set_server_seq(cid, seq)

    def _welcomed(self, record: ConversationRecord, seq: int, op: sync.Op) -> sync.ConversationState | None:
        """This account was added to a conversation it has no authenticated start of: the add's
        welcome (sync.md § 5.7) becomes the floor and membership snapshot the state starts from
        (the adder vouches for it, as the creator does for the genesis; every other member checks
        it against its own log), and :class:`AddedToConversation` names the adder. None when
        there is nothing to adopt (:func:`membership.welcome_adoptable`, or this device already
        holds operations of the conversation)."""
        body = op.body
        if not membership.welcome_adoptable(op, seq, self._me()):
            return None
        assert isinstance(body, sync.MembershipChange) and body.welcome is not None
        state = self.state(record)
        if state.roles() is not None or state.base_seq > 0 or state.received_seq > 0:
            return None
        w = body.welcome
        meta = self.meta(record.conversation_id)
        self.ctx.store.sync.put_sync_meta(
            replace(
                meta,
                floor_seq=w.floor_seq,
                floor_clock=w.floor_clock,
                members=tuple(b64encode(m) for m in w.members),
                admins=tuple(b64encode(a) for a in w.admins),
                kind=w.kind,
            )
        )
        self.forget(record.conversation_id)
        members = tuple(sorted(b64encode(m) for m in (*w.members, body.member)))
        adder = b64encode(op.author)
        names = diff.usernames((*members, adder), self.name_of)
        self.ctx.emit(AddedToConversation(record.conversation_id, adder, members, names))
        return self.state(record)

    def check_may_compose(self, state: sync.ConversationState, body: sync.ops.Body) -> None:
        """Refuse (:class:`NotAllowedError`) what the authenticated membership does not allow this
        account to author (sync.md § 5.7); an unknown membership (no genesis yet) lets it wait."""
        refusal = membership.may_compose(state.roles(), self._me(), body)
        if refusal is not None:
            raise NotAllowedError(_REFUSALS.get(refusal, refusal))

    def recipients(self, record: ConversationRecord, body: sync.ops.Body) -> list[str]:
        """The accounts an operation is encrypted to: the authenticated members (sync.md § 5.7),
        never the server's list. A difference from the server's list is reported once per
        difference (:class:`MembershipMismatch`); nothing is encrypted to an account the
        membership does not name. Raises :class:`MembershipUnknownError` before the genesis."""
        ctx = self.ctx
        state = self.state(record)
        if state.genesis_refused(self._me()):
            # this account created it, yet the server placed another start at position 1
            raise UntrustedConversationError(
                f"conversation {record.conversation_id}: the server put another genesis before the one "
                "this account wrote; nothing more is sent to it"
            )
        accounts = membership.recipients(state.roles(), body)
        if accounts is None:
            raise MembershipUnknownError(
                f"conversation {record.conversation_id} has no authenticated start (genesis) yet"
            )
        members = {b64encode(a) for a in accounts} | {ctx.account_id}
        server = set(record.members) | {ctx.account_id}
        if server != members:
            key = (record.conversation_id, frozenset(members), frozenset(server))
            if key not in self._mismatches:
                self._mismatches.add(key)
                ctx.emit(
                    MembershipMismatch(
                        record.conversation_id,
                        tuple(sorted(members)),
                        tuple(sorted(server)),
                        diff.usernames(members | server, self.name_of),
                    )
                )
        return sorted(members)

    def _me(self) -> bytes:
        account_id = self.ctx.account_id
        cached = self._me_cache
        if cached is None or cached[0] != account_id:
            cached = self._me_cache = (account_id, b64decode(account_id))
        return cached[1]

    async def view(self, conversation_id: str) -> sync.ConversationView:
        return self.state(await self.record(conversation_id)).view()

    async def public_view(self, conversation_id: str) -> views.ConversationView:
        """The view with text ids and usernames (what the client hands out)."""
        return views.public_view(await self.view(conversation_id), self.name_of)

    def message_dot(self, cid: str, message_ref: str) -> sync.Dot:
        """A message named by its ref (``"<device id>.<n>"``) or by its envelope id."""
        ctx = self.ctx
        if "." in message_ref:
            device, _, n = message_ref.partition(".")
            try:
                return sync.Dot(b64decode(device), int(n))
            except (ValueError, CryptoError) as exc:
                raise UsageError(f"not a message reference: {message_ref!r}") from exc
        for r in ctx.store.sync.sync_ops(cid):
            if r.envelope_id == message_ref:
                op = decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
                if op is not None:
                    return op.dot
        item = ctx.store.outbox.get_outbox(message_ref)
        if item is not None:
            op = decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)
            if op is not None:
                return op.dot
        raise UsageError(f"no message {message_ref!r} in conversation {cid}")
