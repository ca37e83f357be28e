"""What this device sends must be what every receiving device accepts: an operation is encoded,
then decoded again with the receivers' own rules before it may enter the outbox (pure)."""

from __future__ import annotations

from saltline.client_sdk.core import sync
from saltline.client_sdk.errors import UsageError


def encode_checked(op: sync.Op, device: bytes, account: bytes) -> tuple[bytes, bytes]:
    """``sync.encode(op)``, or :class:`UsageError` when the operation does not encode or its
    receivers would refuse it (a negative timer, a title that is not text, a marker below 0...)."""
    try:
        plaintext, clock = sync.encode(op)
        if not isinstance(op.body, sync.Typing):
            sync.decode(plaintext, clock, device, account)
    except (sync.SyncError, TypeError, ValueError, UnicodeError) as exc:
        raise UsageError(f"not a valid {type(op.body).__name__} operation: {exc}") from exc
    return plaintext, clock
