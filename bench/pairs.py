"""Benchmark of the workload "pairs-v1" (bench/WORKLOAD.md), server mode (this file)
and sdk mode (``--mode sdk``: bench/pairs_sdk.py).

    .venv/bin/python bench/pairs.py [--mode server|sdk] [--test latency|throughput|idle|fanout|reconnect|all]
                                     [--connections 1000] [--send-via ws|http]
                                     [--database-url postgresql+asyncpg://...] [--url http://...]
                                     [--instances 2 --redis-url redis://...]

Prints ONE JSON document on stdout (progress goes to stderr). See bench/README.md for what each
figure means and the figures measured on the 2-core machine.

For each test it starts the Saltline server as a subprocess (``python -m saltline.server db upgrade`` then
``python -m saltline.server serve`` on 127.0.0.1 and a free port; SQLite in a fresh temporary data
directory unless ``--database-url`` is given), or targets a running one with ``--url`` (then pass
``--server-pid`` to get the server's CPU and RSS). Then:

1. set-up (untimed): register the accounts (one device each) through the real HTTP API with real
   signed device lists (``saltline.crypto.device_list``), upload prekeys, create one direct conversation per
   pair and claim the receiver's prekey bundle (the session set-up of the workload);
2. receivers connect their delivery WebSocket (auth frame first, ack every envelope by queue_seq,
   answer pings) and count a message delivered when its frame is received;
3. quiesce: the server under 5 % of a core over 1 s (at most 30 s);
4. warm-up: every sender sends one message; wait until all are delivered;
5. the timed test.

Server mode: every envelope body is built (and JSON-encoded) before the timed window. Its one
ciphertext has the size of a real Double Ratchet message for a 200-byte plaintext (measured with
``saltline.crypto.ratchet`` at start-up: header + plaintext + AEAD tag) and is random bytes, except that it
begins with the ASCII prefix ``B|<run>|<pair>|<seq>|`` in clear, so the receiver can match a
delivery to its send without decrypting. The server treats ciphertexts as opaque bytes, so this
costs it exactly what a real ciphertext of that size costs.

Load generator: this one process (asyncio on uvloop when installed); one ``httpx.AsyncClient``
(HTTP/1.1 keep-alive) per sender; ``websockets`` for the sockets; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
# Python put bench/ first on sys.path, where bench/crypto.py would shadow the crypto package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)
from bench._pairs_fanout import test_fanout  # noqa: E402
from bench._pairs_idle import test_idle  # noqa: E402
from bench._pairs_server import database_kind  # noqa: E402
from bench._pairs_setup import CLOCK_BYTES, PLAINTEXT_BYTES  # noqa: E402
from bench._pairs_traffic import test_latency, test_throughput  # noqa: E402

log = common.log

from saltline.crypto import device_list as dl  # noqa: E402
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, OneTimePreKey, SignedPreKey  # noqa: E402

WORKLOAD = "pairs-v1"


def ratchet_message_size(plaintext_bytes: int) -> tuple[int, str]:
    """The size of a real Double Ratchet message for ``plaintext_bytes`` (an ordinary message in
    an established session), measured with ``crypto``; falls back to the formula."""
    try:
        from saltline.crypto.ratchet import Session
        from saltline.crypto.x3dh import DeviceIdentityKeys, PreKeyBundle, initiate

        account = AccountKey.generate()

        def device() -> DeviceIdentityKeys:
            return DeviceIdentityKeys(os.urandom(16), DeviceSigningKey.generate(), DeviceDHKey.generate())

        me, peer = device(), device()
        entry = dl.bind_device(
            account.public_key, peer.device_id, peer.signing_key, peer.dh_key.public_key, 0
        )
        spk, opk = SignedPreKey.generate_with_id(1), OneTimePreKey.generate_with_id(1)
        bundle = PreKeyBundle(
            peer.device_id,
            peer.signing_key.public_key,
            peer.dh_key.public_key,
            spk.signed_public(peer.signing_key),
            opk.signed_public(peer.signing_key),
        )
        session = Session.initiate(initiate(me, bundle, entry))
        sizes = {len(session.encrypt(os.urandom(plaintext_bytes), bytes(64))) for _ in range(3)}
        return max(sizes), "saltline.crypto.ratchet.Session.encrypt"
    except Exception as exc:  # the crypto API moved: use the documented layout
        from saltline.crypto import primitives
        from saltline.crypto.ratchet import HEADER_SIZE

        log(f"could not measure a ratchet message ({type(exc).__name__}: {exc}); using the formula")
        return HEADER_SIZE + plaintext_bytes + primitives.AEAD_TAG_SIZE, "HEADER_SIZE + plaintext + tag"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Saltline server benchmark (workload pairs-v1, server mode)")
    p.add_argument(
        "--mode",
        choices=["server", "sdk"],
        default="server",
        help="server: pre-built envelopes (the server's own cost); sdk: real SDK clients encrypt and decrypt",
    )
    p.add_argument(
        "--test", choices=["latency", "throughput", "idle", "fanout", "reconnect", "all"], default="all"
    )
    p.add_argument(
        "--database-url",
        help="e.g. postgresql+asyncpg://user:pw@127.0.0.1/db (default: SQLite in a temp dir)",
    )
    p.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument(
        "--url",
        help="target a running server instead of starting one (it must allow the set-up's registrations)",
    )
    p.add_argument(
        "--instances",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: two server instances on PostgreSQL + Redis; senders on the first, receivers on the second",
    )
    p.add_argument("--redis-url", help="with --instances 2: the Redis bus, e.g. redis://127.0.0.1:6379/0")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes per instance (serve --workers N; starts a redis-server unless --redis-url)",
    )
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU and RSS")
    p.add_argument("--connections", type=int, default=1000, help="idle: held sockets (C)")
    p.add_argument("--idle-seconds", type=float, default=45.0)
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0, help="idle: server heartbeat interval")
    p.add_argument("--no-bare", action="store_true", help="idle: skip the bare_ws reference")
    p.add_argument("--repeat", type=int, default=3, help="reconnect: paired runs (saltline, bare_ws)")
    p.add_argument(
        "--reconnect-client",
        choices=["lean", "websockets"],
        default="lean",
        help="reconnect: the load generator's client (bench/ws_lean.py, sockets held; or websockets)",
    )
    p.add_argument(
        "--reconnect-concurrency", type=int, default=64, help="reconnect: socket opens in flight at a time"
    )
    p.add_argument("--latency-pairs", type=int, default=50)
    p.add_argument("--latency-seconds", type=int, default=30)
    p.add_argument("--throughput-pairs", type=int, default=20)
    p.add_argument("--throughput-seconds", type=float, default=30.0)
    p.add_argument("--throughput-budget", type=int, default=8000, help="pre-built envelopes per sender")
    p.add_argument("--fanout-members", type=int, default=50, help="fanout: group members (G)")
    p.add_argument("--fanout-seconds", type=int, default=30, help="fanout: messages, one per second")
    p.add_argument(
        "--send-via",
        choices=["ws", "http"],
        default="ws",
        help="server mode: send frames over the sender's delivery socket, or HTTP POSTs",
    )
    p.add_argument("--profile-hook", action="store_true", help="log the start of the throughput window")
    p.add_argument(
        "--sdk-store",
        choices=["memory", "sqlite"],
        default="memory",
        help="sdk mode: the clients' store (in memory, or the encrypted SQLite store in a temp dir)",
    )
    p.add_argument(
        "--profile-loadgen",
        metavar="PATH",
        help="sdk throughput: cProfile the load generator over the window and write pstats to PATH",
    )
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ciphertext_bytes, source = ratchet_message_size(PLAINTEXT_BYTES)
    doc: dict[str, Any] = {
        "benchmark": "saltline bench/pairs.py",
        "workload": WORKLOAD,
        "mode": args.mode,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "database": database_kind(args.database_url),
        "sqlite_synchronous": args.sqlite_synchronous
        if database_kind(args.database_url) == "sqlite" and not args.url
        else None,
        "versions": common.versions(),
        "machine": common.machine(),
        "loadgen": {
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "pid": os.getpid(),
        },
        "message": {
            "plaintext_bytes": PLAINTEXT_BYTES,
            "ciphertext_bytes": ciphertext_bytes,
            "ciphertext_size_source": source,
            "clock_bytes": CLOCK_BYTES,
            "recipients_per_envelope": 1,
        },
        "nofile": common.raise_nofile(max(4096, 2 * args.connections + 1024)),
        "tests": {},
    }
    tests = ["latency", "throughput", "idle", "fanout"] if args.test == "all" else [args.test]
    for name in tests:
        log(f"--- {name}")
        try:
            if args.mode == "sdk" and name != "idle":
                # Real SDK clients (bench/pairs_sdk.py); idle measures held sockets either way.
                from bench import pairs_sdk

                doc["tests"][name] = await pairs_sdk.run_sdk_test(args, name)
            elif name == "latency":
                doc["tests"][name] = await test_latency(args, ciphertext_bytes)
            elif name == "throughput":
                doc["tests"][name] = await test_throughput(args, ciphertext_bytes)
            elif name == "fanout":
                doc["tests"][name] = await test_fanout(args, ciphertext_bytes)
            elif name == "reconnect":
                from bench import reconnect  # bench/reconnect.py

                doc["tests"][name] = await reconnect.test_reconnect(args)
            else:
                doc["tests"][name] = await test_idle(args)
        except Exception as exc:
            import traceback

            log(f"{name} failed: {type(exc).__name__}: {exc}")
            doc["tests"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
    return doc


def main() -> None:
    args = parse_args()
    try:
        import uvloop
    except ImportError:
        doc = asyncio.run(run(args))
    else:
        doc = uvloop.run(run(args))
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
