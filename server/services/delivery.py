"""Sending envelopes, reading device queues, acknowledgements and retention
(docs/protocol/delivery.md §§ 3-5).

Send rules, checked in this order:

0. Quotas per sending device (when a limiter is given): envelopes per window and bytes
   (ciphertexts plus clock) per window -> 429 ``rate_limited`` with ``Retry-After``.
1. Limits: at most ``max_recipients`` ciphertexts, all ciphertexts plus the clock at most
   ``max_envelope_bytes`` together (the fan-out copies of one message; large payloads travel as
   attachments), a clock of at most :data:`MAX_CLOCK_BYTES`, ephemeral envelopes at most
   :data:`MAX_EPHEMERAL_BYTES`, no device twice (413 / 422).
2. Idempotency: ``(sending device, envelope_id)`` already stored -> the stored result again if the
   request is the same (the SHA-256 of its decoded fields in a fixed order matches: JSON formatting
   and the order of ``ciphertexts`` do not matter), else 409 ``idempotency_conflict``. This
   comes before every other check, so a retry succeeds even if the device lists changed meanwhile.
3. Membership: the sender's account must be a member (else 404 ``conversation_not_found``).
4. Device-list versions: for every member account the client states the version of the signed list
   it encrypted against. Any stated version that is not the current one (or a member left out) ->
   410 ``device_list_outdated`` with the current signed lists of those accounts.
5. Recipients: the devices addressed must be exactly the active devices of every member plus the
   sender's other devices, minus the sending device -> else 409 ``recipients_mismatch`` with the
   missing and extra devices per account. A stored envelope addressed to nobody (the sending device
   is the only device in the conversation) -> 422 ``no_recipients``.
6. Stored envelopes go through the group-commit writer (one transaction for the envelope, its copies
   and one queue row per recipient device; gap-free ``server_seq``), and the recipients are woken on
   the bus after the commit. Ephemeral envelopes skip the database: each recipient device that is
   connected right now gets its frame through the bus; the others never see it.

For stored envelopes, idempotency (2) and the routing checks (3-5) run inside the group-commit
writer's transaction, for the whole batch at once (one statement for the routing of all its
conversations); only a send that fails them costs the extra reads that build the error (the current
signed lists, the owners of extra devices). A list that changes after that transaction means the
envelope reaches the devices of the list it was checked against: the same outcome as a send that
completed just before the list changed. Ephemeral envelopes read the routing before the bus.

Push: right after a batch commits, each new queue entry is handed to the socket that holds its
device in this process (:attr:`DeliveryService.local_push`), so the socket sends it without reading
the queue back; only the recipients not held here are woken through the bus. The database stays
the truth: a socket that cannot take an entry in order reads its queue instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from saltline.crypto.keys import b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services import delivery_frames as frames
from saltline.server.services.bus import DeliveryBus
from saltline.server.services.delivery_metrics import DeliveryMetrics
from saltline.server.services.delivery_writer import GroupCommitWriter
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.connect_reads import HolderState
from saltline.server.storage.conversations_repo import AccountRouting, ConversationsRepo
from saltline.server.storage.envelopes_repo import (
    Accepted,
    AckRequest,
    AlreadyStored,
    ConnectSnapshot,
    EnvelopesRepo,
    HistoryItem,
    NewEnvelope,
    QueueItem,
    QueueState,
    RoutingRejected,
    SendOutcome,
    StoredEnvelope,
)

log = logging.getLogger(__name__)

MAX_CLOCK_BYTES = 64 * 1024
#: Ephemeral envelopes (typing indicators) are held in memory for slow sockets: keep them small.
MAX_EPHEMERAL_BYTES = 16 * 1024
MAX_HISTORY_LIMIT = 500
DEFAULT_HISTORY_LIMIT = 100


@dataclass(frozen=True, slots=True)
class SendRequest:
    conversation_id: bytes
    envelope_id: bytes
    clock: bytes
    device_list_versions: Mapping[bytes, int]
    ephemeral: bool
    ciphertexts: Sequence[tuple[bytes, bytes]]  # (recipient device id, ciphertext)


@dataclass(frozen=True, slots=True)
class SendResult:
    envelope_id: bytes
    server_ts_ms: int
    server_seq: int | None  # None for ephemeral envelopes
    replayed: bool = False
    delivered_now: int | None = None  # ephemeral only: recipient sockets that got it


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    next_after: int | None


def request_hash(sender_device_id: bytes, req: SendRequest) -> bytes:
    """SHA-256 over every field of the request, length-prefixed, in a fixed order."""
    h = hashlib.sha256(b"saltline/v1/envelope-request\x00")

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    put(sender_device_id)
    put(req.conversation_id)
    put(req.envelope_id)
    put(req.clock)
    put(b"\x01" if req.ephemeral else b"\x00")
    versions = sorted(req.device_list_versions.items())
    put(len(versions).to_bytes(8, "big"))
    for account_id, version in versions:
        put(account_id)
        put(int(version).to_bytes(8, "big", signed=True))
    copies = sorted(req.ciphertexts)
    put(len(copies).to_bytes(8, "big"))
    for device_id, ciphertext in copies:
        put(device_id)
        put(ciphertext)
    return h.digest()


class DeliveryService:
    def __init__(
        self,
        *,
        envelopes: EnvelopesRepo,
        conversations: ConversationsRepo,
        bus: DeliveryBus,
        metrics: DeliveryMetrics,
        clock: Clock,
        max_envelope_bytes: int,
        max_recipients: int,
        queue_retention_s: int,
        history_page_max_bytes: int = 4 * 1024 * 1024,
        maintenance_interval_s: float | None = None,
        limiter: RateLimiter | None = None,
        sends_per_device: str = "600/minute",
        send_bytes_per_device: str = "104857600/hour",
    ) -> None:
        self.limiter = limiter
        self.sends_per_device = sends_per_device
        self.send_bytes_per_device = send_bytes_per_device
        self.envelopes = envelopes
        self.conversations = conversations
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.max_envelope_bytes = max_envelope_bytes
        self.max_recipients = max_recipients
        self.queue_retention_s = queue_retention_s
        self.history_page_max_bytes = history_page_max_bytes
        self.maintenance_interval_s = (
            maintenance_interval_s
            if maintenance_interval_s is not None
            else min(3600.0, queue_retention_s / 10)
        )
        self.writer = GroupCommitWriter(
            envelopes, self._now, on_batch=metrics.batch_size.observe, on_commit=self._after_commit
        )
        self._maintenance: asyncio.Task[None] | None = None
        #: device id, committed queue entry -> True if a socket held in this process took it
        #: (set by the delivery socket side; must not block or raise)
        self.local_push: Callable[[bytes, QueueItem], bool] | None = None
        #: The in-process bus loses no wake-up (every queue write of this deployment happens in
        #: this process and pushes or wakes after its commit), so idle sockets need not re-read
        #: their queue on every heartbeat; with a bus across processes (Redis) they do.
        self.wakeups_lossless = not getattr(bus, "poll_on_heartbeat", True)

    def _now(self) -> int:
        return self.clock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.writer.start()
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(self._maintenance_loop(), name="delivery-maintenance")

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        await self.writer.close()

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                await self.purge_expired()
                self.metrics.queue_depth.set(await self.envelopes.queue_depth())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery maintenance failed")
            await asyncio.sleep(self.maintenance_interval_s)

    # -- sending -----------------------------------------------------------------------------

    async def send(self, sender_account_id: bytes, sender_device_id: bytes, req: SendRequest) -> SendResult:
        size = self._check_limits(req)
        if self.limiter is not None:
            await self._count_quota(self.limiter, sender_device_id, size)
        digest = request_hash(sender_device_id, req)
        if req.ephemeral:
            routing = await self.conversations.routing(req.conversation_id)
            await self._check_routing(routing, sender_account_id, sender_device_id, req)
            now = self.clock()
            by_device = {
                device_id: frames.ephemeral_frame(
                    conversation_id=req.conversation_id,
                    server_ts=now,
                    sender_account_id=sender_account_id,
                    sender_device_id=sender_device_id,
                    envelope_id=req.envelope_id,
                    clock=req.clock,
                    ciphertext=ciphertext,
                )
                for device_id, ciphertext in req.ciphertexts
            }
            delivered = await self.bus.publish_ephemeral(by_device)
            self.metrics.ephemeral.inc()
            return SendResult(req.envelope_id, now, None, delivered_now=delivered)

        outcome = await self.writer.send(
            NewEnvelope(
                conversation_id=req.conversation_id,
                envelope_id=req.envelope_id,
                sender_account_id=sender_account_id,
                sender_device_id=sender_device_id,
                clock=req.clock,
                request_hash=digest,
                copies=tuple((bytes(d), bytes(c)) for d, c in req.ciphertexts),
                device_list_versions=dict(req.device_list_versions),
            )
        )
        if isinstance(outcome, Accepted):
            self.metrics.accepted.inc()
            self.metrics.queue_depth.inc(len(outcome.recipients))
            remote = [d for d in outcome.recipients if d not in outcome.pushed]
            if remote:
                await self.bus.publish_wake(remote)
            e = outcome.envelope
            return SendResult(e.envelope_id, e.server_ts_ms, e.server_seq)
        if isinstance(outcome, AlreadyStored):
            return self._replay(outcome.envelope, digest)
        if isinstance(outcome, RoutingRejected):
            await self._check_routing(outcome.routing, sender_account_id, sender_device_id, req)
            # The writer refused what these checks accept: cannot happen; never store it.
            raise Problem(
                409,
                ProblemCode.RECIPIENTS_MISMATCH,
                "the ciphertexts do not match the current devices of the conversation",
                accounts={},
                unknown_devices=[],
            )
        raise Problem(404, ProblemCode.CONVERSATION_NOT_FOUND, "no such conversation")

    async def _check_routing(
        self,
        routing: list[AccountRouting] | None,
        sender_account_id: bytes,
        sender_device_id: bytes,
        req: SendRequest,
    ) -> None:
        """Rules 3-5 (and the no-recipients rule of stored envelopes), raising the Problem."""
        mine = (
            None if routing is None else next((r for r in routing if r.account_id == sender_account_id), None)
        )
        if routing is None or mine is None:
            raise Problem(404, ProblemCode.CONVERSATION_NOT_FOUND, "no such conversation")
        if sender_device_id not in mine.active_devices:
            # Checked with the batch, in the transaction: a device removed after its token or
            # socket was authenticated cannot send (one removal event lost on the bus included).
            raise Problem(
                401,
                ProblemCode.TOKEN_REVOKED,
                "this device was removed from its account",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        await self._check_versions(routing, req.device_list_versions)
        await self._check_recipients(routing, sender_account_id, sender_device_id, req.ciphertexts)
        if not req.ephemeral and not req.ciphertexts:
            # The recipients check passed with nothing addressed: the sending device is the only
            # device in the conversation. A stored envelope nobody can ever read is refused.
            raise Problem(
                422,
                ProblemCode.NO_RECIPIENTS,
                "the conversation has no other device to deliver this envelope to",
            )

    def _after_commit(self, sends: Sequence[NewEnvelope], outcomes: Sequence[SendOutcome]) -> None:
        """Runs in the writer right after a commit: offer each new queue entry to the socket
        that holds its device here (in commit order)."""
        push = self.local_push
        if push is None:
            return
        for env, outcome in zip(sends, outcomes, strict=True):
            if not isinstance(outcome, Accepted):
                continue
            e = outcome.envelope
            copies = dict(env.copies)
            for device_id, queue_seq in zip(outcome.recipients, outcome.queue_seqs, strict=True):
                item = QueueItem(
                    queue_seq=queue_seq,
                    conversation_id=e.conversation_id,
                    server_seq=e.server_seq,
                    server_ts_ms=e.server_ts_ms,
                    sender_account_id=env.sender_account_id,
                    sender_device_id=env.sender_device_id,
                    envelope_id=e.envelope_id,
                    clock=env.clock,
                    ciphertext=copies[device_id],
                )
                if push(device_id, item):
                    outcome.pushed.add(device_id)

    async def _count_quota(self, limiter: RateLimiter, sender_device_id: bytes, size: int) -> None:
        """Rule 0: count the envelope (a refused one is not counted), then its bytes (an envelope
        refused for its bytes still counts as an attempt). Both on sliding-window counters: two
        integers per device, where a moving window would keep (and expire) one entry per send."""
        device = b64encode(sender_device_id)
        await limiter.hit_amount(self.sends_per_device, "send-device", device, 1)
        await limiter.hit_amount(self.send_bytes_per_device, "send-bytes-device", device, size)

    def _check_limits(self, req: SendRequest) -> int:
        """Rule 1; the envelope's size (ciphertexts plus clock)."""
        if len(req.ciphertexts) > self.max_recipients:
            raise Problem(
                413,
                ProblemCode.TOO_MANY_RECIPIENTS,
                f"at most {self.max_recipients} ciphertexts per envelope",
                limit=self.max_recipients,
            )
        if len(req.clock) > MAX_CLOCK_BYTES:
            raise Problem(
                413, ProblemCode.ENVELOPE_TOO_LARGE, f"the clock is limited to {MAX_CLOCK_BYTES} bytes"
            )
        size = len(req.clock) + sum(len(c) for _, c in req.ciphertexts)
        if size > self.max_envelope_bytes:
            raise Problem(
                413,
                ProblemCode.ENVELOPE_TOO_LARGE,
                f"ciphertexts plus clock are limited to {self.max_envelope_bytes} bytes per envelope",
                limit=self.max_envelope_bytes,
            )
        if req.ephemeral and size > MAX_EPHEMERAL_BYTES:
            raise Problem(
                413,
                ProblemCode.EPHEMERAL_TOO_LARGE,
                f"ciphertexts plus clock of an ephemeral envelope are limited to {MAX_EPHEMERAL_BYTES} bytes",
                limit=MAX_EPHEMERAL_BYTES,
            )
        devices = [d for d, _ in req.ciphertexts]
        if len(set(devices)) != len(devices):
            raise Problem(
                422, ProblemCode.VALIDATION_FAILED, "a device is addressed twice", field="ciphertexts"
            )
        return size

    @staticmethod
    def _replay(stored: StoredEnvelope, digest: bytes) -> SendResult:
        if stored.request_hash != digest:
            raise Problem(
                409,
                ProblemCode.IDEMPOTENCY_CONFLICT,
                "this envelope_id was already used for a different envelope",
                server_seq=stored.server_seq,
            )
        return SendResult(stored.envelope_id, stored.server_ts_ms, stored.server_seq, replayed=True)

    async def _check_versions(self, routing: list[AccountRouting], stated: Mapping[bytes, int]) -> None:
        outdated = [r.account_id for r in routing if stated.get(r.account_id) != r.device_list_version]
        if not outdated:
            return
        lists = await self.conversations.current_signed_lists(outdated)
        raise Problem(
            410,
            ProblemCode.DEVICE_LIST_OUTDATED,
            "the device lists of some members changed; verify the current lists and re-encrypt",
            accounts={
                b64encode(row.account_id): {"version": row.version, "signed_list": b64encode(row.signed)}
                for row in lists
            },
        )

    async def _check_recipients(
        self,
        routing: list[AccountRouting],
        sender_account_id: bytes,
        sender_device_id: bytes,
        ciphertexts: Sequence[tuple[bytes, bytes]],
    ) -> None:
        given = {d for d, _ in ciphertexts}
        expected: dict[bytes, bytes] = {}  # device -> account
        for r in routing:
            for device_id in r.active_devices:
                if device_id != sender_device_id:
                    expected[device_id] = r.account_id
        if given == expected.keys():
            return
        report: dict[bytes, dict[str, list[str]]] = {}

        def entry(account_id: bytes) -> dict[str, list[str]]:
            return report.setdefault(account_id, {"missing": [], "extra": []})

        for device_id, account_id in expected.items():
            if device_id not in given:
                entry(account_id)["missing"].append(b64encode(device_id))
        extra = given - expected.keys()
        owners = await self.conversations.device_owners(extra)
        owners.setdefault(sender_device_id, sender_account_id)
        members = {r.account_id for r in routing}
        unknown: list[str] = []
        for device_id in sorted(extra):
            owner = owners.get(device_id)
            if owner is not None and owner in members:
                entry(owner)["extra"].append(b64encode(device_id))
            else:
                unknown.append(b64encode(device_id))
        for e in report.values():
            e["missing"].sort()
            e["extra"].sort()
        raise Problem(
            409,
            ProblemCode.RECIPIENTS_MISMATCH,
            "the ciphertexts do not match the current devices of the conversation",
            accounts={b64encode(a): e for a, e in report.items()},
            unknown_devices=unknown,
        )

    # -- reading -----------------------------------------------------------------------------

    async def history(
        self, account_id: bytes, device_id: bytes, conversation_id: bytes, after: int, limit: int
    ) -> HistoryPage:
        if not await self.conversations.is_member(conversation_id, account_id):
            raise Problem(404, ProblemCode.CONVERSATION_NOT_FOUND, "no such conversation")
        limit = max(1, min(limit, MAX_HISTORY_LIMIT))
        items, more = await self.envelopes.history(
            conversation_id, device_id, max(0, after), limit, self.history_page_max_bytes
        )
        return HistoryPage(items, items[-1].server_seq if more and items else None)

    async def pending(self, device_id: bytes, after: int, limit: int) -> tuple[list[QueueItem], QueueState]:
        return await self.envelopes.pending(device_id, after, limit)

    async def queue_state(self, device_id: bytes) -> QueueState:
        return await self.envelopes.queue_state(device_id)

    async def connect_snapshot(self, device_id: bytes, limit: int) -> ConnectSnapshot:
        """The device's queue as its socket opens, retention applied: one read when nothing
        expired (the reconnect-storm path: no write transaction per socket); retention's write
        and a second read only when the queue holds an entry older than the retention."""
        cutoff = self.clock() - self.queue_retention_s * 1000
        snapshot = await self.envelopes.connect_snapshot(device_id, cutoff, limit)
        if not snapshot.has_expired:
            return snapshot
        await self.purge_expired(device_id)
        return await self.envelopes.connect_snapshot(device_id, cutoff, limit)

    async def open_snapshot(
        self, device_id: bytes, family_id: bytes, limit: int
    ) -> tuple[HolderState, ConnectSnapshot]:
        """A socket's open: its token's holder (device active? family revoked?) and
        :meth:`connect_snapshot`, in one read (one thread hand-off); retention as there."""
        cutoff = self.clock() - self.queue_retention_s * 1000
        holder, snapshot = await self.envelopes.holder_and_snapshot(device_id, family_id, cutoff, limit)
        if snapshot.has_expired:
            await self.purge_expired(device_id)
            snapshot = await self.envelopes.connect_snapshot(device_id, cutoff, limit)
        return holder, snapshot

    async def pending_count(self, device_id: bytes) -> int:
        return await self.envelopes.pending_count(device_id)

    async def ack(self, device_id: bytes, through: int) -> None:
        """Delete the device's queue entries up to ``through`` (cumulative), after commit."""
        await self.writer.ack(AckRequest(device_id, through))

    # -- retention and removal ---------------------------------------------------------------

    async def purge_expired(self, device_id: bytes | None = None) -> int:
        cutoff = self.clock() - self.queue_retention_s * 1000
        dropped = await self.envelopes.purge_expired(cutoff, device_id)
        if dropped:
            self.metrics.purged.inc(dropped)
            self.metrics.queue_depth.dec(dropped)
        return dropped

    async def device_removed(self, device_id: bytes) -> None:
        """Close the device's socket (wherever it is held) and drop its queue."""
        await self.bus.publish_device_removed(device_id)
        dropped = await self.envelopes.drop_device(device_id)
        if dropped:
            self.metrics.queue_depth.dec(dropped)
