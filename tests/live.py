"""A real uvicorn server running the real app on a free 127.0.0.1 port, in a background thread
with its own event loop. Restartable on the same database (for restart tests).

The app's clock is injectable (``ManualClock``) so tests move time forward without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from saltline.server.app import create_app
from saltline.server.cli import uvicorn_options
from saltline.server.clock import system_clock
from saltline.server.context import AppContext
from saltline.server.settings import Settings
from tests.pg import free_port


@dataclass
class ManualClock:
    """Unix milliseconds that move only when told (starts at the real time)."""

    now_ms: int = field(default_factory=system_clock)

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class LiveServer:
    def __init__(self, settings: Settings, clock: Callable[[], int] = system_clock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = settings.port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.startup_error: BaseException | None = None

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    def start(self, timeout: float = 20.0) -> LiveServer:
        self.app = create_app(self.settings, clock=self.clock)
        options = uvicorn_options(self.settings) | {"host": "127.0.0.1", "port": self.port}
        config = uvicorn.Config(self.app, lifespan="on", **options)
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.serve())
            except BaseException as exc:  # SystemExit from a failed startup included
                self.startup_error = exc
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.startup_error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        self._server = None
        self._thread = None

    def restart(self) -> LiveServer:
        """Stop and start a new app instance on the same port and database."""
        self.stop()
        return self.start()

    def run_in_loop(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect AppContext state)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0, **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10.0, **kwargs)
