"""JSON-RPC over HTTP/1.1 (one request per connection): ``POST /rpc`` takes a request or a
batch and answers it (``204`` for notifications only); ``GET /events`` is a server-sent events
stream of the served profiles' events (``?profile=NAME``, repeatable, to choose).

On TCP every request needs ``Authorization: Bearer TOKEN`` (the token file, docs/daemon.md) and
a ``Host`` of the allowlist (DNS rebinding); on the UNIX socket the socket's file mode is the
access check. A request head must arrive within ``head_timeout`` (:data:`HEAD_TIMEOUT_S`) and is
bounded (:data:`MAX_HEAD_LINES` lines, :data:`HEAD_LINE_LIMIT` bytes a line,
:data:`MAX_HEAD_BYTES` in all: ``431``), bodies by ``max_body`` (``413``); a chunked body is
refused (``411``). The SSE stream sends a comment every ``keepalive_s`` so a gone reader is
noticed; a reader that stops reading is dropped (``event: dropped``)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from saltline.client_sdk.daemon.hub import Hub, Subscriber
from saltline.client_sdk.daemon.methods import Peer
from saltline.client_sdk.daemon.rpc import Dispatcher, RpcError, encode

log = logging.getLogger("saltline.client_sdk.daemon")

MAX_HEAD_LINES = 64
#: Bytes of one line of a request head (the TCP reader's limit), and of the whole head.
HEAD_LINE_LIMIT = 8 << 10
MAX_HEAD_BYTES = 16 << 10
#: Seconds a client has to send its whole request head.
HEAD_TIMEOUT_S = 10.0
#: Digits of a Content-Length at most.
MAX_LENGTH_DIGITS = 10
#: Hosts every TCP request may name in ``Host`` (besides the address it is bound to).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
DEFAULT_MAX_BODY = 1 << 20
#: A reader that has not taken what was written after this long is cut off.
WRITE_TIMEOUT_S = 30.0
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def is_request_line(line: bytes) -> bool:
    """Whether ``line`` starts an HTTP/1.x request (the UNIX socket takes both protocols)."""
    parts = line.split()
    return len(parts) == 3 and parts[0].isalpha() and parts[0].isupper() and parts[2].startswith(b"HTTP/1.")


class HttpHandler:
    def __init__(
        self,
        hub: Hub,
        dispatcher: Dispatcher[Peer | None],
        *,
        token: str | None,
        max_body: int = DEFAULT_MAX_BODY,
        keepalive_s: float = 15.0,
        head_timeout: float = HEAD_TIMEOUT_S,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        """``allowed_hosts``: the ``Host`` values taken (lower case, without the port); None
        takes any (the UNIX socket)."""
        self.hub = hub
        self.dispatcher = dispatcher
        self.token = token
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self.head_timeout = head_timeout
        self.allowed_hosts = allowed_hosts

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first_line: bytes | None = None
    ) -> None:
        try:
            try:
                try:
                    method, target, headers = await asyncio.wait_for(
                        self._head(reader, first_line), self.head_timeout
                    )
                except TimeoutError:
                    raise HttpError(408, "the request head did not arrive in time") from None
                await self._route(method, target, headers, reader, writer)
            except HttpError as exc:
                await self._refuse(writer, exc)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                raise
            except Exception:  # a bug: answered 500, details in the log only
                log.exception("an HTTP request failed")
                await self._refuse(writer, HttpError(500, "internal error (see the daemon's log)"))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("http connection ended: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _refuse(self, writer: asyncio.StreamWriter, exc: HttpError) -> None:
        if writer.transport.is_closing():
            return
        body = encode({"error": str(exc)}).encode()
        await self._respond(writer, exc.status, body, headers=exc.headers)

    async def _head(
        self, reader: asyncio.StreamReader, first_line: bytes | None
    ) -> tuple[str, str, dict[str, str]]:
        try:
            line = first_line if first_line is not None else await reader.readline()
            budget = MAX_HEAD_BYTES - len(line)
            if len(line) > HEAD_LINE_LIMIT:
                raise HttpError(431, "request head too large")
            if not is_request_line(line):
                raise HttpError(400, "not an HTTP/1.x request")
            method, target, _ = line.decode("latin-1").split()
            headers: dict[str, str] = {}
            for _ in range(MAX_HEAD_LINES):
                raw = await reader.readline()
                budget -= len(raw)
                if len(raw) > HEAD_LINE_LIMIT or budget < 0:
                    raise HttpError(431, "request head too large")
                if raw in (b"\r\n", b"\n", b""):
                    return method, target, headers
                name, sep, value = raw.decode("latin-1").partition(":")
                if not sep:
                    raise HttpError(400, "malformed header line")
                headers[name.strip().lower()] = value.strip()
        except (ValueError, asyncio.LimitOverrunError) as exc:
            raise HttpError(431, "request head too large") from exc
        raise HttpError(431, f"more than {MAX_HEAD_LINES} header lines")

    def _check_host(self, headers: dict[str, str]) -> None:
        if self.allowed_hosts is None:
            return
        host = headers.get("host", "").strip().lower()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host not in self.allowed_hosts:
            raise HttpError(421, "this Host is not served (use 127.0.0.1, localhost or the bound address)")

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.token is None:
            return
        given = headers.get("authorization", "")
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(
                401, "a bearer token is required", {"WWW-Authenticate": 'Bearer realm="saltline"'}
            )

    async def _route(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._check_host(headers)
        url = urlsplit(target)
        if url.path not in ("/rpc", "/events"):
            raise HttpError(404, "not found")
        self._authorize(headers)
        if url.path == "/rpc":
            if method != "POST":
                raise HttpError(405, "use POST /rpc", {"Allow": "POST"})
            body = await self._body(reader, headers)
            answer = await self.dispatcher.handle_text(body, None)
            if answer is None:
                await self._respond(writer, 204, b"")
            else:
                await self._respond(writer, 200, answer.encode(), content_type="application/json")
            return
        if method != "GET":
            raise HttpError(405, "use GET /events", {"Allow": "GET"})
        names = parse_qs(url.query).get("profile")
        try:
            profiles = self.hub.check_profiles(names)
        except RpcError as exc:
            raise HttpError(404, exc.message) from exc
        try:
            sub = self.hub.subscribe(profiles)
        except RpcError as exc:
            raise HttpError(503, exc.message) from exc
        await self._events(sub, reader, writer)

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "transfer-encoding" in headers:
            raise HttpError(411, "send the body with a Content-Length (chunked bodies are not taken)")
        length_text = headers.get("content-length")
        if length_text is None:
            raise HttpError(411, "a Content-Length is required")
        if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > MAX_LENGTH_DIGITS:
            raise HttpError(400, "the Content-Length must be up to 10 ASCII digits")
        length = int(length_text)
        if length > self.max_body:
            raise HttpError(413, f"the body is over {self.max_body} bytes")
        return await reader.readexactly(length)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Connection: close"]
        if status != 204:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    # -- server-sent events --------------------------------------------------------------------------

    async def _events(
        self, sub: Subscriber, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            "Connection: close\r\nX-Accel-Buffering: no\r\n\r\n"
        )
        gone = asyncio.get_running_loop().create_task(reader.read(1))  # the reader hung up
        try:
            await self._write(writer, head + _sse("subscribed", {"subscription": sub.id}))
            while True:
                getter = asyncio.ensure_future(sub.get())
                done, _ = await asyncio.wait(
                    {getter, gone}, timeout=self.keepalive_s, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    if gone in done:
                        return
                    await self._write(writer, ": keepalive\n\n")
                    continue
                item = getter.result()
                if item.get("dropped"):
                    await self._write(writer, _sse("dropped", item))
                    return
                try:
                    text = _sse(None, {"subscription": sub.id, **item})
                except (TypeError, ValueError, RecursionError):  # one bad event: skip it
                    log.exception("cannot encode an event of subscription %d", sub.id)
                    continue
                await self._write(writer, text)
        except TimeoutError:
            writer.transport.abort()
        finally:
            gone.cancel()
            self.hub.unsubscribe(sub)

    async def _write(self, writer: asyncio.StreamWriter, text: str) -> None:
        if writer.transport.is_closing():
            raise ConnectionResetError("the reader is gone")
        writer.write(text.encode())
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


def _sse(event: str | None, data: dict[str, Any]) -> str:
    prefix = "" if event is None else f"event: {event}\n"
    return prefix + "data: " + json.dumps(data, ensure_ascii=True, separators=(",", ":")) + "\n\n"
