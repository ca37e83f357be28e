"""Small helpers shared by the services: id encodings and the hook types."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from saltline.crypto.errors import EncodingError
from saltline.crypto.keys import b64decode, b64encode
from saltline.server.errors import Problem, ProblemCode

ID_SIZE = 16
USERNAME_RE = re.compile(r"[a-z0-9_.-]{3,32}")

#: Called with ``(account_id, device_id)`` (base64url) after a device was dropped from its
#: account's device list; implementations close the device's socket.
DeviceRemovedHook = Callable[[str, str], Awaitable[None]]
#: Called with ``(account_id, new_version)`` after an account adopted a new device list.
DeviceListChangedHook = Callable[[str, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AuthedDevice:
    """The caller, as proven by a valid access token. Ids are base64url text."""

    account_id: str
    device_id: str
    username: str

    @property
    def account_id_bytes(self) -> bytes:
        return b64decode(self.account_id)

    @property
    def device_id_bytes(self) -> bytes:
        return b64decode(self.device_id)


def encode_id(raw: bytes) -> str:
    return b64encode(raw)


def decode_id(text: str, what: str = "id", *, status: int = 404) -> bytes:
    """A 16-byte id from base64url; a malformed id is a 404 for path ids (no such resource) or a
    422 for body fields (``status=422``)."""
    try:
        raw = b64decode(text)
    except EncodingError:
        raw = b""
    if len(raw) != ID_SIZE:
        if status == 404:
            raise Problem(404, ProblemCode.NOT_FOUND, f"no such {what}")
        raise Problem(
            422, ProblemCode.VALIDATION_FAILED, f"{what} must be {ID_SIZE} bytes of base64url", field=what
        )
    return raw


def decode_b64_field(text: str, what: str) -> bytes:
    try:
        return b64decode(text)
    except EncodingError as exc:
        raise Problem(
            422, ProblemCode.MALFORMED_KEY, f"{what} is not unpadded base64url", field=what
        ) from exc


#: Sealed account-key handoffs and encrypted device names: at most this many bytes (decoded).
MAX_SEALED_BYTES = 512


def decode_sealed(text: str, what: str) -> bytes:
    """Opaque ciphertext (never opened by the server) of at most :data:`MAX_SEALED_BYTES`."""
    raw = decode_b64_field(text, what)
    if not raw or len(raw) > MAX_SEALED_BYTES:
        raise Problem(
            422, ProblemCode.VALIDATION_FAILED, f"{what} must be 1 to {MAX_SEALED_BYTES} bytes", field=what
        )
    return raw


def normalize_username(username: str) -> str:
    """Lower-case and validate: 3-32 characters of ``[a-z0-9_.-]``."""
    lower = username.lower() if username.isascii() else ""
    if not USERNAME_RE.fullmatch(lower):
        raise Problem(
            422, ProblemCode.USERNAME_INVALID, "usernames are 3-32 characters of a-z, 0-9, '_', '.', '-'"
        )
    return lower
