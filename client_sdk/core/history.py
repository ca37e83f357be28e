"""History bundle and linking payload formats (docs/protocol/sync.md § history bundles,
docs/protocol/messages.md § linking): building the documents and validating what arrives. Pure;
every parse failure is a :class:`~saltline.client_sdk.errors.LinkError` naming the bad field, never a
``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from saltline.client_sdk.errors import LinkError
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode, b64encode

#: Version of the history bundle plaintext.
BUNDLE_VERSION = 1
#: ``kind`` of the sealed follow-up (the linking payload has none).
FOLLOW_UP_KIND = "history-follow-up"
#: At most this many blob parts in a history reference (256 MiB at 256 KiB).
MAX_PARTS = 1024
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class BundleOp:
    seq: int
    envelope_id: str
    account: str
    device: str
    clock: bytes
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class BundleConversation:
    conversation_id: str
    kind: str
    members: tuple[str, ...]
    genesis: tuple[str, ...]
    floor_seq: int
    floor_clock: bytes
    cursor: int
    ops: tuple[BundleOp, ...]
    #: the admins of the membership snapshot ``genesis`` (sync.md § 8)
    admins: tuple[str, ...] = ()
    #: the ``disappearing_ms`` writes below the floor: (device id, n, lamport, value) (sync.md § 5.8)
    timers: tuple[tuple[str, int, int, int | None], ...] = ()
    #: the messages below the floor that expire: (device id, n, expiry ms; 0: gone) (sync.md § 5.8)
    expiring: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HistoryRef:
    """Where an encrypted bundle is and how to open it."""

    blob_ids: tuple[str, ...]
    key: bytes
    digest: bytes


def depth_cutoff(depth: str | int, now_ms: int) -> int | None:
    """``"all"``/``"none"``: no cutoff; a number of days: the time before which messages stay."""
    if isinstance(depth, int) and not isinstance(depth, bool):
        if depth < 0:
            raise ValueError('history depth is "all", "none" or a number of days >= 0')
        return now_ms - depth * DAY_MS
    if depth not in ("all", "none"):
        raise ValueError('history depth is "all", "none" or a number of days')
    return None


def choose_floor(
    depth: str | int,
    cutoff: int | None,
    *,
    base_seq: int,
    meta_floor: int,
    message_times: Iterable[tuple[int, int]],
) -> int:
    """The server_seq up to which the new device starts empty: everything (``"none"``: the
    conversation's contiguous base), nothing (``"all"``: this device's own floor), or what
    precedes the first message sent at or after ``cutoff`` (``message_times``: (seq, sent_at_ms)
    of the messages by seq)."""
    floor = meta_floor
    if depth == "none":
        floor = base_seq
    elif cutoff is not None:
        floor = base_seq
        for seq, sent_at in message_times:
            if sent_at >= cutoff:
                floor = min(floor, seq - 1)
                break
    return max(floor, meta_floor)


def encode_bundle(conversations: Sequence[BundleConversation], now_ms: int) -> dict[str, Any]:
    return {
        "v": BUNDLE_VERSION,
        "created_at_ms": now_ms,
        "conversations": [
            {
                "conversation_id": c.conversation_id,
                "kind": c.kind,
                "members": list(c.members),
                "genesis": list(c.genesis),
                "admins": list(c.admins),
                "timers": [list(t) for t in c.timers],
                "expiring": [list(e) for e in c.expiring],
                "floor_seq": c.floor_seq,
                "floor_clock": b64encode(c.floor_clock),
                "cursor": c.cursor,
                "ops": [
                    {
                        "seq": o.seq,
                        "envelope_id": o.envelope_id,
                        "account": o.account,
                        "device": o.device,
                        "clock": b64encode(o.clock),
                        "plaintext": b64encode(o.plaintext),
                    }
                    for o in c.ops
                ],
            }
            for c in conversations
        ],
    }


def _str(doc: dict[str, Any], name: str) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise LinkError(f"the history bundle is not valid: {name!r} is not text")
    return v


def _int(doc: dict[str, Any], name: str, default: int | None = None) -> int:
    v = doc.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise LinkError(f"the history bundle is not valid: {name!r} is not a count")
    return v


def _bytes(doc: dict[str, Any], name: str) -> bytes:
    v = doc.get(name)
    try:
        if not isinstance(v, str):
            raise LinkError(f"the history bundle is not valid: {name!r} is not base64url")
        return b64decode(v)
    except CryptoError as exc:
        raise LinkError(f"the history bundle is not valid: {name!r} is not base64url") from exc


def _ids(doc: dict[str, Any], name: str) -> tuple[str, ...]:
    v = doc.get(name)
    if not isinstance(v, list) or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in v):
        raise LinkError(f"the history bundle is not valid: {name!r} is not a list of ids")
    return tuple(v)


def parse_bundle(doc: object) -> list[BundleConversation]:
    if not isinstance(doc, dict) or doc.get("v") != BUNDLE_VERSION:
        raise LinkError("unsupported history bundle version; update the app")
    convs = doc.get("conversations")
    if not isinstance(convs, list):
        raise LinkError("the history bundle is not valid: no conversations")
    out: list[BundleConversation] = []
    for c in convs:
        if not isinstance(c, dict):
            raise LinkError("the history bundle is not valid: a conversation is not an object")
        ops_doc = c.get("ops")
        if not isinstance(ops_doc, list):
            raise LinkError("the history bundle is not valid: 'ops' is not a list")
        ops: list[BundleOp] = []
        for o in ops_doc:
            if not isinstance(o, dict):
                raise LinkError("the history bundle is not valid: an operation is not an object")
            seq = _int(o, "seq")
            if seq < 1:
                raise LinkError("the history bundle is not valid: 'seq' starts at 1")
            ops.append(
                BundleOp(
                    seq,
                    _str(o, "envelope_id"),
                    _str(o, "account"),
                    _str(o, "device"),
                    _bytes(o, "clock"),
                    _bytes(o, "plaintext"),
                )
            )
        members = _ids(c, "members")
        out.append(
            BundleConversation(
                _str(c, "conversation_id"),
                _str(c, "kind"),
                tuple(sorted(members)),
                _ids(c, "genesis") if "genesis" in c else (),
                _int(c, "floor_seq", 0),
                _bytes(c, "floor_clock") if c.get("floor_clock") else b"",
                _int(c, "cursor", 0),
                tuple(ops),
                _ids(c, "admins") if "admins" in c else (),
                _timers(c.get("timers", [])),
                _expiring(c.get("expiring", [])),
            )
        )
    return out


def _expiring(value: object) -> tuple[tuple[str, int, int], ...]:
    """The floor's expiring messages: ``[device id, n, expiry ms]`` each (0: already gone)."""
    if not isinstance(value, list) or len(value) > 1_000_000:
        raise LinkError("the history bundle is not valid: 'expiring' is not a list")
    out: list[tuple[str, int, int]] = []
    for e in value:
        if not isinstance(e, list) or len(e) != 3:
            raise LinkError("the history bundle is not valid: an expiring message is [device, n, expiry]")
        doc = {"device": e[0], "n": e[1], "at": e[2]}
        device, n, at = _str(doc, "device"), _int(doc, "n"), _int(doc, "at")
        _bytes(doc, "device")
        if n < 1:
            raise LinkError("the history bundle is not valid: an expiring message's n starts at 1")
        out.append((device, n, at))
    return tuple(out)


