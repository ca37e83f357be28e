"""The materialised conversation state: a pure reducer over sequenced operations
(docs/protocol/sync.md § 4-5).

Feed every decrypted operation of the conversation with its ``server_seq`` to
:meth:`ConversationState.receive` in any order, any number of times; read :meth:`view`. Operations
whose causal predecessors are missing are held (and :attr:`Received.gap` asks for a gap fill);
edits, deletes and reactions whose target message has not arrived wait in a pending set. The view
depends only on the set of operations received, never on their order. No I/O.

The positions received are kept by :class:`~.server_order.ServerOrder`, the held operations by
:class:`~.holding.HeldOps`; this module decides when an operation is ready and what applying it does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import replace

from saltline.client_sdk.core.sync import clock as vc
from saltline.client_sdk.core.sync.clock import CompactClock, Dot, FullClock
from saltline.client_sdk.core.sync.errors import SyncProtocolError
from saltline.client_sdk.core.sync.expiry import ExpiryTracker
from saltline.client_sdk.core.sync.holding import HeldOps
from saltline.client_sdk.core.sync.membership import Membership, Roles, authorise
from saltline.client_sdk.core.sync.ops import (
    Body,
    Delete,
    Edit,
    Genesis,
    MembershipChange,
    Message,
    Op,
    ReactionAdd,
    ReactionRemove,
    ReadMarker,
    SettingsChange,
    SettingValue,
    Typing,
    Undecryptable,
    Void,
    Welcome,
)
from saltline.client_sdk.core.sync.records import Journal as _Journal
from saltline.client_sdk.core.sync.records import Msg as _Msg
from saltline.client_sdk.core.sync.rules import FrontierRegister, Write, lww_key, may_edit
from saltline.client_sdk.core.sync.server_order import ServerOrder
from saltline.client_sdk.core.sync.view import (
    SHARED_FIELDS,
    Conflict,
    ConversationView,
    FieldState,
    Fork,
    GapFill,
    MessageView,
    Received,
    Rejection,
    TypingEvent,
    ViewDelta,
    field_state,
)

__all__ = [
    "SHARED_FIELDS",
    "Conflict",
    "ConversationState",
    "ConversationView",
    "FieldState",
    "Fork",
    "GapFill",
    "MessageView",
    "Received",
    "Rejection",
    "TypingEvent",
    "ViewDelta",
]


#: undecryptable envelopes' claims kept per conversation (sync.md § 2.3); more are dropped
MAX_CLAIMS = 256

# -- the reducer -----------------------------------------------------------------------------------


class ConversationState:
    """One device's state of one conversation.

    ``members``: the trusted membership to start from (:class:`Roles`: a snapshot from a history
    bundle of this account; an iterable of account ids: a group where each is an admin, for tests);
    None: wait for the conversation's genesis operation (sync.md § 5.7), as a device that has the
    history from its start does. ``floor_seq``/``floor_clock``: for a device that
    starts mid-history (a new device with history depth "none"): everything up to ``floor_seq`` is
    treated as received, and ``floor_clock`` is the clock of that prefix.
    """

    def __init__(
        self,
        conversation_id: bytes,
        members: Roles | Iterable[bytes] | None = None,
        *,
        floor_seq: int = 0,
        floor_clock: FullClock | None = None,
        floor_hash: bytes | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        if members is not None and not isinstance(members, Roles):
            accounts = frozenset(members)
            members = Roles.of("group", accounts, accounts)
        self._roles = Membership(members)
        self._rejected: list[Rejection] = []
        self._refused_geneses: dict[bytes, Genesis] = {}  # by author: a genesis not at position 1
        self._order = ServerOrder(conversation_id, floor_seq, floor_clock, floor_hash)  # seq -> dot
        self._applied_contig = floor_seq
        self._held = HeldOps()  # operations waiting for causal predecessors (sync.md § 4 rule 3)
        self._applied: dict[bytes, int] = self._order.floor_clock()
        self._latest_clock: dict[bytes, dict[bytes, int]] = {}
        self._max_lamport = 0
        self._lamport_of: dict[Dot, int] = {}
        self._messages: dict[Dot, _Msg] = {}
        self._pending: dict[Dot, list[tuple[int, Op]]] = {}
        self._read: dict[bytes, int] = {}
        self._receipts: dict[bytes, int] = {}
        self._settings: dict[str, FrontierRegister[SettingValue]] = {}
        self._mute: dict[bytes, FrontierRegister[SettingValue]] = {}
        # server_seq of the messages not deleted, all and per author (sorted): unread counts
        self._live: list[int] = []
        self._live_by: dict[bytes, list[int]] = {}
        self._journal: _Journal | None = None
        # operations whose transcript claim (or base) differs, found by the last receive
        self._forks: list[Fork] = []
        # undecryptable envelopes' unauthenticated claims, by server_seq (sync.md § 2.3), and the
        # positions the last receive attested
        self._claims: dict[int, Op] = {}
        self._attested: list[tuple[int, Op]] = []
        self.expiry = ExpiryTracker()  # disappearing messages (sync.md § 5.8)

    # -- clocks ----------------------------------------------------------------------------------

    @property
    def base_seq(self) -> int:
        """Every operation with ``server_seq <= base_seq`` is applied (the clock's base)."""
        return self._applied_contig

    @property
    def received_seq(self) -> int:
        """Every ``server_seq <= received_seq`` has been received (maybe held)."""
        return self._order.received_seq

    def transcript(self, seq: int) -> bytes | None:
        """``T(seq)`` as this device received the log (None when unknown: beyond what was
        received, or below the floor of a device that started mid-history without the hash)."""
        return self._order.transcript(seq)

    def missing(self, limit: int = 100) -> tuple[int, ...]:
        """The server_seqs not received between the received prefix and the highest one seen."""
        return self._order.missing(limit)

    @property
    def max_lamport(self) -> int:
        return self._max_lamport

    def applied_clock(self) -> dict[bytes, int]:
        """The full clock of the applied operations (downward closed per device)."""
        return dict(self._applied)

    def effective_lamport(self, dot: Dot) -> int | None:
        """The lamport number an applied operation counts with (its own unless it was forged)."""
        return self._lamport_of.get(dot)

    def is_applied(self, dot: Dot) -> bool:
        return vc.contains(self._applied, dot)

    def prefix(self, base: int) -> dict[bytes, int]:
        """The clock implied by the operations with ``server_seq <= base`` (needs them received)."""
        return self._order.prefix(base)

    def local_clock(self, device: bytes, n: int) -> CompactClock:
        """The compact clock for this device's operation ``n`` (``n`` > every dot of it applied)."""
        full = self.applied_clock()
        full[device] = max(full.get(device, 0), n)
        base = self.base_seq
        return vc.compact(full, base, self.prefix(base), self.transcript(base))

    def prunable(self, removed: Mapping[bytes, int], live_devices: Iterable[bytes]) -> frozenset[bytes]:
        """Removed devices (device -> last counter) whose clock entries may be pruned: every live
        device's latest operation has seen the removed device's last dot."""
        return vc.prunable(removed, (self._latest_clock.get(d, {}) for d in live_devices))

    # -- input -----------------------------------------------------------------------------------

    def receive(self, seq: int | None, op: Op) -> Received:
        """Feed one operation with its ``server_seq`` (``None`` only for typing). Idempotent by dot.
        Raises :class:`SyncProtocolError` when the server gives one ``server_seq`` two dots."""
        if isinstance(op.body, Typing):
            return Received(typing=TypingEvent(op.author, op.dot.device, op.body.typing))
        if seq is None or seq < 1:
            raise SyncProtocolError("a stored operation needs a server_seq >= 1")
        if seq <= self._order.floor_seq:
            return self._result((), duplicate=True)
        known = self._order.dot_at(seq)
        if isinstance(op.body, Undecryptable) and not op.body.attested:
            if known is not None or (seq not in self._claims and len(self._claims) >= MAX_CLAIMS):
                return self._result((), duplicate=True)
            self._claims[seq] = op  # only a claim: the position is not received (sync.md § 2.3)
            applied = self._attest()
            self._advance_applied()
            return self._result(tuple(applied), duplicate=False)
        if known is not None:
            if known != op.dot:
                raise SyncProtocolError(f"server_seq {seq} names two operations")
            return self._result((), duplicate=True)
        applied, duplicate = self._receive_at(seq, op)
        if self._claims:
            applied += self._attest()
        self._advance_applied()
        return self._result(tuple(applied), duplicate=duplicate)

    def _receive_at(self, seq: int, op: Op) -> tuple[list[Dot], bool]:
        """Record ``op`` at the free position ``seq``, hold it, apply what became ready."""
        self._claims.pop(seq, None)
        self._order.add(seq, op.dot)
        self._held.received(self._order.received_seq)
        duplicate = False
        if self.is_applied(op.dot):
            duplicate = True
            message = self._messages.get(op.dot)
            if message is not None and seq < message.seq:
                self._touch(message)
                if not message.deleted:
                    self._unlive(message)
                    message.seq = seq
                    self._enlive(message)
                else:
                    message.seq = seq
        elif op.dot in self._held:
            duplicate = True
            first, held = self._held.get(op.dot)
            if seq < first:
                self._held.unhold(op.dot)
                self._held.hold(op.dot, seq, held)
        else:
            self._held.hold(op.dot, seq, op)
        return self._held.drain(op.dot, self._try), duplicate

    def _attest(self) -> list[Dot]:
        """Turn claimed positions into attested voids (sync.md § 2.3): while the first position not
        received is claimed, the held operation with the smallest base whose authenticated
        ``log_hash`` equals ``T(base)`` computed with the claims in place attests the claims up to
        its base. Returns the dots this applied."""
        applied: list[Dot] = []
        while self._order.received_seq + 1 in self._claims:
            claimed = {seq: claim.dot for seq, claim in self._claims.items()}
            used: list[int] | None = None
            for base, dot in self._held.waiting_for_received():
                log_hash = self._held.get(dot)[1].clock.log_hash
                if log_hash is None:
                    continue
                used = self._order.attests(base, log_hash, claimed)
                if used is None or used:
                    break
            if not used:
                return applied
            for seq in used:
                claim = self._claims.pop(seq)
                assert isinstance(claim.body, Undecryptable)
                attested = replace(claim, body=Undecryptable(claim.body.reason, attested=True))
                self._attested.append((seq, attested))
                applied += self._receive_at(seq, attested)[0]
        return applied

    def gap(self) -> GapFill | None:
        received = self._order.received_seq
        if self._held or self._order.max_seq > received:
            return GapFill(self.conversation_id, received)
        return None

    def claimed(self, seq: int) -> bool:
        """Whether an undecryptable envelope's claim on ``seq`` waits for attestation (§ 2.3)."""
        return seq in self._claims

    def held(self) -> tuple[Dot, ...]:
        """Every operation waiting for causal predecessors, in ``server_seq`` order."""
        return self._held.dots()

    def pending_targets(self) -> dict[Dot, tuple[Dot, ...]]:
        """Target message dot -> dots of the applied operations waiting for it."""
        return {
            t: tuple(op.dot for _, op in sorted(ops, key=lambda item: item[0]))
            for t, ops in sorted(self._pending.items())
        }

    def _result(self, applied: tuple[Dot, ...], *, duplicate: bool) -> Received:
        forks, self._forks = tuple(self._forks), []
        rejected, self._rejected = tuple(self._rejected), []
        attested, self._attested = tuple(self._attested), []
        return Received(
            applied, duplicate, self.held(), self.gap(), forks=forks, rejected=rejected, attested=attested
        )

    def _advance_applied(self) -> None:
        while (dot := self._order.dot_at(self._applied_contig + 1)) is not None and self.is_applied(dot):
            self._applied_contig += 1

    def _ready(self, seq: int, op: Op) -> dict[bytes, int] | Dot | int:
        """The op's full clock when all its causal predecessors are applied; otherwise one condition
        it waits for: a :class:`Dot` ``(device, need)`` (until ``need`` ops of ``device`` are
        applied) or an int ``base`` (until ``server_seq`` 1..base are received)."""
        own = op.dot.device
        if op.clock.base >= seq:
            # impossible for an honest author (it cannot have seen its own op's server_seq): only
            # the own-device order is kept, and the op will apply with no effect
            if self._applied.get(own, 0) >= op.dot.n - 1:
                return {own: op.dot.n}
            return Dot(own, op.dot.n - 1)
        if op.clock.base > self._order.received_seq:
            return op.clock.base
        full = op.clock.expand(self.prefix(op.clock.base))
        for device, n in full.items():
            need = n - 1 if device == own else n
            if self._applied.get(device, 0) < need:
                return Dot(device, need)
        if self._applied.get(own, 0) < op.dot.n - 1:
            return Dot(own, op.dot.n - 1)
        return full

    def _try(self, dot: Dot) -> bool:
        """Apply the held ``dot`` if it is ready, else index it by what it waits for (the
        ``attempt`` of :meth:`HeldOps.drain`)."""
        seq, op = self._held.get(dot)
        full = self._ready(seq, op)
        if not isinstance(full, dict):
            self._held.wait_for(dot, full)
            return False
        self._held.unhold(dot)
        self._apply(seq, op, full)
        self._held.applied(op.dot.device, self._applied[op.dot.device])
        return True

    # -- the rules -------------------------------------------------------------------------------

    def _lamport_bound(self, op: Op, full: dict[bytes, int]) -> int | None:
        """``1 + max`` lamport of the operation's causal predecessors (each device's lamport numbers
        increase, so the maximum is at each device's clock entry); None when one is unknown (below
        the floor)."""
        bound = 0
        for device, n in full.items():
            last = n - 1 if device == op.dot.device else n
            if last == 0:
                continue
            lamport = self._lamport_of.get(Dot(device, last))
            if lamport is None:
                return None
            bound = max(bound, lamport)
        return bound + 1

    def _apply(self, seq: int, op: Op, full: dict[bytes, int]) -> None:
        self._applied[op.dot.device] = op.dot.n
        self._latest_clock[op.dot.device] = full
        if isinstance(op.body, Undecryptable):
            # an attested position (sync.md § 2.3): no effect, and its lamport number stays
            # unknown (its clock names only its dot, so a bound from it could be too small)
            return
        bound = self._lamport_bound(op, full)
        valid = (
            op.clock.base < seq
            and full.get(op.dot.device, 0) == op.dot.n
            and (bound is None or op.lamport <= bound)
            and not isinstance(op.body, Void)  # no lamport of its own: it counts with the bound
        )
        claimed = op.clock.log_hash
        if op.clock.base >= seq:
            # the author's base includes the op's own position: impossible unless the server
            # placed it there (the op is consumed with no effect, and reported)
            self._forks.append(Fork(op.dot, op.author, seq, op.clock.base))
        elif claimed is not None:
            own = self.transcript(op.clock.base)
            if own is not None and own != claimed:
                # the author was shown another history up to its base than this device
                self._forks.append(Fork(op.dot, op.author, seq, op.clock.base))
        lamport = op.lamport if valid or bound is None else bound
        if bound is not None or not isinstance(op.body, Void):
            # a void above a floor has no lamport number and no bound: it stays unknown, like the
            # operations below the floor (0 would make every later honest one look forged)
            self._lamport_of[op.dot] = lamport
            self._max_lamport = max(self._max_lamport, lamport)
        if not valid:
            # malformed: the clock claims later operations of its own author, the lamport number is
            # above "max seen + 1" (it would win every later conflict), or a void; the dot is consumed
            return
        body: Body = op.body
        reason = authorise(op, seq, full, self._roles.at(full))
        if reason is not None:
            # the author may not make it (not a member in its causal past, not an admin, ...):
            # consumed with no effect everywhere, and reported
            self._rejected.append(Rejection(op.dot, op.author, seq, reason))
            if isinstance(body, Genesis):
                self._refused_geneses[op.author] = body
            return
        self.expiry.applied(op, full)
        journal = self._journal
        if isinstance(body, Message):
            message = _Msg(
                op.dot, seq, op.author, body.text, body.reply_to, body.sent_at_ms, attachment=body.attachment
            )
            self._messages[op.dot] = message
            self._enlive(message)
            if journal is not None:
                journal.created.add(op.dot)
            for _, waiting in sorted(self._pending.pop(op.dot, []), key=lambda item: item[0]):
                self._apply_targeted(message, waiting)
        elif isinstance(body, Edit | Delete | ReactionAdd | ReactionRemove):
            target = self._messages.get(body.target)
            if target is not None:
                self._apply_targeted(target, op)
            elif not vc.contains(full, body.target):
                self._pending.setdefault(body.target, []).append((seq, op))
            # else: the author had seen the target and it is not a message: ignored everywhere
        elif isinstance(body, ReadMarker):
            if journal is not None and journal.read is None:
                journal.read = dict(self._read)
            self._read[op.author] = max(self._read.get(op.author, 0), body.up_to)
            if body.receipts:
                self._receipts[op.author] = max(self._receipts.get(op.author, 0), body.up_to)
        elif isinstance(body, SettingsChange):
            write: Write[SettingValue] = Write(lww_key(op), op.dot, op.author, full, body.value)
            if journal is not None:
                if body.field == "mute":
                    if op.author not in journal.mute:
                        register = self._mute.get(op.author)
                        journal.mute[op.author] = None if register is None else field_state(register)
                elif body.field not in journal.settings:
                    journal.settings[body.field] = field_state(self._settings.get(body.field))
            if body.field == "mute":
                self._mute.setdefault(op.author, FrontierRegister()).add(write)
            else:
                self._settings.setdefault(body.field, FrontierRegister()).add(write)
        elif isinstance(body, MembershipChange | Genesis):
            if journal is not None and journal.members is None:
                journal.members = self.members()
            self._roles.apply(op, full)
        # Unknown: the dot is consumed, nothing else changes

    def _apply_targeted(self, message: _Msg, op: Op) -> None:
        body = op.body
        assert isinstance(body, Edit | Delete | ReactionAdd | ReactionRemove)
        if message.deleted:
            return  # a tombstone beats every edit and reaction, earlier or later
        self._touch(message)
        key = lww_key(op)
        if isinstance(body, Delete):
            if may_edit(message.author, op.author):
                self._unlive(message)
                message.deleted, message.text, message.edit = True, None, None
                message.reactions.clear()
        elif isinstance(body, Edit):
            if may_edit(message.author, op.author) and (message.edit is None or key > message.edit[0]):
                message.edit = (key, body.text)
        else:
            current = message.reactions.get(op.author)
            if current is None or key > current[0]:
                message.reactions[op.author] = (key, body.emoji if isinstance(body, ReactionAdd) else None)

    # -- output ----------------------------------------------------------------------------------

    def view(self) -> ConversationView:
        roles = self._roles.current()
        messages = tuple(m.view() for m in sorted(self._messages.values(), key=lambda m: (m.seq, m.dot)))
        settings = {f: field_state(self._settings.get(f)) for f in SHARED_FIELDS}
        mute = {a: field_state(r) for a, r in sorted(self._mute.items())}
        return ConversationView(
            self.conversation_id,
            messages,
            settings,
            mute,
            self.members(),
            dict(sorted(self._read.items())),
            dict(sorted(self._receipts.items())),
            self.missing(),
            self.held(),
            roles.admins if roles else frozenset(),
            roles.kind if roles else None,
        )

    def members(self) -> frozenset[bytes]:
        """The authenticated members now (empty until the genesis is applied)."""
        roles = self._roles.current()
        return roles.members if roles else frozenset()

    def roles(self) -> Roles | None:
        """The authenticated membership now (None until the genesis is applied)."""
        return self._roles.current()

    def welcome(self) -> Welcome | None:
        """What an account this device adds now needs to start (sync.md § 5.7): the membership
        and the applied prefix (None before the genesis)."""
        roles = self._roles.current()
        if roles is None:
            return None
        base = self.base_seq
        floor = vc.compact(self.prefix(base), 0, {}, self.transcript(base)).encode()
        return Welcome(roles.kind, tuple(sorted(roles.members)), tuple(sorted(roles.admins)), base, floor)

    def roles_at(self, seq: int) -> Roles | None:
        """The membership in the causal past of the prefix ``1..seq`` (None: unknown there)."""
        if seq > self._order.received_seq:
            return None
        return self._roles.at(self.prefix(seq))

    def vouched_key(self, account: bytes) -> bytes | None:
        """The account key of ``account`` its genesis or add operation named (sync.md § 5.7)."""
        return self._roles.vouched_key(account)

    def genesis_refused(self, account: bytes) -> bool:
        """Whether a genesis of ``account`` was rejected and the membership is not the one it
        named (another start holds position 1: for a direct pair, the other account's identical
        genesis is no reason to refuse)."""
        own = self._refused_geneses.get(account)
        if own is None:
            return False
        roles = self._roles.current()
        return roles is None or roles.kind != own.kind or roles.members != frozenset(own.members)

    def ever_member(self, account: bytes) -> bool:
        """Whether the authenticated membership ever named ``account`` (False while unknown)."""
        return self._roles.ever(account)

    def unread(self, viewer: bytes) -> int:
        """``view().unread(viewer)`` without materialising the view (logarithmic)."""
        mark = self._read.get(viewer, 0)
        live, own = self._live, self._live_by.get(viewer, [])
        return len(live) - bisect.bisect_right(live, mark) - (len(own) - bisect.bisect_right(own, mark))

    def message_seqs(self) -> tuple[int, ...]:
        """The server_seq of every message not deleted, ascending."""
        return tuple(self._live)

    def receive_changes(self, seq: int | None, op: Op, viewer: bytes) -> tuple[Received, ViewDelta]:
        """:meth:`receive`, and what it changed in the view for ``viewer`` (see :class:`ViewDelta`):
        the same differences as comparing :meth:`view` before and after, at the cost of the parts
        touched."""
        unread_before = self.unread(viewer)
        journal = self._journal = _Journal()
        try:
            received = self.receive(seq, op)
        finally:
            self._journal = None
        touched = [m for d in journal.created | journal.messages.keys() if (m := self._messages.get(d))]
        touched.sort(key=lambda m: (m.seq, m.dot))
        mute_after = self._mute.get(viewer)
        delta = ViewDelta(
            messages=tuple((journal.messages.get(m.dot), m.view()) for m in touched),
            read=(dict(self._read) if journal.read is None else journal.read, dict(self._read)),
            unread=(unread_before, self.unread(viewer)),
            settings=tuple(
                (f, journal.settings[f], field_state(self._settings.get(f)))
                for f in SHARED_FIELDS
                if f in journal.settings
            ),
            mute=None
            if viewer not in journal.mute or mute_after is None
            else (journal.mute[viewer], field_state(mute_after)),
            members=None if journal.members is None else (journal.members, self.members()),
        )
        return received, delta

    def _touch(self, message: _Msg) -> None:
        journal = self._journal
        if journal is not None and message.dot not in journal.created and message.dot not in journal.messages:
            journal.messages[message.dot] = message.view()

    def _enlive(self, message: _Msg) -> None:
        bisect.insort(self._live, message.seq)
        bisect.insort(self._live_by.setdefault(message.author, []), message.seq)

    def _unlive(self, message: _Msg) -> None:
        for seqs in (self._live, self._live_by[message.author]):
            del seqs[bisect.bisect_left(seqs, message.seq)]
