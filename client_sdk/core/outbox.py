"""The fate of an outbox item, decided purely (docs/protocol/delivery.md § the client's outbox).

The outbound facet gathers the answer to one send attempt as an :data:`Outcome`, calls
:func:`fate`, and applies the :data:`Fate` in one store transaction. No I/O, no clock reads:
``now_ms`` and ``random`` are passed in.

=================================================  ===========================================
outcome                                            fate
=================================================  ===========================================
stored (201/202), or 409 ``idempotency_conflict``  :class:`Sent`
  naming the stored ``server_seq`` (a replay)
409 ``recipients_mismatch`` / 410                  :class:`Reencrypt` (refresh the named lists,
  ``device_list_outdated``, claim 404 (a device     encrypt again), at most
  in a stale list is gone)                          :data:`MAX_REENCRYPTS` times in a row, then
                                                    :class:`RetryLater`
network failure, timeout, 5xx, 429, 401, 408,      :class:`RetryLater` with back-off
  other 409
400, 403, 404, 413, 422 and any other 4xx           :class:`Failed` (kept, never blocks others)
contact blocked after an identity change, device   :class:`Hold` (queued until the user acts)
  list refused
=================================================  ===========================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from saltline.client_sdk.core import wire
from saltline.client_sdk.core.backoff import BackoffPolicy
from saltline.client_sdk.core.sync.ops import OP_VERSION

#: Re-encryptions for changed recipients in a row before the item waits (back-off) instead.
MAX_REENCRYPTS = 4
#: Back-off of automatic resends (per item: ``attempts`` counts them).
RESEND_BACKOFF = BackoffPolicy(base_s=1.0, cap_s=300.0, healthy_after_s=0.0)
#: Statuses that end an item: the server will refuse the same bytes again.
PERMANENT_STATUSES = frozenset({400, 403, 404, 413, 422})
#: Statuses worth a later resend of the same bytes.
TRANSIENT_STATUSES = frozenset({401, 408, 409, 425, 429})

# -- outcomes ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    server_seq: int
    server_ts_ms: int


@dataclass(frozen=True, slots=True)
class Refused:
    """An HTTP problem answer (or the same in a socket ``send_result``)."""

    status: int
    code: str | None
    detail: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Unreachable:
    reason: str


@dataclass(frozen=True, slots=True)
class TrustHold:
    reason: str


Outcome: TypeAlias = Accepted | Refused | Unreachable | TrustHold

# -- fates -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    server_seq: int
    server_ts_ms: int


@dataclass(frozen=True, slots=True)
class Reencrypt:
    accounts: frozenset[str]


@dataclass(frozen=True, slots=True)
class RetryLater:
    next_attempt_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    status: int | None
    code: str | None


@dataclass(frozen=True, slots=True)
class Hold:
    reason: str


Fate: TypeAlias = Sent | Reencrypt | RetryLater | Failed | Hold


def _accounts(body: Mapping[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    for key in ("missing", "extra", "stale"):
        entries = body.get(key)
        if isinstance(entries, list):
            for e in entries:
                if isinstance(e, Mapping) and isinstance(e.get("account_id"), str):
                    out.add(e["account_id"])
    accounts = body.get("accounts")
    if isinstance(accounts, Mapping):
        out.update(a for a in accounts if isinstance(a, str))
    elif isinstance(accounts, list):
        out.update(a for a in accounts if isinstance(a, str))
    return frozenset(out)


def fate(
    outcome: Outcome,
    *,
    attempts: int,
    reencrypts: int,
    now_ms: int,
    random: Callable[[], float],
    policy: BackoffPolicy = RESEND_BACKOFF,
) -> Fate:
    """What happens to an item after one attempt. ``attempts``: automatic resends so far (for the
    back-off); ``reencrypts``: re-encryptions in a row for changed recipients."""

    def later(reason: str) -> RetryLater:
        delay = policy.delay(attempts + 1, random)
        return RetryLater(now_ms + max(1, int(delay * 1000)), reason)

    match outcome:
        case Accepted(seq, ts):
            return Sent(seq, ts)
        case TrustHold(reason):
            return Hold(reason)
        case Unreachable(reason):
            return later(reason)
        case Refused(status, code, detail, body):
            if code == wire.PROBLEM_IDEMPOTENCY_CONFLICT:
                stored = body.get("server_seq")
                if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0:
                    stamp = body.get("server_ts")
                    if not isinstance(stamp, int) or isinstance(stamp, bool):
                        stamp = now_ms
                    return Sent(stored, stamp)
                return Failed(f"the server holds a different envelope with this id: {detail}", status, code)
            if code in (wire.PROBLEM_RECIPIENTS_MISMATCH, wire.PROBLEM_DEVICE_LIST_OUTDATED) or (
                status == 410
            ):
                if reencrypts >= MAX_REENCRYPTS:
                    return later("the recipients kept changing")
                return Reencrypt(_accounts(body))
            if status >= 500 or status in TRANSIENT_STATUSES:
                return later(f"{status} {code or ''}: {detail}".strip())
            return Failed(detail or f"refused with status {status}", status, code)
    raise TypeError(f"not an outcome: {outcome!r}")  # pragma: no cover


# -- what to send now ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """The parts of an outbox item the scheduling rule reads."""

    envelope_id: str
    failed: bool
    next_attempt_ms: int


def due(items: Iterable[Candidate], now_ms: int, *, force: bool = False) -> list[str]:
    """Envelope ids to attempt now, oldest first: never failed ones; those waiting out a back-off
    only when ``force`` (the app asked, or the connection just came back)."""
    return [i.envelope_id for i in items if not i.failed and (force or i.next_attempt_ms <= now_ms)]


def next_wakeup(items: Iterable[Candidate]) -> int | None:
    """When the earliest backed-off item becomes due (None: nothing waits)."""
    times = [i.next_attempt_ms for i in items if not i.failed and i.next_attempt_ms > 0]
    return min(times, default=None)


# -- size ------------------------------------------------------------------------------------------


#: Per-device ciphertext overhead of a message in the worst case (an initial message: version and
#: kind bytes, the X3DH header with both identity keys, base key, prekey ids, then the ratchet
#: header and the AEAD tag); see docs/protocol/messages.md § 3.
PER_DEVICE_OVERHEAD = 512


def padded_size(body_len: int, min_bucket: int = 256) -> int:
    """The padded plaintext size (docs/protocol/messages.md: power-of-two buckets >= 256 bytes)."""
    size = min_bucket
    while size < body_len + 1:
        size *= 2
    return size


def envelope_size(body_len: int, clock_len: int, devices: int) -> int:
    """An upper bound of what the server counts against ``max_envelope_bytes`` (ciphertexts plus
    clock) for a message of ``body_len`` plaintext bytes to ``devices`` devices."""
    return clock_len + max(devices, 1) * (padded_size(body_len) + PER_DEVICE_OVERHEAD)


def largest_body(limit: int, clock_len: int, devices: int) -> int:
    """The largest plaintext that fits ``limit`` for ``devices`` devices (0 if none does)."""
    per_device = (limit - clock_len) // max(devices, 1) - PER_DEVICE_OVERHEAD
    if per_device < 256:
        return 0
    bucket = 256
    while bucket * 2 <= per_device:
        bucket *= 2
    return bucket - 1


# -- the void replacement ------------------------------------------------------------------------------

#: ``type`` of the operation that takes the dot of an operation whose envelope the server refused
#: for good (docs/protocol/sync.md § void operations): without it the author's later operations
#: would wait forever for the missing dot on every other device.
VOID_TYPE = "void"


def void_plaintext(plaintext: bytes) -> bytes:
    """The void operation that replaces ``plaintext`` (same ``v`` and ``lamport``; the dot comes
    from the envelope clock, which is reused unchanged)."""
    doc = json.loads(plaintext)
    lamport = doc.get("lamport", 0) if isinstance(doc, dict) else 0
    out = {"type": VOID_TYPE, "v": OP_VERSION, "lamport": lamport if isinstance(lamport, int) else 0}
    return wire.canonical_json(out)
