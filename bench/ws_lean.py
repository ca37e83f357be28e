"""A lean WebSocket client for the reconnect storm (bench/reconnect.py): one asyncio ``Protocol``
per socket, the RFC 6455 handshake and frames written by hand, no per-socket tasks.

Why: the ``websockets`` client costs the load generator about as much CPU per opened socket as
the server spends (handshake object model, a reader task, a keepalive task, the close handshake),
and the load generator shares the machine's two cores with the server, so with it the storm
measured the client more than the server. This one does what a device does at a reconnect and
nothing else: TCP connect, upgrade request, check ``Sec-WebSocket-Accept``, send the auth frame
(masked, as a client must), read text frames until the one that ends the resume (``drained``,
or ``ready`` for the bare endpoint), answer a ``ping`` frame with ``pong``, then hold the socket
until :meth:`LeanSocket.close`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = base64.b64encode(b"saltline-bench!!")
_ACCEPT = base64.b64encode(hashlib.sha1(_KEY + _GUID).digest())


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


_PONG = _frame(0x1, b'{"type":"pong"}')
_CLOSE = _frame(0x8, struct.pack("!H", 1000))


class LeanSocket(asyncio.Protocol):
    """One device's socket: ``done`` resolves when the frame naming ``until`` arrives (or fails
    with the reason the socket did not get there)."""

    def __init__(self, host: str, path: str, auth_frame: bytes, until: bytes) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._auth = _frame(0x1, auth_frame)
        self._until = b'"type":"' + until + b'"'
        self._buf = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)  # type: ignore[union-attr]

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head, buf = buf[:end], buf[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101") or _ACCEPT not in head:
                self._fail("handshake refused: " + head.split(b"\r\n", 1)[0].decode("latin-1"))
                return
            self._upgraded = True
            assert self.transport is not None
            self.transport.write(self._auth)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + n:
                break
            payload, buf = buf[at : at + n], buf[at + n :]
            opcode = b0 & 0x0F
            if opcode == 0x8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                self._fail(f"closed by the server: {code} {payload[2:].decode('utf-8', 'replace')}")
                return
            if opcode == 0x1:
                if self._until in payload:
                    if not self.done.done():
                        self.done.set_result(None)
                elif b'"type":"ping"' in payload:
                    assert self.transport is not None
                    self.transport.write(_PONG)
        self._buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        """A close frame, then the TCP close (the server's close frame is not waited for)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_CLOSE)
            self.transport.close()


async def open_socket(
    host: str, port: int, path: str, auth_frame: bytes, until: bytes, timeout_s: float
) -> LeanSocket:
    """Connect and wait for the ``until`` frame; the socket stays open (close it)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: LeanSocket(f"{host}:{port}", path, auth_frame, until), host, port),
        timeout_s,
    )
    try:
        await asyncio.wait_for(asyncio.shield(proto.done), timeout_s)
    except BaseException:
        proto.close()
        raise
    return proto
