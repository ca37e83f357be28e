"""Network faults between a client and a real server, on 127.0.0.1 only, in the test's event loop.

- :class:`TcpProxy`: a byte-level TCP proxy. :meth:`TcpProxy.freeze` stops forwarding on every
  connection open now, in both directions, without closing either socket (a half-open connection:
  neither end hears of it); connections accepted later forward normally. :meth:`TcpProxy.drop_all`
  resets every connection (both sides see the connection die, no close frame).
- :class:`WsMitm`: a WebSocket-level man in the middle in front of the server's ``/v1/ws``. It
  relays every frame both ways, records the server's frames, and :meth:`WsMitm.inject` sends a
  frame of its own to the client. An injected frame may take a queue position
  (``take_queue_seq=True``): the relay then renumbers every later ``queue_seq`` the client sees
  (and maps the client's acks back), exactly as if the server had queued one more entry, so an
  injected frame never collides with a real one however the client de-duplicates.

Both count accepted connections and let a test wait for the ``n``-th one (never a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

HOST = "127.0.0.1"


class _Counter:
    """A monotonically increasing count that coroutines can wait on."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.value += 1
            self._changed.notify_all()

    async def wait_for(self, n: int, wait_s: float) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.value >= n)

        await asyncio.wait_for(wait(), wait_s)


class _Pipe:
    """One proxied connection: two pumps, a freeze switch, and both transports."""

    def __init__(self, client_w: asyncio.StreamWriter, server_w: asyncio.StreamWriter) -> None:
        self.client_w = client_w
        self.server_w = server_w
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []
        self.frozen = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self.flowing.wait()  # read during a freeze: held, never forwarded meanwhile
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # end of one direction (EOF or error): abort both sides, as a plain relay would
            self.abort()

    def abort(self) -> None:
        for w in (self.client_w, self.server_w):
            with contextlib.suppress(Exception):
                w.transport.abort()


