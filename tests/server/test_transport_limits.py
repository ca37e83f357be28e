"""Transport limits (issue 13, server/transport.py) on a real server and real sockets: pipelining
depth, request-head timeout, connection cap with a 503 problem+json, malformed HTTP as
problem+json, a WebSocket peer that does not read its PONGs is aborted, no uvicorn protocol ping
(it would close with 1011). Counts requests, bytes and connections; the timeouts are small
settings and the tests wait for the event (the server closing), never for a duration."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Callable

import pytest

from saltline.server.cli import uvicorn_options
from saltline.server.settings import Settings
from tests.live import LiveServer
from tests.server.helpers import register

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _healthz(port: int) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    ctype = next((v for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-type"), "")
    return int(lines[0].split()[1]), ctype, body


def test_pipelining_within_the_limit_is_answered(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_max_pipeline=4)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(GET * 4 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_until_closed(s)
    assert data.count(b"HTTP/1.1 200") == 5


def test_pipelining_past_the_limit_drops_the_connection(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_max_pipeline=4)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(GET * 200)  # one request answered, 4 queued: the 6th in the queue drops it
        data = _read_until_closed(s)
    assert data.count(b"HTTP/1.1 200") <= 5
    assert _healthz(server.port)[0] == 200


def test_idle_and_slow_request_heads_are_closed(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_head_timeout_s=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle:
        assert _read_until_closed(idle) == b""  # never sent a byte
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")  # a head never completed
        assert _read_until_closed(slow) == b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as kept:
        kept.sendall(GET)  # answered, then idle on keep-alive
        assert _read_until_closed(kept).count(b"HTTP/1.1 200") == 1


def test_trickled_head_bytes_do_not_extend_the_timeout(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_head_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.05)  # one header byte per 50 ms at most: the head never completes
        sent = 0
        closed = False
        while sent < 1000 and not closed:
            try:
                closed = s.recv(1) == b""
            except TimeoutError:
                try:
                    s.sendall(b"a")
                    sent += 1
                except OSError:
                    closed = True
            except ConnectionResetError:
                closed = True
    assert closed, f"still open after {sent} trickled bytes"


def _open_ws(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw WebSocket to ``/v1/ws`` (unauthenticated), its 101 head read, nothing more.
    ``rcvbuf`` is set before connecting: set afterwards, it would shrink a window already
    offered, and the kernel would drop the server's segments sent into it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    s.sendall(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)  # the head only: the rest stays unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_connection_cap_refuses_with_503_problem(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_connections=3)
    held = [_open_ws(server.port) for _ in range(3)]  # busy connections: none can be evicted
    try:
        status, ctype, body = _healthz(server.port)
        assert status == 503
        assert ctype == "application/problem+json"
        assert json.loads(body)["code"] == "service_unavailable"
    finally:
        for s in held:
            s.close()
    for _ in range(200):  # the server notices the hang-ups; count attempts, not seconds
        if _healthz(server.port)[0] == 200:
            break
    else:
        pytest.fail("no connection freed after the held ones closed")


def test_at_the_cap_the_oldest_idle_connection_makes_room(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_connections=3, http_head_timeout_s=60)  # closed by eviction only
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    try:
        assert _healthz(server.port)[0] == 200  # evicts idle[0], the longest without a request
        assert _read_until_closed(idle[0]) == b""
        idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))  # full again
        assert _healthz(server.port)[0] == 200  # evicts idle[1]
        assert _read_until_closed(idle[1]) == b""
    finally:
        for s in idle:
            s.close()


def test_malformed_http_is_a_400_problem(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")  # a header without its colon
        data = _read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 400


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    )
    return bytes([0x80 | opcode]) + size + mask + masked


def test_websocket_peer_that_does_not_read_its_pongs_is_aborted(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(ws_write_buffer_max_bytes=512 * 1024)
    with _open_ws(server.port) as s:
        pings = _ws_frame(0x9, b"x" * 125) * 512  # 65,536 bytes of PINGs, 127-byte PONGs back
        sent = 0
        limit = 256 * 1024 * 1024
        try:
            while sent < limit:
                s.sendall(pings)
                sent += len(pings)
        except (ConnectionResetError, BrokenPipeError, TimeoutError) as exc:
            assert not isinstance(exc, TimeoutError), f"the server stopped reading after {sent} bytes"
        assert sent < limit, "the server kept answering PINGs nobody reads"
    assert _healthz(server.port)[0] == 200


def test_uvicorn_protocol_ping_is_off(make_settings: Callable[..., Settings]) -> None:
    """uvicorn's own keepalive ping closes with 1011 (reserved for internal errors,
    delivery.md § 5.12); the application heartbeat (4004) is the only one."""
    assert uvicorn_options(make_settings())["ws_ping_interval"] is None


def test_ws_buffer_must_hold_an_envelope(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="ws_write_buffer_max_bytes"):
        make_settings(max_envelope_bytes=1024 * 1024, ws_write_buffer_max_bytes=512 * 1024)


def test_request_head_over_the_limit_is_a_431_problem(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_max_head_bytes=4096)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: " + b"a" * 8192)  # never ends
        data = _read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), data
    assert json.loads(body)["status"] == 431
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # a head just below
        s.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\nX-a: " + b"a" * 3000 + b"\r\n\r\n")
        assert _read_until_closed(s).startswith(b"HTTP/1.1 200")


def test_authenticated_peer_that_does_not_read_is_dropped(make_server: Callable[..., LiveServer]) -> None:
    """The pongs to its ``ping`` frames back up, the heartbeat closes it (4004) and, as the close
    frame cannot be written either, the transport is aborted instead of waiting for a drain."""
    server = make_server(heartbeat_interval_s=0.2, heartbeat_missed_limit=1, ws_close_timeout_s=0.2)
    with server.client() as http:
        token = register(http).first.access_token
    with _open_ws(server.port, rcvbuf=4096) as s:
        s.sendall(_ws_frame(0x1, json.dumps({"type": "auth", "token": token}).encode()))
        pings = _ws_frame(0x1, b'{"type":"ping"}') * 4096
        sent = 0
        limit = 1024 * 1024 * 1024
        # The server stops reading while its answers wait, then drops us with a RST (a FIN would
        # wait behind its unread answers): a reset ends the loop, however slow the server runs.
        # The timeout only turns a server that never drops us into a failure instead of a hang.
        s.settimeout(120)
        try:
            while sent < limit:
                s.sendall(pings)
                sent += len(pings)
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert sent < limit
    assert _healthz(server.port)[0] == 200


def _reset_after_reading(s: socket.socket) -> bool:
    """Read until the connection ends: True if it was reset, False on an orderly EOF."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return False


