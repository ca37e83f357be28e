"""bench/pairs_sdk.py's fanout test (sdk mode): one SDK sender to a group of G members with two
linked devices each, 1 msg/s (open loop); per-device delivery latency."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from bench import _common as common
from bench._pairs_delivery import DRAIN_MAX_S, WARMUP_MAX_S, Tracker, delivery_report
from bench._pairs_sdk_device import (
    SETUP_WAIT_S,
    Device,
    close_clients,
    cpu_per_message,
    events_report,
    message_text,
    parameters_common,
)
from bench._pairs_server import metrics_delta, scrape_all, start_saltline
from bench._pairs_setup import PASSWORD, SETUP_CONCURRENCY, SetupError, bounded

log = common.log


#: The fanout set-up links one device per member: the token-less signed-list updates of linking
#: are rate limited per IP (10/minute by default). Set-up only; nothing on the send/delivery path.
FANOUT_ENV = {
    "SALTLINE_RATE_LIMIT_SIGNED_LIST_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_SIGNED_LIST_PER_ACCOUNT": "1000000/minute",
}


# -- fanout ---------------------------------------------------------------------------------


@dataclass
class SdkMember:
    index: int
    first: Device
    second: Device
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def devices(self) -> list[Device]:
        return [self.first, self.second]


async def setup_member(base_url: str, tag: str, m: int, made: list[Device]) -> SdkMember:
    """Register the member's first device, link the second with the SDK's flow (begin_link on the
    new device, approve_link on the first, complete_link on the new one), connect both."""
    t0 = time.perf_counter()
    first = await Device.create(base_url, m, key_index=2 * m)
    made.append(first)
    second = await Device.create(base_url, m, key_index=2 * m + 1)
    made.append(second)
    await first.client.register(f"bench_{tag}_m{m}", PASSWORD)
    t1 = time.perf_counter()
    await common.link_devices(first.client, second.client, SETUP_WAIT_S)
    t2 = time.perf_counter()
    await first.client.connect()
    await second.client.connect()
    return SdkMember(m, first, second, {"register_s": t1 - t0, "link_s": t2 - t1})


async def confirm_member_sessions(sender: Device, member: SdkMember) -> None:
    """After the sender's first group message (X3DH to both devices): each device answers the
    sender in the member's direct conversation with it, which confirms the sender's sessions.
    The first device's answer also reaches the second device (X3DH between the two), which then
    answers over that session."""
    first, second = member.first, member.second
    cid = await first.client.create_conversation([sender.client.username])
    await first.send_setup(cid, "set-up: from the first device")
    await second.wait_received(2)  # the sender's group message, then the first device's
    await second.send_setup(cid, "set-up: from the second device")
    await first.wait_received(2)


async def test_fanout(args: argparse.Namespace) -> dict[str, Any]:
    group, seconds = args.fanout_members, args.fanout_seconds
    target = start_saltline(args, "fanout-sdk", FANOUT_ENV)
    devices_n = 2 * group
    result: dict[str, Any] = {
        "mode": "sdk",
        "parameters": {
            **parameters_common(),
            "members": group,
            "devices_per_member": 2,
            "recipient_devices": devices_n,
            "second_device": "linked with the SDK flow: begin_link / approve_link / complete_link",
            "rate_msg_s": 1,
            "messages": seconds,
            "schedule": "send_text to the group at t0 + k (open loop); each message is one envelope "
            f"with {devices_n} ciphertexts encrypted by the sender inside the window",
            "server_env_extra": FANOUT_ENV,
        },
        "server": target.describe(),
    }
    made: list[Device] = []
    try:
        t_setup = time.perf_counter()
        tag = "fsd" + secrets.token_hex(3)
        sender = await Device.create(target.base_url, 0)
        made.append(sender)
        await sender.client.register(f"bench_{tag}_s", PASSWORD)
        await sender.client.connect()
        members = await bounded(
            SETUP_CONCURRENCY, [setup_member(target.base_url, tag, m, made) for m in range(group)]
        )
        t_linked = time.perf_counter()
        log(f"fanout (sdk): {group} members registered, second devices linked in {t_linked - t_setup:.1f} s")
        devices = [d for m in members for d in m.devices]
        conv = await sender.client.create_conversation([m.first.client.username for m in members])
        await sender.send_setup(conv, "set-up: hello group")
        await asyncio.gather(*(d.wait_received(1) for d in devices))
        await bounded(SETUP_CONCURRENCY, [confirm_member_sessions(sender, m) for m in members])
        await sender.wait_received(devices_n)
        confirmed = sum(1 for d in devices if sender.session_confirmed(d.client.device_id))
        if confirmed != devices_n:
            raise SetupError(f"the sender holds {confirmed} of {devices_n} confirmed sessions")
        setup: dict[str, Any] = {
            "setup_s": round(time.perf_counter() - t_setup, 2),
            "register_and_link_s": round(t_linked - t_setup, 2),
            "link_s_per_member": common.latency_summary_ms([m.timings["link_s"] for m in members]),
            "sessions_s": round(time.perf_counter() - t_linked, 2),
            "sessions_confirmed": confirmed,
            "session_setup": "the sender's first group message (X3DH to every device), then every member "
            "device answers the sender in a direct conversation; timed messages are ordinary ratchet "
            "messages",
            "setup_concurrency": SETUP_CONCURRENCY,
        }
        setup["quiesce"] = await common.quiesce(target.pid)
        result["setup"] = setup

        all_keys = list(range(devices_n))

        warm = Tracker(run=secrets.token_hex(4))
        for d in devices:
            d.attach(warm)
        warm_keys = [(d, 0) for d in all_keys]
        resent = 0
        if not await sender.send(warm, conv, 0, message_text(warm.run, 0, 0), warm_keys):
            resent = 1
            await sender.resend_leftovers(warm, warm_keys)
        waited = await warm.drain(WARMUP_MAX_S)
        result["warm_up"] = {
            "delivered": len(warm.delivered),
            "expected": devices_n,
            "send_errors": sum(warm.send_errors.values()),
            "error_samples": warm.error_samples,
            "resent_from_outbox": resent,
            "waited_s": round(waited, 3),
        }

        tracker = Tracker(run=secrets.token_hex(4))
        texts = [message_text(tracker.run, 0, k) for k in range(seconds)]
        for d in devices:
            d.attach(tracker)
        sender.reset()
        log(f"fanout (sdk): 1 sender -> {group} members x 2 devices, {seconds} messages at 1/s")
        scraped = await scrape_all(target)
        meter = common.CpuMeter(target.pid)
        t0 = time.perf_counter() + 0.2
        inflight: list[asyncio.Task[bool]] = []
        lags: list[float] = []
        for k in range(seconds):
            at = t0 + k
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - at)
            inflight.append(
                asyncio.create_task(sender.send(tracker, conv, k, texts[k], [(d, k) for d in all_keys]))
            )
        await asyncio.gather(*inflight)
        cpu = meter.result()
        drain_s = await tracker.drain(DRAIN_MAX_S)
        server_metrics = metrics_delta(scraped, await scrape_all(target))
        per_device = [sum(1 for d, _ in tracker.delivered if d == i) for i in all_keys]
        result["figures"] = {
            **delivery_report(tracker),
            **events_report(made),
            "deliveries_per_device": {"min": min(per_device, default=0), "max": max(per_device, default=0)},
            "latency_ms": common.latency_summary_ms(tracker.latencies()),
            "send_rtt_ms": common.latency_summary_ms(tracker.send_rtt),
            "schedule_lag_ms": common.lag_summary_ms(lags),
            "drain_s": round(drain_s, 3),
            "cpu_send_window": cpu,
            "cpu_per_delivery_ms": cpu_per_message(cpu, len(tracker.delivered)),
            "server_metrics_window_and_drain": server_metrics,
        }
    finally:
        await close_clients(made)
        result["server"].update(target.finish())
    return result
