"""Inbound rules: what the client does with each frame and envelope the server sends
(docs/protocol/delivery.md § what the client does with a frame). Pure: the inbound facet parses a
frame with :func:`parse_frame`, gathers the facts one rule asks for, and applies the decision.

Every envelope ends in exactly one of:

* :class:`Duplicate` - already stored (by envelope id or by its server_seq): acknowledge, no event;
* :class:`Drop` - it can never be processed (malformed, undecryptable, sender in no verified list,
  conversation gone): acknowledge and emit a typed event naming the reason (one that decrypted
  keeps its spent message key, so a replay is a :class:`Duplicate`);
* :class:`RetryLater` - a transient failure (network, 5xx): do not acknowledge; retry with back-off,
  and after :data:`MAX_TRANSIENT_TRIES` tries of the same envelope, :class:`Drop` it with an event;
* :class:`Accept` - decrypt, store, acknowledge, then emit;
* :class:`AcceptVoid` - it decrypted but its operation does not decode: store it as a void (it
  consumes its dot and its server_seq with no effect, sync.md § 2.2), acknowledge, and emit the
  malformed event once.

Acknowledgements are cumulative, so nothing after an envelope that must be retried is acknowledged
before it: the connection is dropped and the server redelivers from the last acknowledgement.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from saltline.client_sdk.core import wire

#: Attempts at one envelope that fails transiently (each after a reconnection with back-off)
#: before it is dropped with an event: a server that keeps failing for one item must not stop a
#: device for good.
MAX_TRANSIENT_TRIES = 5
MAX_ID_CHARS = 64

DropCode = Literal[
    "malformed",
    "undecryptable",
    "unknown_sender",
    "untrusted_sender",
    "conversation_unavailable",
    "retries_exhausted",
    "not_allowed",
    "not_a_member",
    "seq_reused",
]

# -- frames --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    acked_queue_seq: int
    heartbeat_interval_s: float


@dataclass(frozen=True, slots=True)
class Envelope:
    """An ``envelope`` or ``ephemeral`` frame, or an item of a conversation's history."""

    conversation_id: str
    envelope_id: str
    sender_account_id: str
    sender_device_id: str
    clock: bytes
    ciphertext: bytes
    server_seq: int | None  # None: ephemeral
    server_ts_ms: int
    queue_seq: int | None  # None: ephemeral or from the history


@dataclass(frozen=True, slots=True)
class Gap:
    from_queue_seq: int
    to_queue_seq: int


