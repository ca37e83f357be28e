"""How the CLI shows the SDK's objects: one line for a person (Rich markup) or a JSON-ready dict
(the shapes of docs/cli-json.schema.json). This is the one module that reads the fields of events,
timeline messages and conversation summaries, so a change there is adapted here.

A message reference (``"<device id>.<n>"``) is shown short: the first :data:`SHORT_REF_DEVICE`
characters of the device id, a dot and the number (``Ab3_x-.7``); commands accept either form."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from saltline.client_sdk.core import events as ev
from saltline.client_sdk.core.attachments import AttachmentPointer

if TYPE_CHECKING:
    from saltline.client_sdk.facets.timeline import ConversationSummary, TimelineMessage
    from saltline.client_sdk.stores.base import ContactRecord

SHORT_REF_DEVICE = 6
#: Bidirectional controls: shown as ``\\u202e`` etc., so that a name or text cannot reorder what
#: follows it on the terminal (``gnp.exe`` shown as ``exe.png``).
BIDI_CONTROLS = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code in BIDI_CONTROLS or code in (0x2028, 0x2029):
        return f"\\u{code:04x}"
    return ch


def safe(text: str) -> str:
    """``text`` (a peer's or the server's) made harmless for a terminal: C0 controls, DEL, C1
    controls and line breaks (``\\n``, U+2028/2029) as visible escapes (``\\x1b``, ``\\n``),
    bidirectional controls as ``\\u202e`` etc.; everything else unchanged. Apply before
    :func:`rich.markup.escape`."""
    return "".join(map(_visible, text))


def shown(text: str) -> str:
    """:func:`safe`, then escaped for Rich markup."""
    return escape(safe(text))


QUOTE_CHARS = 40
Names = Callable[[str], "str | None"]


def short_ref(ref: str | None) -> str:
    if not ref:
        return "-"
    device, _, n = ref.partition(".")
    return f"{device[:SHORT_REF_DEVICE]}.{n}"


def ref_matches(given: str, ref: str) -> bool:
    """``given`` names ``ref``: the whole reference, or a start of its device id, a dot and its
    number (at least :data:`SHORT_REF_DEVICE` characters of the device id)."""
    if given == ref:
        return True
    device, dot, n = given.partition(".")
    ref_device, _, ref_n = ref.partition(".")
    return bool(dot) and len(device) >= SHORT_REF_DEVICE and ref_device.startswith(device) and n == ref_n


def format_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def duration(ms: int | None) -> str:
    if not ms:
        return "off"
    seconds = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- attachments ----------------------------------------------------------------------------------


def attachment_doc(pointer: AttachmentPointer | None) -> dict[str, Any] | None:
    """What a script needs to show and download an attachment (never its key)."""
    if pointer is None:
        return None
    return {"ref": pointer.ref, "name": pointer.name, "size": pointer.size, "mime": pointer.mime}


# -- messages -------------------------------------------------------------------------------------


def message_doc(m: TimelineMessage) -> dict[str, Any]:
    return {
        "conversation_id": m.conversation_id,
        "ref": m.ref,
        "envelope_id": m.envelope_id,
        "sender": {
            "account_id": m.sender_account_id,
            "username": m.sender_username,
            "device_id": m.sender_device_id,
            "me": m.sent_by_me,
        },
        "sent_at_ms": m.sent_at_ms,
        "server_seq": m.server_seq,
        "status": m.status,
        "text": m.text,
        "edited": m.edited,
        "deleted": m.deleted,
        "reply_to": m.reply_to,
        "reactions": [
            {"account_id": r.account_id, "username": r.username, "emoji": r.emoji} for r in m.reactions
        ],
        "read_by": list(m.read_by),
        "unread": m.unread,
        "attachment": attachment_doc(m.attachment),
        "failed_reason": m.failed_reason,
    }


def sender_label(m: TimelineMessage, this_device: str) -> str:
    if m.sent_by_me:
        return "me" if m.sender_device_id == this_device else f"me (device {m.sender_device_id[:8]})"
    return m.sender_username or m.sender_account_id


def message_line(
    m: TimelineMessage, this_device: str, names: Names, quoted: Mapping[str, TimelineMessage]
) -> str:
    """``TIME [REF] WHO: TEXT`` with the reply it answers, the edited marker, the attachment,
    reactions, read state and pending/failed status (Rich markup; the text escaped)."""
    from saltline.client_sdk.cli.files import attachment_label

    who = shown(sender_label(m, this_device))
    head = f"[dim]{format_time(m.sent_at_ms)} \\[{shown(short_ref(m.ref))}][/] [bold]{who}[/]"
    if m.reply_to is not None:
        original = quoted.get(m.reply_to)
        if original is None:
            quote = "a message not on this device"
        elif original.deleted:
            quote = "a deleted message"
        else:
            text = original.text or ""
            quote = '"' + (text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…") + '"'
        head += f" [dim]↪ {shown(short_ref(m.reply_to))} {shown(quote)}[/]"
    if m.deleted:
        body = "[dim italic](message deleted)[/]"
    else:
        body = shown((m.text or "") + attachment_label(m.attachment))
        if m.edited:
            body += " [dim](edited)[/]"
    tail = ""
    if m.reactions:
        tail += " · " + shown(", ".join(f"{r.emoji} {r.username or r.account_id[:8]}" for r in m.reactions))
    if m.read_by:
        tail += " [dim]· read by " + shown(", ".join(names(a) or a[:8] for a in m.read_by)) + "[/]"
    if m.unread:
        tail += " [bold]· new[/]"
    if m.status == "pending":
        tail += " [yellow](pending)[/]"
    elif m.status == "failed":
        tail += f" [red](failed: {shown(m.failed_reason or 'refused')})[/]"
    return f"{head}: {body}{tail}"


# -- conversations and contacts -------------------------------------------------------------------


def conversation_doc(c: ConversationSummary, names: Names) -> dict[str, Any]:
    return {
        "conversation_id": c.conversation_id,
        "kind": c.kind,
        "title": c.title,
        "members": [{"account_id": a, "username": names(a), "admin": a in c.admins} for a in c.members],
        "muted": c.muted,
        "disappearing_ms": c.disappearing_ms,
        "unread": c.unread,
        "messages": c.messages,
    }


def contact_status(contact: ContactRecord) -> str:
    """``changed``: the server presented another account key not accepted yet (compare safety
    numbers, then `saltline verify`); else "verified" or "unverified"."""
    if contact.pending_account_key is not None:
        return "changed"
    return "verified" if contact.verified else "unverified"


def contact_doc(contact: ContactRecord) -> dict[str, Any]:
    return {
        "username": contact.username,
        "account_id": contact.account_id,
        "status": contact_status(contact),
        "trust_policy": contact.trust_policy,
    }


# -- events ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, AttachmentPointer):
        return attachment_doc(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    if isinstance(value, Mapping):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def event_doc(event: ev.Event, **extra: Any) -> dict[str, Any]:
    """``{"event": "<class name>", <its fields>...}`` (bytes as unpadded base64url, an attachment as
    its ref/name/size/mime), plus ``extra``."""
    doc: dict[str, Any] = {"event": type(event).__name__}
    doc.update(_plain(event))
    doc.update(extra)
    return doc


def event_line(event: ev.Event, names: Names) -> tuple[str, bool] | None:
    """A line for an event other than a new message, and whether it goes to stdout (the
    conversation's state) rather than stderr (notices); None: not shown."""
    cid = getattr(event, "conversation_id", "")
    at = f"[dim]{shown(cid[:8])}[/] " if cid else ""
    match event:
        case ev.MessageEdited(message_ref=ref, text=text):
            return f"{at}[dim]\\[{shown(short_ref(ref))}][/] edited: {shown(text or '')}", True
        case ev.MessageDeleted(message_ref=ref):
            return f"{at}[dim]\\[{shown(short_ref(ref))}][/] [italic](message deleted)[/]", True
        case ev.MessageExpired(message_ref=ref):
            return f"{at}[dim]\\[{shown(short_ref(ref))}][/] [italic](message expired)[/]", True
        case ev.ReactionChanged(message_ref=ref, reactions=reactions):
            listed = ", ".join(f"{_reaction(r, names)}" for r in reactions) or "none"
            return f"{at}[dim]\\[{shown(short_ref(ref))}][/] reactions: {shown(listed)}", True
        case ev.ReadStateChanged(read_up_to=marks, unread=unread):
            who = ", ".join(f"{names(a) or a[:8]} up to #{n}" for a, n in sorted(marks.items()))
            return f"{at}read: {shown(who)} ({unread} unread)", True
        case ev.SettingsChanged(field=name, value=value):
            return f"{at}{shown(setting_text(name, value))}", True
        case ev.MembershipChanged(members=members):
            return f"{at}members: {shown(', '.join(names(a) or a for a in members))}", True
        case ev.OutboxItemFailed(envelope_id=eid, reason=reason):
            return f"error: {shown(eid)} failed: {shown(reason)}", False
        case ev.DeviceListChanged(username=user, added=added, removed=removed):
            return (
                f"{shown(user)}: devices added {shown(str(list(added)))}, "
                f"removed {shown(str(list(removed)))}",
                False,
            )
        case ev.IdentityChanged(username=user):
            return (
                f"warning: the account key of {shown(user)} changed; compare safety numbers "
                f"(saltline safety-number {shown(user)})",
                False,
            )
        case ev.DecryptionFailed(reason=reason):
            return f"warning: dropped a message that could not be decrypted: {shown(reason)}", False
        case ev.OwnDeviceLinked(device_id=device, name=name):
            return f"a device joined your account: {shown(name)} ({shown(device)})", False
        case ev.OwnDeviceUnlinked(device_id=device, name=name):
            return f"a device left your account: {shown(name)} ({shown(device)})", False
        case ev.AddedToConversation(added_by=by):
            return f"{at}you were added by {shown(names(by) or by)}", True
        case ev.ForkDetected(reason=reason):
            return f"warning: {shown(cid)}: the server showed another history ({shown(reason)})", False
        case ev.OperationRejected(account_id=account, reason=reason):
            return (
                f"warning: {shown(cid)}: ignored an operation of {shown(names(account) or account)}: "
                + shown(reason),
                False,
            )
        case ev.AttachmentDownloaded(path=path):
            return f"{at}saved {shown(path)}", True
    return None


def _reaction(entry: Any, names: Names) -> str:
    """An entry of ``ReactionChanged.reactions``: ``(account id, emoji)`` or one naming the
    username too."""
    if isinstance(entry, tuple) and len(entry) == 2:
        account_id, emoji = entry
        return f"{emoji} {names(account_id) or account_id[:8]}"
    username = getattr(entry, "username", None)
    account_id = getattr(entry, "account_id", "")
    return f"{getattr(entry, 'emoji', '?')} {username or names(account_id) or account_id[:8]}"


def setting_text(name: str, value: object) -> str:
    """The setting as plain text (a peer's title, ...): show it with :func:`shown`."""
    if name == "title":
        return f"title: {value}" if value else "title cleared"
    if name == "mute":
        return "muted" if value else "unmuted"
    if name == "disappearing_ms":
        return f"disappearing messages: {duration(value if isinstance(value, int) else None)}"
    return f"{name}: {value}"
