"""Workload "pairs-v1" (bench/WORKLOAD.md), SDK MODE: senders and receivers are real SDK
clients (``saltline.client_sdk.client.Client``) that encrypt and decrypt inside the timed window.

    from bench import pairs, pairs_sdk
    result = await pairs_sdk.run_sdk_test(pairs.parse_args([...]), "latency")  # | "throughput" | "fanout"

The server is started exactly as in server mode (``start_saltline`` of ``bench/_pairs_server.py``: a fresh
SQLite data directory, or ``--database-url``); the fanout test also raises the token-less
signed-list rate limits, which the SDK's linking uses once per linked device (set-up only).
The idle test is the same in both modes (it measures held sockets) and is not repeated here.

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
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Python put bench/ first on sys.path, where bench/crypto.py would shadow the crypto package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


from bench import _common as common  # noqa: E402  (bench/ is a namespace package)
from bench._pairs_delivery import (  # noqa: E402  (the workload's constants are server mode's)
    CONNECT_CONCURRENCY,
    DRAIN_MAX_S,
    WARMUP_MAX_S,
    Tracker,
    delivery_report,
)
from bench._pairs_server import Target, metrics_delta, scrape_all, start_saltline  # noqa: E402
from bench._pairs_setup import PASSWORD, PLAINTEXT_BYTES, SETUP_CONCURRENCY, SetupError, bounded  # noqa: E402

log = common.log

from saltline.client_sdk.client import Client  # noqa: E402
from saltline.client_sdk.core.events import DecryptionFailed, Disconnected, MessageReceived  # noqa: E402
from saltline.client_sdk.errors import NetworkError  # noqa: E402
from saltline.client_sdk.stores.memory import MemoryStore  # noqa: E402
from saltline.crypto.ratchet import Session  # noqa: E402

#: How long one set-up step may wait for a message to arrive.
SETUP_WAIT_S = 60.0
STORES = {
    "memory": "MemoryStore (saltline.client_sdk.stores.memory: in memory, no disk I/O)",
    "sqlite": "SqliteStore (saltline.client_sdk.stores.sqlite: encrypted rows, one file per client)",
}
#: Which store the clients of this run use (``--sdk-store``; set by :func:`run_sdk_test`).
_store_kind = "memory"
_store_dir: Path | None = None


def make_store() -> Any:
    """A new store of the kind this run uses."""
    if _store_kind == "memory":
        return MemoryStore()
    global _store_dir
    if _store_dir is None:
        _store_dir = Path(tempfile.mkdtemp(prefix="saltline-bench-sdk-"))
    from saltline.client_sdk.stores.sqlite import SqliteStore

    return SqliteStore.open(_store_dir / f"{secrets.token_hex(8)}.db", key=secrets.token_bytes(32))


#: The fanout set-up links one device per member: the token-less signed-list updates of linking
#: are rate limited per IP (10/minute by default). Set-up only; nothing on the send/delivery path.
FANOUT_ENV = {
    "SALTLINE_RATE_LIMIT_SIGNED_LIST_PER_IP": "1000000/minute",
    "SALTLINE_RATE_LIMIT_SIGNED_LIST_PER_ACCOUNT": "1000000/minute",
}


def message_text(run: str, index: int, seq: int) -> str:
    """200 bytes of ASCII: ``B|<run>|<index>|<seq>|`` then random hex."""
    prefix = f"B|{run}|{index}|{seq}|"
    pad = PLAINTEXT_BYTES - len(prefix)
    return prefix + os.urandom((pad + 1) // 2).hex()[:pad]


# -- one SDK client ----------------------------------------------------------------------------


class Device:
    """One SDK client (one device) and what its events tell the benchmark.

    Deliveries are recorded into ``tracker`` keyed by (pair from the text, seq), or by
    (``key_index``, seq) when ``key_index`` is set (fanout: one key per recipient device)."""

    def __init__(self, client: Client, index: int, key_index: int | None = None) -> None:
        self.client = client
        self.index = index
        self.key_index = key_index
        self.tracker: Tracker | None = None
        self.received = 0
        self.misrouted = 0
        self.decryption_failures: list[str] = []
        self.disconnects = 0
        #: Seconds the SDK spent handling each envelope frame while a tracker is attached (from
        #: the socket handing the frame over to the handler returning: decrypt, store, events).
        self.processing: list[float] = []
        #: Network errors the SDK's HTTP transport raised since the last :meth:`reset` (the SDK
        #: keeps such a send in its outbox and returns; it goes out with the next flush).
        self.network_errors: list[str] = []
        execute = client._ctx.http.execute

        async def recorded(request: Any, access_token: str | None = None) -> Any:
            try:
                return await execute(request, access_token)
            except NetworkError as exc:
                cause = exc.__cause__
                what = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                self.network_errors.append(f"{request.method} {request.path}: {what}"[:400])
                raise

        client._ctx.http.execute = recorded  # type: ignore[method-assign]
        self._changed = asyncio.Event()
        handle = client.delivery.on_frame

        async def timed(frame: dict[str, Any]) -> int | None:
            if self.tracker is None or frame.get("type") != "envelope":
                return await handle(frame)
            t = time.perf_counter()
            try:
                return await handle(frame)
            finally:
                self.processing.append(time.perf_counter() - t)

        client.delivery.on_frame = timed  # type: ignore[method-assign]  # read when the socket starts
        client.on(MessageReceived, self._on_message)
        client.on(DecryptionFailed, self._on_failed)
        client.on(Disconnected, self._on_disconnect)

    @classmethod
    async def create(cls, base_url: str, index: int, key_index: int | None = None) -> Device:
        return cls(await Client.create(base_url, make_store()), index, key_index)

    def attach(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.reset()

    def reset(self) -> None:
        self.processing.clear()
        self.network_errors.clear()

    def _on_message(self, event: MessageReceived) -> None:
        t = time.perf_counter()
        self.received += 1
        tracker = self.tracker
        if tracker is not None:
            parts = event.text.split("|", 4)
            if len(parts) < 5 or parts[0] != "B":
                tracker.unknown += 1
            elif parts[1] != tracker.run:
                tracker.foreign += 1
            else:
                pair = int(parts[2])
                if self.key_index is None and pair != self.index:
                    self.misrouted += 1
                key = (pair if self.key_index is None else self.key_index, int(parts[3]))
                if key in tracker.delivered:
                    tracker.duplicates += 1
                else:
                    tracker.delivered[key] = t
        self._changed.set()

    def _on_failed(self, event: DecryptionFailed) -> None:
        self.decryption_failures.append(f"{event.envelope_id}: {event.reason}"[:300])

    def _on_disconnect(self, event: Disconnected) -> None:
        self.disconnects += 1

    async def resend_leftovers(self, tracker: Tracker, keys: list[Any], attempts: int = 3) -> bool:
        """Set-up and warm-up only: flush what a network error left in the outbox (the SDK would do
        it on its next send or reconnection); ``keys`` accepted once the outbox is empty."""
        for _ in range(attempts):
            if not self.client.store.outbox.outbox():
                tracker.accepted.update(keys)
                return True
            try:
                await self.client.flush_outbox()
            except Exception as exc:
                tracker.error(type(exc).__name__, f"sender {self.index} flush: {exc}")
            await asyncio.sleep(0.1)
        if not self.client.store.outbox.outbox():
            tracker.accepted.update(keys)
            return True
        return False

    async def send_setup(self, conversation_id: str, text: str) -> None:
        """A set-up message; what a network error left in the outbox is flushed again."""
        await self.client.send_text(conversation_id, text)
        for _ in range(3):
            if not self.client.store.outbox.outbox():
                return
            await asyncio.sleep(0.1)
            try:
                await self.client.flush_outbox()
            except Exception as exc:
                log(f"set-up send of {self.client.device_id}: {type(exc).__name__}: {exc}")
        if self.client.store.outbox.outbox():
            raise SetupError(f"device {self.client.device_id} could not send a set-up message")

    async def wait_received(self, count: int, wait_s: float = SETUP_WAIT_S) -> None:
        """Until this client has emitted ``count`` MessageReceived in all."""
        deadline = time.perf_counter() + wait_s
        while self.received < count:
            self._changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise SetupError(
                    f"device {self.client.device_id} received {self.received} of {count} set-up messages"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def session_confirmed(self, peer_device_id: str) -> bool:
        """The session this client would send with to ``peer_device_id`` (the SDK's choice: the
        first that can send) exists and no longer carries the X3DH initial header."""
        for record in self.client.store.sessions.sessions_for(peer_device_id):
            session = Session.from_bytes(record.state)
            if session.can_send:
                return session.pending_initial_header is None
        return False

    async def send(
        self, tracker: Tracker, conversation_id: str, seq: int, text: str, keys: list[Any]
    ) -> bool:
        """``send_text`` with the instants of the workload: every key in ``keys`` is sent at the
        instant just before the call and accepted when the message left the outbox."""
        t = time.perf_counter()
        for key in keys:
            tracker.sent_at[key] = t
        try:
            envelope_id = await self.client.send_text(conversation_id, text)
        except Exception as exc:
            tracker.error(type(exc).__name__, f"sender {self.index} seq {seq}: {type(exc).__name__}: {exc}")
            return False
        if self.client.store.outbox.get_outbox(envelope_id) is not None:
            last = self.network_errors[-1] if self.network_errors else "no error recorded"
            tracker.error("left_in_outbox", f"sender {self.index} seq {seq}: left in the outbox ({last})")
            return False
        tracker.send_rtt.append(time.perf_counter() - t)
        tracker.accepted.update(keys)
        return True


async def close_clients(devices: list[Device]) -> None:
    async def one(d: Device) -> None:
        try:
            await asyncio.wait_for(d.client.close(), 15)
        except BaseException as exc:  # best effort at tear-down
            log(f"closing a client: {type(exc).__name__}: {exc}")

    await bounded(CONNECT_CONCURRENCY, [one(d) for d in devices])


def events_report(devices: list[Device]) -> dict[str, Any]:
    failures = [f for d in devices for f in d.decryption_failures]
    return {
        "decryption_failures": len(failures),
        "decryption_failure_samples": failures[:3],
        "misrouted": sum(d.misrouted for d in devices),
        "socket_disconnects": sum(d.disconnects for d in devices),
        "sdk_network_errors": sum(len(d.network_errors) for d in devices),
        "sdk_network_error_samples": [e for d in devices for e in d.network_errors][:3],
        "sdk_envelope_handling_ms": common.latency_summary_ms([t for d in devices for t in d.processing]),
    }


def parameters_common() -> dict[str, Any]:
    return {
        "client": "saltline.client_sdk.client.Client (send_text; MessageReceived callback)",
        "store": STORES[_store_kind],
        "send_transport": "HTTP POST (the SDK's send_text; --send-via applies to server mode only)",
        "delivery": "the SDK's delivery socket; delivered = MessageReceived (decrypted, stored, acked)",
        "clients_in_one_process": True,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "plaintext_bytes": PLAINTEXT_BYTES,
        "drain_max_s": DRAIN_MAX_S,
    }


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


def cpu_per_message(cpu: dict[str, Any], delivered: int) -> dict[str, Any]:
    if not delivered:
        return {"server_ms": None, "loadgen_ms": None}
    server = cpu.get("server_cpu_s")
    return {
        "server_ms": None if server is None else round(server / delivered * 1000, 3),
        "loadgen_ms": round(cpu["loadgen_cpu_s"] / delivered * 1000, 3),
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
    global _store_kind
    _store_kind = args.sdk_store
    return await fn(args)
