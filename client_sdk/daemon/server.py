"""Running the daemon: the transports around one :class:`Hub`, the UNIX socket's and the token
file's permissions, and shutdown on SIGINT/SIGTERM (or the end of stdin with ``--stdio``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from saltline.client_sdk.daemon.http import (
    DEFAULT_MAX_BODY,
    HEAD_LINE_LIMIT,
    HEAD_TIMEOUT_S,
    LOOPBACK_HOSTS,
    WRITE_TIMEOUT_S,
    HttpHandler,
    is_request_line,
)
from saltline.client_sdk.daemon.hub import Hub
from saltline.client_sdk.daemon.methods import build_methods
from saltline.client_sdk.daemon.rpc import INVALID_REQUEST, SALTLINE_ERROR, Dispatcher, encode, response_error
from saltline.client_sdk.daemon.stream import StreamConnection, Write, read_line
from saltline.client_sdk.errors import UsageError

log = logging.getLogger("saltline.client_sdk.daemon")

#: Connections (UNIX socket and TCP together) served at once; more are refused.
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Options:
    stdio: bool = False
    socket_path: Path | None = None
    http: tuple[str, int] | None = None
    token_file: Path | None = None
    max_body: int = DEFAULT_MAX_BODY
    head_timeout: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


def parse_http(address: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host 127.0.0.1); ``[::1]:PORT`` for IPv6."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--http takes HOST:PORT, not {address!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/saltline/daemon.sock`` (a per-user directory only its user may
    enter), else ``~/.saltline/daemon.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "saltline" / "daemon.sock"
    return Path.home() / ".saltline" / "daemon.sock"


def private_directory(directory: Path) -> Path:
    """``directory`` created 0700 when missing; refused (:class:`UsageError`) when it is a
    symbolic link, not yours with mode 0700, or when an ancestor of its real path could let
    someone else replace it (OpenSSH's StrictModes: every ancestor belongs to root or you and is
    not writable by group or others unless sticky). Returns its real path, to be used from then on."""
    directory = Path(os.path.abspath(directory))
    if not os.path.lexists(directory):
        directory.mkdir(mode=0o700, parents=True)
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{directory} must be a directory, not a symbolic link or a file")
    real = Path(os.path.realpath(directory))
    info = os.lstat(real)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageError(f"the directory {real} must belong to you with mode 0700 (only you may enter it)")
    for ancestor in real.parents:
        a = os.lstat(ancestor)
        if a.st_uid not in (0, os.getuid()):
            raise UsageError(f"{ancestor} belongs to someone else: they could replace {real}")
        if a.st_mode & 0o022 and not a.st_mode & stat.S_ISVTX:
            raise UsageError(f"{ancestor} is writable by others (and not sticky): they could replace {real}")
    return real


def write_token(path: Path) -> tuple[Path, str]:
    """A new random token in ``path`` (mode 0600, in a directory :func:`private_directory`
    accepts); returns the real path written and the token."""
    path = private_directory(path.parent) / path.name
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)
    return path, token


def remove_token(path: Path, token: str) -> None:
    """Remove the token file if it still holds this run's token."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == token:
            path.unlink()


def prepare_socket_path(path: Path) -> Path:
    """The real path to bind: the socket's directory checked by :func:`private_directory`; a
    stale socket removed, or refused when a daemon still listens on it."""
    path = private_directory(path.parent) / path.name
    if os.path.lexists(path):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: a daemon that did not clean up
        else:
            raise UsageError(f"a daemon is already listening on {path}")
        finally:
            probe.close()
    return path


