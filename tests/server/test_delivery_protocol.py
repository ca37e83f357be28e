"""Table tests of the delivery socket's frame decisions (server/services/delivery_protocol.py)."""

from __future__ import annotations

from typing import Any

import pytest

from saltline.server.errors import Problem, ProblemCode
from saltline.server.services import delivery_protocol as p


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"text": '{"type":"ping"}'}, {"type": "ping"}),
        ({"bytes": b'{"type":"pong"}'}, {"type": "pong"}),
        ({"text": "not json"}, p.ProtocolError),
        ({"text": "[1]"}, p.ProtocolError),
        ({"text": '{"type":1}'}, p.ProtocolError),
        ({"text": '{"kind":"ping"}'}, p.ProtocolError),
        ({}, p.ProtocolError),
        ({"text": '{"type":"ping","x":"' + "a" * p.MAX_FRAME_BYTES + '"}'}, p.ProtocolError),
    ],
)
def test_parse_frame(message: dict[str, Any], expected: Any) -> None:
    if expected is p.ProtocolError:
        with pytest.raises(p.ProtocolError):
            p.parse_frame(message)
    else:
        assert p.parse_frame(message) == expected


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ('{"type":"auth","token":"t"}', "t"),
        ('{"type":"auth","token":"t","extra":1}', "t"),
        ('{"type":"auth","token":""}', None),
        ('{"type":"auth","token":5}', None),
        ('{"type":"auth"}', None),
        ('{"type":"ping","token":"t"}', None),
        ('{"type":"auth","token":"' + "a" * (p.MAX_TOKEN_CHARS + 1) + '"}', None),
        ("garbage", None),
    ],
)
def test_auth_token(text: str, token: str | None) -> None:
    assert p.auth_token({"text": text}) == token


@pytest.mark.parametrize(
    ("frame", "last_sent", "ack_target", "expected"),
    [
        ({"type": "ping"}, 0, 0, ("ping", None)),
        ({"type": "pong"}, 0, 0, ("pong", None)),
        ({"type": "ack", "queue_seq": 3}, 5, 1, ("ack", 3)),
        ({"type": "ack", "queue_seq": 9}, 5, 1, ("ack", 5)),  # clamped to the last sent
        ({"type": "ack", "queue_seq": 1}, 5, 2, ("ack", None)),  # below the target: nothing new
        ({"type": "ack", "queue_seq": 2}, 5, 2, ("ack", None)),
        ({"type": "send", "request_id": "r-1_A"}, 0, 0, ("send", "r-1_A")),
    ],
)
def test_client_frame(frame: dict[str, Any], last_sent: int, ack_target: int, expected: Any) -> None:
    assert p.client_frame(frame, last_sent=last_sent, ack_target=ack_target) == expected


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ack", "queue_seq": -1},
        {"type": "ack", "queue_seq": True},
        {"type": "ack", "queue_seq": "3"},
        {"type": "ack"},
        {"type": "send"},
        {"type": "send", "request_id": ""},
        {"type": "send", "request_id": "a" * 65},
        {"type": "send", "request_id": "a b"},
        {"type": "auth", "token": "t"},  # only the first frame
        {"type": "hello"},
    ],
)
def test_client_frame_protocol_errors(frame: dict[str, Any]) -> None:
    with pytest.raises(p.ProtocolError):
        p.client_frame(frame, last_sent=5, ack_target=0)


@pytest.mark.parametrize(
    ("code", "close"),
    [
        (ProblemCode.TOKEN_REVOKED, p.CLOSE_DEVICE_REMOVED),
        (ProblemCode.TOKEN_EXPIRED, p.CLOSE_AUTH_FAILED),
        (ProblemCode.UNAUTHORIZED, p.CLOSE_AUTH_FAILED),
    ],
)
def test_close_code_for_refusal(code: ProblemCode, close: int) -> None:
    assert p.close_code_for_refusal(code) == close


@pytest.mark.parametrize(
    ("missed", "limit", "blocked", "expected"),
    [
        (0, 3, False, 1),
        (2, 3, False, 3),
        (3, 3, False, None),  # reaped
        (3, 3, True, 1),  # the reader waits for a send slot: not the client's fault
        (0, 0, False, None),
    ],
)
def test_heartbeat_tick(missed: int, limit: int, blocked: bool, expected: int | None) -> None:
    assert p.heartbeat_tick(missed, limit, reader_blocked=blocked) == expected


def test_close_reason_labels_and_send_problem() -> None:
    assert p.close_reason_label(p.CLOSE_HEARTBEAT_TIMEOUT) == "heartbeat_timeout"
    assert p.close_reason_label(1000) == "1000"
    frame = p.send_problem("r1", Problem(409, ProblemCode.RECIPIENTS_MISMATCH, "x"))
    assert (frame["type"], frame["request_id"], frame["status"]) == ("send_result", "r1", 409)
    assert frame["problem"]["code"] == "recipients_mismatch"
