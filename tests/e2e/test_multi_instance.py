"""Two server instances on one PostgreSQL database and one Redis, behind nginx running the
documented ``deploy/nginx.conf`` (TLS included).

Instance 1 runs in this process (``LiveServer``: its bus can be wrapped); instance 2 is a real
``python -m saltline.server serve`` subprocess, so it can be killed abruptly (SIGKILL) mid-stream. Waits are
on frames with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from saltline.server.settings import Settings
from saltline.server.storage.migrate import upgrade
from tests.conftest import TEST_SETTINGS
from tests.live import LiveServer
from tests.nginx_fixture import Nginx
from tests.pg import PgCluster, free_port
from tests.redis_fixture import RedisServer
from tests.server.delivery_support import WsClient, create_conversation, envelope_body
from tests.server.helpers import Account, Device, add_device, register

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: Short, so a lost wake-up is visible quickly; the clients below answer every ping.
HEARTBEAT_S = 2.0
WAIT = 15.0
REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``python -m saltline.server serve`` in a subprocess, configured only through SALTLINE_* variables
    (as docs/deploy.md does it)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.env = {**os.environ, **env, "SALTLINE_PORT": str(port), "SALTLINE_HOST": "127.0.0.1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "saltline.server", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server process did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """Abruptly: no close frames, no cleanup, like a crashed machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    one: LiveServer
    two: ServerProcess
    nginx: Nginx

    def client(self, base_url: str) -> httpx.Client:
        return httpx.Client(base_url=base_url, timeout=10.0)


@pytest.fixture
def cluster(
    pg_cluster: PgCluster, redis_server: RedisServer, start_nginx_for: Any, tmp_path: Path
) -> Iterator[Cluster]:
    db_url = pg_cluster.create_database()
    upgrade(db_url)  # once, before any instance starts (docs/deploy.md)
    shared = {
        **TEST_SETTINGS,
        "database_url": db_url,
        "redis_url": redis_server.url,
        "heartbeat_interval_s": HEARTBEAT_S,
    }
    one = LiveServer(Settings(data_dir=tmp_path / "one", port=0, **shared))  # type: ignore[arg-type]
    env = {f"SALTLINE_{k.upper()}": str(v) for k, v in shared.items()}
    env["SALTLINE_DATA_DIR"] = str(tmp_path / "two")
    two = ServerProcess(env, free_port(), tmp_path / "two.log")
    one.start()
    try:
        two.start()
        try:
            yield Cluster(one, two, start_nginx_for([one.port, two.port]))
        finally:
            two.stop()
    finally:
        one.stop()


def _setup(c: httpx.Client) -> tuple[Account, Account, Device, str]:
    alice, bob = register(c), register(c)
    bob2 = add_device(c, bob)
    return alice, bob, bob2, create_conversation(c, alice, bob)


async def _ws(url: str, device: Device, nginx: Nginx | None = None) -> WsClient:
    ssl = nginx.ssl_context() if nginx is not None else None
    conn = await connect(url + "/v1/ws", ping_interval=None, open_timeout=WAIT, ssl=ssl)
    ws = WsClient(conn, device)
    await ws.send({"type": "auth", "token": device.access_token})
    ws.ready = await ws.expect("ready")
    return ws


async def _send_all(
    base_url: str, sender: Device, accounts: Iterable[Account], cid: str, n: int, tag: str
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as c:
        out = []
        for i in range(n):
            body = envelope_body(sender, accounts, f"{tag}{i}".encode())
            r = await c.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=sender.headers)
            assert r.status_code == 201, r.text
            out.append({"envelope_id": body["envelope_id"], **r.json()})
        return out


