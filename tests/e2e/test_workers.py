"""``saltline serve --workers 2``: two server processes on one port (uvicorn's supervisor), sharing
the database and Redis. The process that holds each socket is read from the kernel
(tests/procnet.py), so the tests know when a message, a scrape or a replacement crosses workers.

The heartbeat is long (300 s): a message that arrives within the wait crossed through the Redis
bus, not through the heartbeat's re-read of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from saltline.server.storage.migrate import upgrade
from tests.conftest import TEST_SETTINGS
from tests.delay_proxy import delay_proxy
from tests.pg import free_port
from tests.procnet import children, socket_owner
from tests.redis_fixture import RedisServer
from tests.server.delivery_support import WsClient, create_conversation, envelope_body
from tests.server.helpers import Account, login, register

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0
#: Connections opened to find one the other worker accepted (the kernel chooses).
TRIES = 200


@dataclass
class Workers:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """The worker processes (uvicorn spawns them; its resource tracker is not one)."""
        out = []
        for pid in children(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                out.append(pid)
        return out

    def owner(self, client_port: int) -> int:
        """The worker holding the server end of the connection from ``client_port``."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            pid = socket_owner(self.port, client_port, self.workers())
            if pid is not None:
                return pid
            time.sleep(0.01)  # the accept happens in the worker's loop: poll the kernel's view
        raise AssertionError(f"no worker holds the connection from port {client_port}")

    def wait_workers(self, count: int, *, not_in: frozenset[int] = frozenset()) -> list[int]:
        """Wait until ``count`` workers have started their app (the log says so) and none is in
        ``not_in``."""
        deadline = time.monotonic() + WAIT * 2
        while time.monotonic() < deadline:
            pids = self.workers()
            started = self.log.read_text(errors="replace").count("Application startup complete")
            if len(pids) == count and not set(pids) & not_in and started >= count + len(not_in):
                return pids
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"workers not started: {self.log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def workers(db_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    yield from _workers(db_url, redis_server.url, tmp_path)


