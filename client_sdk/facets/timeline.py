"""What a person sees: the conversations this device knows and each one's messages in their
CURRENT state (edited text, deletion tombstones, reactions, replies, read state, pending and failed
sends), with text ids and usernames. Built from the stored message rows (display order, status) and
the conversation's materialised view (docs/protocol/sync.md), never from the text a message was
first sent with.

:class:`ConversationDirectory` is the client's conversations facet; calling it
(``client.conversations()``) lists the conversations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from saltline.client_sdk.core import sync
from saltline.client_sdk.core.attachments import AttachmentPointer, pointer_of
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import Reaction
from saltline.client_sdk.facets.conversations import Conversations, decode_op
from saltline.client_sdk.stores.base import ConversationRecord, MessageRecord, MessageStatus
from saltline.crypto.keys import b64decode, b64encode


@dataclass(frozen=True, slots=True)
class TimelineMessage:
    """One message as it stands now. ``text`` is None once deleted (a tombstone: the deleted text is
    never returned); ``edited``: the text is an edit's. ``ref`` names it for reply/edit/delete/react
    (None only for an unreadable outbox item). ``status``: "pending" (in the outbox), "failed"
    (refused for good: ``failed_reason``), "sent" or "received". ``read_by``: the other accounts
    whose read receipt covers it; ``unread``: another account's message after this account's read
    marker."""

    conversation_id: str
    ref: str | None
    envelope_id: str
    sender_account_id: str
    sender_username: str | None
    sender_device_id: str
    sent_by_me: bool
    sent_at_ms: int
    server_seq: int | None
    status: MessageStatus
    text: str | None
    edited: bool
    deleted: bool
    reply_to: str | None
    reactions: tuple[Reaction, ...]
    read_by: tuple[str, ...]
    unread: bool
    attachment: AttachmentPointer | None
    failed_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation_id: str
    kind: str
    members: tuple[str, ...]  # account ids, sorted (the authenticated membership once known)
    admins: tuple[str, ...]
    title: str | None
    muted: bool
    disappearing_ms: int | None
    unread: int
    messages: int


class ConversationDirectory(Conversations):
    """The conversations facet, with the listing and the current-state timeline."""

    def __call__(self) -> list[ConversationSummary]:
        """Every conversation this device knows, most recently created last."""
        records = sorted(self.ctx.store.conversations.conversations(), key=lambda r: r.created_at_ms)
        return [self.summary(r) for r in records]

    def summary(self, record: ConversationRecord) -> ConversationSummary:
        view = self.state(record).view()
        me = b64decode(self.ctx.account_id)
        members = tuple(sorted(b64encode(m) for m in view.members)) or tuple(sorted(record.members))
        title = view.settings.get("title")
        timer = view.settings.get("disappearing_ms")
        mute = view.mute.get(me)
        return ConversationSummary(
            record.conversation_id,
            view.kind or record.kind,
            members,
            tuple(sorted(b64encode(a) for a in view.admins)),
            title.value if title is not None and isinstance(title.value, str) else None,
            bool(mute is not None and mute.value),
            timer.value if timer is not None and isinstance(timer.value, int) and timer.value > 0 else None,
            view.unread(me),
            sum(1 for m in view.messages if not m.deleted),
        )

    async def timeline(self, conversation_id: str, limit: int = 1000) -> list[TimelineMessage]:
        record = await self.record(conversation_id)
        view = self.state(record).view()
        by_seq = _by_seq(view)
        return [self._item(row, view, by_seq) for row in self.messages(conversation_id, limit)]

    def current(self, rows: Sequence[MessageRecord]) -> list[MessageRecord]:
        """``rows`` with their current text: an edit's text, ``""`` (and no body, so no attachment)
        once deleted."""
        out: list[MessageRecord] = []
        views: dict[str, dict[int | None, sync.MessageView]] = {}
        for row in rows:
            cid = row.conversation_id
            if cid not in views:
                record = self.known(cid)
                views[cid] = _by_seq(self.state(record).view() if record is not None else None)
            shown = views[cid].get(row.server_seq) if row.server_seq is not None else None
            if shown is None:
                out.append(row)
            elif shown.deleted:
                out.append(replace(row, text="", body=b""))
            elif shown.text is not None and shown.text != row.text:
                out.append(replace(row, text=shown.text))
            else:
                out.append(row)
        return out

    def _item(
        self, row: MessageRecord, view: sync.ConversationView, by_seq: dict[int | None, sync.MessageView]
    ) -> TimelineMessage:
        me = b64decode(self.ctx.account_id)
        shown = by_seq.get(row.server_seq) if row.server_seq is not None else None
        failed_reason = None
        if shown is None:
            ref = None
            reply_to = None
            item = self.ctx.store.outbox.get_outbox(row.envelope_id)
            if item is not None:
                failed_reason = item.failed_reason
                op = decode_op(item.body, item.clock, self.ctx.device_id, self.ctx.account_id)
                if op is not None:
                    ref = message_ref(op.dot)
                    if isinstance(op.body, sync.Message) and op.body.reply_to is not None:
                        reply_to = message_ref(op.body.reply_to)
            text: str | None = row.text
            attachment = pointer_of(row.body) if row.body else None
            return TimelineMessage(
                row.conversation_id, ref, row.envelope_id, row.sender_account_id,
                self.username_of(row.sender_account_id), row.sender_device_id, row.sent_by_me,
                row.sent_at_ms, row.server_seq, row.status, text, False, False, reply_to, (), (),
                False, attachment, failed_reason,
            )  # fmt: skip
        author = shown.author
        read_by = tuple(
            sorted(b64encode(a) for a, seq in view.receipts.items() if a != author and seq >= shown.seq)
        )
        unread = author != me and not shown.deleted and shown.seq > view.read_up_to.get(me, 0)
        return TimelineMessage(
            row.conversation_id,
            message_ref(shown.dot),
            row.envelope_id,
            row.sender_account_id,
            self.username_of(row.sender_account_id),
            row.sender_device_id,
            row.sent_by_me,
            row.sent_at_ms,
            row.server_seq,
            row.status,
            None if shown.deleted else shown.text,
            shown.edited and not shown.deleted,
            shown.deleted,
            message_ref(shown.reply_to) if shown.reply_to is not None else None,
            tuple(Reaction(b64encode(a), self.name_of(b64encode(a)), e) for a, e in shown.reactions),
            read_by,
            unread,
            None if shown.deleted else shown.attachment,
        )


def _by_seq(view: sync.ConversationView | None) -> dict[int | None, sync.MessageView]:
    if view is None:
        return {}
    return {m.seq: m for m in view.messages}
