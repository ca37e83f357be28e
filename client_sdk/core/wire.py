"""Wire constants the SDK relies on: WebSocket close codes, frame types, problem codes and the one
canonical JSON encoding. docs/protocol/delivery.md names the same values (§ 5.10 and § 5.12: close
codes and frame types; § 3.9: the problem codes the client acts on); a change here is a change of
the protocol. The server's values are in server/api/ws.py, server/api/connections.py and
server/errors.py.

Pure: standard library only.
"""

from __future__ import annotations

import json
from typing import Any, Final

# -- canonical JSON -----------------------------------------------------------------------------


def canonical_json(doc: Any) -> bytes:
    """The one canonical JSON encoding the client writes where bytes matter (operation plaintexts,
    history bundles, outbox request bodies, linking payloads): keys sorted, no whitespace, UTF-8,
    non-ASCII kept as is, no NaN or infinities (a ``ValueError``)."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def loads_object(data: bytes | str) -> dict[str, Any]:
    """Parse JSON that must be an object; ``ValueError`` otherwise (never another exception type)."""
    try:
        doc = json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


# -- WebSocket close codes (docs/protocol/delivery.md § 5.10, § 5.12) ---------------------------

CLOSE_NORMAL: Final = 1000
"""The client's own close (``Client.close``); the server never sends it."""
CLOSE_MESSAGE_TOO_BIG: Final = 1009
"""A client message over the server's ``WS_MAX_MESSAGE_BYTES``, refused by the WebSocket server."""
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_REPLACED: Final = 4001
"""A newer connection of the same device replaced this one."""
CLOSE_DEVICE_REMOVED: Final = 4002
"""The device was removed from its account: reconnecting is pointless."""
CLOSE_AUTH_FAILED: Final = 4003
"""The token was refused or expired: fetch a new one before the next attempt."""
CLOSE_HEARTBEAT_TIMEOUT: Final = 4004
"""The server missed ``heartbeat_missed_limit`` pongs, or the client did not take a frame in time."""
CLOSE_PROTOCOL_ERROR: Final = 4005
"""The client sent a frame the server does not accept."""

#: Close codes after which the client stops reconnecting.
FATAL_CLOSE_CODES: Final = frozenset({CLOSE_DEVICE_REMOVED})

# -- frame types (docs/protocol/delivery.md § 5.2, § 5.3, § 5.12) -------------------------------

# client -> server
FRAME_AUTH: Final = "auth"
FRAME_ACK: Final = "ack"
FRAME_SEND: Final = "send"
# server -> client
FRAME_READY: Final = "ready"
FRAME_ENVELOPE: Final = "envelope"
FRAME_GAP: Final = "gap"
FRAME_DRAINED: Final = "drained"
FRAME_EPHEMERAL: Final = "ephemeral"
FRAME_DEVICE_LIST: Final = "device_list"
FRAME_SEND_RESULT: Final = "send_result"
# both directions: either side pings, the other answers with a pong
FRAME_PING: Final = "ping"
FRAME_PONG: Final = "pong"

#: Every frame type a client may send; the server closes with 4005 on any other.
CLIENT_FRAME_TYPES: Final = frozenset({FRAME_AUTH, FRAME_ACK, FRAME_PONG, FRAME_PING, FRAME_SEND})
#: Every frame type the server sends (a ``pong`` only in answer to a client ``ping``).
SERVER_FRAME_TYPES: Final = frozenset(
    {
        FRAME_READY,
        FRAME_ENVELOPE,
        FRAME_GAP,
        FRAME_DRAINED,
        FRAME_EPHEMERAL,
        FRAME_DEVICE_LIST,
        FRAME_PING,
        FRAME_PONG,
        FRAME_SEND_RESULT,
    }
)

#: Server heartbeat interval assumed until a ``ready`` frame names one (the server's default).
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 15.0
#: The client declares the connection dead after this many server heartbeat intervals without a
#: frame from the server (two missed pings).
MISSED_HEARTBEATS_DEAD: Final = 2

# -- problem codes the SDK acts on (docs/protocol/delivery.md § 3.9; server/errors.py) -----------

# sending: re-encrypt and send again
PROBLEM_RECIPIENTS_MISMATCH: Final = "recipients_mismatch"  # 409
PROBLEM_DEVICE_LIST_OUTDATED: Final = "device_list_outdated"  # 410
PROBLEM_IDEMPOTENCY_CONFLICT: Final = "idempotency_conflict"  # 409
# sending: permanent, never retried unchanged
PROBLEM_ENVELOPE_TOO_LARGE: Final = "envelope_too_large"  # 413, ``limit``
PROBLEM_TOO_MANY_RECIPIENTS: Final = "too_many_recipients"  # 413, ``limit``
PROBLEM_PAYLOAD_TOO_LARGE: Final = "payload_too_large"  # 413: the HTTP body limit
PROBLEM_CONVERSATION_NOT_FOUND: Final = "conversation_not_found"  # 404: or not a member
PROBLEM_NO_RECIPIENTS: Final = "no_recipients"  # 422
PROBLEM_VALIDATION_FAILED: Final = "validation_failed"  # 422
PROBLEM_MALFORMED_KEY: Final = "malformed_key"  # 422
PROBLEM_NOT_FOUND: Final = "not_found"  # 404
PROBLEM_FORBIDDEN: Final = "forbidden"  # 403
# authentication
PROBLEM_UNAUTHORIZED: Final = "unauthorized"  # 401
PROBLEM_TOKEN_EXPIRED: Final = "token_expired"  # noqa: S105 - 401; a problem code, not a password
PROBLEM_TOKEN_REVOKED: Final = "token_revoked"  # noqa: S105 - 401; a problem code, not a password
PROBLEM_DEVICE_NOT_ACTIVE: Final = "device_not_active"  # 403: removed from the device list
PROBLEM_DEVICE_GRANT_INVALID: Final = "device_grant_invalid"  # 403: linking without a valid grant
PROBLEM_STORAGE_QUOTA_EXCEEDED: Final = "storage_quota_exceeded"  # 507: the account's blob quota
# attachments
PROBLEM_ATTACHMENT_EXPIRED: Final = "attachment_expired"  # 410: past retention, bytes gone
PROBLEM_ATTACHMENT_OFFSET_MISMATCH: Final = "attachment_offset_mismatch"  # 409, ``offset``
PROBLEM_ATTACHMENT_INCOMPLETE: Final = "attachment_incomplete"  # 409: upload not finished
PROBLEM_ATTACHMENT_LENGTH_NOT_PADDED: Final = "attachment_length_not_padded"  # 422, ``padded``
PROBLEM_RANGE_NOT_SATISFIABLE: Final = "range_not_satisfiable"  # 416
PROBLEM_UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"  # 415
# transient
PROBLEM_RATE_LIMITED: Final = "rate_limited"  # 429, ``Retry-After``
PROBLEM_SERVICE_UNAVAILABLE: Final = "service_unavailable"  # 503
PROBLEM_INTERNAL_ERROR: Final = "internal_error"  # 500

#: The server's default envelope limits (``max_envelope_bytes``): the SDK checks a message against
#: them before queueing it; a server with other limits says so in its 413 problem (``limit``).
DEFAULT_MAX_ENVELOPE_BYTES: Final = 256 * 1024
