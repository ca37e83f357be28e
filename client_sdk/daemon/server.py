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

from saltline.client_sdk.daemon.http import DEFAULT_MAX_BODY, WRITE_TIMEOUT_S, HttpHandler, is_request_line
from saltline.client_sdk.daemon.hub import Hub
from saltline.client_sdk.daemon.methods import build_methods
from saltline.client_sdk.daemon.rpc import INVALID_REQUEST, Dispatcher, encode, response_error
from saltline.client_sdk.daemon.stream import StreamConnection, Write
from saltline.client_sdk.errors import UsageError

log = logging.getLogger("saltline.client_sdk.daemon")


@dataclass(frozen=True)
class Options:
    stdio: bool = False
    socket_path: Path | None = None
    http: tuple[str, int] | None = None
    token_file: Path | None = None
    max_body: int = DEFAULT_MAX_BODY


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


def write_token(path: Path) -> str:
    """A new random token in ``path`` (mode 0600, its directory created 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)
    return token


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory 0700, or refuse one others may enter; remove a stale
    socket, or refuse when a daemon still listens on it."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UsageError(
            f"the socket's directory {directory} must belong to you with mode 0700 (only you may enter it)"
        )
    if path.exists() or path.is_symlink():
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


class Daemon:
    def __init__(self, hub: Hub, options: Options) -> None:
        self.hub = hub
        self.options = options
        self.stream_dispatcher = Dispatcher(build_methods(hub, notifications=True))
        self.http_dispatcher = Dispatcher(build_methods(hub, notifications=False))
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self.http_address: tuple[str, int] | None = None

    def stop(self) -> None:
        self._stop.set()

    def _http_handler(self, token: str | None) -> HttpHandler:
        return HttpHandler(self.hub, self.http_dispatcher, token=token, max_body=self.options.max_body)

    async def _on_socket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A UNIX socket connection: HTTP when it starts with a request line, else JSON lines."""
        try:
            first = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                too_long = response_error(None, INVALID_REQUEST, "invalid request: line too long")
                await _stream_write(writer)(encode(too_long).encode() + b"\n")
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        if is_request_line(first):
            await self._http_handler(None).handle(reader, writer, first)
            return
        conn = StreamConnection(self.hub, self.stream_dispatcher, _stream_write(writer))
        try:
            await conn.serve(reader, first or None)
        finally:
            writer.close()

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str) -> None:
        await self._http_handler(token).handle(reader, writer)

    async def run(self) -> None:
        """Serve until stopped (a signal, or the end of stdin with ``--stdio``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        limit = self.options.max_body + 1024
        o = self.options
        try:
            await self._listen(limit)
            await self.hub.start()
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stop.wait())]
            if o.stdio:
                waits.append(asyncio.ensure_future(self._stdio(limit)))
            print("saltline daemon: ready", file=sys.stderr, flush=True)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            for w in done:
                w.result()  # an error of the stdio transport ends the daemon with it
        finally:
            for server in self._servers:
                server.close()
            await self.hub.stop()
            if o.socket_path is not None and self._servers:
                with contextlib.suppress(FileNotFoundError):
                    o.socket_path.unlink()

    async def _listen(self, limit: int) -> None:
        o = self.options
        try:
            if o.socket_path is not None:
                prepare_socket_path(o.socket_path)
                old = os.umask(0o177)
                try:
                    server = await asyncio.start_unix_server(self._on_socket, str(o.socket_path), limit=limit)
                finally:
                    os.umask(old)
                os.chmod(o.socket_path, 0o600)
                self._servers.append(server)
                log.warning("listening on unix socket %s", o.socket_path)
            if o.http is not None:
                host, port = o.http
                if not is_loopback(host):
                    log.warning(
                        "--http %s is not a loopback address: anyone who can reach it and has "
                        "the token controls these profiles",
                        host,
                    )
                assert o.token_file is not None
                token = write_token(o.token_file)
                server = await asyncio.start_server(
                    lambda r, w: self._on_tcp(r, w, token), host, port, limit=64 * 1024
                )
                self._servers.append(server)
                sockname = server.sockets[0].getsockname()
                self.http_address = (str(sockname[0]), int(sockname[1]))
                log.warning(
                    "listening on http://%s:%d (bearer token in %s)", *self.http_address, o.token_file
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


def _stream_write(writer: asyncio.StreamWriter) -> Write:
    """Write and wait for the peer to take it; a peer that takes nothing for
    :data:`WRITE_TIMEOUT_S` is cut off (its subscriptions end, memory stays bounded)."""

    async def write(data: bytes) -> None:
        writer.write(data)
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except TimeoutError:
            writer.transport.abort()
            raise ConnectionResetError("the peer stopped reading") from None

    return write