@dataclass(frozen=True, slots=True)
class DrainedFrame:
    queue_seq: int


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that breaks the protocol. ``queue_seq`` when one could be read (acknowledge it: it
    would come back forever), ``envelope_id``/``conversation_id`` when known (for the event)."""

    frame_type: str | None
    reason: str
    queue_seq: int | None = None
    conversation_id: str | None = None
    envelope_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ignore:
    """A frame the client has nothing to do with (a server ping is answered by the transport)."""

    frame_type: str


@dataclass(frozen=True, slots=True)
class DeviceListNotice:
    """The server says an account's device list changed (a hint only: the client fetches and
    verifies the chain itself; a lying notice costs one fetch)."""

    account_id: str
    version: int


Frame: TypeAlias = Ready | Envelope | Gap | DrainedFrame | Malformed | Ignore | DeviceListNotice


class _Bad(Exception):
    pass


#: Every integer of the protocol fits a signed 64-bit value (stores and peers rely on it).
MAX_INT = 2**63 - 1


def _int(doc: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    v = doc.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= MAX_INT:
        raise _Bad(f"{name!r} is not an integer in {minimum}..2^63-1")
    return v


def _id(doc: dict[str, Any], name: str) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or not v or len(v) > MAX_ID_CHARS:
        raise _Bad(f"{name!r} is not an id")
    _b64(v, name)
    return v


def _b64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise _Bad(f"{name!r} is not base64url text")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Bad(f"{name!r} is not base64url") from exc


def parse_envelope(doc: dict[str, Any], *, queued: bool, ephemeral: bool = False) -> Envelope:
    """Validate one envelope document (a frame or a history item with ``conversation_id`` added);
    raises ``ValueError`` naming the first bad field."""
    try:
        sender = doc.get("sender")
        if not isinstance(sender, dict):
            raise _Bad("'sender' is not an object")
        ts = doc.get("server_ts", 0)
        return Envelope(
            conversation_id=_id(doc, "conversation_id"),
            envelope_id=_id(doc, "envelope_id"),
            sender_account_id=_id(sender, "account_id"),
            sender_device_id=_id(sender, "device_id"),
            clock=_b64(doc.get("clock", ""), "clock"),
            ciphertext=_b64(doc.get("ciphertext"), "ciphertext"),
            server_seq=None if ephemeral else _int(doc, "server_seq", minimum=1),
            server_ts_ms=ts if isinstance(ts, int) and not isinstance(ts, bool) and 0 <= ts <= MAX_INT else 0,
            queue_seq=_int(doc, "queue_seq", minimum=1) if queued else None,
        )
    except _Bad as exc:
        raise ValueError(str(exc)) from exc


def parse_frame(frame: object) -> Frame:
    """Classify one server frame (already JSON-decoded). Never raises."""
    if not isinstance(frame, dict):
        return Malformed(None, "the frame is not a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        return Malformed(None, "the frame has no type")
    queue_seq = frame.get("queue_seq")
    readable_seq = (
        queue_seq
        if isinstance(queue_seq, int) and not isinstance(queue_seq, bool) and 1 <= queue_seq <= MAX_INT
        else None
    )
    try:
        if kind == wire.FRAME_READY:
            hb = frame.get("heartbeat_interval_s", wire.DEFAULT_HEARTBEAT_INTERVAL_S)
            if not isinstance(hb, int | float) or isinstance(hb, bool) or not 0 < hb <= 3600:
                hb = wire.DEFAULT_HEARTBEAT_INTERVAL_S
            return Ready(_int(frame, "acked_queue_seq"), float(hb))
        if kind == wire.FRAME_ENVELOPE:
            return parse_envelope(frame, queued=True)
        if kind == wire.FRAME_EPHEMERAL:
            return parse_envelope(frame, queued=False, ephemeral=True)
        if kind == wire.FRAME_GAP:
            a, b = _int(frame, "from_queue_seq", minimum=1), _int(frame, "to_queue_seq", minimum=1)
            if b < a:
                raise _Bad("the gap ends before it starts")
            return Gap(a, b)
        if kind == wire.FRAME_DRAINED:
            return DrainedFrame(_int(frame, "queue_seq"))
        if kind in (wire.FRAME_PING, wire.FRAME_SEND_RESULT):
            return Ignore(kind)
        if kind == wire.FRAME_DEVICE_LIST:
            account = frame.get("account_id")
            if not isinstance(account, str) or not 1 <= len(account) <= MAX_ID_CHARS:
                raise _Bad("the device-list notice has no account id")
            return DeviceListNotice(account, _int(frame, "version", minimum=1))
    except (_Bad, ValueError) as exc:
        cid, eid = frame.get("conversation_id"), frame.get("envelope_id")
        return Malformed(
            kind,
            str(exc),
            readable_seq if kind == wire.FRAME_ENVELOPE else None,
            cid if isinstance(cid, str) and len(cid) <= MAX_ID_CHARS else None,
            eid if isinstance(eid, str) and len(eid) <= MAX_ID_CHARS else None,
        )
    return Malformed(kind[:40], "unknown frame type")


# -- envelope decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Duplicate:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    code: DropCode
    reason: str
    status: int | None = None  # for conversation_unavailable: the server's 403/404


@dataclass(frozen=True, slots=True)
class RetryLater:
    reason: str


@dataclass(frozen=True, slots=True)
class Accept:
    pass


@dataclass(frozen=True, slots=True)
class AcceptVoid:
    """Store the operation as a void (``sync.Void``) in the one transaction that stores anything
    else, acknowledge, and emit ``DecryptionFailed`` with ``code`` after the commit."""

    reason: str
    code: DropCode = "malformed"


Decision: TypeAlias = Duplicate | Drop | RetryLater | Accept | AcceptVoid

LookupKind = Literal["ok", "gone", "transient", "refused", "unlisted"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of looking something up for an envelope (its conversation, its sender)."""

    kind: LookupKind
    reason: str = ""
    status: int | None = None