def _timers(value: object) -> tuple[tuple[str, int, int, int | None], ...]:
    """The floor's timer writes: ``[device id, n, lamport, value]`` each (value a count or null)."""
    if not isinstance(value, list) or len(value) > 10_000:
        raise LinkError("the history bundle is not valid: 'timers' is not a list")
    out: list[tuple[str, int, int, int | None]] = []
    for t in value:
        if not isinstance(t, list) or len(t) != 4:
            raise LinkError("the history bundle is not valid: a timer is [device, n, lamport, value]")
        doc = {"device": t[0], "n": t[1], "lamport": t[2]}
        device, n, lamport = _str(doc, "device"), _int(doc, "n"), _int(doc, "lamport")
        _bytes(doc, "device")
        v = t[3]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise LinkError("the history bundle is not valid: a timer's value is a count or null")
        if n < 1:
            raise LinkError("the history bundle is not valid: a timer's n starts at 1")
        out.append((device, n, lamport, v))
    return tuple(out)


def encode_ref(ref: HistoryRef) -> dict[str, Any]:
    return {"blob_ids": list(ref.blob_ids), "key": b64encode(ref.key), "digest": b64encode(ref.digest)}


def parse_ref(doc: object) -> HistoryRef:
    if not isinstance(doc, dict):
        raise LinkError("the history reference is not valid")
    ids: object = doc.get("blob_ids")
    if ids is None and isinstance(doc.get("blob_id"), str):  # the single-blob form of earlier versions
        ids = [doc["blob_id"]]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
        raise LinkError("the history bundle names no blobs")
    if len(ids) > MAX_PARTS:
        raise LinkError("the history bundle has too many parts")
    return HistoryRef(tuple(ids), _bytes(doc, "key"), _bytes(doc, "digest"))


