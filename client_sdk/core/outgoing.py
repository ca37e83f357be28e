"""What this device sends must be what every receiving device accepts: an operation is encoded,
then decoded again with the receivers' own rules before it may enter the outbox (pure)."""

from __future__ import annotations

from saltline.client_sdk.core import sync
from saltline.client_sdk.core.sync.ops import MAX_TEXT
from saltline.client_sdk.errors import UsageError


def encode_checked(op: sync.Op) -> tuple[bytes, bytes]:
    """``sync.encode(op)``, or :class:`UsageError` when the operation does not encode."""
    try:
        return sync.encode(op)
    except (sync.SyncError, TypeError, ValueError, UnicodeError) as exc:
        raise UsageError(f"not a valid {type(op.body).__name__} operation: {exc}") from exc


def check_accepted(op: sync.Op, plaintext: bytes, clock: bytes, device: bytes, account: bytes) -> None:
    """:class:`UsageError` when receivers would refuse the encoded operation (a text over
    :data:`MAX_TEXT` characters, a negative timer, a title that is not text, a marker below 0...)."""
    text = getattr(op.body, "text", None)
    if isinstance(text, str) and len(text) > MAX_TEXT:
        raise UsageError(f"a text is at most {MAX_TEXT} characters ({len(text)} given): send a file instead")
    if isinstance(op.body, sync.Typing):
        return
    try:
        sync.decode(plaintext, clock, device, account)
    except (sync.SyncError, TypeError, ValueError, UnicodeError) as exc:
        raise UsageError(f"not a valid {type(op.body).__name__} operation: {exc}") from exc
