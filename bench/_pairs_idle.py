"""bench/pairs.py's idle test: C held delivery sockets answering the server's pings for a while;
the server's RSS per connection, compared with bench/bare_ws.py's (``--no-bare`` skips it)."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import _common as common
from bench._pairs_delivery import close_sockets, open_sockets
from bench._pairs_server import start_saltline
from bench._pairs_setup import SETUP_CONCURRENCY, Identity, bounded, register

HERE = Path(__file__).resolve().parent
log = common.log


async def hold_sockets(
    name: str, pid: int | None, ws_url: str, tokens: list[str], hold_s: float
) -> dict[str, Any]:
    """Open len(tokens) sockets, hold them ``hold_s`` seconds answering pings, then check each."""
    quiet = await common.quiesce(pid)
    rss_before = common.proc_rss_kib(pid) if pid else None
    t0 = time.perf_counter()
    socks, errors = await open_sockets(ws_url, tokens)
    connect_s = time.perf_counter() - t0
    log(
        f"idle/{name}: {len(socks) - len(errors)} of {len(socks)} sockets open in {connect_s:.1f} s; "
        f"holding {hold_s} s"
    )
    meter = common.CpuMeter(pid)
    await asyncio.sleep(hold_s)
    rss_after = common.proc_rss_kib(pid) if pid else None
    cpu = meter.result()
    closed_during_hold = [
        s.closed for s in socks if s.closed is not None and not s.closed.startswith("open failed")
    ]
    alive = await asyncio.gather(*(s.check_alive() for s in socks))
    pings = sorted(s.pings for s in socks)
    n = len(socks)
    out: dict[str, Any] = {
        "connections": n,
        "opened": n - len(errors),
        "open_errors": len(errors),
        "open_error_samples": errors[:3],
        "connect_s": round(connect_s, 2),
        "closed_during_hold": len(closed_during_hold),
        "close_samples": closed_during_hold[:3],
        "alive_at_end": sum(alive),
        "all_held": not errors and not closed_during_hold and all(alive),
        "server_pings_per_connection": {
            "min": pings[0] if pings else None,
            "max": pings[-1] if pings else None,
            "mean": round(sum(pings) / n, 2) if n else None,
        },
        "quiesce": quiet,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_delta_kib": None if rss_before is None or rss_after is None else rss_after - rss_before,
        "rss_per_connection_kib": None
        if rss_before is None or rss_after is None or not n
        else round((rss_after - rss_before) / n, 2),
        "cpu_hold": cpu,
    }
    await close_sockets(socks)
    return out


async def test_idle(args: argparse.Namespace) -> dict[str, Any]:
    c, hold, hb = args.connections, args.idle_seconds, args.heartbeat_interval_s
    result: dict[str, Any] = {
        "parameters": {
            "connections": c,
            "hold_s": hold,
            "heartbeat_interval_s": hb if not args.url else "as configured on the target",
            "rss": "VmRSS of the server process before opening the sockets and at the end of the hold",
        }
    }
    target = start_saltline(args, "idle", {"SALTLINE_HEARTBEAT_INTERVAL_S": str(hb)})
    result["server"] = target.describe()
    try:
        tag = "idl" + secrets.token_hex(3)
        idents = [Identity.new(f"bench_{tag}_d{i}") for i in range(c)]
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=target.base_url, timeout=60.0) as http:
            await bounded(SETUP_CONCURRENCY, [register(http, ident, prekeys=False) for ident in idents])
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        log(f"idle: {c} accounts registered in {result['setup_s']} s")
        result["saltline"] = await hold_sockets(
            "saltline", target.pid, target.ws_url, [i.access_token for i in idents], hold
        )
    finally:
        result["server"].update(target.finish())

    if not args.no_bare:
        port = common.free_port()
        tmp = tempfile.TemporaryDirectory(prefix="saltline-bench-bare-")
        bare = common.ServerProcess(
            [
                sys.executable,
                str(HERE / "bare_ws.py"),
                "--port",
                str(port),
                "--heartbeat-interval-s",
                str(hb),
            ],
            port,
            Path(tmp.name) / "bare.log",
        ).start()
        log(f"idle: bare_ws reference pid {bare.pid} on {bare.base_url}")
        try:
            result["bare_ws"] = await hold_sockets("bare_ws", bare.pid, bare.ws_url, ["x"] * c, hold)
        finally:
            bare.stop()
            result["bare_ws"]["log"] = bare.log_problems()
            tmp.cleanup()
        s, b = result["saltline"]["rss_per_connection_kib"], result["bare_ws"]["rss_per_connection_kib"]
        result["ratio_saltline_to_bare"] = round(s / b, 2) if s is not None and b else None
    return result
