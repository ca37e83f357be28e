"""JSON shapes of what the daemon returns and notifies (docs/daemon.md § Events).

Generic, so fields added to an event later appear without a change here: a dataclass becomes an
object of its fields, ``bytes`` base64url text (unpadded, as every id on the wire), tuples, lists
and sets arrays (sets sorted), dict keys text (``bytes`` keys base64url)."""

from __future__ import annotations

import dataclasses
from typing import Any

from saltline.client_sdk.core.attachments import AttachmentPointer
from saltline.client_sdk.core.events import Event
from saltline.client_sdk.daemon.rpc import invalid_params
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode, b64encode


def to_json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b64encode(bytes(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, bytes):
        return b64encode(key)
    return str(key)


def event_json(event: Event, profile: str) -> dict[str, Any]:
    """``{"profile": ..., "type": "MessageReceived", "event": {fields}}``."""
    return {"profile": profile, "type": type(event).__name__, "event": to_json(event)}


def pointer_from_json(value: dict[str, Any]) -> AttachmentPointer:
    """An attachment as ``MessageReceived.attachment`` (or a ``messages`` entry) shows it."""
    try:
        fields = {f.name for f in dataclasses.fields(AttachmentPointer)}
        if not set(value) <= fields:
            raise ValueError("unknown fields " + ", ".join(sorted(set(value) - fields)))
        raw = dict(value)
        for name in ("id", "key", "digest"):
            raw[name] = b64decode(raw[name])
        return AttachmentPointer(**raw)
    except (KeyError, TypeError, ValueError, CryptoError) as exc:
        raise invalid_params(f"attachment is not an attachment object: {exc}") from exc
