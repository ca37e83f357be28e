"""The problem code of a request that fails its schema: ``validation_failed``, unless every error
is one the services used to name more precisely (before the schema stated the rule), so a client
branching on ``username_invalid``, ``password_weak``, ``malformed_key`` or
``prekey_kind_mismatch`` still gets it. Pure; table-tested in tests/server/test_validation_codes.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saltline.crypto.errors import EncodingError
from saltline.crypto.keys import PREKEY_ENCODED_SIZE, PREKEY_KINDS, b64decode
from saltline.server.errors import ProblemCode

_SHAPE = frozenset({"string_pattern_mismatch", "string_too_short", "string_too_long"})
#: Binary fields whose bad text the services answered ``malformed_key`` (crypto decoding).
_KEY_FIELDS = frozenset(
    {"account_key", "signature", "nonce", "device_list", "data", "payload", "ciphertext", "clock"}
)
_PREKEY_FIELDS = frozenset({"signed_prekey", "last_resort_prekey", "one_time_prekeys"})
REGISTER = ("POST", "/v1/accounts")


def _is_prekey_of_another_kind(value: object) -> bool:
    """A well-formed encoded prekey (version 1, a prekey kind) sent in the wrong field."""
    if not isinstance(value, str):
        return False
    try:
        raw = b64decode(value)
    except EncodingError:
        return False
    return len(raw) == PREKEY_ENCODED_SIZE and raw[0] == 1 and raw[1] in PREKEY_KINDS


def _field(loc: Sequence[Any]) -> tuple[str | None, str | None]:
    """The body field an error is about, and its name as the services gave it (``x[1]``)."""
    if len(loc) < 2 or loc[0] != "body":
        return None, None
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), None)
    if name is None:
        return None, None
    label = name + "".join(f"[{p}]" for p in loc[loc.index(name) + 1 :] if isinstance(p, int))
    return name, label


def _one(error: Any, route: tuple[str, str]) -> tuple[ProblemCode, str | None] | None:
    name, label = _field(tuple(error.get("loc", ())))
    kind = str(error.get("type", ""))
    if name is None or kind not in _SHAPE:
        return None
    if name == "username":
        return ProblemCode.USERNAME_INVALID, None
    if name == "password" and route == REGISTER and kind != "string_pattern_mismatch":
        return ProblemCode.PASSWORD_WEAK, None
    if name in _PREKEY_FIELDS:
        if _is_prekey_of_another_kind(error.get("input")):
            return ProblemCode.PREKEY_KIND_MISMATCH, label
        return ProblemCode.MALFORMED_KEY, label
    if name in _KEY_FIELDS and (kind == "string_pattern_mismatch" or name == "account_key"):
        return ProblemCode.MALFORMED_KEY, label
    return None


def specific_problem(errors: Sequence[Any], method: str, path: str) -> tuple[ProblemCode, str | None]:
    """The code for these validation errors (and the field to name, if any)."""
    mapped = [_one(e, (method, path)) for e in errors]
    if mapped and all(m is not None for m in mapped) and len({m[0] for m in mapped if m}) == 1:
        first = mapped[0]
        assert first is not None
        return first
    return ProblemCode.VALIDATION_FAILED, None
