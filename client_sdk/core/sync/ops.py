"""Conversation operations and their canonical JSON plaintext (docs/protocol/sync.md § 2).

An :class:`Op` is the body (what happened) plus the metadata every operation carries: its dot
``(author device, n)``, the author's account id, the author's compact vector clock and a lamport
number. On the wire the device id, account id and clock travel in the envelope (bound into the
AEAD associated data, messages.md § 3); the plaintext JSON carries the body and the lamport number.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from saltline.client_sdk.core.attachments import AttachmentPointer, PointerError
from saltline.client_sdk.core.sync.clock import DEVICE_ID_SIZE, CompactClock, Dot
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.core.wire import canonical_json
from saltline.client_sdk.errors import UsageError

OP_VERSION = 2
LEGACY_TEXT_VERSION = 1
MAX_TEXT = 65536
MAX_EMOJI = 64
#: Deepest nesting of arrays and objects an operation may have, the outermost object counting 1
#: (sync.md § 2.1): fixed, so that decoding never depends on how deep the caller's stack is.
MAX_NESTING = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]+|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")

SettingField = Literal["title", "mute", "disappearing_ms"]
SETTING_FIELDS: tuple[SettingField, ...] = ("title", "mute", "disappearing_ms")
SettingValue: TypeAlias = str | bool | int | None


@dataclass(frozen=True, slots=True)
class Message:
    text: str
    reply_to: Dot | None = None
    sent_at_ms: int = 0  # the author's claim, display only; never used by a rule
    #: A file sent with the message (``text`` is then its caption, possibly empty).
    attachment: AttachmentPointer | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    target: Dot
    text: str


@dataclass(frozen=True, slots=True)
class Delete:
    target: Dot


@dataclass(frozen=True, slots=True)
class ReactionAdd:
    target: Dot
    emoji: str


@dataclass(frozen=True, slots=True)
class ReactionRemove:
    target: Dot
    emoji: str


@dataclass(frozen=True, slots=True)
class ReadMarker:
    up_to: int  # server_seq
    receipts: bool = True  # False: other members' clients must not show it as a read receipt


@dataclass(frozen=True, slots=True)
class Typing:
    typing: bool  # ephemeral: never sequenced, never enters state, consumes no dot (n = 0)


@dataclass(frozen=True, slots=True)
class SettingsChange:
    field: SettingField
    value: SettingValue  # title: str | None; mute: bool; disappearing_ms: int >= 0 | None


ConversationKind = Literal["direct", "group"]
MAX_MEMBERS = 1000
ACCOUNT_KEY_SIZE = 32  # an Ed25519 public key


@dataclass(frozen=True, slots=True)
class Welcome:
    """What an added account needs to start (sync.md § 5.7): the membership in the add's causal
    past, and the floor it starts from (the add's clock base, the clock of that prefix with the
    transcript hash ``T(base)`` in its hash field)."""

    kind: ConversationKind
    members: tuple[bytes, ...]
    admins: tuple[bytes, ...]
    floor_seq: int
    floor_clock: bytes  # compact clock encoding, base 0


@dataclass(frozen=True, slots=True)
class MembershipChange:
    member: bytes  # account id
    add: bool
    admin: bool = False  # an add that makes ``member`` an admin (adds, or promotes a member)
    welcome: Welcome | None = None  # with an add: for the added account's devices
    key: bytes | None = None  # with an add: the added account's key, as the adder trusts it


@dataclass(frozen=True, slots=True)
class Genesis:
    """The creator's first operation (sync.md § 5.7): the conversation's kind, its first members
    and admins (account ids, sorted, no repeats; the admins are members)."""

    kind: ConversationKind
    members: tuple[bytes, ...]
    admins: tuple[bytes, ...]
    #: each member's account key (in the order of ``members``), as the creator trusts it; empty:
    #: not vouched for
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Unknown:
    """A type this version does not know: kept (forward compatible), consumes its dot, no effect."""

    type: str
    raw: str  # canonical JSON of the whole document


@dataclass(frozen=True, slots=True)
class Void:
    """An operation that decrypted (so its dot is the sender device's own) but does not decode
    (sync.md § 2.2): it consumes its dot and its server_seq with no effect,
    like :class:`Unknown`, so the author's later operations are not held behind it for ever."""

    reason: str


@dataclass(frozen=True, slots=True)
class Undecryptable:
    """A stored envelope that did not decrypt (sync.md § 2.3). Its header, so its dot, is not
    authenticated: fed to the reducer with ``attested=False`` it is only a **claim** that its
    ``server_seq`` holds its dot, kept aside until a later authenticated operation's transcript
    hash attests the position (then it is applied as a void whose lamport number stays unknown).
    ``attested=True``: such a position replayed from the store or a history bundle."""

    reason: str
    attested: bool = False


#: The clock field of a stored attested position (sync.md § 2.3): ``0x00 || u64(n)``. No envelope
#: clock starts with 0x00, so it never comes from a peer; only the store and this account's own
#: history bundles hold it.
ATTESTED_CLOCK_VERSION = 0x00
_ATTESTED = struct.Struct(">BQ")


def attested_clock(n: int) -> bytes:
    """The stored clock field of an attested undecryptable position whose dot counter is ``n``."""
    return _ATTESTED.pack(ATTESTED_CLOCK_VERSION, n)


Body: TypeAlias = (
    Message
    | Edit
    | Delete
    | ReactionAdd
    | ReactionRemove
    | ReadMarker
    | Typing
    | SettingsChange
    | MembershipChange
    | Genesis
    | Unknown
    | Void
    | Undecryptable
)
TargetedBody: TypeAlias = Edit | Delete | ReactionAdd | ReactionRemove


@dataclass(frozen=True, slots=True)
class Op:
    dot: Dot
    author: bytes  # account id of the author device
    clock: CompactClock
    lamport: int
    body: Body

    @property
    def target(self) -> Dot | None:
        if isinstance(self.body, Edit | Delete | ReactionAdd | ReactionRemove):
            return self.body.target
        return None

    @property
    def ephemeral(self) -> bool:
        return isinstance(self.body, Typing)


# -- encoding --------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: object, size: int) -> bytes:
    if not isinstance(text, str):
        raise SyncFormatError("expected base64url text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SyncFormatError("bad base64url") from exc
    if len(raw) != size or _b64(raw) != text:
        raise SyncFormatError("non-canonical id")
    return raw


def _dot_json(dot: Dot) -> list[object]:
    return [_b64(dot.device), dot.n]


def _dot_from(value: object) -> Dot:
    if not isinstance(value, list) or len(value) != 2:
        raise SyncFormatError("a dot is [device_id, n]")
    return Dot(_unb64(value[0], DEVICE_ID_SIZE), _int(value[1], minimum=1))


def _int(value: object, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value >= 2**63:
        raise SyncFormatError("expected a non-negative integer")
    return value


def _str(value: object, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise SyncFormatError("expected a string")
    return value


def body_json(body: Body) -> dict[str, Any]:
    match body:
        case Message(text, reply_to, sent_at_ms, attachment):
            doc: dict[str, Any] = {"type": "message", "text": text, "sent_at_ms": sent_at_ms}
            if reply_to is not None:
                doc["reply_to"] = _dot_json(reply_to)
            if attachment is not None:
                doc["attachment"] = attachment.to_json()
            return doc
        case Edit(target, text):
            return {"type": "edit", "target": _dot_json(target), "text": text}
        case Delete(target):
            return {"type": "delete", "target": _dot_json(target)}
        case ReactionAdd(target, emoji):
            return {"type": "reaction", "action": "add", "target": _dot_json(target), "emoji": emoji}
        case ReactionRemove(target, emoji):
            return {"type": "reaction", "action": "remove", "target": _dot_json(target), "emoji": emoji}
        case ReadMarker(up_to, receipts):
            return {"type": "read", "up_to": up_to, "receipts": receipts}
        case Typing(typing):
            return {"type": "typing", "typing": typing}
        case SettingsChange(field, value):
            return {"type": "settings", "field": field, "value": value}
        case MembershipChange(member, add, admin, welcome, key):
            doc = {"type": "membership", "action": "add" if add else "remove", "member": _b64(member)}
            if add and key is not None:
                doc["key"] = _b64(key)
            if add and admin:
                doc["role"] = "admin"
            if add and welcome is not None:
                doc["welcome"] = {
                    "kind": welcome.kind,
                    "members": [_b64(m) for m in welcome.members],
                    "admins": [_b64(a) for a in welcome.admins],
                    "floor_seq": welcome.floor_seq,
                    "floor_clock": _b64(welcome.floor_clock),
                }
            return doc
        case Genesis(kind, members, admins, keys):
            doc = {
                "type": "genesis",
                "kind": kind,
                "members": [_b64(m) for m in members],
                "admins": [_b64(a) for a in admins],
            }
            if keys:
                doc["keys"] = [_b64(k) for k in keys]
            return doc
        case Unknown(_, raw):
            doc = json.loads(raw)
            assert isinstance(doc, dict)
            doc.pop("v", None)
            doc.pop("lamport", None)
            return doc
    raise TypeError(f"not an operation body: {body!r}")  # pragma: no cover


def encode_plaintext(op: Op) -> bytes:
    """Canonical JSON ``{"v": 2, "lamport": L, "type": ..., <body fields>}`` (unpadded). A
    string that is not Unicode scalar values (a lone surrogate) is refused with
    :class:`UsageError`: no peer could take it (:func:`decode` rejects it)."""
    doc = body_json(op.body)
    doc["v"] = OP_VERSION
    doc["lamport"] = op.lamport
    try:
        return canonical_json(doc)
    except UnicodeEncodeError as exc:
        raise UsageError(
            "text must be valid Unicode: it holds a lone surrogate (a broken UTF-16 pair), "
            "which cannot be sent"
        ) from exc


def scalar_values_only(doc: Any) -> bool:
    """Whether every string in ``doc`` (member names included) is Unicode scalar values, i.e.
    encodes as UTF-8: JSON's ``\\ud800`` escapes can name lone surrogates, which no peer, store
    or transport can carry."""
    try:
        json.dumps(doc, ensure_ascii=False, allow_nan=True).encode()
    except UnicodeEncodeError:
        return False
    return True


def encode(op: Op) -> tuple[bytes, bytes]:
    """``(plaintext, clock bytes)``; the clock goes in the envelope and the associated data."""
    return encode_plaintext(op), op.clock.encode()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose member names are all distinct (two parsers could otherwise keep different
    values of the same authenticated bytes)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a member name appears twice")
    return doc


def decode(plaintext: bytes, clock: bytes, sender_device: bytes, sender_account: bytes) -> Op:
    """Rebuild an operation from its plaintext and its authenticated envelope fields. The dot is
    ``(sender_device, clock extras[sender_device])`` (``n = 0`` for typing). Raises
    :class:`SyncFormatError`."""
    compact = CompactClock.decode(clock)
    try:
        text = plaintext.decode()
        if _too_deep(text):
            raise SyncFormatError(f"operation nested more than {MAX_NESTING} deep")
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SyncFormatError(f"operation is not JSON without duplicate members: {exc}") from exc
    if not scalar_values_only(doc):
        raise SyncFormatError("operation holds a string that is not Unicode (a lone surrogate)")
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise SyncFormatError("operation without a type")
    if len(sender_device) != DEVICE_ID_SIZE:
        raise SyncFormatError("device ids are 16 bytes")
    version = doc.get("v")
    if type(version) is not int:  # exactly an integer: not true, not 2.0
        raise SyncFormatError("the operation version must be an integer")
    if version == LEGACY_TEXT_VERSION and doc["type"] == "text":  # messages.md § 5 text operation
        body: Body = Message(_str(doc.get("text"), MAX_TEXT), None, _int(doc.get("sent_at_ms", 0)))
        lamport = 0
    elif version == OP_VERSION:
        body = _body(doc)
        lamport = _int(doc.get("lamport"))
    else:
        raise SyncFormatError("unsupported operation version")
    n = compact.counter_of(sender_device)
    if isinstance(body, Typing):
        n = 0
    elif n < 1:
        raise SyncFormatError("the clock does not carry the operation's own dot")
    return Op(Dot(sender_device, n), sender_account, compact, lamport, body)


def _too_deep(text: str) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than :data:`MAX_NESTING` deep
    (brackets inside strings do not count; text that is not JSON is refused by the parser)."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False  # (every honest operation, in C)
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        else:
            depth -= 1
    return False


def decode_or_void(plaintext: bytes, clock: bytes, sender_device: bytes, sender_account: bytes) -> Op:
    """:func:`decode`, except that an operation whose plaintext does not decode but whose
    authenticated clock gives a valid dot for its sender device is a :class:`Void` (lamport 0:
    the reducer counts it with its bound, sync.md § 4 rule 6). Raises :class:`SyncFormatError`
    only when there is no such dot (a clock that does not decode, a device id that is not 16
    bytes, a clock without the sender's entry). Only for stored operations whose envelope
    decrypted: never for one that failed to decrypt (its header is not authenticated)."""
    try:
        return decode(plaintext, clock, sender_device, sender_account)
    except SyncFormatError as exc:
        compact = CompactClock.decode(clock)
        n = compact.counter_of(sender_device)
        if len(sender_device) != DEVICE_ID_SIZE or n < 1:
            raise
        return Op(Dot(sender_device, n), sender_account, compact, 0, Void(str(exc)))


def undecryptable(
    clock: bytes, sender_device: bytes, sender_account: bytes, reason: str, *, attested: bool = False
) -> Op:
    """The operation an undecryptable stored envelope claims to be (sync.md § 2.3): its header's
    dot ``(sender_device, n)``, a clock naming only that dot, lamport 0 (never counted). Raises
    :class:`SyncFormatError` when the header gives no dot."""
    compact = CompactClock.decode(clock)
    n = compact.counter_of(sender_device)
    if len(sender_device) != DEVICE_ID_SIZE or n < 1:
        raise SyncFormatError("the envelope's clock has no entry for its sender device")
    return _undecryptable_op(sender_device, n, sender_account, reason, attested)


def _undecryptable_op(device: bytes, n: int, account: bytes, reason: str, attested: bool) -> Op:
    return Op(Dot(device, n), account, CompactClock.of(0, {device: n}), 0, Undecryptable(reason, attested))


def decode_stored(plaintext: bytes, clock: bytes, sender_device: bytes, sender_account: bytes) -> Op:
    """A stored operation (the store's replay, this account's history bundles): an attested
    undecryptable position (clock ``0x00 || u64(n)``, sync.md § 2.3) or :func:`decode_or_void`.
    Never for an envelope from the network: only a device's own store writes the 0x00 form."""
    if clock[:1] == bytes([ATTESTED_CLOCK_VERSION]):
        if len(clock) != _ATTESTED.size or plaintext:
            raise SyncFormatError("a stored attested position is 0x00 || u64(n) with no plaintext")
        _, n = _ATTESTED.unpack(clock)
        if len(sender_device) != DEVICE_ID_SIZE or not 1 <= n < 2**63:
            raise SyncFormatError("a stored attested position needs a 16-byte device and n >= 1")
        return _undecryptable_op(sender_device, n, sender_account, "undecryptable (attested)", True)
    return decode_or_void(plaintext, clock, sender_device, sender_account)


def _body(doc: dict[str, Any]) -> Body:
    kind = doc["type"]
    if kind == "message":
        reply, attachment = doc.get("reply_to"), doc.get("attachment")
        try:
            pointer = None if attachment is None else AttachmentPointer.from_json(attachment)
        except PointerError as exc:
            raise SyncFormatError(f"bad attachment pointer: {exc}") from exc
        return Message(
            _str(doc.get("text"), MAX_TEXT),
            None if reply is None else _dot_from(reply),
            _int(doc.get("sent_at_ms", 0)),
            pointer,
        )
    if kind == "edit":
        return Edit(_dot_from(doc.get("target")), _str(doc.get("text"), MAX_TEXT))
    if kind == "delete":
        return Delete(_dot_from(doc.get("target")))
    if kind == "reaction":
        target, emoji = _dot_from(doc.get("target")), _str(doc.get("emoji"), MAX_EMOJI)
        if not emoji:
            raise SyncFormatError("empty emoji")
        action = doc.get("action")
        if action == "add":
            return ReactionAdd(target, emoji)
        if action == "remove":
            return ReactionRemove(target, emoji)
        raise SyncFormatError("reaction action is add or remove")
    if kind == "read":
        receipts = doc.get("receipts", True)
        if not isinstance(receipts, bool):
            raise SyncFormatError("receipts is a boolean")
        return ReadMarker(_int(doc.get("up_to")), receipts)
    if kind == "typing":
        typing = doc.get("typing")
        if not isinstance(typing, bool):
            raise SyncFormatError("typing is a boolean")
        return Typing(typing)
    if kind == "settings":
        return _settings(doc.get("field"), doc.get("value"))
    if kind == "membership":
        action = doc.get("action")
        if action not in ("add", "remove"):
            raise SyncFormatError("membership action is add or remove")
        role = doc.get("role", "member")
        if role not in ("member", "admin") or (role == "admin" and action != "add"):
            raise SyncFormatError("a membership role is member or admin (admin only with add)")
        welcome, key = doc.get("welcome"), doc.get("key")
        if (welcome is not None or key is not None) and action != "add":
            raise SyncFormatError("a welcome and a key come only with an add")
        return MembershipChange(
            _unb64(doc.get("member"), 16),
            action == "add",
            role == "admin",
            None if welcome is None else _welcome(welcome),
            None if key is None else _unb64(key, ACCOUNT_KEY_SIZE),
        )
    if kind == "genesis":
        return _genesis(doc)
    try:
        raw = canonical_json(doc)
    except ValueError as exc:  # NaN or an infinity: not JSON an operation can carry
        raise SyncFormatError("operation is not canonical JSON") from exc
    return Unknown(kind, raw.decode())


def _accounts(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise SyncFormatError(f"expected a list of at most {MAX_MEMBERS} account ids")
    accounts = tuple(_unb64(a, 16) for a in value)
    if list(accounts) != sorted(set(accounts)):
        raise SyncFormatError("account ids are sorted with no repeats")
    return accounts


def _welcome(value: object) -> Welcome:
    if not isinstance(value, dict):
        raise SyncFormatError("a welcome is an object")
    start = _genesis(
        {"kind": value.get("kind"), "members": value.get("members"), "admins": value.get("admins")}
    )
    clock = value.get("floor_clock")
    if not isinstance(clock, str):
        raise SyncFormatError("a welcome's floor_clock is base64url text")
    try:
        raw = base64.urlsafe_b64decode(clock + "=" * (-len(clock) % 4))
        CompactClock.decode(raw)
    except (binascii.Error, ValueError) as exc:
        raise SyncFormatError("a welcome's floor_clock is not a clock") from exc
    if _b64(raw) != clock:
        raise SyncFormatError("non-canonical floor_clock")
    return Welcome(start.kind, start.members, start.admins, _int(value.get("floor_seq")), raw)


def _genesis(doc: dict[str, Any]) -> Genesis:
    kind = doc.get("kind")
    members, admins = _accounts(doc.get("members")), _accounts(doc.get("admins"))
    keys: tuple[bytes, ...] = ()
    if doc.get("keys") is not None:
        raw_keys = doc["keys"]
        if not isinstance(raw_keys, list) or len(raw_keys) != len(members):
            raise SyncFormatError("a genesis has one account key per member")
        keys = tuple(_unb64(k, ACCOUNT_KEY_SIZE) for k in raw_keys)
    if kind == "direct":
        if len(members) != 2 or admins:
            raise SyncFormatError("a direct conversation has two members and no admins")
        return Genesis("direct", members, admins, keys)
    if kind == "group":
        if not admins or not set(admins) <= set(members):
            raise SyncFormatError("a group's admins are some of its members (at least one)")
        return Genesis("group", members, admins, keys)
    raise SyncFormatError("a conversation kind is direct or group")


def _settings(field: object, value: object) -> SettingsChange:
    if field == "title":
        if value is not None:
            value = _str(value, 1024)
        return SettingsChange("title", value)
    if field == "mute":
        if not isinstance(value, bool):
            raise SyncFormatError("mute is a boolean")
        return SettingsChange("mute", value)
    if field == "disappearing_ms":
        if value is not None:
            value = _int(value)
        return SettingsChange("disappearing_ms", value)
    raise SyncFormatError("unknown settings field")
