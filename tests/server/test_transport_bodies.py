"""Slow request bodies, unread responses and uvicorn's last-resort 500 (issue 13,
server/transport.py) on a real server and real sockets. The timeouts are small settings; the tests
wait for the server's answer or close (reads with a generous socket timeout), never for a
duration; where a client must be slow, its own pace is a bounded recv timeout."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from saltline.server.transport import closes
from tests.live import LiveServer

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BIG = 32 * 1024 * 1024


def _read_until_closed(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _status_and_problem(data: bytes) -> tuple[int, str, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (h.partition(": ") for h in lines[1:])}
    return int(lines[0].split()[1]), headers.get("content-type", ""), json.loads(body) if body else {}


def _connections(server: LiveServer) -> set[Any]:
    assert server._server is not None
    return set(server._server.server_state.connections)


def _wait_for(condition: Callable[[], bool], *, what: str, timeout_s: float = 20.0) -> None:
    """Poll an observable state of the server (not a duration): at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _closes(reason: str) -> float:
    """``saltline_transport_closes_total{reason}`` (per process: compare before and after)."""
    return closes(reason)


def _metric(server: LiveServer, reason: str) -> float:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = _read_until_closed(s).decode()
    line = f'saltline_transport_closes_total{{reason="{reason}"}} '
    return float(next(ln for ln in text.splitlines() if ln.startswith(line)).split()[-1])


def _post_head(length: int) -> bytes:
    return (
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def test_a_stalled_body_is_answered_408_problem_and_closed(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_body_timeout_s=0.2, http_body_min_rate=1_000_000)
    before = _metric(server, "body_timeout")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_post_head(1000) + b'{"username": ')  # and nothing more
        data = _read_until_closed(s)
    assert _metric(server, "body_timeout") == before + 1
    status, ctype, problem = _status_and_problem(data)
    assert (status, ctype, problem["code"]) == (408, "application/problem+json", "request_timeout")
    assert data.count(b"HTTP/1.1") == 1  # the application's own answer went nowhere
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # still serving
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(s).startswith(b"HTTP/1.1 200")


def test_a_trickled_body_does_not_extend_its_deadline(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_body_timeout_s=0.3, http_body_min_rate=1_000_000)
    length = 100_000
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_post_head(length))
        s.settimeout(0.02)  # one byte per 20 ms at most: the body needs ~2,000 s at this pace
        data = b""
        while sent < length:
            try:
                s.sendall(b" ")
                sent += 1
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        s.settimeout(10)
        data += _read_until_closed(s)
    assert sent < length
    assert _status_and_problem(data)[0] == 408


def test_a_slow_body_that_keeps_moving_is_read(make_server: Callable[..., LiveServer]) -> None:
    """The deadline grows by a second per ``http_body_min_rate`` bytes received: a body slower
    than ``http_body_timeout_s`` in total, but moving at the rate, is read and answered."""
    server = make_server(http_body_timeout_s=0.3, http_body_min_rate=100)
    body = json.dumps({"username": "nobody_here", "password": "x" * 200}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(_post_head(len(body)) + body[:150])  # 150 bytes: 1.5 s more allowed
        s.settimeout(0.5)  # the client's pace: past the base timeout, within the extension
        with pytest.raises(TimeoutError):
            s.recv(1)  # nothing answered yet: the server waits for the rest
        s.settimeout(10)
        s.sendall(body[150:])
        status = int(s.recv(65536).split(b" ", 2)[1])
    assert status not in (408, 500)  # the login's own answer (401 for an unknown user)


def test_an_unread_response_is_dropped_and_freed(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_write_timeout_s=0.3)
    answered = threading.Event()

    async def big(_request: Request) -> Response:
        answered.set()
        return Response(b"x" * BIG, media_type="application/octet-stream")

    server.app.router.routes.append(Route("/test-big", big))
    before = _closes("write_timeout")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Set before connecting: set afterwards, it would shrink a window already offered, and
        # the kernel would drop the segments the server sent into it (no byte to read below).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", server.port))
        s.sendall(b"GET /test-big HTTP/1.1\r\nHost: x\r\n\r\n")
        # Not reading: the server's writes pause; it drops the connection (and the response's
        # buffered bytes) after the timeout. Wait for that, on the server's connection set.
        assert answered.wait(10)  # the connection is in the server's set from here on
        _wait_for(lambda: not _connections(server), what="the unread connection to be dropped")
        assert _closes("write_timeout") == before + 1
        # What our kernel had taken before the drop is still read (the drop is a reset: the
        # server's kernel discards what it had not sent); the rest of the 32 MiB never comes.
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_response_read_in_time_is_complete(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(http_write_timeout_s=5.0)

    async def big(_request: Request) -> Response:
        return Response(b"x" * (4 * 1024 * 1024), media_type="application/octet-stream")

    server.app.router.routes.append(Route("/test-big", big))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /test-big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_until_closed(s)
    assert data.endswith(b"x" * 1000) and len(data.partition(b"\r\n\r\n")[2]) == 4 * 1024 * 1024


class _NoAnswer:
    """An ASGI endpoint that returns without answering (uvicorn's last resort then answers)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        return None


def test_uvicorns_last_resort_500_is_a_problem(make_server: Callable[..., LiveServer]) -> None:
    server = make_server()
    server.app.router.routes.append(Route("/test-no-answer", _NoAnswer()))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /test-no-answer HTTP/1.1\r\nHost: x\r\n\r\n")
        data = _read_until_closed(s)
    status, ctype, problem = _status_and_problem(data)
    assert (status, ctype, problem["code"]) == (500, "application/problem+json", "internal_error")


async def _raise_before_accept(_websocket: WebSocket) -> None:
    raise RuntimeError("a bug before the handshake is accepted")


def test_a_websocket_handler_failing_before_accept_gets_a_500_problem(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server()
    server.app.router.routes.append(WebSocketRoute("/test-ws-raise", _raise_before_accept))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"GET /test-ws-raise HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: c2FsdGxpbmUtdGVzdCEhIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = _read_until_closed(s)
    status, ctype, problem = _status_and_problem(data)
    assert (status, ctype, problem["code"]) == (500, "application/problem+json", "internal_error")


def test_the_body_of_a_request_answered_early_is_not_taken_for_the_next_head(
    make_server: Callable[..., LiveServer],
) -> None:
    """A request answered before its body arrived (413 from the Content-Length alone): the body
    that follows on the kept-alive connection is that request's, not a head (no 431), and the
    next request on the connection is answered."""
    server = make_server()
    length = 2 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length
        )
        head = b""
        while b"\r\n\r\n" not in head or not head.rstrip().endswith(b"}"):
            head += s.recv(65536)  # the 413 problem, whole (its JSON object ends it)
        status, _ctype, problem = _status_and_problem(head)
        assert (status, problem["code"]) == (413, "payload_too_large")
        s.sendall(b"x" * length)  # the answered request's body, after its answer
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = _read_until_closed(s)
    assert rest.startswith(b"HTTP/1.1 200"), rest[:200]