class Daemon:
    def __init__(self, hub: Hub, options: Options) -> None:
        self.hub = hub
        self.options = options
        self.stream_dispatcher = Dispatcher(build_methods(hub, notifications=True))
        self.http_dispatcher = Dispatcher(build_methods(hub, notifications=False))
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self.http_address: tuple[str, int] | None = None
        self.socket_path: Path | None = None  # the real path bound
        self.token_path: Path | None = None
        self._token: str | None = None
        self.connections = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._line_limit = options.max_body + 1024  # a JSON line: a body and its framing
        #: Set once every transport listens (tests and embedders wait on it).
        self.ready = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _http_handler(self, token: str | None, hosts: frozenset[str] | None = None) -> HttpHandler:
        return HttpHandler(
            self.hub,
            self.http_dispatcher,
            token=token,
            max_body=self.options.max_body,
            head_timeout=self.options.head_timeout,
            allowed_hosts=hosts,
        )

    def _admit(self, writer: asyncio.StreamWriter, refusal: bytes) -> bool:
        """Whether another connection may be served; past the cap it is answered ``refusal``
        and closed."""
        if self.connections >= self.options.max_connections:
            log.warning("refused a connection: %d are being served", self.connections)
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(refusal)
            writer.close()
            return False
        self.connections += 1
        self._open.add(writer)
        return True

    def _release(self, writer: asyncio.StreamWriter) -> None:
        self.connections -= 1
        self._open.discard(writer)

    async def _on_socket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        busy = response_error(None, SALTLINE_ERROR, "too many connections", {"code": "busy", "type": "Busy"})
        if not self._admit(writer, encode(busy).encode() + b"\n"):
            return
        try:
            await self._serve_socket(reader, writer)
        finally:
            self._release(writer)

    async def _serve_socket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A UNIX socket connection: HTTP when it starts with a request line, else JSON lines."""
        try:
            first = await asyncio.wait_for(read_line(reader, self._line_limit), self.options.head_timeout)
        except (ValueError, asyncio.LimitOverrunError):
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                too_long = response_error(None, INVALID_REQUEST, "invalid request: line too long")
                await _stream_write(writer)(encode(too_long).encode() + b"\n")
            writer.close()
            return
        except (ConnectionError, TimeoutError):
            writer.close()
            return
        if is_request_line(first):  # its head is held to the HTTP bounds (a line over them: 431)
            await self._http_handler(None).handle(reader, writer, first)
            return
        conn = StreamConnection(
            self.hub, self.stream_dispatcher, _stream_write(writer), max_line=self._line_limit
        )
        try:
            await conn.serve(reader, first or None)
        finally:
            writer.close()

    async def _on_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str, hosts: frozenset[str]
    ) -> None:
        if not self._admit(writer, _BUSY_HTTP):
            return
        try:
            await self._http_handler(token, hosts).handle(reader, writer)
        finally:
            self._release(writer)

    async def run(self) -> None:
        """Serve until stopped (a signal, or the end of stdin with ``--stdio``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        limit = self.options.max_body + 1024
        o = self.options
        try:
            await self._listen()
            await self.hub.start()
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stop.wait())]
            if o.stdio:
                waits.append(asyncio.ensure_future(self._stdio(limit)))
            print("saltline daemon: ready", file=sys.stderr, flush=True)
            self.ready.set()
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            for w in done:
                w.result()  # an error of the stdio transport ends the daemon with it
        finally:
            for server in self._servers:
                server.close()
            for writer in list(self._open):  # their handlers end at the close
                writer.transport.abort()
            await self.hub.stop()
            if self.socket_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.socket_path.unlink()
            if self.token_path is not None and self._token is not None:
                remove_token(self.token_path, self._token)

    async def _listen(self) -> None:
        o = self.options
        try:
            if o.socket_path is not None:
                path = prepare_socket_path(o.socket_path)
                old = os.umask(0o177)  # the socket is created 0600
                try:
                    # the reader's limit keeps an HTTP head's lines to 8 KiB; JSON lines are
                    # read past it up to --max-body (read_line)
                    server = await asyncio.start_unix_server(
                        self._on_socket, str(path), limit=HEAD_LINE_LIMIT
                    )
                finally:
                    os.umask(old)
                self.socket_path = path
                self._servers.append(server)
                log.warning("listening on unix socket %s", path)
            if o.http is not None:
                host, port = o.http
                if not is_loopback(host):
                    log.warning(
                        "--http %s is not a loopback address: anyone who can reach it and has "
                        "the token controls these profiles",
                        host,
                    )
                assert o.token_file is not None
                self.token_path, token = write_token(o.token_file)
                self._token = token
                bound = host.lower()
                hosts = LOOPBACK_HOSTS | {bound, f"[{bound}]"}
                server = await asyncio.start_server(
                    lambda r, w: self._on_tcp(r, w, token, hosts), host, port, limit=HEAD_LINE_LIMIT
                )
                self._servers.append(server)
                sockname = server.sockets[0].getsockname()
                self.http_address = (str(sockname[0]), int(sockname[1]))
                log.warning(
                    "listening on http://%s:%d (bearer token in %s)", *self.http_address, self.token_path
                )
        except OSError as exc:
            raise UsageError(f"cannot listen: {exc}") from exc

    async def _stdio(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit)
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        except ValueError as exc:
            raise UsageError(f"--stdio needs stdin and stdout to be pipes or a terminal ({exc})") from exc
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        conn = StreamConnection(self.hub, self.stream_dispatcher, _stream_write(writer))
        await conn.serve(reader)


_BUSY_HTTP = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b'Content-Length: 32\r\n\r\n{"error":"too many connections"}'
)


def _stream_write(writer: asyncio.StreamWriter) -> Write:
    """Write and wait for the peer to take it; a peer that takes nothing for
    :data:`WRITE_TIMEOUT_S` is cut off (its subscriptions end, memory stays bounded). Nothing
    is written to a connection that is closing (it raises :class:`ConnectionResetError`)."""

    async def write(data: bytes) -> None:
        if writer.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except TimeoutError:
            writer.transport.abort()
            raise ConnectionResetError("the peer stopped reading") from None

    return write