async def test_delivery_across_instances_and_failover_through_nginx(cluster: Cluster) -> None:
    with cluster.client(cluster.one.base_url) as c1:
        alice, bob, bob2, cid = _setup(c1)
    devices = [bob.first, bob2]
    # The receiver's two devices hold their sockets on instance 2; the sender uses instance 1.
    sockets = {d.id: await _ws(cluster.two.ws_url, d) for d in devices}
    for ws in sockets.values():
        assert await ws.envelopes_until_drained() == []

    # Across instances: woken through Redis, well before a heartbeat tick would find it.
    for i in range(3):
        started = time.monotonic()
        [hello] = await _send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 1, f"hello{i}-")
        for ws in sockets.values():
            frame = await ws.expect("envelope")
            assert frame["envelope_id"] == hello["envelope_id"]
            assert ws.plaintext(frame) == f"hello{i}-0".encode()
            await ws.ack(frame["queue_seq"])
            assert (await ws.expect("drained"))["queue_seq"] == frame["queue_seq"]
        assert time.monotonic() - started < HEARTBEAT_S / 2

    # Mid-stream. An ack only *sent* may rightly die with the instance before its commit (spec
    # delivery.md § 5.4 rule 3): only acks seen committed count as acknowledged. So each device first
    # acknowledges 8 envelopes and waits for the `drained` frame that reports them committed
    # (§ 5.5); then 12 more are sent and instance 2 dies while 4 of them are in flight, unacknowledged,
    # and the rest are still being sent.
    received: dict[str, list[str]] = {d.id: [] for d in devices}
    acked: dict[str, set[str]] = {}
    committed: dict[str, int] = {}
    sent = await _send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 8, "a")
    for ws in sockets.values():
        ids, committed[ws.device.id] = await _ack_until_committed(ws, 8)
        assert set(ids) == {s["envelope_id"] for s in sent}
        received[ws.device.id] += ids
        acked[ws.device.id] = set(ids)
    more = asyncio.ensure_future(_send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 12, "c"))

    async def read_until_killed(ws: WsClient) -> None:
        """Reads and never acknowledges; signals once 4 envelopes are in flight."""
        while True:
            try:
                frame = await ws.recv(WAIT)
            except ConnectionClosed:
                return
            if frame["type"] == "ping":
                await ws.send({"type": "pong"})
            elif frame["type"] == "envelope":
                received[ws.device.id].append(frame["envelope_id"])
                if len(received[ws.device.id]) == 8 + 4:
                    in_flight[ws.device.id].set()

    in_flight = {d.id: asyncio.Event() for d in devices}
    readers = [asyncio.ensure_future(read_until_killed(ws)) for ws in sockets.values()]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in in_flight.values())), WAIT)
    await asyncio.to_thread(cluster.two.kill)  # unacked envelopes are in flight
    await asyncio.wait_for(asyncio.gather(*readers), WAIT)
    sent += await asyncio.wait_for(more, WAIT)
    # ... and the sender goes on while the devices are away.
    sent += await _send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 10, "b")
    sent_ids = {s["envelope_id"] for s in sent}
    assert len(sent_ids) == 30

    # The devices reconnect through nginx, which skips the dead instance.
    for device in devices:
        before_kill = Counter(received[device.id])
        ws = await _ws(cluster.nginx.ws_url, device, cluster.nginx)
        # The committed acknowledgement survived the kill, and nothing beyond it was committed.
        assert ws.ready["acked_queue_seq"] == committed[device.id]
        while not sent_ids <= set(received[device.id]):
            for frame in await ws.envelopes_until_drained():
                assert frame["queue_seq"] > committed[device.id]
                received[device.id].append(frame["envelope_id"])
        await ws.close()
        got = Counter(received[device.id])
        assert set(got) == sent_ids, "every sent message is received"
        dupes = {eid for eid, n in got.items() if n > 1}
        assert not dupes & acked[device.id], "nothing acknowledged (and seen committed) is delivered again"
        # At least once: what was in flight unacknowledged comes again, exactly once more.
        assert dupes == set(before_kill) - acked[device.id]
        assert max(got.values()) == 2


