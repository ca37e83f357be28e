"""What the final answer to a send attempt does to the store: an accepted item becomes a sent
operation (its message, the conversation's cursor, sync op and state, a ``MessageSent`` event); an
item that failed for good is kept as failed and a void operation takes its dot, so the author's
later operations do not wait for it anywhere (``OutboxItemFailed``). The outbound facet
(:mod:`saltline.client_sdk.facets.outbound`) decides the fate (:func:`saltline.client_sdk.core.outbox.fate`)
and calls these."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import replace
from typing import TYPE_CHECKING

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import outbox as rules
from saltline.client_sdk.core import sync, wire
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import MessageSent, OutboxItemFailed
from saltline.client_sdk.facets.conversations import decode_op
from saltline.client_sdk.stores.base import OutboxItem, SyncOpRecord
from saltline.crypto.keys import b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.conversations import Conversations

log = logging.getLogger("client_sdk.outbound")


def is_void(plaintext: bytes) -> bool:
    """Whether an outbox item's plaintext is a void operation (one that only takes a dot)."""
    try:
        return wire.loads_object(plaintext).get("type") == rules.VOID_TYPE
    except ValueError:
        return False


def queue_void(ctx: DeviceContext, item: OutboxItem) -> None:
    """Queue the void operation that takes ``item``'s dot (in the caller's transaction)."""
    void = OutboxItem(
        b64encode(ctx.rng(16)),
        item.conversation_id,
        rules.void_plaintext(item.body),
        item.clock,
        item.created_at_ms,
    )
    ctx.store.outbox.put_outbox(void)


class SendResults:
    def __init__(
        self, ctx: DeviceContext, conversations: Conversations, composed: MutableMapping[str, sync.Op]
    ) -> None:
        self.ctx = ctx
        self.conversations = conversations
        #: The outbound facet's operations composed and not yet sent, by envelope id.
        self._composed = composed

    def mark_sent(self, item: OutboxItem, server_seq: int, server_ts: int) -> None:
        """The server accepted ``item`` at ``server_seq``: it leaves the outbox, and this device
        feeds its own operation into the conversation's state at that ``server_seq`` (the author
        gets no copy from the server; docs/protocol/sync.md § 3)."""
        ctx = self.ctx
        op = self._composed.pop(item.envelope_id, None)
        void = op is None and is_void(item.body)  # composed here: never a void operation
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

    def mark_failed(self, item: OutboxItem, reason: str, status: int | None, code: str | None) -> None:
        """``item`` failed for good: kept as failed (its message too), a void operation queued
        for its dot. A void operation that fails is dropped: nothing can wait for it."""
        ctx = self.ctx
        with ctx.transaction():
            if is_void(item.body):
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
            queue_void(ctx, item)
            op = decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)
            ref = None if op is None else message_ref(op.dot)
            ctx.emit(OutboxItemFailed(item.conversation_id, item.envelope_id, reason, status, code, ref))
