"""What the conversation reducer reports: the result of one receive, the materialised view, and
the delta of one receive (the touched parts of the view before and after it), from which
:mod:`saltline.client_sdk.core.diff` makes events without materialising the whole view twice."""

from __future__ import annotations

from dataclasses import dataclass

from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.sync.clock import Dot
from saltline.client_sdk.core.sync.ops import Op, SettingValue
from saltline.client_sdk.core.sync.rules import FrontierRegister

SHARED_FIELDS = ("title", "disappearing_ms")


@dataclass(frozen=True, slots=True)
class GapFill:
    """Ask the server for the operations of ``conversation_id`` after ``after_seq``."""

    conversation_id: bytes
    after_seq: int


@dataclass(frozen=True, slots=True)
class TypingEvent:
    account: bytes
    device: bytes
    typing: bool


@dataclass(frozen=True, slots=True)
class Fork:
    """An applied operation whose author had been shown another history than this device: its
    claimed transcript hash ``T(base)`` differs from this device's (sync.md § 9)."""

    dot: Dot
    author: bytes
    seq: int
    base: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """An applied operation that has no effect because its author was not allowed to make it
    (sync.md § 5.7); ``reason`` is one of the codes of :mod:`saltline.client_sdk.core.sync.membership`."""

    dot: Dot
    author: bytes
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    applied: tuple[Dot, ...] = ()  # applied by this call, in order (released held ops included)
    duplicate: bool = False  # the dot was already known (nothing changed)
    held: tuple[Dot, ...] = ()  # every operation now waiting for causal predecessors
    gap: GapFill | None = None  # set while something is held or a server_seq is missing
    typing: TypingEvent | None = None
    forks: tuple[Fork, ...] = ()  # operations applied by this call whose transcript claim differs
    rejected: tuple[Rejection, ...] = ()  # operations applied by this call with no effect (§ 5.7)
    # undecryptable positions this call attested (sync.md § 2.3): (server_seq, the void to store)
    attested: tuple[tuple[int, Op], ...] = ()


@dataclass(frozen=True, slots=True)
class Conflict:
    value: SettingValue
    dot: Dot
    author: bytes


@dataclass(frozen=True, slots=True)
class FieldState:
    """A setting: the winning value and the concurrent values it beat (``conflicts``, newest first,
    values equal to the winner left out) so the UI can say "changed concurrently on ..."."""

    value: SettingValue = None
    set_by: Dot | None = None
    author: bytes | None = None
    conflicts: tuple[Conflict, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageView:
    dot: Dot
    seq: int
    author: bytes
    text: str | None  # None once deleted
    reply_to: Dot | None
    sent_at_ms: int
    edited: bool
    deleted: bool
    reactions: tuple[tuple[bytes, str], ...]  # (account, emoji), sorted by account
    #: The file sent with the message (``text`` is its caption); ``None`` once deleted.
    attachment: AttachmentPointer | None = None


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation_id: bytes
    messages: tuple[MessageView, ...]  # in server_seq order
    settings: dict[str, FieldState]  # "title", "disappearing_ms"
    mute: dict[bytes, FieldState]  # per account (a personal setting)
    members: frozenset[bytes]
    read_up_to: dict[bytes, int]  # account -> server_seq (max register, all of its devices)
    receipts: dict[bytes, int]  # account -> server_seq shown to other members as read receipt
    #: What this view lacks: server_seqs not received below the highest one seen, and operations
    #: held for missing predecessors (in server_seq order). Empty once the history is complete.
    missing: tuple[int, ...] = ()
    held: tuple[Dot, ...] = ()
    #: The authenticated membership (§ 5.7): admins, the kind from the genesis (None: no genesis
    #: applied yet, so nothing can be sent or shown as authorised).
    admins: frozenset[bytes] = frozenset()
    kind: str | None = None

    def unread(self, viewer: bytes) -> int:
        """Messages of other accounts, not deleted, after ``viewer``'s read marker."""
        mark = self.read_up_to.get(viewer, 0)
        return sum(1 for m in self.messages if m.seq > mark and m.author != viewer and not m.deleted)

    def message(self, dot: Dot) -> MessageView | None:
        return next((m for m in self.messages if m.dot == dot), None)


def field_state(register: FrontierRegister[SettingValue] | None) -> FieldState:
    if register is None:
        return FieldState()
    winner = register.winner
    if winner is None:
        return FieldState()
    conflicts = tuple(Conflict(w.value, w.dot, w.author) for w in register.losers if w.value != winner.value)
    return FieldState(winner.value, winner.dot, winner.author, conflicts)


@dataclass(frozen=True, slots=True)
class ViewDelta:
    """The parts of the view one :meth:`ConversationState.receive_changes` call touched, before and
    after it, for one viewer account. Parts it did not touch are left out: comparing two whole views
    (:func:`saltline.client_sdk.core.diff.changes`) finds exactly the same differences.

    ``messages``: (before, after) per touched message in display order; before is None for a
    message that this call created. ``read``: the read markers (account -> server_seq) before and
    after. ``unread``: the viewer's unread count before and after. ``settings``: (name,
    before, after) per touched shared setting, in :data:`SHARED_FIELDS` order. ``mute``: the
    viewer's own mute before and after (None when untouched; before None when never set).
    ``members``: before and after (None when no membership change applied)."""

    messages: tuple[tuple[MessageView | None, MessageView], ...] = ()
    read: tuple[dict[bytes, int], dict[bytes, int]] = ({}, {})
    unread: tuple[int, int] = (0, 0)
    settings: tuple[tuple[str, FieldState, FieldState], ...] = ()
    mute: tuple[FieldState | None, FieldState] | None = None
    members: tuple[frozenset[bytes], frozenset[bytes]] | None = None
