"""Disappearing messages on this device (docs/protocol/sync.md § 5.8): the reducer computes each
message's expiry (:mod:`saltline.client_sdk.core.sync.expiry`); this facet purges what expired from the
store - the message row (text and operation copy), the plaintext of the message's sync operation
and of every operation that refers to it (edits, reactions, deletes), each replaced by a
tombstone that keeps the reducer convergent - and then emits :class:`MessageExpired`.

Purging runs when the client opens its store, after every applied operation (a message that
arrives already expired is stored only as a tombstone and never announced), before a history
bundle is built, after a new device adopted one, and on a timer driven by the context clock
(:meth:`Disappearing.run`: it wakes at the earliest expiry, and at least every
:data:`WAKE_S` seconds so that a clock that jumps, or an injected clock that tests advance, is
followed without waiting for the real time to pass).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from typing import TYPE_CHECKING

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import diff, sync
from saltline.client_sdk.core import outbox as outbox_rules
from saltline.client_sdk.core.events import MessageExpired
from saltline.client_sdk.core.sync import expiry
from saltline.client_sdk.stores.base import ConversationRecord, OutboxItem, SyncMeta
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.conversations import Conversations

log = logging.getLogger("client_sdk.disappearing")

#: The timer wakes at the earliest expiry, and at least this often (seconds of real time).
WAKE_S = 1.0
#: ... and never more often than this (seconds), whatever the clock says.
MIN_WAKE_S = 0.05


def timers_of(meta: SyncMeta) -> list[expiry.TimerWrite]:
    """The floor's timer writes a history bundle gave this device (:attr:`SyncMeta.timers`)."""
    out = []
    for device, n, lamport, value in meta.timers:
        raw = b64decode(device)
        out.append(expiry.TimerWrite((lamport, raw, n), sync.Dot(raw, n), value))
    return out


def expiring_of(meta: SyncMeta) -> list[tuple[sync.Dot, int]]:
    """The floor's expiring messages a history bundle gave this device (:attr:`SyncMeta.expiring`)."""
    return [(sync.Dot(b64decode(device), n), at) for device, n, at in meta.expiring]


def encode_expiring(entries: tuple[tuple[sync.Dot, int], ...]) -> tuple[tuple[str, int, int], ...]:
    return tuple((b64encode(d.device), d.n, at) for d, at in entries)


def encode_timers(writes: tuple[expiry.TimerWrite, ...]) -> tuple[tuple[str, int, int, int | None], ...]:
    return tuple((b64encode(w.dot.device), w.dot.n, w.key[0], w.value) for w in writes)


