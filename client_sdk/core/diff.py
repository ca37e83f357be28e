"""View diff to events: what changed between two materialised views of a conversation, as the
events the client emits (pure; docs/protocol/sync.md § events)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from saltline.client_sdk.core.events import (
    Event,
    MembershipChanged,
    MessageDeleted,
    MessageEdited,
    Reaction,
    ReactionChanged,
    ReadStateChanged,
    SettingsChanged,
)
from saltline.client_sdk.core.sync import ConversationView, Dot
from saltline.client_sdk.core.sync.view import ViewDelta
from saltline.crypto.keys import b64encode

#: account id (text) -> username ("" when unknown); the client looks it up in its contacts
Names = Callable[[str], str]


def no_names(account_id: str) -> str:
    return ""


def message_ref(dot: Dot) -> str:
    """The text reference of a message (``"<device id>.<n>"``) for edit/delete/react/reply."""
    return f"{b64encode(dot.device)}.{dot.n}"


def reactions(pairs: Iterable[tuple[bytes, str]], names: Names = no_names) -> tuple[Reaction, ...]:
    out = []
    for account, emoji in pairs:
        text = b64encode(account)
        out.append(Reaction(text, names(text), emoji))
    return tuple(out)


def usernames(accounts: Iterable[bytes | str], names: Names = no_names) -> dict[str, str]:
    """account id -> username for ``accounts`` (raw or text ids), sorted by account id."""
    texts = sorted({a if isinstance(a, str) else b64encode(a) for a in accounts})
    return {a: names(a) for a in texts}


def changes(
    cid: str, me: bytes, before: ConversationView, after: ConversationView, names: Names = no_names
) -> list[Event]:
    """The events that turn ``before`` into ``after`` for the account ``me``, in a fixed order:
    per message (in display order) deletion or edit, then reactions; read state; settings; the
    account's own mute; membership. New messages are not here (they come with the envelope).
    ``names`` gives the usernames the events carry next to account ids."""
    out: list[Event] = []
    old = {m.dot: m for m in before.messages}
    for m in after.messages:
        o = old.get(m.dot)
        if o is None:
            continue
        ref = message_ref(m.dot)
        if m.deleted and not o.deleted:
            out.append(MessageDeleted(cid, ref))
        elif m.text != o.text:
            out.append(MessageEdited(cid, ref, m.text))
        if m.reactions != o.reactions:
            out.append(ReactionChanged(cid, ref, reactions(m.reactions, names)))
    if before.read_up_to != after.read_up_to or before.unread(me) != after.unread(me):
        markers = {b64encode(a): n for a, n in after.read_up_to.items()}
        out.append(ReadStateChanged(cid, markers, after.unread(me), usernames(markers, names)))
    for name, field in after.settings.items():
        if field != before.settings.get(name):
            out.append(SettingsChanged(cid, name, field.value, tuple(c.value for c in field.conflicts)))
    mute = after.mute.get(me)
    if mute is not None and mute != before.mute.get(me):
        out.append(SettingsChanged(cid, "mute", mute.value, tuple(c.value for c in mute.conflicts)))
    if before.members != after.members:
        members = tuple(sorted(b64encode(a) for a in after.members))
        out.append(MembershipChanged(cid, members, usernames(members, names)))
    return out


def delta_changes(cid: str, delta: ViewDelta, names: Names = no_names) -> list[Event]:
    """:func:`changes` from the delta of one receive (``ConversationState.receive_changes``): the
    same events in the same order, at the cost of what the receive touched."""
    out: list[Event] = []
    for o, m in delta.messages:
        if o is None:
            continue
        if m.deleted and not o.deleted:
            out.append(MessageDeleted(cid, message_ref(m.dot)))
        elif m.text != o.text:
            out.append(MessageEdited(cid, message_ref(m.dot), m.text))
        if m.reactions != o.reactions:
            out.append(ReactionChanged(cid, message_ref(m.dot), reactions(m.reactions, names)))
    (read_before, read_after), (unread_before, unread_after) = delta.read, delta.unread
    if read_before != read_after or unread_before != unread_after:
        markers = {b64encode(a): n for a, n in sorted(read_after.items())}
        out.append(ReadStateChanged(cid, markers, unread_after, usernames(markers, names)))
    for name, before, after in delta.settings:
        if after != before:
            out.append(SettingsChanged(cid, name, after.value, tuple(c.value for c in after.conflicts)))
    if delta.mute is not None and delta.mute[1] != delta.mute[0]:
        mute = delta.mute[1]
        out.append(SettingsChanged(cid, "mute", mute.value, tuple(c.value for c in mute.conflicts)))
    if delta.members is not None and delta.members[0] != delta.members[1]:
        members = tuple(sorted(b64encode(a) for a in delta.members[1]))
        out.append(MembershipChanged(cid, members, usernames(members, names)))
    return out
