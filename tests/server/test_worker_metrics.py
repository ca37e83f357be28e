"""``serve --workers N`` metrics (server/workers.py): prometheus-client's multiprocess files, written
by real worker-like processes (the mode is fixed when a process imports prometheus-client), read the
way ``/metrics`` reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from saltline.server import workers
from tests.live import LiveServer

REPO = Path(__file__).resolve().parents[2]

#: A worker stand-in: the app's delivery metrics, a queue depth and open sockets, then it either
#: exits (a crash: no clean-up) or says so and waits for its stdin to close.
WORKER = """
import sys
from prometheus_client import CollectorRegistry
from saltline.server.services.delivery_metrics import DeliveryMetrics

metrics = DeliveryMetrics(CollectorRegistry())
metrics.queue_depth.set(int(sys.argv[1]))
metrics.accepted.inc(int(sys.argv[1]))
metrics.connections.inc(int(sys.argv[2]))
if sys.argv[3] == "stay":
    print("ready", flush=True)
    sys.stdin.read()
"""


def _samples(directory: Path) -> dict[str, float]:
    os.environ[workers.MULTIPROC_ENV] = str(directory)
    try:
        text = generate_latest(workers.metrics_registry()).decode()
    finally:
        os.environ.pop(workers.MULTIPROC_ENV, None)
    return _parse(text)


def _parse(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_a_dead_workers_gauges_do_not_count(tmp_path: Path) -> None:
    """A worker that died (here: exited without clean-up) leaves its files behind; neither its
    open sockets nor its queue-depth figure (which may be long stale, e.g. a drained backlog)
    may show in a scrape of the living workers."""
    env = {**os.environ, workers.MULTIPROC_ENV: str(tmp_path)}
    run = [sys.executable, "-c", WORKER]
    subprocess.run([*run, "1000", "7", "exit"], env=env, cwd=REPO, check=True, timeout=60)
    with subprocess.Popen(
        [*run, "5", "2", "stay"], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as alive:
        assert alive.stdout is not None and alive.stdout.readline() == b"ready\n"
        try:
            values = _samples(tmp_path)
        finally:
            assert alive.stdin is not None
            alive.stdin.close()
    assert values["saltline_ws_connections"] == 2
    assert values["saltline_queue_depth"] == 5


#: A worker whose pid a dead one had: its live-gauge file is there already (7 open sockets).
REUSED_PID = """
import os
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key

stale = MmapedDict(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"gauge_livesum_{os.getpid()}.db"))
name = "saltline_ws_connections"
stale.write_value(mmap_key(name, name, [], [], "WebSocket connections authenticated and open"), 7.0, 0.0)
stale.close()

from saltline.server import workers
from saltline.server.services.delivery_metrics import DeliveryMetrics

workers.forget_previous_process()  # what create_app_from_env does first
DeliveryMetrics(CollectorRegistry()).connections.inc()
print("ready", flush=True)
import sys
sys.stdin.read()
"""


def test_a_worker_with_a_dead_workers_pid_starts_its_gauges_afresh(tmp_path: Path) -> None:
    # the environment serve --workers N gives its workers (workers.metrics_directory)
    env = {**os.environ, workers.MULTIPROC_ENV: str(tmp_path), workers.OWN_METRICS_ENV: str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-c", REUSED_PID], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as alive:
        assert alive.stdout is not None and alive.stdout.readline() == b"ready\n"
        try:
            values = _samples(tmp_path)
        finally:
            assert alive.stdin is not None
            alive.stdin.close()
    assert values["saltline_ws_connections"] == 1  # its own socket, not the dead one's 7 as well


def test_one_process_ignores_an_inherited_multiprocess_directory(
    make_server: Callable[..., LiveServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single ``serve`` whose environment happens to carry PROMETHEUS_MULTIPROC_DIR (e.g. a
    base image made for another app) answers ``/metrics`` from its own registry, not by adding
    up whatever files that directory holds."""
    stale = tmp_path / "inherited"
    stale.mkdir()
    env = {**os.environ, workers.MULTIPROC_ENV: str(stale)}
    dead = [sys.executable, "-c", WORKER, "1000", "7", "exit"]
    subprocess.run(dead, env=env, cwd=REPO, check=True, timeout=60)
    monkeypatch.setenv(workers.MULTIPROC_ENV, str(stale))
    server = make_server()
    with server.client() as client:
        values = _parse(client.get("/metrics").text)
    assert values["saltline_envelopes_accepted_total"] == 0  # not the other process's 1000
    assert values["saltline_ws_connections"] == 0
