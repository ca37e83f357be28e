"""Store micro-benchmark: what the encrypted ``SqliteStore`` costs per write and per read on the
message hot path, without a server.

    .venv/bin/python bench/store.py [--messages 2000] [--dir /tmp]

Prints ONE JSON document on stdout. Not a test.

Workload (one encrypted store, ``synchronous=FULL``, in ``--dir``): a device with 20 contacts, 20
direct conversations and one ratchet session per contact, then ``--messages`` times what a
received message writes, in one transaction each: the session state (2 KiB), the message, the
conversation (its clock), the sync meta, the per-conversation server seq and the queue cursor
(6 row writes, one commit). Reported: the time per message (transaction), per row write without
commit (the same 6 writes inside one large transaction), per read of a session and a contact,
and the time to open the store.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from saltline.client_sdk.stores.base import (  # noqa: E402
    ContactRecord,
    ConversationRecord,
    MessageRecord,
    SessionRecord,
    SyncMeta,
)
from saltline.client_sdk.stores.sqlite import SqliteStore  # noqa: E402

PEERS = 20
STATE = secrets.token_bytes(2048)


def _peer(i: int) -> str:
    return f"acct-{i:04d}"


def _seed(store: SqliteStore) -> None:
    with store.transaction():
        for i in range(PEERS):
            store.device_lists.put_contact(
                ContactRecord(_peer(i), f"user{i}", secrets.token_bytes(32), secrets.token_bytes(300))
            )
            store.conversations.put_conversation(
                ConversationRecord(f"conv-{i}", "direct", ("acct-me", _peer(i)), b"\x02\x00", 1)
            )
            store.sessions.put_session(SessionRecord(f"dev-{i}", b"B" * 32, STATE, _peer(i), 1))


def _message_writes(store: SqliteStore, n: int) -> None:
    i = n % PEERS
    store.sessions.put_session(SessionRecord(f"dev-{i}", b"B" * 32, STATE, _peer(i), n))
    store.conversations.put_message(
        MessageRecord(f"conv-{i}", f"env-{n}", _peer(i), f"dev-{i}", "x" * 200, n, False, "received", n, n)
    )
    store.conversations.put_conversation(
        ConversationRecord(f"conv-{i}", "direct", ("acct-me", _peer(i)), n.to_bytes(8, "big"), 1)
    )
    store.sync.put_sync_meta(SyncMeta(f"conv-{i}", n, n, 0, b"", ("acct-me", _peer(i)), (), "direct"))
    store.cursors.set_server_seq(f"conv-{i}", n)
    store.cursors.set_acked_queue_seq(n)


def run(messages: int, directory: str) -> dict[str, object]:
    key = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "bench.db"
        store = SqliteStore.open(path, key=key)
        _seed(store)
        per_message: list[float] = []
        for n in range(messages):
            t0 = time.perf_counter()
            with store.transaction():
                _message_writes(store, n)
            per_message.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with store.transaction():
            for n in range(messages, 2 * messages):
                _message_writes(store, n)
        per_write_us = (time.perf_counter() - t0) / (6 * messages) * 1e6
        t0 = time.perf_counter()
        for n in range(messages):
            store.sessions.sessions_for(f"dev-{n % PEERS}")
            store.device_lists.get_contact(_peer(n % PEERS))
        per_read_us = (time.perf_counter() - t0) / (2 * messages) * 1e6
        store.close()
        t0 = time.perf_counter()
        SqliteStore.open(path, key=key).close()
        open_ms = (time.perf_counter() - t0) * 1e3
        size = os.path.getsize(path)
    per_message.sort()
    return {
        "benchmark": "store",
        "messages": messages,
        "message_txn_us": {
            "mean": round(statistics.fmean(per_message) * 1e6, 1),
            "p50": round(per_message[len(per_message) // 2] * 1e6, 1),
            "p99": round(per_message[int(len(per_message) * 0.99)] * 1e6, 1),
        },
        "row_write_no_commit_us": round(per_write_us, 1),
        "row_read_us": round(per_read_us, 1),
        "open_ms": round(open_ms, 2),
        "file_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    print(json.dumps(run(args.messages, args.dir), indent=2))


if __name__ == "__main__":
    main()
