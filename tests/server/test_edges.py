"""Edges of the HTTP and WebSocket surface (issue 13): no X-Forwarded-For trust unless
configured, no redirect built from the Host header, an oversized chunked body is a 413, a bad text
frame closes with 1007 and logs no traceback, an unusable log level is refused at start-up with a
clear message."""

from __future__ import annotations

import base64
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from saltline.server.app import max_body_bytes
from saltline.server.settings import Settings
from tests.live import LiveServer

REPO = Path(__file__).resolve().parents[2]


def _problem(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def _login_as_nobody(client: httpx.Client, forwarded_for: str) -> int:
    body = {"username": "nobody_here", "password": "not-the-password", "device_id": "A" * 22}
    return client.post("/v1/auth/login", json=body, headers={"X-Forwarded-For": forwarded_for}).status_code


def test_x_forwarded_for_is_not_believed_by_default(make_server: Callable[..., LiveServer]) -> None:
    """Per-IP limits cannot be dodged by sending X-Forwarded-For: uvicorn believed it from
    127.0.0.1 by default; now only from ``forwarded_allow_ips``."""
    server = make_server(rate_limit_login_per_ip="2/minute")
    assert server.settings.forwarded_allow_ips == ""
    with server.client() as client:
        codes = [_login_as_nobody(client, f"203.0.113.{i}") for i in range(3)]
    assert codes == [401, 401, 429]  # one address (127.0.0.1), whatever the header says


def test_x_forwarded_for_is_believed_from_configured_proxies(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_login_per_ip="2/minute", forwarded_allow_ips="127.0.0.1")
    with server.client() as client:
        assert [_login_as_nobody(client, f"203.0.113.{i}") for i in range(3)] == [401, 401, 401]
        assert [_login_as_nobody(client, "203.0.113.9") for _ in range(3)] == [401, 401, 429]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_trailing_slash_is_not_redirected(make_server: Callable[..., LiveServer]) -> None:
    """Starlette answered ``/path/`` with a 307 whose Location came from the Host header (an open
    redirect); now it is a 404 problem, with no Location."""
    server = make_server()
    with server.client(follow_redirects=False) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/healthz/", "/v1/conversations/", "/v1/auth/login/"):
            r = client.request(
                "POST" if "login" in path else "GET", path, headers={"Host": "evil.example"}, json={}
            )
            assert (r.status_code, _problem(r)) == (404, "not_found"), path
            assert "location" not in r.headers


def test_oversized_chunked_body_is_413(make_server: Callable[..., LiveServer]) -> None:
    """A body without Content-Length (chunked) found too large while the route reads it was a
    400 (FastAPI's "error parsing the body"); now it is the 413 problem, as with Content-Length.
    A chunked body within the limit still reaches the route."""
    server = make_server()
    limit = max_body_bytes(server.settings)
    chunk = b"x" * (64 * 1024)
    sent: list[int] = []

    def body(total: int) -> Iterator[bytes]:
        sent.clear()
        while sum(sent) < total:
            sent.append(len(chunk))
            yield chunk

    with server.client() as client:
        for path in ("/v1/auth/login", "/v1/accounts"):
            r = client.post(path, content=body(limit + 1), headers={"Content-Type": "application/json"})
            assert r.request.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in r.request.headers
            assert sum(sent) > limit
            assert (r.status_code, _problem(r)) == (413, "payload_too_large"), r.text
            assert str(limit) in r.json()["detail"]
        with server.client() as fresh:
            json_type = {"Content-Type": "application/json"}
            r = fresh.post("/v1/auth/login", content=body(limit - len(chunk)), headers=json_type)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert (r.status_code, _problem(r)) == (422, "validation_failed"), r.text


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _send_raw_text_frame(port: int, payload: bytes) -> int:
    """Open ``/v1/ws`` by hand, send one text frame with ``payload`` (a client library would
    refuse to send invalid UTF-8), return the server's close code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        data = head.split(b"\r\n\r\n", 1)[1]
        s.sendall(_ws_frame(0x1, payload))
        while len(data) < 4:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data[0] & 0x0F == 0x8, data  # a close frame
    code: int = struct.unpack("!H", data[2:4])[0]
    return code


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_invalid_utf8_text_frame_closes_with_1007_without_traceback(
    make_server: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = make_server()  # uvicorn configures its loggers (dropping their handlers) here
    logger = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to root
    logger.addHandler(caplog.handler)
    try:
        assert _send_raw_text_frame(server.port, b"\xff\xfe{") == 1007  # RFC 6455 § 8.1
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
        server.stop()
    finally:
        logger.removeHandler(caplog.handler)
    mentions = [r for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(mentions) == 1
    assert mentions[0].levelno == logging.WARNING
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "saltline.server", "serve", "--data-dir", str(tmp_path), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_log_level_is_validated_at_start_up(tmp_path: Path) -> None:
    """``--log-level trace`` crashed at start-up (and would log request bodies): it is refused
    with a clear message, as is any unknown level; known levels are accepted in any case."""
    trace = _serve(tmp_path, "--log-level", "trace")
    assert trace.returncode == 2
    assert "log_level: log_level (SALTLINE_LOG_LEVEL, --log-level) trace is not supported" in trace.stderr
    assert "Traceback" not in trace.stderr + trace.stdout
    loud = _serve(tmp_path, "--log-level", "loud")
    assert loud.returncode == 2
    assert "must be one of critical, error, warning, info, debug" in loud.stderr
    assert "Traceback" not in loud.stderr + loud.stdout
    assert Settings(data_dir=tmp_path, log_level=" DEBUG").log_level == "debug"
