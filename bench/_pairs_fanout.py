"""bench/pairs.py's fanout test: one sender to a group of G members with two devices each."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from bench import _common as common
from bench._pairs_delivery import (
    DRAIN_MAX_S,
    WARMUP_MAX_S,
    DeviceSocket,
    Tracker,
    close_sockets,
    delivery_report,
    open_sockets,
)
from bench._pairs_server import metrics_delta, scrape_all, start_saltline
from bench._pairs_setup import (
    CLOCK_BYTES,
    PASSWORD,
    SETUP_CONCURRENCY,
    Identity,
    SetupError,
    b64e,
    bounded,
    check_status,
    register,
)
from saltline.crypto import device_list as dl
from saltline.crypto.keys import DeviceDHKey, DeviceSigningKey

log = common.log


@dataclass
class Member:
    """A group member: one account with two devices (the second linked through a new signed list)."""

    first: Identity
    second_device_id: bytes = b""
    second_token: str = ""


async def setup_member(http: httpx.AsyncClient, ident: Identity) -> Member:
    await register(http, ident, prekeys=False)
    device_id = os.urandom(16)
    signing = DeviceSigningKey.generate()
    dh = DeviceDHKey.generate()
    entry = dl.bind_device(
        ident.account_key.public_key, device_id, signing, dh.public_key, 0, ident.signed_list.version + 1
    )
    signed = dl.with_device_added(ident.signed_list, ident.account_key, entry)
    body = check_status(
        await http.put(
            "/v1/accounts/me/device-list", headers=ident.headers, json={"device_list": signed.to_b64()}
        ),
        "add second device",
        200,
    )
    ident.signed_list = signed
    ident.list_version = int(body["version"])
    tokens = check_status(
        await http.post(
            "/v1/auth/login",
            json={"username": ident.username, "password": PASSWORD, "device_id": b64e(device_id)},
        ),
        "second device login",
        200,
    )
    return Member(ident, device_id, tokens["access_token"])


async def test_fanout(args: argparse.Namespace, ciphertext_bytes: int) -> dict[str, Any]:
    """One sender to a group of G members with 2 devices each, 1 msg/s for N s (open loop);
    per-device delivery latency (every recipient device is one delivery)."""
    group, seconds = args.fanout_members, args.fanout_seconds
    target = start_saltline(args, "fanout", {})
    devices_n = 2 * group
    result: dict[str, Any] = {
        "parameters": {
            "members": group,
            "devices_per_member": 2,
            "recipient_devices": devices_n,
            "rate_msg_s": 1,
            "messages": seconds,
            "drain_max_s": DRAIN_MAX_S,
        },
        "server": target.describe(),
    }
    socks: list[DeviceSocket] = []
    http = httpx.AsyncClient(base_url=target.base_url, timeout=60.0)
    try:
        t_setup = time.perf_counter()
        tag = "fan" + secrets.token_hex(3)
        sender = Identity.new(f"bench_{tag}_s")
        await register(http, sender, prekeys=False)
        members = await bounded(
            SETUP_CONCURRENCY,
            [setup_member(http, Identity.new(f"bench_{tag}_m{i}")) for i in range(group)],
        )
        conv = check_status(
            await http.post(
                "/v1/conversations",
                headers=sender.headers,
                json={"kind": "group", "members": [m.first.account_id for m in members]},
            ),
            "create group",
            200,
            201,
        )["conversation_id"]
        # Device index d: member d // 2, its first (even) or second (odd) device.
        device_ids = [d for m in members for d in (m.first.device_id, m.second_device_id)]
        tokens = [t for m in members for t in (m.first.access_token, m.second_token)]
        socks, errors = await open_sockets(target.recv_ws_url, tokens)
        if errors:
            raise SetupError(f"{len(errors)} member sockets failed to open: {errors[:3]}")
        versions = {sender.account_id: sender.list_version}
        versions.update({m.first.account_id: m.first.list_version for m in members})
        setup: dict[str, Any] = {"setup_s": round(time.perf_counter() - t_setup, 2)}
        setup["quiesce"] = await common.quiesce(target.pids)
        result["setup"] = setup

        path = f"/v1/conversations/{conv}/envelopes"
        headers = {**sender.headers, "Content-Type": "application/json"}

        def body(run: str, seq: int) -> bytes:
            copies = []
            for d, device_id in enumerate(device_ids):
                prefix = f"B|{run}|{d}|{seq}|".encode()
                copies.append(
                    {
                        "device_id": b64e(device_id),
                        "ciphertext": b64e(prefix + os.urandom(ciphertext_bytes - len(prefix))),
                    }
                )
            return orjson.dumps(
                {
                    "envelope_id": b64e(os.urandom(16)),
                    "clock": b64e(os.urandom(CLOCK_BYTES)),
                    "device_list_versions": versions,
                    "ephemeral": False,
                    "ciphertexts": copies,
                }
            )

        async def send(tracker: Tracker, seq: int, data: bytes) -> None:
            t = time.perf_counter()
            for d in range(devices_n):
                tracker.sent_at[(d, seq)] = t
            try:
                r = await http.post(path, content=data, headers=headers)
            except Exception as exc:
                tracker.error(type(exc).__name__, f"seq {seq}: {type(exc).__name__}: {exc}")
                return
            if r.status_code != 201:
                tracker.error(f"http_{r.status_code}", f"seq {seq}: HTTP {r.status_code}: {r.text}")
                return
            tracker.send_rtt.append(time.perf_counter() - t)
            tracker.accepted.update((d, seq) for d in range(devices_n))

        warm = Tracker(run=secrets.token_hex(4))
        for sock in socks:
            sock.tracker = warm
        await send(warm, 0, body(warm.run, 0))
        waited = await warm.drain(WARMUP_MAX_S)
        result["warm_up"] = {
            "delivered": len(warm.delivered),
            "expected": devices_n,
            "send_errors": sum(warm.send_errors.values()),
            "error_samples": warm.error_samples,
            "waited_s": round(waited, 3),
        }

        tracker = Tracker(run=secrets.token_hex(4))
        bodies = [body(tracker.run, k) for k in range(seconds)]
        for sock in socks:
            sock.tracker = tracker
        log(f"fanout: 1 sender -> {group} members x 2 devices, {seconds} messages at 1/s")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pids)
        t0 = time.perf_counter() + 0.2
        inflight: list[asyncio.Task[None]] = []
        for k in range(seconds):
            delay = t0 + k - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inflight.append(asyncio.create_task(send(tracker, k, bodies[k])))
        await asyncio.gather(*inflight)
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        result["figures"] = {
            **delivery_report(tracker),
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_sockets(socks)
        await http.aclose()
        result["server"].update(target.finish())
    return result