class Disappearing:
    def __init__(self, ctx: DeviceContext, conversations: Conversations) -> None:
        self.ctx = ctx
        self.conversations = conversations
        #: envelope ids of messages purged in the same apply that stored them (never announced)
        self._on_arrival: set[str] = set()
        #: called (without the lock) after the timer replaced outbox items by void operations
        self.send_outbox: Callable[[], Awaitable[object]] | None = None
        self.purged_outbox = 0

    def expired_on_arrival(self, envelope_id: str) -> bool:
        """Whether the message of ``envelope_id`` was already expired when it was applied (it
        is stored as a tombstone only, and not announced as new)."""
        return envelope_id in self._on_arrival

    def purge_all(self) -> int:
        """Purge every expired message of every conversation, and of the outbox
        (:attr:`purged_outbox`: how many of these); returns how many."""
        count = sum(len(self.purge(r)) for r in self.ctx.store.conversations.conversations())
        self.purged_outbox = self.purge_outbox()
        return count + self.purged_outbox

    def _outbox_expired(self, now: int) -> list[tuple[OutboxItem, sync.Op]]:
        """The outbox items (queued or failed) of messages whose timer ran out before the server
        stored them. The timer: the writes the reducer applied and this device's own timer
        changes still in the outbox, as in the message's causal past (its clock)."""
        ctx = self.ctx
        items = [(i, op) for i in ctx.store.outbox.outbox() if (op := self._own(i)) is not None]
        pending = [w for _, op in items if (w := expiry.timer_write(op)) is not None]
        out = []
        for item, op in items:
            if not isinstance(op.body, sync.Message):
                continue
            record = ctx.store.conversations.get_conversation(item.conversation_id)
            if record is None:
                continue
            state = self.conversations.state(record)
            try:
                full = op.clock.expand(state.prefix(op.clock.base))
            except ValueError:  # (its base is beyond what this device holds: not its own op)
                continue
            writes = [*state.expiry.writes(), *pending]
            if expiry.expired(
                expiry.expires_at(op.body.sent_at_ms, expiry.timer_in_force(writes, full)), now
            ):
                out.append((item, op))
        return out

    def _own(self, item: OutboxItem) -> sync.Op | None:
        from saltline.client_sdk.facets.conversations import decode_op  # (it imports this module)

        ctx = self.ctx
        return decode_op(item.body, item.clock, ctx.device_id, ctx.account_id)

    def purge_outbox(self) -> int:
        """A message that expires before the server stored it is not sent (sync.md § 5.8): its
        outbox item and row go, and a void operation takes its dot (as for a discarded item; a
        failed item already has one). Returns how many went."""
        ctx = self.ctx
        expired = self._outbox_expired(ctx.clock())
        if not expired:
            return 0
        with ctx.transaction():
            for item, op in expired:
                ctx.store.outbox.remove_outbox(item.envelope_id)
                ctx.store.conversations.delete_message(item.envelope_id)
                if item.failed_reason is None:
                    void = outbox_rules.void_plaintext(item.body)
                    ctx.store.outbox.put_outbox(
                        OutboxItem(
                            b64encode(ctx.rng(16)), item.conversation_id, void, item.clock, item.created_at_ms
                        )
                    )
                ctx.emit(MessageExpired(item.conversation_id, diff.message_ref(op.dot), item.envelope_id))
        return len(expired)

    def purge(self, record: ConversationRecord, *, arriving: Collection[str] = ()) -> list[str]:
        """Purge the expired messages of one conversation (and the operations referring to them:
        edits, reactions, deletes, replies) in one transaction; queue a :class:`MessageExpired`
        for each (except the envelopes of ``arriving``: being stored now, never announced).
        Returns the purged envelope ids."""
        ctx = self.ctx
        self._on_arrival.clear()
        state = self.conversations.state(record)
        now = ctx.clock()
        if not state.expiry.purge_due(now):
            return []
        messages, dependents = state.expiry.due(now)
        targets = messages | dependents
        cid = record.conversation_id
        purged: list[tuple[str, sync.Dot]] = []
        with ctx.transaction():
            for r in ctx.store.sync.sync_ops(cid):
                op = self.conversations.decode(r)
                if op is None or op.dot not in targets:
                    continue
                ctx.store.sync.put_sync_op(replace(r, plaintext=expiry.tombstone(op)))
                if isinstance(op.body, sync.Message):  # expired, or a reply to an expired one
                    ctx.store.conversations.delete_message(r.envelope_id)
                    ctx.store.handler_inbox.remove_pending(r.envelope_id)
                    purged.append((r.envelope_id, op.dot))
            self.conversations.forget(cid)
            self.conversations.state(record)  # replayed from the tombstones
            for envelope_id, dot in purged:
                if envelope_id in arriving:
                    self._on_arrival.add(envelope_id)
                else:
                    ctx.emit(MessageExpired(cid, diff.message_ref(dot), envelope_id))
        return [e for e, _ in purged]

    def next_expiry(self) -> int | None:
        """The earliest expiry of a message in a conversation loaded in memory."""
        times = [t for s in self.conversations.loaded() if (t := s.expiry.next_expiry()) is not None]
        return min(times, default=None)

    def _delay(self) -> float:
        at = self.next_expiry()
        if at is None:
            return WAKE_S
        return min(WAKE_S, max(MIN_WAKE_S, (at - self.ctx.clock()) / 1000))

    async def run(self) -> None:
        """The timer: purge what expired whenever the context clock passes an expiry. Nothing
        that fails in one round stops it (the next round tries again, at most :data:`WAKE_S`
        later): a timer that died would keep every later disappearing message on the device."""
        while True:
            try:
                await asyncio.sleep(self._delay())
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the disappearing-message timer's round failed; it tries again")
                await asyncio.sleep(WAKE_S)

    async def _round(self) -> None:
        at, now = self.next_expiry(), self.ctx.clock()
        if (at is None or at > now) and not self._outbox_expired(now):
            return
        voided = 0
        try:
            async with self.ctx.lock:
                self.purge_all()
                voided = self.purged_outbox
        except Exception:
            log.exception("purging expired messages failed")
        await self.ctx.flush()
        if voided and self.send_outbox is not None:
            try:
                await self.send_outbox()
            except Exception:
                log.exception("sending the void operations failed")
