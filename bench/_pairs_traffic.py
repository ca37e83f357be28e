"""bench/pairs.py's latency test (open loop, 1 msg/s per sender) and throughput test (closed loop),
server mode: pre-built envelope bodies, P pairs of one sender and one receiver each."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import httpx

from bench import _common as common
from bench._pairs_delivery import (
    DRAIN_MAX_S,
    WARMUP_MAX_S,
    DeviceSocket,
    Sender,
    Tracker,
    close_sockets,
    delivery_report,
    make_senders,
    open_sockets,
)
from bench._pairs_server import Target, metrics_delta, scrape_all, start_saltline
from bench._pairs_setup import Pair, SetupError, setup_pairs

log = common.log


async def pairs_fixture(
    args: argparse.Namespace, target: Target, count: int, tag: str
) -> tuple[list[Pair], list[DeviceSocket], dict[str, Any]]:
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=target.base_url, timeout=60.0) as http:
        pairs = await setup_pairs(http, count, tag)
    socks, errors = await open_sockets(target.recv_ws_url, [p.receiver.access_token for p in pairs])
    if errors:
        raise SetupError(f"{len(errors)} receiver sockets failed to open: {errors[:3]}")
    setup: dict[str, Any] = {"setup_s": round(time.perf_counter() - t0, 2)}
    setup["quiesce"] = await common.quiesce(target.pids)
    return pairs, socks, setup


async def warm_up(senders: list[Sender], socks: list[DeviceSocket], ciphertext_bytes: int) -> dict[str, Any]:
    tracker = Tracker(run=secrets.token_hex(4))
    for s, sock in zip(senders, socks, strict=True):
        s.tracker = tracker
        sock.tracker = tracker
    bodies = [s.body(tracker.run, 0, ciphertext_bytes) for s in senders]
    await asyncio.gather(*(s.send(0, b) for s, b in zip(senders, bodies, strict=True)))
    waited = await tracker.drain(WARMUP_MAX_S)
    return {
        "sent": len(senders),
        "delivered": len(tracker.delivered),
        "send_errors": sum(tracker.send_errors.values()),
        "error_samples": tracker.error_samples,
        "waited_s": round(waited, 3),
    }


async def test_latency(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    pairs_n, seconds = args.latency_pairs, args.latency_seconds
    target = start_saltline(args, "latency", {})
    result: dict[str, Any] = {
        "parameters": {
            "send_via": args.send_via,
            "pairs": pairs_n,
            "rate_per_sender_msg_s": 1,
            "messages_per_sender": seconds,
            "schedule": "sender i sends message k at t0 + k + i/P (open loop)",
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    senders: list[Sender] = []
    socks: list[DeviceSocket] = []
    try:
        pairs, socks, setup = await pairs_fixture(args, target, pairs_n, "lat" + secrets.token_hex(3))
        result["setup"] = setup
        senders = await make_senders(args, target, pairs)
        result["warm_up"] = await warm_up(senders, socks, ciphertext_bytes)

        tracker = Tracker(run=secrets.token_hex(4))
        bodies = [[s.body(tracker.run, k, ciphertext_bytes) for k in range(seconds)] for s in senders]
        for s, sock in zip(senders, socks, strict=True):
            s.tracker = tracker
            sock.tracker = tracker
        lags: list[float] = []
        log(f"latency: {pairs_n} pairs x {seconds} messages, open loop")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t0 = time.perf_counter() + 0.2

        async def run_sender(i: int, sender: Sender) -> None:
            inflight: list[asyncio.Task[bool]] = []
            for k in range(seconds):
                at = t0 + k + i / pairs_n
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(time.perf_counter() - at)
                inflight.append(asyncio.create_task(sender.send(k, bodies[i][k])))
            await asyncio.gather(*inflight)

        await asyncio.gather(*(run_sender(i, s) for i, s in enumerate(senders)))
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        result["figures"] = {
            **delivery_report(tracker),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "schedule_lag_ms": common.lag_summary_ms(lags),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_sockets(socks)
        for s in senders:
            await s.close()
        result["server"].update(target.finish())
    return result


async def test_throughput(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    pairs_n, seconds, budget = args.throughput_pairs, args.throughput_seconds, args.throughput_budget
    target = start_saltline(args, "throughput", {})
    result: dict[str, Any] = {
        "parameters": {
            "send_via": args.send_via,
            "pairs": pairs_n,
            "duration_s": seconds,
            "loop": "closed: each sender awaits the 201 of its send, then sends the next",
            "prebuilt_bodies_per_sender": budget,
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    senders: list[Sender] = []
    socks: list[DeviceSocket] = []
    try:
        pairs, socks, setup = await pairs_fixture(args, target, pairs_n, "thr" + secrets.token_hex(3))
        result["setup"] = setup
        senders = await make_senders(args, target, pairs)
        result["warm_up"] = await warm_up(senders, socks, ciphertext_bytes)

        tracker = Tracker(run=secrets.token_hex(4))
        t_build = time.perf_counter()
        bodies = [[s.body(tracker.run, k, ciphertext_bytes) for k in range(budget)] for s in senders]
        setup["prebuild_s"] = round(time.perf_counter() - t_build, 2)
        for s, sock in zip(senders, socks, strict=True):
            s.tracker = tracker
            sock.tracker = tracker
        exhausted = 0
        if args.profile_hook:
            log(f"throughput: window starts now; server pid {target.pid}")
        log(f"throughput: {pairs_n} pairs, closed loop for {seconds} s")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t_start = time.perf_counter()
        t_end = t_start + seconds

        async def run_sender(i: int, sender: Sender) -> None:
            nonlocal exhausted
            seq = 0
            while time.perf_counter() < t_end:
                if seq >= budget:
                    exhausted += 1
                    return
                await sender.send(seq, bodies[i][seq])
                seq += 1

        await asyncio.gather(*(run_sender(i, s) for i, s in enumerate(senders)))
        cpu = meter.result()
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        in_window = sum(1 for t in tracker.delivered.values() if t <= t_end)
        accepted_in_window = len(tracker.accepted)
        drain_s = await tracker.drain(DRAIN_MAX_S)
        lat = common.latency_summary_ms(tracker.latencies())
        result["figures"] = {
            "delivered_msgs_per_s": round(in_window / seconds, 1),
            "delivered_in_window": in_window,
            "accepted_msgs_per_s": round(accepted_in_window / seconds, 1),
            **delivery_report(tracker),
            "latency_ms": lat,
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "senders_out_of_prebuilt_bodies": exhausted,
            "drain_s": round(drain_s, 3),
            "cpu_window": cpu,
            "server_metrics_window": server_metrics,
        }
    finally:
        await close_sockets(socks)
        for s in senders:
            await s.close()
        result["server"].update(target.finish())
    return result