async def _ack_until_committed(ws: WsClient, n: int) -> tuple[list[str], int]:
    """Receive ``n`` envelopes, acknowledging each, and wait until the server reports the last ack
    committed: a ``drained`` frame carrying its ``queue_seq`` (the server sends it after the ack's
    commit, once nothing sent is unacknowledged). An earlier ``drained`` (sent before the rest of
    the envelopes reached this instance) is skipped. The envelope ids and the committed watermark."""
    ids: list[str] = []
    last = -1
    while True:
        frame = await ws.recv(WAIT)
        if frame["type"] == "ping":
            await ws.send({"type": "pong"})
        elif frame["type"] == "envelope":
            assert len(ids) < n, frame
            ids.append(frame["envelope_id"])
            last = frame["queue_seq"]
            await ws.ack(last)
        elif frame["type"] == "drained":
            assert frame["queue_seq"] <= last, frame  # never more than was acknowledged
            if len(ids) == n and frame["queue_seq"] == last:
                return ids, last
        else:
            raise AssertionError(f"unexpected frame {frame}")


class _DropWakeups:
    """A bus wrapper that loses every wake-up publish (as if Redis dropped them)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def publish_wake(self, device_ids: Iterable[bytes]) -> None:
        self.dropped += len(list(device_ids))


async def test_lost_wakeup_delivers_within_one_heartbeat(cluster: Cluster) -> None:
    with cluster.client(cluster.one.base_url) as c1:
        alice, bob, _bob2, cid = _setup(c1)
    ws = await _ws(cluster.two.ws_url, bob.first)
    assert await ws.envelopes_until_drained() == []
    delivery = cluster.one.ctx.delivery
    dropping = _DropWakeups(delivery.bus)
    delivery.bus = dropping
    try:
        started = time.monotonic()
        [sent] = await _send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 1, "lost")
        assert dropping.dropped == 2  # bob's two devices: nobody was woken
        frame = await ws.expect("envelope", wait_s=HEARTBEAT_S + 1.0)
        assert frame["envelope_id"] == sent["envelope_id"]
        assert time.monotonic() - started <= HEARTBEAT_S + 1.0
    finally:
        delivery.bus = dropping._inner
    await ws.close()


async def test_connecting_on_another_instance_replaces_the_older_socket(cluster: Cluster) -> None:
    with cluster.client(cluster.one.base_url) as c1:
        alice, bob, _bob2, cid = _setup(c1)
    old = await _ws(cluster.one.ws_url, bob.first)
    assert await old.envelopes_until_drained() == []
    new = await _ws(cluster.two.ws_url, bob.first)
    assert await old.closed_with() == 4001
    assert await new.envelopes_until_drained() == []
    [sent] = await _send_all(cluster.one.base_url, alice.first, [alice, bob], cid, 1, "x")
    assert (await new.expect("envelope"))["envelope_id"] == sent["envelope_id"]
    await new.close()


async def test_server_seq_gap_free_with_writers_on_both_instances(cluster: Cluster) -> None:
    with cluster.client(cluster.one.base_url) as c1:
        alice, bob, _bob2, cid = _setup(c1)
    per_writer = 15

    async def writer(base_url: str, sender: Device, tag: str) -> list[int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=20.0) as c:

            async def one(i: int) -> int:
                body = envelope_body(sender, [alice, bob], f"{tag}{i}".encode())
                r = await c.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=sender.headers)
                assert r.status_code == 201, r.text
                return int(r.json()["server_seq"])

            return list(await asyncio.gather(*(one(i) for i in range(per_writer))))

    seqs = await asyncio.gather(
        writer(cluster.one.base_url, alice.first, "a"),
        writer(cluster.two.base_url, bob.first, "b"),
        writer(cluster.one.base_url, bob.devices[1], "c"),
        writer(cluster.two.base_url, alice.first, "d"),
    )
    flat = sorted(s for part in seqs for s in part)
    assert flat == list(range(1, 4 * per_writer + 1))
