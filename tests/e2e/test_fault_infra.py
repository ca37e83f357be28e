"""Self-tests of the fault-injection infrastructure (``tests/proxy.py``,
``tests/subprocess_server.py``) against the real server, independent of the client SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from saltline.server.settings import Settings
from saltline.server.storage.migrate import upgrade
from tests.conftest import TEST_SETTINGS
from tests.live import LiveServer
from tests.proxy import TcpProxy, WsMitm
from tests.subprocess_server import SubprocessServer

pytestmark = pytest.mark.e2e
#: How long "nothing arrives" is watched for (proving an absence needs some time).
QUIET_S = 0.5


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> LiveServer:
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url, port=0, **TEST_SETTINGS)  # type: ignore[arg-type]
    upgrade(settings.database_url)
    server = LiveServer(settings).start()
    yield server  # type: ignore[misc]
    server.stop()


async def test_tcp_proxy_freezes_existing_connections_only(
    sqlite_server: LiveServer, make_proxy: Callable[[int], Awaitable[TcpProxy]]
) -> None:
    proxy = await make_proxy(sqlite_server.port)
    async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200  # a keep-alive connection
        await proxy.accepted.wait_for(1, 5)
        assert proxy.freeze() == 1
        with pytest.raises(httpx.TimeoutException):
            await http.get("/healthz", timeout=QUIET_S)  # the frozen connection: no answer, no close
    async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as fresh:
        assert (await fresh.get("/healthz")).status_code == 200  # a new connection flows


async def test_tcp_proxy_freeze_holds_a_websocket_open_and_drop_resets_it(
    sqlite_server: LiveServer, make_proxy: Callable[[int], Awaitable[TcpProxy]]
) -> None:
    proxy = await make_proxy(sqlite_server.port)
    async with connect(proxy.ws_url + "/v1/ws", ping_interval=None) as ws:
        await proxy.accepted.wait_for(1, 5)
        proxy.freeze()
        await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), QUIET_S)  # the server's 4003 close is not forwarded
        assert ws.close_code is None  # and the client still thinks the socket is open
        proxy.thaw()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    async with connect(proxy.ws_url + "/v1/ws", ping_interval=None) as ws:
        await proxy.accepted.wait_for(2, 5)
        assert proxy.drop_all() == 1
        with pytest.raises(ConnectionClosed) as dropped:
            await asyncio.wait_for(ws.recv(), 5)
        assert dropped.value.rcvd is None  # no close frame: a network failure


async def test_ws_mitm_relays_and_injects(
    sqlite_server: LiveServer, make_mitm: Callable[[str], Awaitable[WsMitm]]
) -> None:
    mitm = await make_mitm(sqlite_server.ws_url)
    async with connect(mitm.ws_url + "/v1/ws", ping_interval=None) as ws:
        await mitm.accepted.wait_for(1, 5)
        await mitm.inject("this is not JSON")
        await mitm.inject({"type": "mystery"})
        assert await asyncio.wait_for(ws.recv(), 5) == "this is not JSON"
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "mystery"}
        await ws.send(json.dumps({"type": "auth", "token": "not-a-token"}))  # relayed: refused
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    assert mitm.to_server == [{"type": "auth", "token": "not-a-token"}]


def test_ws_mitm_renumbers_queue_positions_around_injected_frames() -> None:
    mitm = WsMitm("ws://127.0.0.1:1")
    assert mitm._rewrite_down(json.dumps({"type": "envelope", "queue_seq": 3})) == json.dumps(
        {"type": "envelope", "queue_seq": 3}
    )
    # two frames injected after real position 3 take client positions 4 and 5
    mitm._points = [3, 3]
    assert [mitm._to_client(s) for s in (1, 2, 3, 4, 5)] == [1, 2, 3, 6, 7]
    assert [mitm._to_server(c) for c in (3, 4, 5, 6, 7)] == [3, 3, 3, 4, 5]
    down = json.loads(mitm._rewrite_down(json.dumps({"type": "envelope", "queue_seq": 4})))
    assert down["queue_seq"] == 6
    up = json.loads(mitm._rewrite_up(json.dumps({"type": "ack", "queue_seq": 5})))
    assert up["queue_seq"] == 3  # an ack of an injected frame acknowledges nothing new


async def test_ws_mitm_inject_takes_the_next_queue_position() -> None:
    mitm = WsMitm("ws://127.0.0.1:1")
    mitm._rewrite_down(json.dumps({"type": "drained", "queue_seq": 7}))

    class Sink:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, text: str) -> None:
            self.sent.append(text)

    sink = Sink()
    mitm._clients.append(sink)  # type: ignore[arg-type]
    assert await mitm.inject({"type": "envelope"}, take_queue_seq=True) == 8
    assert await mitm.inject({"type": "envelope"}, take_queue_seq=True) == 9
    assert json.loads(mitm._rewrite_down(json.dumps({"type": "envelope", "queue_seq": 8})))["queue_seq"] == 10
    assert json.loads(sink.sent[0])["queue_seq"] == 8


async def test_subprocess_server_sigkill_and_restart_on_the_same_port(
    make_subprocess_server: Callable[..., SubprocessServer],
) -> None:
    server = make_subprocess_server()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
        first_pid = server.pid
        server.kill()
        assert not server.running and server.proc is not None and server.proc.returncode == -9
        with pytest.raises(httpx.TransportError):
            await http.get("/healthz")
        await server.astart()
        assert server.pid != first_pid
        assert (await http.get("/healthz")).status_code == 200
