"""Fault-injection fixtures for the end-to-end tests (``tests/proxy.py``, ``tests/subprocess_server.py``).

- ``make_proxy(target_port)``: an async factory of started :class:`TcpProxy` (closed at teardown).
- ``make_mitm(upstream_ws_url)``: an async factory of started :class:`WsMitm` (closed at teardown).
- ``make_subprocess_server(**settings_overrides)``: the real server as a child process on
  ``db_url`` (so SQLite and PostgreSQL), migrated, started, with the test settings of
  ``tests/conftest.py``; killed at teardown.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_SETTINGS
from tests.e2e.hostile_world import World, make_world
from tests.live import LiveServer
from tests.proxy import TcpProxy, WsMitm
from tests.subprocess_server import SubprocessServer


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    proxies: list[TcpProxy] = []

    async def make(target_port: int) -> TcpProxy:
        proxy = await TcpProxy(target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
async def make_mitm() -> AsyncIterator[Callable[[str], Awaitable[WsMitm]]]:
    mitms: list[WsMitm] = []

    async def make(upstream_ws_url: str) -> WsMitm:
        mitm = await WsMitm(upstream_ws_url).start()
        mitms.append(mitm)
        return mitm

    yield make
    for mitm in mitms:
        await mitm.close()


@pytest.fixture
def make_subprocess_server(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., SubprocessServer]]:
    servers: list[SubprocessServer] = []

    def make(**overrides: object) -> SubprocessServer:
        data_dir = Path(os.fspath(tmp_path_factory.mktemp("server-proc")))
        settings = {**TEST_SETTINGS, **overrides}
        server = SubprocessServer(db_url, data_dir, settings)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
async def world(
    live_server: LiveServer, make_mitm: Callable[[str], Awaitable[WsMitm]]
) -> AsyncIterator[World]:
    """The attacker tests' world (``tests/e2e/hostile_world.py``)."""
    async for w in make_world(live_server, make_mitm):
        yield w
