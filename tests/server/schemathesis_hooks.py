"""Schemathesis hooks of tests/server/test_schemathesis.py (loaded with ``SCHEMATHESIS_HOOKS``).

``semantic_rejections_only``: schema-valid data (positive mode) may be refused with 422 only for a
rule the document cannot state, named by its problem code per operation below; a 422 with any
other code (``validation_failed``, ``malformed_key``, ``username_invalid``, ...) means the
document is looser than the server.
"""

from __future__ import annotations

from typing import Any

import schemathesis

#: operation -> problem codes a schema-valid request may get with 422 (a rule no schema states)
SEMANTIC_422: dict[str, frozenset[str]] = {
    # the signed device list must parse, verify under account_key, name the username and device
    "POST /v1/accounts": frozenset({"device_list_invalid", "device_not_in_list", "too_many_devices"}),
    # ... and key handoffs only for the new list's other devices, a name only for a listed one
    "PUT /v1/accounts/me/device-list": frozenset(
        {"device_list_invalid", "device_not_in_list", "too_many_devices", "validation_failed_handoffs"}
    ),
    "PUT /v1/accounts/{account_id}/device-list/signed": frozenset(
        {"device_list_invalid", "device_not_in_list", "too_many_devices"}
    ),
    # a prekey must be signed by the uploading device's signing key
    "PUT /v1/keys": frozenset({"prekey_signature_invalid"}),
    # members must be registered accounts; a direct conversation has exactly one other member
    "POST /v1/conversations": frozenset({"unknown_accounts", "validation_failed_direct"}),
    "POST /v1/conversations/{conversation_id}/members": frozenset({"unknown_accounts"}),
    # no device addressed twice (a rule over one field of the items)
    "POST /v1/conversations/{conversation_id}/envelopes": frozenset({"validation_failed_duplicate"}),
    # Upload-Length must be a Padmé bucket
    "POST /v1/attachments": frozenset({"attachment_length_not_padded"}),
}

#: (problem detail fragment, the name it is allowed under) for cross-field validation_failed rules
_CROSS_FIELD = (
    ("direct conversation", "validation_failed_direct"),
    ("addressed twice", "validation_failed_duplicate"),
    ("key handoffs", "validation_failed_handoffs"),
    ("has no name", "validation_failed_handoffs"),
)


@schemathesis.check
def semantic_rejections_only(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = body.get("code") if isinstance(body, dict) else None
    if code == "validation_failed":
        detail = str(body.get("detail", ""))
        code = next((name for fragment, name in _CROSS_FIELD if fragment in detail), code)
    allowed = SEMANTIC_422.get(case.operation.label, frozenset())
    if code not in allowed:
        raise AssertionError(
            f"schema-valid request refused with 422 {code!r}: the OpenAPI document is looser than"
            f" the server ({str(body.get('detail', ''))[:200]})"
        )
    return None


# PATCH /v1/attachments/{attachment} bodies (TUS): raw bytes, like application/octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
