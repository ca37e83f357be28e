"""The OpenAPI document states the limits this server enforces (issue 13): the request models
carry the static rules (id, key and base64url patterns, the username rule), and
:func:`apply_settings_limits` writes the configurable ones (``saltline.server.settings``) into the
generated document, so a request that matches the document is never refused for its shape.

What the document cannot say (a signature, a device list's content, whether an account exists,
the envelope's total size over all its copies) is answered 401/404/409/413/422 with a specific
problem code; tests/server/test_schemathesis.py names those operations and codes.
"""

from __future__ import annotations

from typing import Any

from saltline.server.api.path_ids import ID_REGEX
from saltline.server.api.schemas import b64_max_chars
from saltline.server.settings import Settings

#: (component, property, JSON Schema keyword, settings -> value); ``items.`` reaches into a list.
_LIMITS: tuple[tuple[str, str, str, Any], ...] = (
    ("UploadKeysRequest", "one_time_prekeys", "maxItems", lambda s: s.max_prekeys_per_upload),
    ("ClaimRequest", "devices", "maxItems", lambda s: s.max_claim_targets),
    ("SendEnvelopeRequest", "ciphertexts", "maxItems", lambda s: s.max_recipients),
    ("CiphertextIn", "ciphertext", "maxLength", lambda s: b64_max_chars(s.max_envelope_bytes)),
    ("CreateConversationRequest", "members", "maxItems", lambda s: max(1, s.max_recipients - 1)),
    ("BlobUpload", "data", "maxLength", lambda s: b64_max_chars(s.max_blob_bytes)),
    ("RegisterRequest", "device_list", "maxLength", lambda s: b64_max_chars(s.max_device_list_bytes)),
    ("PutDeviceListRequest", "device_list", "maxLength", lambda s: b64_max_chars(s.max_device_list_bytes)),
    ("PutDeviceListRequest", "key_handoffs", "maxProperties", lambda s: s.max_devices_per_account),
    (
        "PutSignedDeviceListRequest",
        "device_list",
        "maxLength",
        lambda s: b64_max_chars(s.max_device_list_bytes),
    ),
    (
        "ProvisioningPayload",
        "payload",
        "maxLength",
        lambda s: b64_max_chars(s.max_provisioning_payload_bytes),
    ),
)


def _key_patterns(node: Any) -> None:
    """pydantic writes a ``dict[Id, ...]`` as ``patternProperties`` with a ``propertyNames``
    that lacks the pattern, which lets any other key through (``additionalProperties`` is
    open): the key pattern goes into ``propertyNames`` too."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        names = node.get("propertyNames")
        if isinstance(patterns, dict) and len(patterns) == 1 and isinstance(names, dict):
            names.setdefault("pattern", next(iter(patterns)))
        for value in node.values():
            _key_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _key_patterns(value)


def _path_ids(schema: dict[str, Any]) -> None:
    """Path ids (``{account_id:id}``, :mod:`saltline.server.api.path_ids`) match only 16-byte ids: say so."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param.get("in") == "path" and param.get("name", "").endswith("_id"):
                    param["schema"] = {
                        **param.get("schema", {}),
                        "type": "string",
                        "pattern": f"^{ID_REGEX}$",
                        "minLength": 22,
                        "maxLength": 22,
                    }


#: Header parameters bounded by a setting.
_HEADER_LIMITS: dict[str, Any] = {
    "Upload-Length": lambda s: s.max_attachment_bytes,
    "Upload-Offset": lambda s: s.max_attachment_bytes,
}


def _attachment_limits(schema: dict[str, Any], settings: Settings) -> None:
    """``Upload-Length``/``Upload-Offset`` and a PATCH body up to ``max_attachment_bytes``."""
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for param in operation.get("parameters", []):
                limit = _HEADER_LIMITS.get(param.get("name", "")) if param.get("in") == "header" else None
                if limit is not None:
                    param.setdefault("schema", {})["maximum"] = int(limit(settings))
            if method == "patch":
                for media in operation.get("requestBody", {}).get("content", {}).values():
                    if media.get("schema", {}).get("format") == "binary":
                        media["schema"]["maxLength"] = settings.max_attachment_bytes


def apply_settings_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Tighten the generated document to this server's configured limits (in place)."""
    components = schema.get("components", {}).get("schemas", {})
    _key_patterns(components)
    _path_ids(schema)
    _attachment_limits(schema, settings)
    for component, prop, keyword, value in _LIMITS:
        node = components.get(component, {}).get("properties", {}).get(prop)
        if node is None:
            continue
        current = node.get(keyword)
        limit = int(value(settings))
        node[keyword] = limit if current is None else min(int(current), limit)
