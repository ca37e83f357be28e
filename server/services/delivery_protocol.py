"""The delivery socket's frame decisions (docs/protocol/delivery.md § 5): pure functions, no I/O.

:mod:`saltline.server.api.ws` runs the socket (tasks, database, bus); what a client frame means, which close
code a refusal gets and when the heartbeat reaps are decided here, and table-tested in
``tests/server/test_delivery_protocol.py``. The server's frames are listed in :mod:`saltline.server.api.ws`.

Client -> server
    ``{"type":"auth","token":"<access token>"}``  FIRST frame, within :data:`AUTH_TIMEOUT_S`.
        The token never appears in the URL, so it never reaches access logs. It is verified once
        per connection; a removal of the device closes the socket (4002), and the socket is closed
        with 4003 when the token's ``exp`` passes (the client reconnects with a fresh token).
    ``{"type":"ack","queue_seq":N}``  cumulative: every entry with ``queue_seq <= N`` is delivered
        and may be deleted. Also acknowledges a gap marker (ack its ``to_queue_seq``). An ack beyond
        the last sent entry is clamped to it; an ack below the current one is ignored.
    ``{"type":"pong"}``  answer to every ping.
    ``{"type":"ping"}``  the client's own liveness check; answered with ``{"type":"pong"}``.
    ``{"type":"send","request_id":R,"conversation_id":C,"envelope":{...}}``  send an envelope over
        the socket: ``envelope`` is exactly the body of ``POST /v1/conversations/C/envelopes`` and
        is checked by the same rules; ``R`` (1-64 base64url characters, chosen by the client)
        names the answer (a frame without a valid one is a protocol error, 4005). The socket
        sends as its device under the HTTP route's authorization: a send after the token's
        ``exp``, by a removed device (checked in the send's transaction) or with a revoked token
        family (re-checked at least every heartbeat interval) is answered with 401 and the
        socket is then closed (4002 ``token_revoked``, else 4003). At most
        :data:`MAX_PENDING_SENDS` sends per socket are in progress at a time; the server reads no
        further frame of that socket (acks and pongs included) until one is answered. A WebSocket
        message is at most :data:`WS_MAX_MESSAGE_BYTES` (larger: close 1009), so envelopes larger
        than that (big groups) are sent with the HTTP route.

Close codes
    ====  ======================================================================================
    4001  replaced: another socket for the same device connected (one socket per device)
    4002  device removed from its account's device list
    4003  authentication failed: no/late/malformed auth frame, invalid, expired or revoked token;
          also sent when the token's ``exp`` passes while connected (reconnect with a fresh one)
          and when reuse of a rotated refresh token revoked the device's token family
    4004  heartbeat timeout: ``heartbeat_missed_limit`` pings went unanswered, or a ping or a
          ``send_result`` was not taken by the client within a heartbeat interval
    4005  protocol error: a frame that is not valid JSON or not one of the frames above
    1011  internal error on the server
    1012  server restarting (shutdown); reconnect with back-off
    ====  ======================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from saltline.server.errors import Problem, ProblemCode

CLOSE_REPLACED = 4001
CLOSE_DEVICE_REMOVED = 4002
CLOSE_AUTH_FAILED = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4004
CLOSE_PROTOCOL_ERROR = 4005
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012

AUTH_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 4096  # the auth frame; after it, a frame may carry an envelope (``send``)
#: ``send`` frames of one socket in progress at once; the reader waits for a free slot.
MAX_PENDING_SENDS = 32
#: The WebSocket server (uvicorn ``ws_max_size``) refuses larger messages before buffering them
#: (close 1009); the application checks it again (the auth frame against :data:`MAX_FRAME_BYTES`).
WS_MAX_MESSAGE_BYTES = 64 * 1024
#: Ephemeral frames waiting for a slow socket are bounded by bytes (oldest dropped first).
EPHEMERAL_BUFFER_BYTES = 256 * 1024
MAX_TOKEN_CHARS = 2048

CLOSE_REASONS = {
    CLOSE_REPLACED: "replaced",
    CLOSE_DEVICE_REMOVED: "device_removed",
    CLOSE_AUTH_FAILED: "auth_failed",
    CLOSE_HEARTBEAT_TIMEOUT: "heartbeat_timeout",
    CLOSE_PROTOCOL_ERROR: "protocol_error",
    CLOSE_INTERNAL_ERROR: "internal_error",
    CLOSE_SERVICE_RESTART: "server_restart",
}

_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ProtocolError(Exception):
    """The client broke the protocol: the socket is closed with :data:`CLOSE_PROTOCOL_ERROR`."""


def close_reason_label(code: int) -> str:
    """The ``reason`` label of the closes metric for a close code."""
    return CLOSE_REASONS.get(code, str(code))


def parse_frame(message: Mapping[str, Any], limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """A client frame (an ASGI ``websocket.receive`` message): a JSON object with a string type."""
    data = message.get("text")
    if data is None:
        data = message.get("bytes")
    if data is None or len(data) > limit:
        raise ProtocolError("frame missing or too large")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("frame is not JSON") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError("frame is not an object with a type")
    return frame


def auth_token(message: Mapping[str, Any]) -> str | None:
    """The token of the first frame if it is an auth frame with a token (else None: 4003)."""
    try:
        frame = parse_frame(message)
    except ProtocolError:
        return None
    token = frame.get("token")
    if frame.get("type") != "auth" or not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


ClientAction = Literal["send", "ack", "pong", "ping"]


def client_frame(frame: Mapping[str, Any], *, last_sent: int, ack_target: int) -> tuple[ClientAction, Any]:
    """What a frame after the auth frame asks for, with its argument: ``send`` (its request id),
    ``ack`` (the new acknowledgement target, or None when it acknowledges nothing new; clamped
    to the last entry sent), ``pong``, ``ping``. Raises :class:`ProtocolError` otherwise."""
    kind = frame["type"]
    if kind == "send":
        request_id = frame.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise ProtocolError("send needs a request_id of 1-64 base64url characters")
        return "send", request_id
    if kind == "ack":
        seq = frame.get("queue_seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError("ack needs a non-negative integer queue_seq")
        seq = min(seq, last_sent)
        return "ack", seq if seq > ack_target else None
    if kind == "pong":
        return "pong", None
    if kind == "ping":
        return "ping", None
    raise ProtocolError(f"unexpected frame type {str(kind)[:32]!r}")


def close_code_for_refusal(code: ProblemCode) -> int:
    """The close code after a 401 on the socket: 4002 when the device was removed or its login
    revoked (``token_revoked``), 4003 for any other authentication failure."""
    return CLOSE_DEVICE_REMOVED if code == ProblemCode.TOKEN_REVOKED else CLOSE_AUTH_FAILED


def send_problem(request_id: str, problem: Problem) -> dict[str, Any]:
    """The ``send_result`` frame of a refused ``send``: the HTTP route's status and problem."""
    return {
        "type": "send_result",
        "request_id": request_id,
        "status": problem.status,
        "problem": problem.to_dict(),
    }


def heartbeat_tick(missed_pongs: int, missed_limit: int, *, reader_blocked: bool) -> int | None:
    """One heartbeat tick: the new count of unanswered pings after this tick's ping, or None to
    reap the socket (4004). While the reader waits for a send slot (server-side back-pressure)
    the client's pongs are not being read, which is not its fault: the count restarts."""
    if reader_blocked:
        missed_pongs = 0
    if missed_pongs >= missed_limit:
        return None
    return missed_pongs + 1