@pytest.fixture
def workers_slow_redis(db_url: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    """Two workers whose Redis answers 50 ms late each way (a slow or distant Redis)."""
    with delay_proxy(redis_server.port, 0.05) as proxy:
        yield from _workers(db_url, proxy.url, tmp_path)


def _workers(db_url: str, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    with ThreadPoolExecutor(1) as pool:  # upgrade() runs its own event loop
        pool.submit(upgrade, db_url).result()
    port = free_port()
    settings = {
        **TEST_SETTINGS,
        "database_url": db_url,
        "data_dir": tmp_path,
        "redis_url": redis_url,
        "heartbeat_interval_s": 300.0,
        "log_level": "info",
        "host": "127.0.0.1",
        "port": port,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
    env.update({f"SALTLINE_{k.upper()}": str(v) for k, v in settings.items()})
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "saltline.server", "serve", "--workers", "2"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the teardown reaches every worker
        )
    server = Workers(proc, port, log)
    try:
        server.wait_workers(2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failed test left: no orphans


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def _socket(server: Workers, device: object) -> tuple[WsClient, int]:
    ws = await WsClient.connect(server.ws_url, device)  # type: ignore[arg-type]
    return ws, server.owner(ws.conn.local_address[1])


async def _socket_on(server: Workers, device: object, worker: int) -> WsClient:
    """A socket of ``device`` that ``worker`` accepted (others are closed)."""
    for _ in range(TRIES):
        ws, owner = await _socket(server, device)
        if owner == worker:
            return ws
        await ws.close()
    raise AssertionError(f"the kernel never gave worker {worker} a connection in {TRIES} tries")


def _scrape_on(server: Workers, worker: int) -> dict[str, float]:
    """``/metrics`` answered by ``worker`` (each scrape on a new connection)."""
    for _ in range(TRIES):
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            if server.owner(sock.getsockname()[1]) != worker:
                continue
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        values = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values
    raise AssertionError(f"no scrape reached worker {worker}")


async def test_messages_replacements_and_metrics_cross_workers(workers: Workers) -> None:
    w1, w2 = workers.workers()
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        alice, bob = register(c), register(c)
        cid = create_conversation(c, alice, bob)
    alice_ws = await _socket_on(workers, alice.first, w1)
    bob_ws = await _socket_on(workers, bob.first, w2)
    assert await alice_ws.envelopes_until_drained() == []
    assert await bob_ws.envelopes_until_drained() == []

    # a message sent on worker 1 reaches the socket on worker 2 at once (the Redis bus)
    body = envelope_body(alice.first, [alice, bob], b"across workers")
    await alice_ws.send({"type": "send", "request_id": "r1", "conversation_id": cid, "envelope": body})
    assert (await alice_ws.expect("send_result"))["status"] == 201
    frame = await bob_ws.expect("envelope", wait_s=WAIT)
    assert bob_ws.plaintext(frame) == b"across workers"
    await bob_ws.ack(frame["queue_seq"])
    assert (await bob_ws.expect("drained"))["queue_seq"] == frame["queue_seq"]

    # every scrape sums both workers, whichever answers
    for worker in (w1, w2):
        metrics = _scrape_on(workers, worker)
        assert metrics["saltline_envelopes_accepted_total"] == 1
        assert metrics["saltline_envelopes_delivered_total"] == 1
        assert metrics["saltline_ws_connections"] == 2  # alice's on w1, bob's on w2

    # one socket per device across workers: bob's new socket on worker 1 closes the one on 2
    newer = await _socket_on(workers, bob.first, w1)
    assert await bob_ws.closed_with() == 4001
    assert await newer.envelopes_until_drained() == []
    await newer.close()
    await alice_ws.close()

    # SIGTERM stops the supervisor and both workers cleanly
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(WAIT) == 0
    assert _gone(w1) and _gone(w2)


async def test_a_killed_worker_is_replaced_and_nothing_is_lost(workers: Workers) -> None:
    w1, w2 = workers.workers()
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        alice, bob = register(c), register(c)
        cid = create_conversation(c, alice, bob)
    bob_ws = await _socket_on(workers, bob.first, w2)
    assert await bob_ws.envelopes_until_drained() == []

    os.kill(w2, signal.SIGKILL)  # a crash: no close frames, no cleanup
    assert await bob_ws.closed_with() is None  # the connection just dropped
    [w1_again, w3] = sorted(workers.wait_workers(2, not_in=frozenset({w2})), key=lambda p: p != w1)
    assert w1_again == w1 and w3 != w2  # the supervisor started a new worker

    # sent while bob is offline, on whichever worker takes the request: queued, then delivered
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        body = envelope_body(alice.first, [alice, bob], b"after the crash")
        r = c.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=alice.first.headers)
        assert r.status_code == 201, r.text
    bob_ws = await _socket_on(workers, bob.first, w3)
    [frame] = await bob_ws.envelopes_until_drained()
    assert bob_ws.plaintext(frame) == b"after the crash"
    # the crashed worker's socket no longer counts: only bob's new one is open
    assert _scrape_on(workers, w1)["saltline_ws_connections"] == 1
    await bob_ws.close()


def _revoke_login(client: httpx.Client, account: Account) -> str:
    """Revoke the first device's login (its refresh token used twice) and log it in again;
    the revoked login's access token (still within its lifetime)."""
    stolen, refresh = account.first.access_token, account.first.refresh_token
    for expected in (200, 401):  # the second use of a rotated refresh token revokes the login
        r = client.post("/v1/auth/refresh", json={"refresh_token": refresh})
        assert r.status_code == expected, r.text
    assert login(client, account, account.first).status_code == 200
    return stolen


async def test_a_refused_token_never_replaces_the_socket_on_another_worker(workers: Workers) -> None:
    """An access token whose login was revoked (here: a reused refresh token) is refused with
    4003; it must not close the device's current socket on another worker with 4001 (the
    announcement of a socket goes out only once its token holder is checked)."""
    w1, w2 = workers.workers()
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        alice, bob = register(c), register(c)
        cid = create_conversation(c, alice, bob)
        stolen = _revoke_login(c, alice)
    current = await _socket_on(workers, alice.first, w1)
    assert await current.envelopes_until_drained() == []

    for _ in range(TRIES):  # the revoked token, on the other worker
        intruder = await WsClient.connect(workers.ws_url, alice.first, auth=False)
        if workers.owner(intruder.conn.local_address[1]) == w2:
            break
        await intruder.close()
    else:
        raise AssertionError(f"the kernel never gave worker {w2} a connection in {TRIES} tries")
    await intruder.send({"type": "auth", "token": stolen})
    assert await intruder.closed_with() == 4003

    # the current socket is still open and served: a message published after the refusal (so
    # after anything the refused socket could have announced on the device's channel) arrives
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        body = envelope_body(bob.first, [bob, alice], b"still here")
        r = c.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=bob.first.headers)
        assert r.status_code == 201, r.text
    frame = await current.expect("envelope", wait_s=WAIT)
    assert current.plaintext(frame) == b"still here"
    await current.close()


async def test_two_sockets_of_a_device_opened_at_once_on_two_workers_leave_one(workers: Workers) -> None:
    await _two_sockets_at_once_leave_one(workers)


async def test_two_sockets_opened_at_once_leave_one_with_a_slow_redis(workers_slow_redis: Workers) -> None:
    await _two_sockets_at_once_leave_one(workers_slow_redis)


async def _two_sockets_at_once_leave_one(workers: Workers) -> None:
    """Both sockets authenticate at the same moment, one on each worker: whichever is
    announced second is heard by the other worker, so one of them closes with 4001 and the
    other is served (not two sockets of one device, each announced before the other listened:
    with a slow Redis, for the time a subscription takes to become active)."""
    w1, w2 = workers.workers()
    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        alice, bob = register(c), register(c)
        cid = create_conversation(c, alice, bob)
    for _ in range(TRIES):
        pair = [await WsClient.connect(workers.ws_url, alice.first, auth=False) for _ in range(2)]
        if {workers.owner(ws.conn.local_address[1]) for ws in pair} == {w1, w2}:
            break
        for ws in pair:
            await ws.close()
    else:
        raise AssertionError(f"the kernel never split two connections over the workers in {TRIES} tries")
    auth = {"type": "auth", "token": alice.first.access_token}
    await asyncio.gather(*(ws.send(auth) for ws in pair))
    closing = {asyncio.ensure_future(ws.closed_with(WAIT)): ws for ws in pair}
    done, _ = await asyncio.wait(closing, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1, "both sockets of the device stayed open"
    [closed] = done
    assert closed.result() == 4001
    [(reading, survivor)] = [(t, ws) for t, ws in closing.items() if t is not closed]
    reading.cancel()  # (websockets: a cancelled recv loses no message)
    with contextlib.suppress(asyncio.CancelledError):
        await reading

    with httpx.Client(base_url=workers.base_url, timeout=WAIT) as c:
        body = envelope_body(bob.first, [bob, alice], b"to the survivor")
        r = c.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=bob.first.headers)
        assert r.status_code == 201, r.text
    while (frame := await survivor.recv(WAIT))["type"] != "envelope":
        assert frame["type"] in ("ready", "drained", "ping"), frame  # (the reader stopped early)
    assert survivor.plaintext(frame) == b"to the survivor"
    await survivor.close()


def test_workers_stop_when_their_supervisor_is_killed(workers: Workers) -> None:
    """SIGKILL of the supervisor (no chance to stop its workers): each worker notices and stops
    by itself, so no orphan keeps the port from the next ``serve``."""
    pids = workers.workers()
    assert len(pids) == 2
    workers.proc.kill()
    workers.proc.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not all(_gone(pid) or _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.05)
    log = workers.log.read_text(errors="replace")
    assert log.count("the supervisor (pid") == 2
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", workers.port))


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
    env["SALTLINE_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "saltline.server", "serve", "--workers", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "needs redis_url (SALTLINE_REDIS_URL)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "saltline.db").exists()  # refused before anything was created
