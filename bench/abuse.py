"""Transport abuse against a real ``saltline serve`` (embedded SQLite): each attack runs for a fixed
time and the document reports the server's RSS (before, peak, at the end of the attack, and after
the attacker hung up) and whether ``GET /healthz`` stayed answered while it ran.

Not a test: one JSON document on stdout, progress on stderr. Attacks (``--attack``):

- ``pipeline``: one connection pipelines ``GET /healthz`` and never reads an answer.
- ``ws_ping``: ``--sockets`` unauthenticated WebSockets send protocol PINGs and never read.
- ``ws_frames``: one authenticated delivery socket sends ``{"type":"ping"}`` frames, never reads.
- ``idle``: ``--connections`` TCP connections that send nothing (file descriptors; the server
  runs with a soft RLIMIT_NOFILE of ``--server-nofile``, 4096 by default).
- ``slowloris``: ``--connections`` connections that send a partial request head and stop.
- ``ws_auth_ping``: one authenticated delivery socket (``ready`` read, then nothing) sends
  125-byte protocol PINGs.
- ``history``: ``--history-envelopes`` envelopes of ``--history-kib`` KiB are stored in one
  conversation before the baseline; then ``--history-readers`` clients page through the
  receiver's history with ``limit=--history-limit``, reading every body.

    .venv/bin/python bench/abuse.py --seconds 15
    .venv/bin/python bench/abuse.py --attack pipeline --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common
from bench._abuse_attacks import (
    History,
    ReadStats,
    authenticated_socket,
    flood,
    read_history,
    store_history,
    ws_frame,
    ws_open,
)
from bench._pairs_server import SERVER_ENV

ATTACKS = ("pipeline", "ws_ping", "ws_frames", "idle", "slowloris", "ws_auth_ping", "history")


def start_server(tmp: Path, extra_env: dict[str, str]) -> common.ServerProcess:
    port = common.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")},
        **SERVER_ENV,
        "SALTLINE_DATA_DIR": str(tmp),
        "SALTLINE_HOST": "127.0.0.1",
        "SALTLINE_PORT": str(port),
        "SALTLINE_JWT_SECRET": secrets.token_urlsafe(48),
        **extra_env,
    }
    argv = [sys.executable, "-m", "saltline.server", "serve"]
    return common.ServerProcess(argv, port, tmp / "server.log", env).start()


async def attack(
    name: str, port: int, args: argparse.Namespace, stop: asyncio.Event, history: History | None
) -> dict[str, Any]:
    writers: list[asyncio.StreamWriter] = []
    sent = [0]
    tasks: list[asyncio.Task[float | None]] = []
    readers: list[asyncio.Task[None]] = []
    started = time.monotonic()
    refused = 0
    extra: dict[str, Any] = {}
    stats: ReadStats | None = None
    if name == "history":
        assert history is not None
        stats = ReadStats()
        readers.extend(
            asyncio.create_task(read_history(port, history, args.history_limit, stop, stats))
            for _ in range(args.history_readers)
        )
        stored = {k: v for k, v in vars(history).items() if k != "reader_token"}
        extra["history"] = {**stored, "readers": args.history_readers, "limit": args.history_limit}
    elif name == "ws_auth_ping":
        _, w, ready = await authenticated_socket(port, wait_ready=True)
        writers.append(w)
        extra["ready_frame"] = {k: ready.get(k) for k in ("type", "window", "heartbeat_interval_s")}
        tasks.append(asyncio.create_task(flood(w, ws_frame(0x9, os.urandom(125)) * 64, stop, sent)))
    elif name == "pipeline":
        _, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        tasks.append(
            asyncio.create_task(flood(w, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 64, stop, sent))
        )
    elif name == "ws_ping":
        for _ in range(args.sockets):
            _, w = await ws_open(port)
            writers.append(w)
            tasks.append(asyncio.create_task(flood(w, ws_frame(0x9, os.urandom(125)) * 64, stop, sent)))
    elif name == "ws_frames":
        _, w, _ = await authenticated_socket(port, wait_ready=False)
        writers.append(w)
        tasks.append(asyncio.create_task(flood(w, ws_frame(0x1, b'{"type":"ping"}') * 256, stop, sent)))
    else:
        partial = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: " if name == "slowloris" else b""
        for _ in range(args.connections):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                refused += 1
                continue
            if partial:
                w.write(partial)
            writers.append(w)
    await stop.wait()
    await asyncio.gather(*readers)
    stopped = [t for t in await asyncio.gather(*tasks) if t is not None]
    if tasks:  # when the server stopped taking the attacker's bytes (None: it never did)
        extra["flood_stopped_after_s"] = round(min(stopped) - started, 1) if stopped else None
    closed_by_server = sum(1 for w in writers if w.transport.is_closing())
    if stats is not None:
        extra["reads"] = stats.report()
    return {
        "writers": writers,
        "bytes_sent": sent[0],
        "connect_refused": refused,
        "closed": closed_by_server,
        **extra,
    }


async def probe(port: int, stop: asyncio.Event, result: dict[str, int]) -> None:
    """GET /healthz on a new connection every 0.5 s, 2 s timeout."""
    while not stop.is_set():
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                r = await http.get(f"http://127.0.0.1:{port}/healthz")
            result["ok" if r.status_code == 200 else "failed"] += 1
        except httpx.HTTPError:
            result["failed"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def run_attack(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"saltline-abuse-{name}-") as tmp:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if args.server_nofile:  # the server inherits a lower soft limit than the attacker's
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.server_nofile, hard), hard))
        try:
            server = start_server(Path(tmp), dict(kv.split("=", 1) for kv in args.env))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            common.log(f"{name}: server pid {server.pid}")
            setup: dict[str, Any] = {}
            history = None
            if name == "history":  # stored before the baseline: the attack is the reading
                setup["rss_before_setup_mib"] = round(common.proc_rss_kib(server.pid) / 1024, 1)
                history = await store_history(server.port, args.history_envelopes, args.history_kib * 1024)
            before = common.proc_rss_kib(server.pid)
            peak = before
            stop = asyncio.Event()
            health = {"ok": 0, "failed": 0}
            attack_task = asyncio.create_task(attack(name, server.port, args, stop, history))
            probe_task = asyncio.create_task(probe(server.port, stop, health))
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline and not attack_task.done():
                peak = max(peak, common.proc_rss_kib(server.pid))
                await asyncio.sleep(0.1)  # sampling RSS, a benchmark
            end = common.proc_rss_kib(server.pid)
            peak = max(peak, end)
            stop.set()
            outcome = await attack_task
            await probe_task
            for w in outcome.pop("writers"):
                w.close()
            await asyncio.sleep(2.0)  # let the server notice the hang-ups
            released = common.proc_rss_kib(server.pid)
            problems = server.log_problems(max_excerpts=1, context=8)
            return {
                "attack": name,
                "seconds": args.seconds,
                "rss_mib": {
                    k: round(v / 1024, 1)
                    for k, v in {"before": before, "peak": peak, "end": end, "after_hangup": released}.items()
                },
                "growth_mib": round((peak - before) / 1024, 1),
                "healthz": health,
                "healthz_answered": health["failed"] == 0 and health["ok"] > 0,
                "server_alive": server.alive(),
                **setup,
                **outcome,
                "log_problems": problems["error_lines"],
                "log_excerpts": problems["excerpts"],
            }
        finally:
            server.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    nofile = common.raise_nofile(args.connections + 1000)
    names = ATTACKS if args.attack == "all" else (args.attack,)
    results = [await run_attack(name, args) for name in names]
    return {
        "bench": "abuse",
        "nofile": nofile,
        "server_nofile": args.server_nofile,
        "versions": common.versions(),
        "results": results,
    }


def main() -> None:
    import orjson

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attack", choices=(*ATTACKS, "all"), default="all")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--sockets", type=int, default=4, help="ws_ping sockets")
    parser.add_argument("--connections", type=int, default=2000, help="idle/slowloris connections")
    parser.add_argument(
        "--server-nofile", type=int, default=4096, help="the server's soft RLIMIT_NOFILE (0: inherit)"
    )
    parser.add_argument("--history-envelopes", type=int, default=600, help="history: envelopes stored")
    parser.add_argument("--history-kib", type=int, default=200, help="history: KiB of ciphertext each")
    parser.add_argument("--history-readers", type=int, default=4, help="history: parallel readers")
    parser.add_argument("--history-limit", type=int, default=500, help="history: the page's limit")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the server")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
