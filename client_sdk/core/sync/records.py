"""The reducer's mutable records (:mod:`saltline.client_sdk.core.sync.state`): a message as it is being
materialised, and the journal of one receive (the touched parts of the view before it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.sync.clock import Dot
from saltline.client_sdk.core.sync.rules import LwwKey
from saltline.client_sdk.core.sync.view import FieldState, MessageView


@dataclass(slots=True)
class Msg:
    dot: Dot
    seq: int
    author: bytes
    text: str | None
    reply_to: Dot | None
    sent_at_ms: int
    edit: tuple[LwwKey, str] | None = None
    deleted: bool = False
    reactions: dict[bytes, tuple[LwwKey, str | None]] = field(default_factory=dict)
    attachment: AttachmentPointer | None = None

    def view(self) -> MessageView:
        return MessageView(
            self.dot,
            self.seq,
            self.author,
            None if self.deleted else (self.edit[1] if self.edit is not None else self.text),
            self.reply_to,
            self.sent_at_ms,
            self.edit is not None,
            self.deleted,
            tuple(sorted((a, e) for a, (_, e) in self.reactions.items() if e is not None)),
            None if self.deleted else self.attachment,
        )


@dataclass(slots=True)
class Journal:
    """The parts of the view as they were before the first change of one receive (ViewDelta)."""

    created: set[Dot] = field(default_factory=set)
    messages: dict[Dot, MessageView] = field(default_factory=dict)
    read: dict[bytes, int] | None = None
    settings: dict[str, FieldState] = field(default_factory=dict)
    mute: dict[bytes, FieldState | None] = field(default_factory=dict)
    members: frozenset[bytes] | None = None
