"""Table test of server/api/validation_codes.py: which schema failures keep the services' codes."""

from __future__ import annotations

from typing import Any

import pytest

from saltline.crypto.keys import b64encode
from saltline.server.api.validation_codes import specific_problem
from saltline.server.errors import ProblemCode as C

_PREKEY_WRONG_KIND = b64encode(bytes([1, 5]) + bytes(100))  # a one-time prekey
_PATTERN = "string_pattern_mismatch"


def _err(loc: tuple[Any, ...], kind: str = _PATTERN, value: object = "x") -> dict[str, Any]:
    return {"loc": loc, "type": kind, "input": value}


CASES: list[tuple[list[dict[str, Any]], str, str, tuple[C, str | None]]] = [
    ([_err(("body", "username"))], "POST", "/v1/accounts", (C.USERNAME_INVALID, None)),
    ([_err(("body", "username"), "string_too_short")], "POST", "/v1/auth/login", (C.USERNAME_INVALID, None)),
    ([_err(("body", "password"), "string_too_short")], "POST", "/v1/accounts", (C.PASSWORD_WEAK, None)),
    # a login's password has no strength rule: a schema failure there is generic
    ([_err(("body", "password"), "string_too_short")], "POST", "/v1/auth/login", (C.VALIDATION_FAILED, None)),
    (
        [_err(("body", "account_key"), "string_too_short")],
        "POST",
        "/v1/accounts",
        (C.MALFORMED_KEY, "account_key"),
    ),
    (
        [_err(("body", "signed_prekey"), value=_PREKEY_WRONG_KIND)],
        "PUT",
        "/v1/keys",
        (C.PREKEY_KIND_MISMATCH, "signed_prekey"),
    ),
    ([_err(("body", "signed_prekey"), value="AAAA")], "PUT", "/v1/keys", (C.MALFORMED_KEY, "signed_prekey")),
    (
        [_err(("body", "one_time_prekeys", 3), value="AAAA")],
        "PUT",
        "/v1/keys",
        (C.MALFORMED_KEY, "one_time_prekeys[3]"),
    ),
    (
        [_err(("body", "ciphertexts", 0, "ciphertext"))],
        "POST",
        "/v1/conversations/x/envelopes",
        (C.MALFORMED_KEY, "ciphertext"),
    ),
    ([_err(("body", "device_id"))], "POST", "/v1/auth/login", (C.VALIDATION_FAILED, None)),
    ([_err(("body", "data"), "string_too_long")], "POST", "/v1/blobs", (C.VALIDATION_FAILED, None)),
    ([_err(("query", "after"))], "GET", "/v1/conversations", (C.VALIDATION_FAILED, None)),
    # two different specific codes, or one unmapped error: generic
    (
        [_err(("body", "username")), _err(("body", "account_key"))],
        "POST",
        "/v1/accounts",
        (C.VALIDATION_FAILED, None),
    ),
    (
        [_err(("body", "username")), _err(("body", "device_id"))],
        "POST",
        "/v1/accounts",
        (C.VALIDATION_FAILED, None),
    ),
    ([_err(("body",), "model_attributes_type")], "POST", "/v1/accounts", (C.VALIDATION_FAILED, None)),
    ([], "POST", "/v1/accounts", (C.VALIDATION_FAILED, None)),
]


@pytest.mark.parametrize(("errors", "method", "path", "expected"), CASES)
def test_specific_problem(
    errors: list[dict[str, Any]], method: str, path: str, expected: tuple[C, str | None]
) -> None:
    assert specific_problem(errors, method, path) == expected
