"""Workload "pairs-v1" (bench/WORKLOAD.md), SDK MODE: senders and receivers are real SDK
clients (``saltline.client_sdk.client.Client``) that encrypt and decrypt inside the timed window.

    from bench import pairs, pairs_sdk
    result = await pairs_sdk.run_sdk_test(pairs.parse_args([...]), "latency")  # | "throughput" | "fanout"

The server is started exactly as in server mode (``start_saltline`` of ``bench/_pairs_server.py``: a fresh
SQLite data directory, or ``--database-url``); the fanout test also raises the token-less
signed-list rate limits, which the SDK's linking uses once per linked device (set-up only).
The idle test is the same in both modes (it measures held sockets) and is not repeated here.
This module holds the pairs (latency, throughput); the SDK client wrapper is
bench/_pairs_sdk_device.py and the fanout test bench/_pairs_sdk_fanout.py.

Every client lives in this one process and event loop (no per-client threads) with an in-memory
store (``saltline.client_sdk.stores.memory.MemoryStore``), so the figures carry no client disk I/O; each
client has its own ``httpx.AsyncClient`` (the SDK's transport) and its own delivery socket (the
SDK's ``DeliverySocket``: ``websockets``, JSON frames, ack after the message is stored).

Set-up (untimed), per pair i: ``S_i`` and ``R_i`` register (one device each, prekeys uploaded by
the SDK), both connect their delivery socket, ``S_i`` creates the direct conversation, sends one
message (an X3DH prekey message) and ``R_i`` answers with one; once ``S_i`` has decrypted the
answer its session no longer carries the X3DH header, so every timed message is an ordinary
Double Ratchet message (checked for every pair before the window: ``setup.sessions_confirmed``).

Delivered = the instant the receiving client emits ``MessageReceived`` (decrypted, stored and
acknowledged), from ``time.perf_counter()`` in this process; matched by the ``B|<run>|<pair>|<seq>|``
prefix of the decrypted text. Accepted = ``send_text`` returned and the message left the SDK's
outbox (the server stored it); a send that returned with the message still in the outbox (a
network error) counts as a send error.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Python put bench/ first on sys.path, where bench/crypto.py would shadow the crypto package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)
from bench._pairs_delivery import DRAIN_MAX_S, WARMUP_MAX_S, Tracker, delivery_report  # noqa: E402
from bench._pairs_sdk_device import (  # noqa: E402
    Device,
    close_clients,
    cpu_per_message,
    events_report,
    message_text,
    parameters_common,
    use_store,
)
from bench._pairs_sdk_fanout import test_fanout  # noqa: E402
from bench._pairs_server import Target, metrics_delta, scrape_all, start_saltline  # noqa: E402
from bench._pairs_setup import PASSWORD, SETUP_CONCURRENCY, SetupError, bounded  # noqa: E402

log = common.log


# -- pairs ----------------------------------------------------------------------------------


@dataclass
class SdkPair:
    index: int
    sender: Device
    receiver: Device
    conversation_id: str = ""

    @property
    def devices(self) -> list[Device]:
        return [self.sender, self.receiver]


async def setup_pair(base_url: str, tag: str, i: int, made: list[Device]) -> SdkPair:
    sender = await Device.create(base_url, i)
    made.append(sender)
    receiver = await Device.create(base_url, i)
    made.append(receiver)
    await sender.client.register(f"bench_{tag}_s{i}", PASSWORD)
    await receiver.client.register(f"bench_{tag}_r{i}", PASSWORD)
    await sender.client.connect()
    await receiver.client.connect()
    pair = SdkPair(i, sender, receiver)
    pair.conversation_id = await sender.client.create_conversation([receiver.client.username])
    # Sessions: S's first message is an X3DH prekey message; R's answer confirms S's session.
    await sender.send_setup(pair.conversation_id, "set-up: hello")
    await receiver.wait_received(1)
    await receiver.send_setup(pair.conversation_id, "set-up: hello back")
    await sender.wait_received(1)
    return pair


async def pairs_fixture(
    target: Target, count: int, tag: str, made: list[Device]
) -> tuple[list[SdkPair], dict[str, Any]]:
    t0 = time.perf_counter()
    pairs = await bounded(
        SETUP_CONCURRENCY, [setup_pair(target.base_url, tag, i, made) for i in range(count)]
    )
    confirmed = sum(1 for p in pairs if p.sender.session_confirmed(p.receiver.client.device_id))
    if confirmed != count:
        raise SetupError(f"only {confirmed} of {count} senders hold a confirmed session")
    setup: dict[str, Any] = {
        "setup_s": round(time.perf_counter() - t0, 2),
        "sessions_confirmed": confirmed,
        "session_setup": "S sends one message (X3DH prekey message), R answers one; timed messages are "
        "ordinary ratchet messages",
    }
    setup["quiesce"] = await common.quiesce(target.pid)
    return pairs, setup


async def warm_up_pairs(pairs: list[SdkPair]) -> dict[str, Any]:
    tracker = Tracker(run=secrets.token_hex(4))
    for p in pairs:
        p.receiver.attach(tracker)
    await asyncio.gather(
        *(
            p.sender.send(
                tracker, p.conversation_id, 0, message_text(tracker.run, p.index, 0), [(p.index, 0)]
            )
            for p in pairs
        )
    )
    left = [p for p in pairs if p.sender.client.store.outbox.outbox()]
    for p in left:
        await p.sender.resend_leftovers(tracker, [(p.index, 0)])
    waited = await tracker.drain(WARMUP_MAX_S)
    return {
        "sent": len(pairs),
        "delivered": len(tracker.delivered),
        "send_errors": sum(tracker.send_errors.values()),
        "error_samples": tracker.error_samples,
        "resent_from_outbox": len(left),
        "waited_s": round(waited, 3),
    }


async def test_latency(args: argparse.Namespace) -> dict[str, Any]:
    pairs_n, seconds = args.latency_pairs, args.latency_seconds
    target = start_saltline(args, "latency-sdk", {})
    result: dict[str, Any] = {
        "mode": "sdk",
        "parameters": {
            **parameters_common(),
            "pairs": pairs_n,
            "rate_per_sender_msg_s": 1,
            "messages_per_sender": seconds,
            "schedule": "sender i calls send_text for message k at t0 + k + i/P (open loop)",
        },
        "server": target.describe(),
    }
    made: list[Device] = []
    try:
        pairs, setup = await pairs_fixture(target, pairs_n, "lsd" + secrets.token_hex(3), made)
        result["setup"] = setup
        result["warm_up"] = await warm_up_pairs(pairs)

        tracker = Tracker(run=secrets.token_hex(4))
        texts = [[message_text(tracker.run, p.index, k) for k in range(seconds)] for p in pairs]
        for p in pairs:
            p.receiver.attach(tracker)
            p.sender.reset()
        lags: list[float] = []
        log(f"latency (sdk): {pairs_n} pairs x {seconds} messages, open loop")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pid)
        t0 = time.perf_counter() + 0.2

        async def run_sender(p: SdkPair) -> None:
            inflight: list[asyncio.Task[bool]] = []
            for k in range(seconds):
                at = t0 + k + p.index / pairs_n
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(time.perf_counter() - at)
                inflight.append(
                    asyncio.create_task(
                        p.sender.send(tracker, p.conversation_id, k, texts[p.index][k], [(p.index, k)])
                    )
                )
            await asyncio.gather(*inflight)

        await asyncio.gather(*(run_sender(p) for p in pairs))
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        result["figures"] = {
            **delivery_report(tracker),
            **events_report(made),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "schedule_lag_ms": common.lag_summary_ms(lags),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "cpu_per_delivered_message_ms": cpu_per_message(cpu, len(tracker.delivered)),
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_clients(made)
        result["server"].update(target.finish())
    return result


async def test_throughput(args: argparse.Namespace) -> dict[str, Any]:
    pairs_n, seconds = args.throughput_pairs, args.throughput_seconds
    target = start_saltline(args, "throughput-sdk", {})
    result: dict[str, Any] = {
        "mode": "sdk",
        "parameters": {
            **parameters_common(),
            "pairs": pairs_n,
            "duration_s": seconds,
            "loop": "closed: each sender awaits send_text (it returns once the server stored the message), "
            "then sends the next",
        },
        "server": target.describe(),
    }
    made: list[Device] = []
    try:
        pairs, setup = await pairs_fixture(target, pairs_n, "tsd" + secrets.token_hex(3), made)
        result["setup"] = setup
        result["warm_up"] = await warm_up_pairs(pairs)

        tracker = Tracker(run=secrets.token_hex(4))
        for p in pairs:
            p.receiver.attach(tracker)
            p.sender.reset()
        if args.profile_hook:
            log(
                f"throughput (sdk): window starts now; server pid {target.pid}, "
                f"load generator pid {os.getpid()}"
            )
        log(f"throughput (sdk): {pairs_n} pairs, closed loop for {seconds} s")
        scraped = await scrape_all(target)
        profiler = cProfile.Profile() if args.profile_loadgen else None
        meter = common.CpuMeter(target.pid)
        if profiler is not None:
            profiler.enable()
        t_start = time.perf_counter()
        t_end = t_start + seconds

        async def run_sender(p: SdkPair) -> None:
            seq = 0
            while time.perf_counter() < t_end:
                text = message_text(tracker.run, p.index, seq)
                await p.sender.send(tracker, p.conversation_id, seq, text, [(p.index, seq)])
                seq += 1

        await asyncio.gather(*(run_sender(p) for p in pairs))
        cpu = meter.result()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile_loadgen)
            log(f"throughput (sdk): load generator profile written to {args.profile_loadgen}")
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        in_window = sum(1 for t in tracker.delivered.values() if t <= t_end)
        accepted_in_window = len(tracker.accepted)
        drain_s = await tracker.drain(DRAIN_MAX_S)
        result["figures"] = {
            "delivered_msgs_per_s": round(in_window / seconds, 1),
            "delivered_in_window": in_window,
            "accepted_msgs_per_s": round(accepted_in_window / seconds, 1),
            **delivery_report(tracker),
            **events_report(made),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "drain_s": round(drain_s, 3),
            "cpu_window": cpu,
            "cpu_per_delivered_message_ms": cpu_per_message(cpu, in_window),
            "server_metrics_window": server_metrics,
        }
    finally:
        await close_clients(made)
        result["server"].update(target.finish())
    return result


TESTS: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "latency": test_latency,
    "throughput": test_throughput,
    "fanout": test_fanout,
}


async def run_sdk_test(args: argparse.Namespace, test: str) -> dict[str, Any]:
    """Run one pairs-v1 test in SDK mode ("latency", "throughput" or "fanout"); the per-test
    document, in the shape of ``bench/pairs.py``'s server-mode tests, with ``"mode": "sdk"``."""
    try:
        fn = TESTS[test]
    except KeyError:
        raise ValueError(f"sdk mode has no test {test!r} (latency, throughput, fanout)") from None
    use_store(args.sdk_store)
    return await fn(args)