class TcpProxy:
    """``TcpProxy(target_port)``; ``await proxy.start()``; point the client at ``proxy.port``."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self.accepted = _Counter()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def retarget(self, port: int) -> None:
        """Forward connections accepted from now on to ``port`` (e.g. a restarted server)."""
        self.target_port = port

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        pipe = _Pipe(client_w, server_w)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(pipe.pump(client_r, server_w)),
            asyncio.create_task(pipe.pump(server_r, client_w)),
        ]
        await self.accepted.bump()
        try:
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            self._pipes.discard(pipe)

    @property
    def open_connections(self) -> int:
        return sum(1 for p in self._pipes if not p.frozen)

    def freeze(self) -> int:
        """Stop forwarding on every connection open now, both ways, keeping the sockets open.
        New connections forward normally. Returns how many connections were frozen."""
        count = 0
        for pipe in self._pipes:
            if not pipe.frozen:
                pipe.frozen = True
                pipe.flowing.clear()
                count += 1
        return count

    def thaw(self) -> None:
        """Forward again on the frozen connections (whatever was held is delivered late)."""
        for pipe in self._pipes:
            pipe.frozen = False
            pipe.flowing.set()

    def drop_all(self) -> int:
        """Reset every connection open now (frozen ones included). Returns how many."""
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.abort()
            pipe.flowing.set()  # let frozen pumps notice
        return len(pipes)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.abort()
            pipe.flowing.set()
        tasks = [t for p in list(self._pipes) for t in p.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None


# -- WebSocket man in the middle ------------------------------------------------------------------

#: Server -> client frame fields that carry a delivery-queue position.
_QUEUE_FIELDS = {
    "ready": ("acked_queue_seq",),
    "envelope": ("queue_seq",),
    "gap": ("from_queue_seq", "to_queue_seq"),
    "drained": ("queue_seq",),
    "ping": ("queue_seq",),
}


class WsMitm:
    """A ``websockets`` server that relays to ``upstream`` (``ws://host:port``, the real server;
    every connection goes to its ``/v1/ws``). Point the client at :attr:`ws_url`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/") + "/v1/ws"
        self.port = 0
        self._server: Server | None = None
        self._clients: list[ServerConnection] = []
        self.accepted = _Counter()
        #: every frame the server sent (parsed when JSON), in order, across connections
        self.from_server: list[Any] = []
        self.to_server: list[Any] = []
        self.injected: list[str] = []
        #: rules for the server's JSON frames, applied in order before the client sees them: each
        #: returns the frame (changed or not), or None to drop it (a malicious server)
        self.down_rules: list[Callable[[dict[str, Any]], dict[str, Any] | None]] = []
        #: real queue positions after which an injected frame took a position (sorted)
        self._points: list[int] = []
        self._last_real_seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> WsMitm:
        self._server = await serve(self._handle, HOST, 0, max_size=None, ping_interval=None, compression=None)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    # queue positions: real (server) <-> as the client sees them

    def _to_client(self, seq: int) -> int:
        return seq + sum(1 for p in self._points if p < seq)

    def _to_server(self, seq: int) -> int:
        real = seq
        while real > 0 and self._to_client(real) > seq:
            real -= 1
        return real

    def _rewrite_down(self, raw: str | bytes) -> str | bytes | None:
        try:
            frame = json.loads(raw)
        except ValueError:
            self.from_server.append(raw)
            return raw
        if not isinstance(frame, dict):
            self.from_server.append(frame)
            return raw
        self.from_server.append(dict(frame))  # as the server sent it (positions not renumbered)
        fields = _QUEUE_FIELDS.get(str(frame.get("type")), ())
        changed = False
        for rule in self.down_rules:
            ruled = rule(dict(frame))
            if ruled is None:
                for name in fields:  # a dropped frame still moves the real queue position
                    value = frame.get(name)
                    if isinstance(value, int) and not isinstance(value, bool):
                        self._last_real_seq = max(self._last_real_seq, value)
                return None
            if ruled != frame:
                frame, changed = ruled, True
        for name in fields:
            value = frame.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                self._last_real_seq = max(self._last_real_seq, value)
                if self._points:
                    frame[name] = self._to_client(value)
                    changed = True
        return json.dumps(frame) if changed else raw

    def _rewrite_up(self, raw: str | bytes) -> str | bytes:
        try:
            frame = json.loads(raw)
        except ValueError:
            return raw
        self.to_server.append(frame)
        if (
            self._points
            and isinstance(frame, dict)
            and frame.get("type") == "ack"
            and isinstance(frame.get("queue_seq"), int)
        ):
            frame["queue_seq"] = self._to_server(frame["queue_seq"])
            return json.dumps(frame)
        return raw

    async def _handle(self, client: ServerConnection) -> None:
        try:
            upstream = await ws_connect(self.upstream, max_size=None, ping_interval=None, compression=None)
        except (OSError, ConnectionClosed):
            await client.close(1011, "upstream unavailable")
            return
        self._clients.append(client)
        await self.accepted.bump()

        async def down() -> None:
            async for raw in upstream:
                out = self._rewrite_down(raw)
                if out is not None:
                    await client.send(out)

        async def up() -> None:
            async for raw in client:
                await upstream.send(self._rewrite_up(raw))

        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code = upstream.close_code or 1000
            await upstream.close()
            with contextlib.suppress(Exception):
                await client.close(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1000)
            if client in self._clients:
                self._clients.remove(client)

    @property
    def connected(self) -> bool:
        return bool(self._clients)

    def envelopes(self) -> list[dict[str, Any]]:
        """The real ``envelope`` frames the server sent so far."""
        return [f for f in self.from_server if isinstance(f, dict) and f.get("type") == "envelope"]

    async def inject(self, frame: str | dict[str, Any], *, take_queue_seq: bool = False) -> int | None:
        """Send ``frame`` (raw text, or a dict dumped as JSON) to the newest client connection.
        ``take_queue_seq``: the dict gets ``queue_seq`` = the next position, as if the server had
        queued it (later positions shift by one). Returns that position."""
        if not self._clients:
            raise RuntimeError("no client is connected to the man in the middle")
        seq: int | None = None
        if take_queue_seq:
            assert isinstance(frame, dict)
            point = self._last_real_seq
            self._points.append(point)
            self._points.sort()
            seq = self._to_client(point) + self._points.count(point)
            frame = {**frame, "queue_seq": seq}
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.injected.append(text)
        await self._clients[-1].send(text)
        return seq

    async def drop_all(self) -> None:
        """Close every client connection abruptly (as a network failure)."""
        for client in list(self._clients):
            client.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
