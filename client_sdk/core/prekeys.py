"""Prekey maintenance rules (docs/protocol/session-setup.md § 3): when to count, replenish,
rotate and expire. Pure: the prekey facet passes the time and its bookkeeping in."""

from __future__ import annotations

from dataclasses import dataclass

#: Replenish one-time prekeys when the server holds fewer than this many.
LOW_WATER = 20
#: Ask the server for the one-time prekey count at most this often when the delivery queue drains;
#: sooner on (re)connecting, and as soon as the prekey messages received since the last count may
#: have brought it below :data:`LOW_WATER`.
CHECK_INTERVAL_MS = 60_000
#: One-time prekeys the device holds on the server after a replenishment.
BATCH = 100
#: Rotate the signed prekey (and replace the last-resort prekey) when it is older than this.
SPK_ROTATION_MS = 7 * 24 * 3600 * 1000
#: Grace period of a replaced signed or last-resort prekey (kept for initial messages started
#: against it just before the rotation), then deleted. At most :data:`SPK_ROTATION_MS`: one
#: previous key of each kind is held. Why 7 days: docs/protocol/session-setup.md § 3.1.
GRACE_MS = SPK_ROTATION_MS


@dataclass(frozen=True, slots=True)
class PrekeyWork:
    count: bool  # ask the server how many one-time prekeys it holds (and replenish if low)
    expire: bool  # delete the previous signed and last-resort prekeys
    rotate: bool  # rotate the signed prekey, replace the last-resort prekey

    def __bool__(self) -> bool:
        return self.count or self.expire or self.rotate


def previous_expired(*, now_ms: int, rotated_at_ms: int, has_previous: bool) -> bool:
    return has_previous and now_ms - rotated_at_ms >= GRACE_MS


def rotation_due(*, now_ms: int, rotated_at_ms: int) -> bool:
    return now_ms - rotated_at_ms >= SPK_ROTATION_MS


def work_due(
    *,
    now_ms: int,
    last_count_ms: int,
    rotated_at_ms: int,
    recheck: bool,
    left_on_server: int | None,
    has_previous: bool,
) -> PrekeyWork:
    """What prekey maintenance is due. The count is due on the first drain after start-up or a
    (re)connection (``recheck``), when the estimate ``left_on_server`` fell below
    :data:`LOW_WATER`, and otherwise every :data:`CHECK_INTERVAL_MS` (a clock that went back
    counts as due)."""
    count = (
        recheck
        or (left_on_server is not None and left_on_server < LOW_WATER)
        or not 0 <= now_ms - last_count_ms < CHECK_INTERVAL_MS
    )
    return PrekeyWork(
        count,
        previous_expired(now_ms=now_ms, rotated_at_ms=rotated_at_ms, has_previous=has_previous),
        rotation_due(now_ms=now_ms, rotated_at_ms=rotated_at_ms),
    )


def to_upload(server_count: int) -> int:
    """How many one-time prekeys to generate and upload when the server holds ``server_count``."""
    return 0 if server_count >= LOW_WATER else BATCH - server_count
