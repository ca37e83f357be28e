"""The public conversation view: the reducer's materialised state
(:class:`saltline.client_sdk.core.sync.ConversationView`, which works in raw ``bytes`` ids) with
text ids only (base64url account, device and conversation ids; messages named by their
``message_ref``) and the usernames of the accounts it names. Pure; the client supplies the
account id -> username lookup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.diff import message_ref
from saltline.client_sdk.core.events import Reaction
from saltline.client_sdk.core.sync import ConversationView as RawView
from saltline.client_sdk.core.sync.ops import SettingValue
from saltline.client_sdk.core.sync.view import FieldState
from saltline.crypto.keys import b64encode

#: account id (text) -> username ("" when this device knows no username for it)
Names = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class MessageItem:
    """One message as every device of the conversation shows it."""

    message_ref: str
    seq: int  # its server_seq (display order)
    author: str  # account id
    author_username: str
    author_device: str  # device id
    text: str | None  # None once deleted
    reply_to: str | None  # the message_ref it answers
    sent_at_ms: int
    edited: bool
    deleted: bool
    reactions: tuple[Reaction, ...]  # sorted by account
    attachment: AttachmentPointer | None = None


@dataclass(frozen=True, slots=True)
class Setting:
    """A setting's winning value, who set it, and the concurrent values it beat (newest first)."""

    value: SettingValue = None
    set_by: str | None = None  # account id
    set_by_username: str | None = None
    conflicts: tuple[SettingValue, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation_id: str
    messages: tuple[MessageItem, ...]  # in server_seq order
    settings: dict[str, Setting]  # "title", "disappearing_ms"
    mute: dict[str, Setting]  # account id -> its personal mute
    members: frozenset[str]  # account ids
    usernames: dict[str, str]  # account id -> username, for every account this view names
    read_up_to: dict[str, int]  # account id -> server_seq
    receipts: dict[str, int]  # account id -> server_seq shown to other members
    missing: tuple[int, ...] = ()  # server_seqs not received below the highest one seen
    held: tuple[str, ...] = ()  # message refs waiting for missing predecessors
    admins: frozenset[str] = frozenset()
    kind: str | None = None  # "direct" or "group" (None: no genesis applied yet)

    def unread(self, viewer: str) -> int:
        """Messages of other accounts, not deleted, after ``viewer``'s (account id) read marker."""
        mark = self.read_up_to.get(viewer, 0)
        return sum(1 for m in self.messages if m.seq > mark and m.author != viewer and not m.deleted)

    def message(self, ref: str) -> MessageItem | None:
        return next((m for m in self.messages if m.message_ref == ref), None)


def _setting(field: FieldState, names: Names) -> Setting:
    author = None if field.author is None else b64encode(field.author)
    return Setting(
        field.value,
        author,
        None if author is None else names(author),
        tuple(c.value for c in field.conflicts),
    )


def public_view(raw: RawView, names: Names) -> ConversationView:
    """``raw`` with text ids and usernames."""
    usernames: dict[str, str] = {}

    def name(account: bytes) -> tuple[str, str]:
        text = b64encode(account)
        if text not in usernames:
            usernames[text] = names(text)
        return text, usernames[text]

    messages = []
    for m in raw.messages:
        author, author_name = name(m.author)
        reactions = tuple(Reaction(*name(a), e) for a, e in m.reactions)
        messages.append(
            MessageItem(
                message_ref(m.dot),
                m.seq,
                author,
                author_name,
                b64encode(m.dot.device),
                m.text,
                None if m.reply_to is None else message_ref(m.reply_to),
                m.sent_at_ms,
                m.edited,
                m.deleted,
                reactions,
                m.attachment,
            )
        )
    for account in (*raw.members, *raw.read_up_to, *raw.receipts, *raw.mute, *raw.admins):
        name(account)
    return ConversationView(
        b64encode(raw.conversation_id),
        tuple(messages),
        {k: _setting(v, names) for k, v in raw.settings.items()},
        {b64encode(a): _setting(v, names) for a, v in raw.mute.items()},
        frozenset(b64encode(a) for a in raw.members),
        usernames,
        {b64encode(a): n for a, n in raw.read_up_to.items()},
        {b64encode(a): n for a, n in raw.receipts.items()},
        raw.missing,
        tuple(message_ref(d) for d in raw.held),
        frozenset(b64encode(a) for a in raw.admins),
        raw.kind,
    )
