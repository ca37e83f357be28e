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
from bench.pairs import SERVER_ENV, Identity, register

ATTACKS = ("pipeline", "ws_ping", "ws_frames", "idle", "slowloris")


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


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload < 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def ws_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    return reader, writer


async def flood(writer: asyncio.StreamWriter, chunk: bytes, stop: asyncio.Event, sent: list[int]) -> None:
    """Write ``chunk`` until ``stop`` (or the server closes); never read."""
    try:
        while not stop.is_set():
            writer.write(chunk)
            sent[0] += len(chunk)
            await asyncio.wait_for(writer.drain(), 1.0)
    except (TimeoutError, OSError, ConnectionError):
        pass  # the server stopped reading (a bounded buffer) or closed the connection


async def attack(name: str, port: int, args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    writers: list[asyncio.StreamWriter] = []
    sent = [0]
    tasks: list[asyncio.Task[None]] = []
    refused = 0
    if name == "pipeline":
        _, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        tasks.append(
            asyncio.create_task(flood(w, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 64, stop, sent))
        )
    elif name in ("ws_ping", "ws_frames"):
        count = args.sockets if name == "ws_ping" else 1
        for _ in range(count):
            _, w = await ws_open(port)
            writers.append(w)
            if name == "ws_ping":
                chunk = ws_frame(0x9, os.urandom(125)) * 64
            else:
                ident = Identity.new(f"abuse{secrets.token_hex(4)}")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                    await register(http, ident, prekeys=False)
                token = ident.access_token.encode()
                auth = b'{"type":"auth","token":"' + token + b'"}'
                w.write(_long_text_frame(auth))
                chunk = ws_frame(0x1, b'{"type":"ping"}') * 256
            tasks.append(asyncio.create_task(flood(w, chunk, stop, sent)))
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
    for t in tasks:
        await t
    closed_by_server = sum(1 for w in writers if w.transport.is_closing())
    return {"writers": writers, "bytes_sent": sent[0], "connect_refused": refused, "closed": closed_by_server}


def _long_text_frame(payload: bytes) -> bytes:
    """A masked text frame of any length below 64 KiB."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    else:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + masked


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
            before = common.proc_rss_kib(server.pid)
            peak = before
            stop = asyncio.Event()
            health = {"ok": 0, "failed": 0}
            attack_task = asyncio.create_task(attack(name, server.port, args, stop))
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
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the server")
    args = parser.parse_args()
    doc = asyncio.run(main_async(args))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
