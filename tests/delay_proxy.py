"""A TCP proxy that delays every byte by a fixed latency in each direction (order kept): a slow
or distant Redis for the tests of ``serve --workers N``. Runs its own event loop in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator


class DelayProxy:
    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, family=socket.AF_INET)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop
        # the proxied connections end with the proxy (their peers see them drop)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each chunk is written ``delay_s`` after it was read (a queue keeps the order)."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))  # the latency being simulated
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay_s, data))
        except OSError:
            pass
        finally:
            chunks.put_nowait((loop.time(), b""))
            with contextlib.suppress(OSError):
                await sender
            writer.close()

    def start(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


@contextlib.contextmanager
def delay_proxy(upstream_port: int, delay_s: float) -> Iterator[DelayProxy]:
    proxy = DelayProxy(upstream_port, delay_s).start()
    try:
        yield proxy
    finally:
        proxy.close()
