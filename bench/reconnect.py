"""``bench/pairs.py --test reconnect``: the reconnect storm after a restart (issue 13).

N devices (``--connections``, default 5,000 for this test) each open their delivery socket,
authenticate (auth frame) and resume (wait for ``drained``, the end of the catch-up); the figure is
the wall time from the first connect to the last ``drained``, with ``CONNECT_CONCURRENCY`` opens in
flight at a time. Paired with the bare FastAPI endpoint (bench/bare_ws.py, which answers the auth
frame with ``ready`` at once: no database, no JWT) in the same run, ``--repeat`` times each
(default 3), alternating saltline and bare; the report gives every run and the medians.

The accounts are registered once (untimed, cheap argon2 as in every bench server); every device
connects once before the timed runs, so each timed run is a *re*connect of known devices.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import connect

from bench import _common as common
from bench import ws_lean
from bench._pairs_server import start_saltline
from bench._pairs_setup import SETUP_CONCURRENCY, Identity, bounded, register

log = common.log
HERE = Path(__file__).resolve().parent


async def _reconnect_one(ws_url: str, token: str, until: str) -> None:
    async with connect(ws_url + "/v1/ws", ping_interval=None, open_timeout=60, close_timeout=5) as conn:
        await conn.send(orjson.dumps({"type": "auth", "token": token}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(conn.recv(), 60))
            if frame["type"] == until:
                return
            if frame["type"] == "ping":
                await conn.send('{"type":"pong"}')


async def storm(
    ws_url: str, tokens: list[str], until: str, concurrency: int, client: str = "lean"
) -> dict[str, Any]:
    """Open, authenticate and resume every socket (``concurrency`` opens in flight at a time).

    ``lean`` (bench/ws_lean.py): every socket is held open until the last one has resumed, as
    after a restart (the devices stay connected), then all are closed (untimed).
    ``websockets``: the ``websockets`` client, each socket closed (close handshake) as soon as it
    has resumed, inside the timed window (the figure of the first measurements)."""
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    held: list[ws_lean.LeanSocket] = []
    parsed = urlsplit(ws_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    until_b = until.encode()

    async def one(token: str) -> None:
        async with sem:
            try:
                if client == "lean":
                    auth = orjson.dumps({"type": "auth", "token": token})
                    held.append(await ws_lean.open_socket(host, port, "/v1/ws", auth, until_b, 60.0))
                else:
                    await _reconnect_one(ws_url, token, until)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    cpu0 = common.self_cpu_s()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(t) for t in tokens))
    seconds = time.perf_counter() - t0
    loadgen_cpu = common.self_cpu_s() - cpu0
    for sock in held:
        sock.close()
    if held:
        await asyncio.sleep(0)  # let the close frames go out
    return {
        "seconds": round(seconds, 3),
        "errors": len(errors),
        "error_samples": errors[:3],
        "client": client,
        "loadgen_cpu_s": round(loadgen_cpu, 3),
    }


def _median(runs: list[dict[str, Any]]) -> float | None:
    ok = [r["seconds"] for r in runs if not r["errors"]]
    return round(statistics.median(ok), 3) if ok else None


async def test_reconnect(args: argparse.Namespace) -> dict[str, Any]:
    n, repeat = args.connections, args.repeat
    concurrency = args.reconnect_concurrency
    client = args.reconnect_client
    result: dict[str, Any] = {
        "parameters": {
            "devices": n,
            "repeat": repeat,
            "concurrency": concurrency,
            "client": client,
            "workers": args.workers,
            "timed": "first connect to last 'drained' (saltline) / 'ready' (bare_ws)",
        }
    }
    target = start_saltline(args, "reconnect", {})
    result["server"] = target.describe()
    port = common.free_port()
    tmp = tempfile.TemporaryDirectory(prefix="saltline-bench-bare-")
    bare = common.ServerProcess(
        [sys.executable, str(HERE / "bare_ws.py"), "--port", str(port), "--workers", str(args.workers)],
        port,
        Path(tmp.name) / "bare.log",
    ).start()
    try:
        tag = "rec" + secrets.token_hex(3)
        idents = [Identity.new(f"bench_{tag}_d{i}") for i in range(n)]
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=target.base_url, timeout=120.0) as http:
            await bounded(SETUP_CONCURRENCY, [register(http, i, prekeys=False) for i in idents])
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        tokens = [i.access_token for i in idents]
        log(f"reconnect: {n} accounts registered in {result['setup_s']} s")
        first = await storm(target.ws_url, tokens, "drained", concurrency, client)
        result["first_connect"] = first
        log(f"reconnect: first connect of every device {first}")
        runs: dict[str, list[dict[str, Any]]] = {"saltline": [], "bare_ws": []}
        for i in range(repeat):
            for name, url, until in (
                ("saltline", target.ws_url, "drained"),
                ("bare_ws", bare.ws_url, "ready"),
            ):
                pid = target.pids if name == "saltline" else bare.pid
                await common.quiesce(pid)
                meter = common.CpuMeter(pid)
                run = await storm(url, tokens, until, concurrency, client)
                run["cpu"] = meter.result()
                runs[name].append(run)
                log(f"reconnect {i + 1}/{repeat} {name}: {run['seconds']} s, {run['errors']} errors")
        result["runs"] = runs
        s, b = _median(runs["saltline"]), _median(runs["bare_ws"])
        result["median_s"] = {"saltline": s, "bare_ws": b}
        result["ratio_saltline_to_bare"] = round(s / b, 2) if s and b else None
        result["within_5s"] = s is not None and s <= 5.0
    finally:
        result["server"].update(target.finish())
        bare.stop()
        tmp.cleanup()
    return result