def test_dropped_peer_is_reset_even_with_nothing_left_unread(make_server: Callable[..., LiveServer]) -> None:
    """A peer that does not read sends a little and stops: the server reads all of it, so at the
    drop nothing it sent is unread, while the server's answers are still unsent. A plain close
    would queue a FIN behind those answers, which a peer that does not read never gets (its
    writes wait on a zero window for ever, and the kernel keeps the answers); the drop resets."""
    server = make_server(heartbeat_interval_s=0.2, heartbeat_missed_limit=1, ws_close_timeout_s=0.2)
    with server.client() as http:
        token = register(http).first.access_token
    with _open_ws(server.port, rcvbuf=4096) as s:
        s.sendall(_ws_frame(0x1, json.dumps({"type": "auth", "token": token}).encode()))
        s.sendall(_ws_frame(0x1, b'{"type":"ping"}') * 2000)  # 34 kB of pongs: more than we buffer
        # never a pong: the heartbeat closes the socket (4004), the close frame waits behind the
        # unread answers, and the transport is dropped. However late we read, a drop is a reset.
        assert _reset_after_reading(s), "the dropped connection ended with a FIN, not a reset"
    assert _healthz(server.port)[0] == 200


def test_refused_websocket_handshake_is_a_problem(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(  # no Sec-WebSocket-Key: the websockets library refuses the handshake
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        data = _read_until_closed(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 400


@pytest.mark.parametrize(
    ("status", "library_headers", "kept"),
    [
        (400, [("Content-Type", "text/plain; charset=utf-8")], []),
        (
            426,
            [("Sec-WebSocket-Version", "13"), ("Content-Type", "text/plain")],
            [("Sec-WebSocket-Version", "13")],
        ),
    ],
)
def test_handshake_problem_table(
    db_url: str, status: int, library_headers: list[tuple[str, str]], kept: list[tuple[str, str]]
) -> None:
    """The websockets library's plain-text refusal becomes problem+json with the same status."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    from saltline.server.transport import handshake_problem

    plain = Response(status, "x", Headers(library_headers), b"Failed to open a WebSocket connection.\n")
    problem = handshake_problem(plain)
    assert problem.status_code == status
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert [(k, v) for k, v in problem.headers.raw_items() if k.startswith("Sec-")] == kept
    doc = json.loads(problem.body)
    assert (doc["status"], doc["detail"]) == (status, "Failed to open a WebSocket connection.")
    assert int(problem.headers["Content-Length"]) == len(problem.body)
