"""SDK benchmark: one client encrypting and sending to a peer with 3 devices, on localhost.

    .venv/bin/python bench/sdk.py [--store sqlite|memory] [--seconds 10] [--latency-seconds 10]

Prints ONE JSON document on stdout (progress on stderr). Not a test.

Set-up (untimed): a server subprocess like ``saltline demo`` (``python -m saltline.server db upgrade``, then
``python -m saltline.server serve`` on a free 127.0.0.1 port, SQLite in a temporary directory, cheap
argon2 and high registration/provisioning rate limits for the set-up; nothing on the send or
delivery path differs from the defaults). The sender registers one account with one device; the
recipient registers an account and links two more devices with the real link flow (3 devices).
Every client uses ``--store``: ``sqlite`` (default) is the durable ``SqliteStore`` encrypted at rest
(``synchronous=FULL``, what an app uses), ``memory`` the in-memory store. Warm-up: 5 messages (X3DH
session set-up to each device) delivered to all three devices.

1. ``latency`` (recipients connected, all clients in this one process and event loop): one message
   at a time; the time from calling ``send_text`` to each recipient device's ``MessageReceived``
   callback (the message is durably stored by then), per device and until all 3 devices had it;
   also how long ``send_text`` itself takes (encrypt 3 ciphertexts, outbox write, HTTP POST until
   the server has committed).
2. ``throughput`` (recipients disconnected, so their decryption does not share the CPU): closed
   loop, ``await send_text`` back to back for ``--seconds``: messages/s one client encrypts and has
   stored by the server (each one 3 ciphertexts). Then the recipients reconnect and every message
   must arrive on all 3 devices (``catch_up``: how fast the 3 devices, sharing this process,
   decrypt, store and acknowledge the backlog).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Python put bench/ first on sys.path, where bench/crypto.py would shadow the crypto package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)

log = common.log

from saltline.client_sdk.client import Client  # noqa: E402
from saltline.client_sdk.core.events import MessageReceived  # noqa: E402
from saltline.client_sdk.stores.memory import MemoryStore  # noqa: E402
from saltline.client_sdk.stores.sqlite import SqliteStore  # noqa: E402

PASSWORD = "benchmark passphrase"
TEXT = "x" * 200  # the plaintext size of the server benchmark's workload


class Recorder:
    """Arrival times of MessageReceived per envelope id on each recipient device."""

    def __init__(self, devices: list[Client]) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.waiters: dict[str, asyncio.Future[None]] = {}
        self.count = 0
        self.n = len(devices)
        self.progress = asyncio.Event()
        for device in devices:
            device.on(MessageReceived, self._on)

    def _on(self, event: MessageReceived) -> None:
        now = time.perf_counter()
        self.count += 1
        times = self.arrivals.setdefault(event.envelope_id, [])
        times.append(now)
        waiter = self.waiters.get(event.envelope_id)
        if waiter is not None and len(times) == self.n and not waiter.done():
            waiter.set_result(None)
        self.progress.set()

    async def all_received(self, envelope_id: str, wait_s: float = 15.0) -> list[float]:
        times = self.arrivals.get(envelope_id, [])
        if len(times) < self.n:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters[envelope_id] = waiter
            await asyncio.wait_for(waiter, wait_s)
        return self.arrivals[envelope_id]


async def run(args: argparse.Namespace, server: Any, tmp: Path) -> dict[str, Any]:
    stores: list[Any] = []

    def store(name: str) -> Any:
        if args.store == "memory":
            return MemoryStore()
        s = SqliteStore.open(tmp / f"{name}.db", key=secrets.token_bytes(32))
        stores.append(s)
        return s

    url = server.base_url
    suffix = secrets.token_hex(3)
    sender = await Client.create(url, store("sender"))
    await sender.register(f"sender_{suffix}", PASSWORD)
    first = await Client.create(url, store("peer1"))
    await first.register(f"peer_{suffix}", PASSWORD)
    peers = [first]
    for i in (2, 3):
        device = await Client.create(url, store(f"peer{i}"))
        await common.link_devices(first, device, 30.0)
        peers.append(device)
    assert len(await first.devices()) == 3
    recorder = Recorder(peers)
    for peer in peers:
        await peer.connect()
    cid = await sender.create_conversation([first.username])
    log("set-up done: sender + recipient with 3 linked devices")

    for _ in range(5):  # warm-up: sessions to each device
        await recorder.all_received(await sender.send_text(cid, TEXT))

    # 1. latency
    send_call: list[float] = []
    per_device: list[float] = []
    all_devices: list[float] = []
    first_device: list[float] = []
    end = time.perf_counter() + args.latency_seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        envelope_id = await sender.send_text(cid, TEXT)
        send_call.append(time.perf_counter() - t0)
        times = await recorder.all_received(envelope_id)
        per_device.extend(t - t0 for t in times)
        all_devices.append(max(times) - t0)
        first_device.append(min(times) - t0)
    log(f"latency: {len(all_devices)} messages")

    # 2. throughput (recipients offline)
    for peer in peers:
        await peer.disconnect()
    received_before = recorder.count
    meter = common.CpuMeter(server.pid)
    sent = 0
    t0 = time.perf_counter()
    end = t0 + args.seconds
    while time.perf_counter() < end:
        await sender.send_text(cid, TEXT)
        sent += 1
    elapsed = time.perf_counter() - t0
    cpu = meter.result()
    pending = len(sender.store.outbox.outbox())
    log(f"throughput: {sent} messages in {elapsed:.1f} s; recipients catch up")

    t1 = time.perf_counter()
    for peer in peers:
        await peer.connect()
    expected = received_before + 3 * sent
    deadline = t1 + args.catch_up_timeout
    while recorder.count < expected and time.perf_counter() < deadline:
        recorder.progress.clear()
        try:
            await asyncio.wait_for(recorder.progress.wait(), max(0.01, deadline - time.perf_counter()))
        except TimeoutError:
            break
    catch_up_s = time.perf_counter() - t1
    delivered = recorder.count - received_before

    for client in (sender, *peers):
        await client.close()
    for s in stores:
        s.close()

    return {
        "latency": {
            "what": "send_text() call to MessageReceived on the recipient's devices (one message at a time)",
            "messages": len(all_devices),
            "send_to_event_each_device_ms": common.latency_summary_ms(per_device),
            "send_to_event_first_device_ms": common.latency_summary_ms(first_device),
            "send_to_event_all_3_devices_ms": common.latency_summary_ms(all_devices),
            "send_text_call_ms": common.latency_summary_ms(send_call),
        },
        "throughput": {
            "what": "closed loop: await send_text() back to back, 3 ciphertexts each, stored by the server",
            "messages": sent,
            "seconds": round(elapsed, 3),
            "messages_per_s": round(sent / elapsed, 1),
            "ciphertexts_per_s": round(3 * sent / elapsed, 1),
            "left_in_outbox": pending,
            "cpu": cpu,
            "catch_up": {
                "what": "the 3 recipient devices (one process) reconnect and receive the backlog",
                "expected": 3 * sent,
                "delivered": delivered,
                "seconds": round(catch_up_s, 3),
                "deliveries_per_s": round(delivered / catch_up_s, 1) if catch_up_s else None,
                "complete": delivered == 3 * sent,
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput test duration")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--catch-up-timeout", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="saltline-bench-sdk-") as tmp_name:
        tmp = Path(tmp_name)
        server = common.start_sdk_server(tmp)
        try:
            results = asyncio.run(run(args, server, tmp))
        finally:
            code = server.stop()
        problems = server.log_problems()
    doc = {
        "benchmark": "sdk",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "store": args.store,
            "store_encrypted": args.store == "sqlite",
            "recipient_devices": 3,
            "sender_other_devices": 0,
            "plaintext_bytes": len(TEXT),
            "database": "sqlite (server default, synchronous=FULL)",
            "transport": "127.0.0.1, HTTP/1.1 keep-alive (send) + WebSocket (delivery)",
            "one_process": "sender + 3 recipient devices in one asyncio loop; server in a subprocess",
        },
        "results": results,
        "server": {"exit_code": code, "log": problems},
        "versions": common.versions(),
        "machine": common.machine(),
    }
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