OK = Lookup("ok")


def before_lookup(*, envelope_stored: bool, seq_stored: bool, same_envelope: bool = True) -> Decision:
    """First rule: an envelope already stored (by id, or an operation at its server_seq) is a
    duplicate, acknowledged without decrypting it again (the ratchet would refuse it). A server_seq
    already holding *another* envelope (``same_envelope`` False) is the server giving one position
    to two operations: refused (a fork, sync.md § 9), never taken for a redelivery."""
    if envelope_stored:
        return Duplicate()
    if seq_stored:
        if not same_envelope:
            return Drop("seq_reused", "the server gave this envelope's server_seq to another envelope")
        return Duplicate()
    return Accept()


def after_lookup(conversation: Lookup, sender: Lookup, *, tries: int, member: bool = True) -> Decision:
    """Second rule, once the conversation and the sender's verified device list were looked up.
    ``tries``: how many times this envelope already failed transiently. ``member``: whether the
    sending account is a member of the conversation as this device pinned it (a direct
    conversation's two accounts, fixed forever); an envelope from anyone else is dropped."""
    if conversation.kind == "ok" and sender.kind == "ok" and not member:
        return Drop("not_a_member", "the sending account is not a member of this conversation")
    for what, look in (("conversation", conversation), ("sender", sender)):
        if look.kind == "transient":
            if tries + 1 >= MAX_TRANSIENT_TRIES:
                return Drop("retries_exhausted", f"the {what} could not be looked up: {look.reason}")
            return RetryLater(look.reason)
        if look.kind == "gone":
            return Drop(
                "conversation_unavailable",
                look.reason or "the server no longer shows this conversation to this device",
                look.status,
            )
        if look.kind == "refused":
            return Drop("untrusted_sender", f"sender's device list refused: {look.reason}")
        if look.kind == "unlisted":
            return Drop("unknown_sender", "the sending device is in no verified device list")
    return Accept()


DecryptKind = Literal["ok", "replayed", "failed", "malformed_op"]


def after_decrypt(
    kind: DecryptKind, reason: str, *, ephemeral: bool, typing: bool, dot: bool = False
) -> Decision:
    """Third rule, on the result of decryption and operation parsing. ``dot``: for a
    ``malformed_op``, whether its authenticated clock gives a valid dot for the sender device
    (``sync.decode_or_void`` returns a void).

    An operation that decrypted but does not decode is a void when it is stored and has a dot: it
    consumes that dot and its server_seq, so neither its author's later operations (causal
    holding, sync.md § 4 rule 3b) nor anything whose base passes it (rule 3a) wait for it for ever.
    An envelope that does not decrypt is always dropped: its header is not authenticated, and a
    void made of it would let the server erase a real operation by forging one with its dot."""
    if kind == "replayed":
        return Duplicate()  # a message key already used: a redelivery
    if kind == "failed":
        return Drop("undecryptable", reason)
    if kind == "malformed_op":
        if dot and not ephemeral:
            return AcceptVoid(f"malformed operation: {reason}")
        return Drop("malformed", f"malformed operation: {reason}")
    if ephemeral != typing:
        # typing indicators only travel as ephemeral envelopes, and ephemeral envelopes carry
        # nothing but typing indicators (a stored typing operation would consume no dot)
        return Drop("not_allowed", "an ephemeral envelope carries only typing indicators")
    return Accept()


def ack_for(decision: Decision, queue_seq: int | None) -> int | None:
    """The queue_seq to acknowledge after ``decision`` (None: nothing, or must not)."""
    return None if isinstance(decision, RetryLater) else queue_seq
