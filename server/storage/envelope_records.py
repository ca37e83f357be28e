"""The records of the delivery store (:mod:`saltline.server.storage.envelopes_repo`): what a send carries,
what the store answers, queue and history items, and the routing check of a send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saltline.server.storage.conversations_repo import AccountRouting


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    conversation_id: bytes
    envelope_id: bytes
    sender_account_id: bytes
    sender_device_id: bytes
    clock: bytes
    request_hash: bytes
    copies: tuple[tuple[bytes, bytes], ...]  # (recipient device_id, ciphertext)
    #: account id -> device-list version the sender encrypted against. When set, the send is
    #: checked against the conversation's routing inside the batch's transaction (membership,
    #: versions, recipients exactly the routable devices, at least one): a mismatch is
    #: :class:`RoutingRejected` and nothing of it is stored.
    device_list_versions: Mapping[bytes, int] | None = None


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """An envelope as stored: what a send (or its retry) answers with."""

    conversation_id: bytes
    envelope_id: bytes
    server_seq: int
    server_ts_ms: int
    request_hash: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    envelope: StoredEnvelope
    recipients: tuple[bytes, ...]
    #: the ``queue_seq`` of each recipient's queue row, aligned with ``recipients``
    queue_seqs: tuple[int, ...] = ()
    #: recipients whose socket in this process took the committed entry directly (filled after
    #: the commit by the delivery service; the others are woken through the bus)
    pushed: set[bytes] = field(default_factory=set, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class AlreadyStored:
    """The idempotency key was already used (earlier, or earlier in the same batch)."""

    envelope: StoredEnvelope


@dataclass(frozen=True, slots=True)
class ConversationGone:
    conversation_id: bytes


@dataclass(frozen=True, slots=True)
class RoutingRejected:
    """The send does not match the conversation's current routing (checked in the transaction)."""

    routing: list[AccountRouting]


SendOutcome = Accepted | AlreadyStored | ConversationGone | RoutingRejected


def routing_matches(
    routing: Sequence[AccountRouting],
    sender_account_id: bytes,
    sender_device_id: bytes,
    stated: Mapping[bytes, int],
    given: set[bytes] | frozenset[bytes],
) -> bool:
    """True if a stored send may go out: the sender is a member and its sending device is still
    active (not removed: checked in the transaction), every member's stated version is
    current, the addressed devices are exactly the members' routable devices minus the sending
    device, and there is at least one."""
    if not given or not any(
        r.account_id == sender_account_id and sender_device_id in r.active_devices for r in routing
    ):
        return False  # not a member, or the sending device is no longer in its account's list
    expected: set[bytes] = set()
    for r in routing:
        if stated.get(r.account_id) != r.device_list_version:
            return False
        expected.update(r.active_devices)
    expected.discard(sender_device_id)
    return given == expected


@dataclass(frozen=True, slots=True)
class AckRequest:
    device_id: bytes
    through: int


@dataclass(frozen=True, slots=True)
class QueueState:
    last_queue_seq: int = 0
    acked_through: int = 0
    purged_through: int = 0


@dataclass(frozen=True, slots=True)
class ConnectSnapshot:
    """A device's queue as its socket opens (:meth:`EnvelopesRepo.connect_snapshot`)."""

    state: QueueState
    items: list[QueueItem]
    pending_count: int
    has_expired: bool


@dataclass(frozen=True, slots=True)
class QueueItem:
    queue_seq: int
    conversation_id: bytes
    server_seq: int
    server_ts_ms: int
    sender_account_id: bytes
    sender_device_id: bytes
    envelope_id: bytes
    clock: bytes
    ciphertext: bytes


def queue_items(rows: Sequence[Any]) -> list[QueueItem]:
    """Queue rows (queue_seq, conversation_id, server_seq, server_ts_ms, sender account, sender
    device, envelope_id, clock, ciphertext) as :class:`QueueItem`."""
    return [
        QueueItem(
            queue_seq=int(r[0]),
            conversation_id=bytes(r[1]),
            server_seq=int(r[2]),
            server_ts_ms=int(r[3]),
            sender_account_id=bytes(r[4]),
            sender_device_id=bytes(r[5]),
            envelope_id=bytes(r[6]),
            clock=bytes(r[7]),
            ciphertext=bytes(r[8]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class HistoryItem:
    server_seq: int
    server_ts_ms: int
    sender_account_id: bytes
    sender_device_id: bytes
    envelope_id: bytes
    clock: bytes
    ciphertext: bytes | None  # None when the envelope carried no copy for the asking device
