"""Sync benchmark: how long a device takes to catch up on a backlog of operations after being
offline, and what materialising one operation costs.

    .venv/bin/python bench/sync.py [--ops 10000] [--e2e-ops 10000] [--no-e2e]

Prints ONE JSON document on stdout (progress on stderr). Not a test.

1. ``core`` (sans-I/O, no crypto, no network): three devices of two accounts author ``--ops``
   mixed operations (messages, edits, deletes, reactions, read markers, settings) in one order;
   a fresh :class:`ConversationState` then receives all of them, each one decoded from its
   plaintext and compact clock first (``sync.decode`` + ``receive``), and builds the view once.
   Also measured: the same with the operations delivered in reverse ``server_seq`` order (the
   worst case for holding back: everything waits until the first arrives).
2. ``e2e`` (a real server subprocess like ``bench/sdk.py``, SQLite, in-memory client stores): bob
   sends ``--e2e-ops`` (default 2,000, not 10,000: see ``reduced_from``) mixed operations to a
   conversation with alice while alice's only device is offline (untimed), then alice's device
   connects; timed until it has drained its queue and its materialised view equals bob's
   (decrypt, store, apply, acknowledge each operation).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)

log = common.log

from saltline.client_sdk.client import Client, ConversationView  # noqa: E402
from saltline.client_sdk.core import sync  # noqa: E402
from saltline.client_sdk.core.events import Drained, Event  # noqa: E402
from saltline.client_sdk.stores.memory import MemoryStore  # noqa: E402

PASSWORD = "benchmark passphrase"
E2E_DEFAULT_OPS = 2_000
#: (kind, weight) of the mixed workload.
MIX = (("message", 50), ("edit", 10), ("delete", 5), ("reaction", 15), ("read", 15), ("settings", 5))


def _kinds(n: int, rng: random.Random) -> list[str]:
    names = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    return rng.choices(names, weights, k=n)


# -- 1. core --------------------------------------------------------------------------------------


def build_ops(n: int, seed: int = 1) -> list[tuple[int, bytes, bytes, bytes, bytes]]:
    """``n`` operations in ``server_seq`` order: ``(seq, plaintext, clock, device, account)``."""
    rng = random.Random(seed)
    alice, bob = os.urandom(16), os.urandom(16)
    devices = [(os.urandom(16), alice), (os.urandom(16), alice), (os.urandom(16), bob)]
    composers = [sync.Composer(d, a) for d, a in devices]
    source = sync.ConversationState(os.urandom(16), [alice, bob])
    mine: dict[bytes, list[sync.Dot]] = {alice: [], bob: []}
    every: list[sync.Dot] = []
    out: list[tuple[int, bytes, bytes, bytes, bytes]] = []
    for seq, kind in enumerate(_kinds(n, rng), start=1):
        i = rng.randrange(len(devices))
        device, account = devices[i]
        body: Any
        if kind == "edit" and mine[account]:
            body = sync.Edit(rng.choice(mine[account][-200:]), f"edited {seq}")
        elif kind == "delete" and mine[account]:
            body = sync.Delete(rng.choice(mine[account][-200:]))
        elif kind == "reaction" and every:
            body = sync.ReactionAdd(rng.choice(every[-200:]), rng.choice("👍❤😂🎉"))
        elif kind == "read" and seq > 1:
            body = sync.ReadMarker(seq - 1)
        elif kind == "settings":
            body = rng.choice(
                [
                    sync.SettingsChange("title", f"title {seq}"),
                    sync.SettingsChange("mute", rng.random() < 0.5),
                ]
            )
        else:
            body = sync.Message(
                f"message {seq} " + "x" * rng.randrange(10, 120), None, 1_700_000_000_000 + seq
            )
        op = composers[i].compose(source, body)
        source.receive(seq, op)
        if isinstance(body, sync.Message):
            mine[account].append(op.dot)
            every.append(op.dot)
        plaintext, clock = sync.encode(op)
        out.append((seq, plaintext, clock, device, account))
    return out


def catch_up_core(
    ops: list[tuple[int, bytes, bytes, bytes, bytes]], cid: bytes, members: list[bytes]
) -> dict[str, Any]:
    state = sync.ConversationState(cid, members)
    t0 = time.perf_counter()
    for seq, plaintext, clock, device, account in ops:
        state.receive(seq, sync.decode(plaintext, clock, device, account))
    t1 = time.perf_counter()
    view = state.view()
    t2 = time.perf_counter()
    assert state.base_seq == len(ops), (state.base_seq, len(ops))
    return {"receive_s": t1 - t0, "view_s": t2 - t1, "messages": len(view.messages), "view": view}


def run_core(n: int, repeats: int) -> dict[str, Any]:
    ops = build_ops(n)
    members = list({o[4] for o in ops})
    cid = os.urandom(16)
    t0 = time.perf_counter()
    for _seq, plaintext, clock, device, account in ops:
        sync.decode(plaintext, clock, device, account)
    decode_s = time.perf_counter() - t0
    runs = [catch_up_core(ops, cid, members) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["receive_s"] + r["view_s"])
    reverse = catch_up_core(list(reversed(ops)), cid, members)
    assert reverse["view"] == best["view"], "reverse delivery must give the same state"
    counts: dict[str, int] = {}
    for _, plaintext, *_rest in ops:
        kind = json.loads(plaintext)["type"]
        counts[kind] = counts.get(kind, 0) + 1
    total = best["receive_s"] + best["view_s"]
    return {
        "what": "fresh ConversationState: sync.decode + receive of every op in server_seq order, then view()",
        "operations": n,
        "op_types": dict(sorted(counts.items())),
        "messages_in_view": best["messages"],
        "repeats": repeats,
        "best_of_repeats": {
            "catch_up_s": round(total, 4),
            "receive_incl_decode_s": round(best["receive_s"], 4),
            "view_s": round(best["view_s"], 4),
            "per_op_us": round(best["receive_s"] / n * 1e6, 2),
            "decode_only_per_op_us": round(decode_s / n * 1e6, 2),
            "ops_per_s": round(n / total, 1),
        },
        "all_repeats_catch_up_s": [round(r["receive_s"] + r["view_s"], 4) for r in runs],
        "reverse_order": {
            "what": "same ops delivered newest first (all held until seq 1 arrives), same final view",
            "catch_up_s": round(reverse["receive_s"] + reverse["view_s"], 4),
            "per_op_us": round(reverse["receive_s"] / n * 1e6, 2),
        },
    }


# -- 2. e2e ---------------------------------------------------------------------------------------


def _shared(view: ConversationView) -> object:
    return (view.messages, view.settings, view.mute, view.members, view.read_up_to, view.receipts)


async def run_e2e(n: int, server: Any, timeout_s: float) -> dict[str, Any]:
    url = server.base_url
    suffix = secrets.token_hex(3)
    desk = await Client.create(url, MemoryStore())
    await desk.register(f"alice_{suffix}", PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(f"bob_{suffix}", PASSWORD)
    cid = await bob.create_conversation([desk.username])
    rng = random.Random(2)
    refs: list[str] = []
    t0 = time.perf_counter()
    for i, kind in enumerate(_kinds(n, rng)):
        if i % 100 == 0 and i:
            refs = [m.message_ref for m in (await bob.conversation(cid)).messages[-200:] if not m.deleted]
        if kind == "edit" and refs:
            await bob.edit(cid, rng.choice(refs), f"edited {i}")
        elif kind == "delete" and refs:
            ref = rng.choice(refs)
            refs.remove(ref)
            await bob.delete(cid, ref)
        elif kind == "reaction" and refs:
            await bob.react(cid, rng.choice(refs), rng.choice("👍❤😂🎉"))
        elif kind == "read" and i:
            await bob.mark_read(cid)
        elif kind == "settings":
            await bob.set_title(cid, f"title {i}")
        else:
            await bob.send_text(cid, f"message {i} " + "x" * rng.randrange(10, 120))
        if i % 1000 == 999:
            log(f"e2e: {i + 1} ops sent")
    send_s = time.perf_counter() - t0
    want = _shared(await bob.conversation(cid))
    log(f"e2e: {n} ops sent in {send_s:.1f} s; alice's device reconnects")

    meter = common.CpuMeter(server.pid)
    t1 = time.perf_counter()
    await desk.connect()
    drained_s: float | None = None
    deadline = t1 + timeout_s
    same = False
    while time.perf_counter() < deadline:
        event = await desk.next_event(Event, max(0.01, deadline - time.perf_counter()))
        if isinstance(event, Drained):
            drained_s = time.perf_counter() - t1
            if _shared(await desk.conversation(cid)) == want:
                same = True
                break
    total_s = time.perf_counter() - t1
    cpu = meter.result()
    view = await desk.conversation(cid)
    t2 = time.perf_counter()
    await desk.conversation(cid)
    view_s = time.perf_counter() - t2
    for c in (desk, bob):
        await c.close()
    return {
        "what": "alice's device offline while bob sends mixed ops; reconnect until drained and identical",
        "operations": n,
        "send_untimed_s": round(send_s, 3),
        "catch_up_s": round(total_s, 3),
        "drained_s": None if drained_s is None else round(drained_s, 3),
        "per_op_ms": round(total_s / n * 1000, 3),
        "ops_per_s": round(n / total_s, 1),
        "state_identical_to_sender": same,
        "messages_in_view": len(view.messages),
        "conversation_view_call_s": round(view_s, 4),
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=10_000, help="operations for the core measurement")
    parser.add_argument("--repeats", type=int, default=5)
    #: 10,000 would take about 2 minutes (80 s of untimed sending alone at ~130 ops/s), over the
    #: 60 s budget for this part, so the default is 2,000 (``e2e.reduced_from`` says so).
    parser.add_argument("--e2e-ops", type=int, default=E2E_DEFAULT_OPS)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--catch-up-timeout", type=float, default=600.0)
    args = parser.parse_args()
    log(f"core: {args.ops} ops")
    doc: dict[str, Any] = {
        "benchmark": "sync",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "mix_weights_percent": dict(MIX),
            "authors": "core: 3 devices of 2 accounts; e2e: bob's one device -> alice's one device",
            "e2e_store": "MemoryStore (client), SQLite synchronous=FULL (server)",
        },
        "core": run_core(args.ops, args.repeats),
    }
    if not args.no_e2e:
        with tempfile.TemporaryDirectory(prefix="saltline-bench-sync-") as tmp_name:
            server = common.start_sdk_server(Path(tmp_name))
            try:
                doc["e2e"] = asyncio.run(run_e2e(args.e2e_ops, server, args.catch_up_timeout))
                if args.e2e_ops == E2E_DEFAULT_OPS:
                    doc["e2e"]["reduced_from"] = {
                        "operations": 10_000,
                        "why": "10,000 would take > 60 s (sending ~130 ops/s, untimed); 2,000 used",
                    }
            finally:
                code = server.stop()
            doc["server"] = {"exit_code": code, "log": server.log_problems()}
    doc["versions"] = common.versions()
    doc["machine"] = common.machine()
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