# -- the linking payload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkContact:
    account_id: str
    username: str
    account_key: bytes
    signed_list: bytes


@dataclass(frozen=True, slots=True)
class LinkPayload:
    account_id: str
    username: str
    account_key: bytes
    device_list: bytes
    contacts: tuple[LinkContact, ...]
    conversations: tuple[tuple[str, str, tuple[str, ...]], ...]  # (id, kind, members)
    history: HistoryRef | None
    #: (channel id, take secret, b64 of the 32-byte key the follow-up is encrypted under)
    follow_up: tuple[str, str, str] | None
    grant: str | None = None  # the one-time device grant the new device publishes its list with


def parse_link_payload(doc: dict[str, Any]) -> LinkPayload:
    """Validate an opened linking payload (signatures are checked by the caller)."""
    if "kind" in doc:  # a follow-up is not a linking payload
        raise LinkError("the linking payload is not valid: unexpected kind")
    contacts: list[LinkContact] = []
    raw_contacts = doc.get("contacts", [])
    if not isinstance(raw_contacts, list):
        raise LinkError("the linking payload is not valid: 'contacts' is not a list")
    for c in raw_contacts:
        if not isinstance(c, dict):
            raise LinkError("the linking payload is not valid: a contact is not an object")
        contacts.append(
            LinkContact(
                _str(c, "account_id"), _str(c, "username"), _bytes(c, "account_key"), _bytes(c, "signed_list")
            )
        )
    convs: list[tuple[str, str, tuple[str, ...]]] = []
    raw_convs = doc.get("conversations", [])
    if not isinstance(raw_convs, list):
        raise LinkError("the linking payload is not valid: 'conversations' is not a list")
    for c in raw_convs:
        if not isinstance(c, dict):
            raise LinkError("the linking payload is not valid: a conversation is not an object")
        convs.append((_str(c, "conversation_id"), _str(c, "kind"), tuple(sorted(_ids(c, "members")))))
    history = parse_ref(doc["history"]) if isinstance(doc.get("history"), dict) else None
    fu = doc.get("follow_up")
    follow_up = (
        (_str(fu, "channel_id"), _str(fu, "secret"), _str(fu, "key")) if isinstance(fu, dict) else None
    )
    grant = doc.get("grant")
    if grant is not None and not isinstance(grant, str):
        raise LinkError("the linking payload is not valid: 'grant' is not text")
    return LinkPayload(
        _str(doc, "account_id"),
        _str(doc, "username"),
        _bytes(doc, "account_key"),
        _bytes(doc, "device_list"),
        tuple(contacts),
        tuple(convs),
        history,
        follow_up,
        grant,
    )


def encode_link_payload(p: LinkPayload) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "account_id": p.account_id,
        "username": p.username,
        "account_key": b64encode(p.account_key),
        "device_list": b64encode(p.device_list),
        "contacts": [
            {
                "account_id": c.account_id,
                "username": c.username,
                "account_key": b64encode(c.account_key),
                "signed_list": b64encode(c.signed_list),
            }
            for c in p.contacts
        ],
        "conversations": [
            {"conversation_id": cid, "kind": kind, "members": list(members)}
            for cid, kind, members in p.conversations
        ],
    }
    if p.follow_up is not None:
        doc["follow_up"] = {"channel_id": p.follow_up[0], "secret": p.follow_up[1], "key": p.follow_up[2]}
    if p.history is not None:
        doc["history"] = encode_ref(p.history)
    if p.grant is not None:
        doc["grant"] = p.grant
    return doc


def parse_follow_up(doc: dict[str, Any]) -> HistoryRef | None:
    if doc.get("kind") != FOLLOW_UP_KIND:
        raise LinkError("the follow-up of the link is not a follow-up")
    history = doc.get("history")
    return parse_ref(history) if history is not None else None
