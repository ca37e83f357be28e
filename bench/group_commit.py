"""The group-commit writer's transaction in isolation: ``EnvelopesRepo.write_batch`` with K sends
and K acknowledgements per transaction, the shape of the pairs-v1 throughput test
(bench/WORKLOAD.md; 1:1 conversations, one recipient device each), on SQLite (a fresh file,
``synchronous=FULL``) or the PostgreSQL database of ``--database-url``. No event loop competes for
the GIL here, so the figure is the writer's own cost per transaction: wall time, and CPU time of
the writer thread.

    .venv/bin/python bench/group_commit.py [--batch 10] [--transactions 2000] [--profile]
    .venv/bin/python bench/group_commit.py --database-url postgresql+asyncpg://u:p@127.0.0.1/bench

One JSON document on stdout (``--profile`` adds the top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import _common as common  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from saltline.server.storage import migrate  # noqa: E402
from saltline.server.storage import schema as s  # noqa: E402
from saltline.server.storage.db import Database  # noqa: E402
from saltline.server.storage.delivery_schema import conversation_members, conversations  # noqa: E402
from saltline.server.storage.envelopes_repo import AckRequest, EnvelopesRepo, NewEnvelope  # noqa: E402


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = None
    url = args.database_url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="saltline-gc-")
        url = f"sqlite+aiosqlite:///{tmp.name}/saltline.db"
    await asyncio.to_thread(migrate.upgrade, url)
    db = Database.open(url)
    repo = EnvelopesRepo(db)
    # Rows through the writer's own connection, like the server's.
    pair_rows: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []

    def build(conn: Any) -> None:
        nonlocal pair_rows
        pair_rows = _rows(conn, args.batch)

    await db.run_write(build)
    ciphertext = os.urandom(281)
    clock = os.urandom(48)
    last_queue_seq = {rd: 0 for *_, rd in pair_rows}

    def sends() -> list[NewEnvelope]:
        return [
            NewEnvelope(
                conversation_id=cid,
                envelope_id=os.urandom(16),
                sender_account_id=sa,
                sender_device_id=sd,
                clock=clock,
                request_hash=os.urandom(32),
                copies=((rd, ciphertext),),
                device_list_versions={sa: 1, ra: 1},
            )
            for cid, sa, sd, ra, rd in pair_rows
        ]

    for _ in range(20):  # warm-up: statement caches, file growth
        outcomes = await repo.write_batch(sends(), [], 0)
        for o in outcomes:
            for dev, seq in zip(o.recipients, o.queue_seqs, strict=True):  # type: ignore[union-attr]
                last_queue_seq[dev] = seq

    profiler = cProfile.Profile() if args.profile else None
    cpu = 0.0
    walls: list[float] = []

    def timed(fn: Any) -> Any:
        def inner(conn: Any) -> Any:
            nonlocal cpu
            c0 = time.thread_time()
            if profiler is not None:
                profiler.enable()
            try:
                return fn(conn)
            finally:
                if profiler is not None:
                    profiler.disable()
                cpu += time.thread_time() - c0

        return inner

    original = db.run_write

    async def run_write(fn: Any) -> Any:
        return await original(timed(fn))

    class Timed:
        """The repository's database, with each write transaction timed in its thread."""

        def __getattr__(self, name: str) -> Any:
            return getattr(db, name)

    timed_db = Timed()
    timed_db.run_write = run_write  # type: ignore[attr-defined]
    repo._db = timed_db  # type: ignore[assignment]
    for _ in range(args.transactions):
        acks = [AckRequest(dev, seq) for dev, seq in last_queue_seq.items()]
        t0 = time.perf_counter()
        outcomes = await repo.write_batch(sends(), acks, 0)
        walls.append(time.perf_counter() - t0)
        for o in outcomes:
            for dev, seq in zip(o.recipients, o.queue_seqs, strict=True):  # type: ignore[union-attr]
                last_queue_seq[dev] = seq
    await db.dispose()
    if tmp is not None:
        tmp.cleanup()
    n = args.transactions
    result: dict[str, Any] = {
        "benchmark": "saltline bench/group_commit.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "database": "postgresql" if args.database_url else "sqlite (synchronous=FULL)",
        "parameters": {
            "sends_per_transaction": args.batch,
            "acks_per_transaction": args.batch,
            "transactions": n,
        },
        "figures": {
            "transaction_wall_ms": common.latency_summary_ms(walls),
            "writer_cpu_ms_per_transaction": round(cpu / n * 1000, 3),
            "writer_cpu_us_per_send_and_ack": round(cpu / n / args.batch * 1e6, 1),
            "sends_per_s_one_writer": round(n * args.batch / sum(walls), 1),
        },
        "versions": common.versions(),
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile_top)
        result["profile_tottime"] = out.getvalue().splitlines()
    return result


def _rows(conn: Any, pairs: int) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
    out = []
    for i in range(pairs):
        sa, sd, ra, rd, cid = (os.urandom(16) for _ in range(5))
        for acct, dev, name in ((sa, sd, f"s{i}"), (ra, rd, f"r{i}")):
            conn.execute(
                insert(s.accounts).values(
                    id=acct,
                    username=name,
                    username_lower=name,
                    password_hash="x",
                    account_key=b"\x00" * 34,
                    device_list_version=1,
                    created_at_ms=0,
                )
            )
            conn.execute(
                insert(s.devices).values(
                    device_id=dev,
                    account_id=acct,
                    signing_key=b"\x00" * 34,
                    dh_key=b"\x00" * 34,
                    added_at_ms=0,
                )
            )
        conn.execute(
            insert(conversations).values(
                id=cid, kind="direct", created_by=sa, created_at_ms=0, last_server_seq=0
            )
        )
        conn.execute(
            insert(conversation_members),
            [
                {"conversation_id": cid, "account_id": sa, "added_at_ms": 0},
                {"conversation_id": cid, "account_id": ra, "added_at_ms": 0},
            ],
        )
        out.append((cid, sa, sd, ra, rd))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--database-url", help="PostgreSQL (postgresql+asyncpg://...); default: a fresh SQLite file"
    )
    p.add_argument("--batch", type=int, default=10, help="sends (and acks) per transaction")
    p.add_argument("--transactions", type=int, default=2000)
    p.add_argument("--profile", action="store_true", help="cProfile the writer's transactions")
    p.add_argument("--profile-top", type=int, default=25)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
