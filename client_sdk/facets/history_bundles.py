"""History bundles a linked device starts from (format: :mod:`saltline.client_sdk.core.history`;
docs/protocol/sync.md § 8): building one on the approving device, seeding from it and merging the
follow-up on the new device. The linking facet seals, uploads and downloads them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import diff, sync
from saltline.client_sdk.core import history as fmt
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.facets.conversations import Conversations, decode_op
from saltline.client_sdk.facets.disappearing import encode_expiring, encode_timers
from saltline.client_sdk.stores.base import ConversationRecord, MessageRecord, SyncOpRecord
from saltline.crypto.keys import b64decode, b64encode

#: History a linked device receives: "all", "none" or a number of days.
HistoryDepth = str | int
Sent = dict[str, tuple[int, frozenset[int]]]


class HistoryBundles:
    def __init__(self, ctx: DeviceContext, conversations: Conversations) -> None:
        self.ctx = ctx
        self.conversations = conversations
        #: Conversations a history bundle seeded on this (new) device.
        self._seeded: set[str] = set()

    def history_bundle(self, depth: HistoryDepth, sent: Sent | None = None) -> dict[str, Any]:
        """Every conversation's sync operations (or the recent ones) and the floor the new device
        starts from. It purges what expired first: the caller flushes the events it queued.
        With ``sent`` (conversation id -> floor and seqs of the first bundle), the follow-up
        bundle: what the first one lacked (a conversation with nothing new is left out)."""
        ctx = self.ctx
        try:
            cutoff = fmt.depth_cutoff(depth, ctx.clock())
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        out: list[fmt.BundleConversation] = []
        self.conversations.disappearing.purge_all()  # expired messages never leave (sync.md § 5.8)
        for record in ctx.store.conversations.conversations():
            cid = record.conversation_id
            state = self.conversations.state(record)
            meta = self.conversations.meta(cid)
            ops = list(ctx.store.sync.sync_ops(cid))

            def times(ops: list[SyncOpRecord] = ops) -> list[tuple[int, int]]:
                out_t = []
                for r in ops:
                    op = decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
                    if op is not None and isinstance(op.body, sync.Message):
                        out_t.append((r.server_seq, op.body.sent_at_ms))
                return out_t

            floor = fmt.choose_floor(
                depth,
                cutoff,
                base_seq=state.base_seq,
                meta_floor=meta.floor_seq,
                message_times=times() if cutoff is not None else (),
            )
            had: frozenset[int] = frozenset()
            if sent is not None and cid in sent:
                floor, had = sent[cid]
            carried = [r for r in ops if r.server_seq > floor and r.server_seq not in had]
            if sent is not None and cid in sent and not carried:
                continue
            floor_clock = state.prefix(floor) if floor <= state.received_seq else {}
            # the authenticated membership at the floor (none at 0: the bundle carries the genesis)
            snapshot = state.roles_at(floor) if floor > 0 else None
            out.append(
                fmt.BundleConversation(
                    cid,
                    snapshot.kind if snapshot else record.kind,
                    tuple(record.members),
                    tuple(sorted(b64encode(m) for m in snapshot.members)) if snapshot else (),
                    floor,
                    # the floor's clock, with the transcript hash T(floor) in its hash field
                    sync.CompactClock.of(0, floor_clock, state.transcript(floor)).encode(),
                    ctx.store.cursors.get_server_seq(cid),
                    tuple(
                        fmt.BundleOp(
                            r.server_seq,
                            r.envelope_id,
                            r.sender_account_id,
                            r.sender_device_id,
                            r.clock,
                            r.plaintext,
                        )
                        for r in carried
                    ),
                    tuple(sorted(b64encode(m) for m in snapshot.admins)) if snapshot else (),
                    encode_timers(state.expiry.writes(floor_clock)) if floor > 0 else (),
                    encode_expiring(state.expiry.expiring(floor_clock)) if floor > 0 else (),
                )
            )
        return fmt.encode_bundle(out, ctx.clock())

    def _store_bundle_op(self, cid: str, o: fmt.BundleOp) -> tuple[SyncOpRecord, sync.Op | None]:
        ctx = self.ctx
        r = SyncOpRecord(cid, o.seq, o.envelope_id, o.account, o.device, o.clock, o.plaintext)
        ctx.store.sync.put_sync_op(r)
        op = decode_op(r.plaintext, r.clock, r.sender_device_id, r.sender_account_id)
        if op is not None and isinstance(op.body, sync.Message):
            ctx.store.conversations.put_message(
                MessageRecord(
                    cid,
                    r.envelope_id,
                    r.sender_account_id,
                    r.sender_device_id,
                    op.body.text,
                    op.body.sent_at_ms,
                    r.sender_account_id == ctx.device.account_id,
                    "received",
                    r.server_seq,
                    None,
                    r.plaintext,
                )
            )
        return r, op

    def _put_bundle_meta(self, c: fmt.BundleConversation) -> None:
        """The conversation starts from the bundle's floor and genesis (own counters kept)."""
        meta = self.conversations.meta(c.conversation_id)
        self.ctx.store.sync.put_sync_meta(
            replace(
                meta,
                floor_seq=c.floor_seq,
                floor_clock=c.floor_clock,
                members=c.genesis if c.floor_seq > 0 else (),
                admins=c.admins if c.floor_seq > 0 else (),
                kind=c.kind,
                timers=c.timers if c.floor_seq > 0 else (),
                expiring=c.expiring if c.floor_seq > 0 else (),
            )
        )

    def seed_history(self, bundle: dict[str, Any]) -> None:
        """New device: adopt a history bundle (inside the linking transaction)."""
        ctx = self.ctx
        for c in fmt.parse_bundle(bundle):
            cid = c.conversation_id
            ctx.store.conversations.put_conversation(ConversationRecord(cid, c.kind, c.members))
            self._put_bundle_meta(c)
            top = c.floor_seq
            for o in c.ops:
                r, _ = self._store_bundle_op(cid, o)
                top = max(top, r.server_seq)
            ctx.store.cursors.set_server_seq(cid, max(top, c.cursor))
            self.conversations.forget(cid)
            self._seeded.add(cid)
            # what expired since the bundle was made goes now, unannounced (sync.md § 5.8)
            self.conversations.disappearing.purge(
                ConversationRecord(cid, c.kind, c.members), arriving=[o.envelope_id for o in c.ops]
            )

    async def merge_follow_up(self, bundle: dict[str, Any]) -> None:
        """New device: add the operations of the follow-up bundle this device does not hold,
        rebuild each changed conversation and emit what changed (each arrives exactly once)."""
        async with self.ctx.lock:
            self._merge(bundle)
        await self.ctx.flush()

    def _merge(self, bundle: dict[str, Any]) -> None:
        ctx = self.ctx
        me = b64decode(ctx.account_id)
        for c in fmt.parse_bundle(bundle):
            cid = c.conversation_id
            record = ctx.store.conversations.get_conversation(cid)
            before = None if record is None else self.conversations.state(record).view()
            held = {r.server_seq for r in ctx.store.sync.sync_ops(cid)}
            added: list[tuple[SyncOpRecord, sync.Op]] = []
            with ctx.transaction():
                if record is None:
                    record = ConversationRecord(cid, c.kind, c.members)
                    ctx.store.conversations.put_conversation(record)
                if cid not in self._seeded:  # not in the first bundle: it starts from this one
                    self._put_bundle_meta(c)
                    self._seeded.add(cid)
                for o in c.ops:
                    if o.seq in held or ctx.store.conversations.get_message(o.envelope_id) is not None:
                        continue
                    r, op = self._store_bundle_op(cid, o)
                    held.add(o.seq)
                    if op is not None:
                        added.append((r, op))
                top = max(held, default=0)
                if top > ctx.store.cursors.get_server_seq(cid):
                    ctx.store.cursors.set_server_seq(cid, top)
                self.conversations.forget(cid)
                expired = set(
                    self.conversations.disappearing.purge(record, arriving=[r.envelope_id for r, _ in added])
                )
                after = self.conversations.state(record).view()
                if before is None:
                    ctx.emit(self.conversations.added(record))
                else:
                    for event in diff.changes(cid, me, before, after, self.conversations.name_of):
                        ctx.emit(event)
                for r, op in sorted(added, key=lambda a: a[0].server_seq):
                    if isinstance(op.body, sync.Message) and r.envelope_id not in expired:
                        contact = ctx.store.device_lists.get_contact(r.sender_account_id)
                        ctx.emit(
                            MessageReceived(
                                conversation_id=cid,
                                message_ref=diff.message_ref(op.dot),
                                sender_account_id=r.sender_account_id,
                                sender_device_id=r.sender_device_id,
                                sender_username=contact.username if contact else "",
                                text=op.body.text,
                                envelope_id=r.envelope_id,
                                server_seq=r.server_seq,
                                sent_at_ms=op.body.sent_at_ms,
                                sent_by_me=r.sender_account_id == ctx.account_id,
                                attachment=op.body.attachment,
                                reply_to=_ref(op.body.reply_to),
                            )
                        )


def _ref(dot: sync.Dot | None) -> str | None:
    return None if dot is None else diff.message_ref(dot)
