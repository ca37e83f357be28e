"""At-least-once delivery of :class:`MessageReceived` to ``at_least_once`` callbacks: the handler
inbox holds a message until every such callback returned; a failure counts an attempt (given
up after :data:`MAX_HANDLER_ATTEMPTS`), a deferral (:class:`~saltline.client_sdk.eventbus.Deferred`)
does not; unhandled messages already offered once are offered again by
:meth:`HandlerDelivery.redeliver_unhandled`."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.attachments import pointer_of
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.eventbus import Outcome
from saltline.client_sdk.stores.base import PendingDelivery

if TYPE_CHECKING:
    from saltline.client_sdk.facets.conversations import Conversations

log = logging.getLogger("client_sdk.inbound")

#: An unhandled message is offered to ``at_least_once`` callbacks at most this many times.
MAX_HANDLER_ATTEMPTS = 5


class HandlerDelivery:
    def __init__(self, ctx: DeviceContext, conversations: Conversations) -> None:
        self.ctx = ctx
        self.conversations = conversations
        #: messages put in the handler inbox whose first publication has not happened yet
        self.unoffered: set[str] = set()
        self._redelivering = asyncio.Lock()
        ctx.on_delivered = self.settle

    def settle(self, event: MessageReceived, outcome: Outcome | bool) -> None:
        """Record how the ``at_least_once`` callbacks took ``event``: handled (removed from the
        inbox), failed (an attempt counted; given up after :data:`MAX_HANDLER_ATTEMPTS`) or
        deferred (still pending, no attempt counted: its owner settles it when done)."""
        eid = event.envelope_id
        self.unoffered.discard(eid)
        inbox = self.ctx.store.handler_inbox
        if outcome is True or outcome == "ok":
            inbox.remove_pending(eid)
            return
        if outcome == "deferred":
            return
        entry = self._pending_entry(eid)
        if entry is not None and entry.attempts + 1 >= MAX_HANDLER_ATTEMPTS:
            log.error(
                "message %s failed its at-least-once handler %d times: given up", eid, entry.attempts + 1
            )
            inbox.remove_pending(eid)
        else:
            inbox.bump_attempts(eid)

    def _pending_entry(self, eid: str) -> PendingDelivery | None:
        return next((p for p in self.ctx.store.handler_inbox.pending() if p.envelope_id == eid), None)

    async def redeliver_unhandled(self) -> None:
        """Offer the messages whose ``at_least_once`` callbacks did not all return (a crash, an
        exception) to those callbacks again: only messages already offered once (one whose
        first publication is still queued behind a slow callback is not replayed), each re-read
        just before it is offered, one pass at a time."""
        ctx = self.ctx
        if not ctx.bus.has_at_least_once(MessageReceived):
            return
        async with self._redelivering:
            for listed in ctx.store.handler_inbox.pending():
                eid = listed.envelope_id
                if eid in self.unoffered or self._pending_entry(eid) is None:
                    continue  # its first publication is still to come, or it was settled meanwhile
                event = self._rebuild(eid)
                if event is None:
                    ctx.store.handler_inbox.remove_pending(eid)
                    continue
                self.settle(event, await ctx.bus.deliver(event, at_least_once_only=True))

    def _rebuild(self, eid: str) -> MessageReceived | None:
        """The :class:`MessageReceived` of a stored message (None: it is gone)."""
        ctx = self.ctx
        record = ctx.store.conversations.get_message(eid)
        if record is None or record.server_seq is None:
            return None
        contact = ctx.store.device_lists.get_contact(record.sender_account_id)
        ref, reply_to = "", None
        for r in ctx.store.sync.sync_ops(record.conversation_id):
            if r.envelope_id == eid:
                op = self.conversations.decode(r)
                if op is not None:
                    ref = message_ref(op.dot)
                    if isinstance(op.body, sync.Message) and op.body.reply_to is not None:
                        reply_to = message_ref(op.body.reply_to)
                break
        return MessageReceived(
            conversation_id=record.conversation_id,
            message_ref=ref,
            sender_account_id=record.sender_account_id,
            sender_device_id=record.sender_device_id,
            sender_username=contact.username if contact else "",
            text=record.text,
            envelope_id=record.envelope_id,
            server_seq=record.server_seq,
            sent_at_ms=record.sent_at_ms,
            sent_by_me=record.sent_by_me,
            attachment=pointer_of(record.body),
            reply_to=reply_to,
        )
