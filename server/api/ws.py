"""WebSocket delivery: ``GET /v1/ws`` (docs/protocol/delivery.md § 5).

All frames are JSON text. Binary values are unpadded base64url; ids are 16-byte ids.

Client frames and close codes: :mod:`saltline.server.services.delivery_protocol`, which decides them.

Server -> client
    ``{"type":"ready","account_id":..,"device_id":..,"acked_queue_seq":N,"window":W,
    "heartbeat_interval_s":S}``  after a successful auth.
    ``{"type":"envelope","queue_seq":..,"conversation_id":..,"server_seq":..,"server_ts":..,
    "sender":{"account_id":..,"device_id":..},"envelope_id":..,"clock":..,"ciphertext":..}``
        at most ``delivery_window`` of them unacknowledged at a time; anything not acknowledged is
        sent again on the next connection (clients drop duplicates by dot / envelope id).
    ``{"type":"gap","from_queue_seq":A,"to_queue_seq":B}``  entries A..B were dropped by retention
        before this device acknowledged them. Never silent; counts in the window until acked.
    ``{"type":"drained","queue_seq":N}``  nothing more is queued and everything sent is acked
        (N = last acknowledged queue_seq). Sent after the initial catch-up and after every drain.
    ``{"type":"ephemeral","conversation_id":..,"server_ts":..,"sender":{..},"envelope_id":..,
    "clock":..,"ciphertext":..}``  typing indicators etc.: never stored, not acknowledged.
    ``{"type":"ping","queue_seq":N}``  every ``heartbeat_interval_s``; N = last queue_seq sent.
    ``{"type":"send_result","request_id":R,"status":201|202,"envelope_id":..,"server_seq":..,
    "server_ts":..,"replayed":bool}``  the answer to a ``send``, sent only after the envelope is
        committed (201; ``replayed`` when the envelope id was already stored with the same
        content) or handed to the online devices (202, ephemeral; ``server_seq`` null).
    ``{"type":"send_result","request_id":R,"status":S,"problem":{...}}``  a refused ``send``: S
        and the problem document are those the HTTP route answers (409 recipients_mismatch, 410
        device_list_outdated, 422 validation_failed, ...). Answers may come in any order.

Delivery path: the group-commit writer hands each committed queue entry straight to the socket
that holds its device here (:meth:`DeviceConnection.offer`); the pump sends it without reading it
back when it continues the last ``queue_seq`` sent, and reads the queue otherwise (on connect, after
a bus wake-up, a full window, or anything out of order). With the in-process bus a heartbeat tick
reads nothing; with a bus that may lose wake-ups (``poll_on_heartbeat``) every tick re-reads.

Per connection the server holds: at most :data:`MAX_PENDING_SENDS` sends in progress (each
holding its frame until answered), the window (queue_seq -> server_ts for at most ``delivery_window``
entries), at most a window of pushed entries, an ephemeral buffer bounded by count and by
:data:`EPHEMERAL_BUFFER_BYTES`, three tasks
(reader, pump, heartbeat with the token expiry), a registry entry and a bus subscription. Messages over
:data:`WS_MAX_MESSAGE_BYTES` are refused by the WebSocket server itself (``ws_max_size``, close 1009)
before anything is buffered, authenticated or not. All of it is released in ``finally``,
whatever ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, WebSocket
from pydantic import Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from saltline.crypto.keys import b64encode
from saltline.server.api.connections import ConnectionRegistry
from saltline.server.api.problems import validation_errors
from saltline.server.api.routes_envelopes import SendEnvelopeRequest, send_request_from
from saltline.server.api.schemas import B64_CHARS, Strict
from saltline.server.api.ws_open import CLOSE_TIMEOUT_S as _CLOSE_TIMEOUT_S
from saltline.server.api.ws_open import authenticate as _authenticate
from saltline.server.context import AppContext
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services import delivery_frames as frames
from saltline.server.services import delivery_protocol as protocol
from saltline.server.services.common import AuthedDevice, decode_id
from saltline.server.services.delivery import DeliveryService
from saltline.server.services.delivery_metrics import DeliveryMetrics
from saltline.server.services.delivery_protocol import (
    CLOSE_AUTH_FAILED,
    CLOSE_DEVICE_REMOVED,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REPLACED,
    EPHEMERAL_BUFFER_BYTES,
    MAX_PENDING_SENDS,
    WS_MAX_MESSAGE_BYTES,
    ProtocolError,
)
from saltline.server.services.delivery_writer import WriterClosedError
from saltline.server.storage.connect_reads import HolderState
from saltline.server.storage.envelopes_repo import ConnectSnapshot, QueueItem

log = logging.getLogger(__name__)
router = APIRouter()

T = TypeVar("T")


class SendFrame(Strict):
    type: Literal["send"]
    request_id: Annotated[str, Field(min_length=1, max_length=64, pattern=B64_CHARS)]
    conversation_id: Annotated[str, Field(min_length=1, max_length=64)]
    envelope: SendEnvelopeRequest


async def _db(coro: Awaitable[T]) -> T:
    """Run a database call so that cancelling the caller does not cancel it mid-flight (it
    finishes in the background and releases its connection); the caller just stops waiting."""
    task = asyncio.ensure_future(coro)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)


class DeviceConnection:
    """One authenticated delivery socket. Implements the bus's ``DeviceListener``."""

    def __init__(
        self,
        ws: WebSocket,
        device: AuthedDevice,
        delivery: DeliveryService,
        metrics: DeliveryMetrics,
        *,
        window: int,
        heartbeat_interval_s: float,
        heartbeat_missed_limit: int,
    ) -> None:
        self.ws = ws
        self.device = device
        self._device_id = device.device_id_bytes
        self._account_id = device.account_id_bytes
        self.delivery = delivery
        self.metrics = metrics
        self.window = window
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_missed_limit = heartbeat_missed_limit

        self.acked = 0  # committed acknowledgement watermark
        self.ack_target = 0  # highest acknowledgement received, not yet committed
        self.last_sent = 0
        self.inflight: dict[int, int | None] = {}  # queue_seq -> server_ts_ms (None: a gap marker)
        self.missed_pongs = 0
        self._drained_reported: int | None = None
        self._ephemeral: deque[bytes] = deque()
        self._ephemeral_max = max(16, window)
        self._ephemeral_bytes = 0
        self.token_exp_ms: int | None = None  # the access token's expiry (Unix ms), if known
        self._wake = asyncio.Event()
        #: Committed entries handed over by the writer (:meth:`offer`), sent without reading the
        #: queue back when they continue ``last_sent``; bounded by the window.
        self._pushed: deque[QueueItem] = deque()
        #: The queue may hold entries this connection has not seen: read it on the next refill.
        self._need_read = True
        # Futures, not Events: an Event allocates its waiter deque up front, and there is one of
        # these per held socket (the idle test holds thousands).
        loop = asyncio.get_running_loop()
        self._closing: asyncio.Future[None] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._send_lock = asyncio.Lock()
        self._send_slots = asyncio.Semaphore(MAX_PENDING_SENDS)
        self._send_tasks: set[asyncio.Task[None]] = set()
        #: Re-checks the socket's token (device active, token family not revoked); raises the
        #: 401 Problem. Run before a send at most every heartbeat interval.
        self.reauth: Callable[[], Awaitable[object]] | None = None
        self._auth_checked_at = loop.time()
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def device_id(self) -> bytes:
        return self._device_id

    # -- bus listener / registry -------------------------------------------------------------

    def on_wake(self) -> None:
        self._need_read = True
        self._wake.set()

    def offer(self, item: QueueItem) -> bool:
        """A committed queue entry of this device, straight from the writer (in commit order).
        Taken as a hint: the refill sends it only if it continues the sequence, else it reads
        the queue. Never holds more than a window of entries."""
        if len(self._pushed) >= self.window:
            self._pushed.clear()
            self._need_read = True
        else:
            self._pushed.append(item)
        self._wake.set()
        return True

    def on_ephemeral(self, frame: bytes) -> None:
        # Bounded by count and by bytes: the oldest indicator is dropped first.
        if len(frame) > EPHEMERAL_BUFFER_BYTES:
            return
        self._ephemeral.append(frame)
        self._ephemeral_bytes += len(frame)
        while len(self._ephemeral) > self._ephemeral_max or self._ephemeral_bytes > EPHEMERAL_BUFFER_BYTES:
            self._ephemeral_bytes -= len(self._ephemeral.popleft())
        self._wake.set()

    @property
    def ephemeral_buffered_bytes(self) -> int:
        return self._ephemeral_bytes

    def token_expired(self) -> bool:
        return self.token_exp_ms is not None and self.delivery.clock() >= self.token_exp_ms

    def on_device_removed(self) -> None:
        self.close_soon(CLOSE_DEVICE_REMOVED, "device removed")

    def on_tokens_revoked(self) -> None:
        self.close_soon(CLOSE_AUTH_FAILED, "token_revoked")

    def on_replaced(self) -> None:
        # A newer socket for this device connected on another instance (RedisBus).
        self.close_soon(CLOSE_REPLACED, "replaced by a newer connection")

    def close_soon(self, code: int, reason: str) -> None:
        if not self._closing.done():
            self.close_code = code
            self.close_reason = reason
            self._closing.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the connection is over and all its state is released."""
        await asyncio.shield(self._closed)

    def released(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._reader(), name="ws-reader"),
            asyncio.create_task(self._pump(), name="ws-pump"),
            asyncio.create_task(self._heartbeat(), name="ws-heartbeat"),
        ]
        try:
            await asyncio.wait([*tasks, self._closing], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if not task.done() or task.cancelled():
                    continue
                exc = task.exception()
                if isinstance(exc, ProtocolError):
                    self.close_soon(CLOSE_PROTOCOL_ERROR, str(exc))
                elif isinstance(exc, WebSocketDisconnect | OSError):
                    self.metrics.closes.labels(reason="client_gone").inc()
                elif exc is not None:
                    log.error("delivery connection task %s failed: %s", task.get_name(), type(exc).__name__)
                    self.close_soon(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            # Sends in progress are cancelled here, not in the writer: a committed envelope stays
            # committed, and the client resends unanswered ones with the same envelope id.
            for task in [*tasks, *self._send_tasks]:
                task.cancel()
            await asyncio.gather(*tasks, *self._send_tasks, return_exceptions=True)
            if self.ack_target > self.acked:
                # An ack read just before the client went away is still honoured (the pump may
                # have been cancelled before committing it): fewer resends on the reconnect.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._commit_ack(self.ack_target), _CLOSE_TIMEOUT_S)
            if self.close_code is not None:
                await self._close_socket(self.close_code, self.close_reason)

    async def _close_socket(self, code: int, reason: str) -> None:
        self.metrics.closes.labels(reason=protocol.close_reason_label(code)).inc()
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, reason=reason[:120]), _CLOSE_TIMEOUT_S)

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_text(frame.decode())

    async def _reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.metrics.closes.labels(reason="client_closed").inc()
                return
            frame = protocol.parse_frame(message, WS_MAX_MESSAGE_BYTES)
            kind, arg = protocol.client_frame(frame, last_sent=self.last_sent, ack_target=self.ack_target)
            if kind == "send":
                await self._send_slots.acquire()
                task = asyncio.create_task(self._handle_send(arg, frame), name="ws-send")
                self._send_tasks.add(task)
                task.add_done_callback(self._send_done)
            elif kind == "ack":
                if arg is not None:
                    self.ack_target = arg
                    self._wake.set()
            elif kind == "pong":
                self.missed_pongs = 0
            elif kind == "ping":
                await self._send(frames.encode({"type": "pong"}))

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self._send_tasks.discard(task)
        self._send_slots.release()
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
            log.error("delivery socket send failed: %s", type(exc).__name__)
            self.close_soon(CLOSE_INTERNAL_ERROR, "internal error")

    async def _handle_send(self, request_id: str, frame: dict[str, Any]) -> None:
        """One ``send`` frame: the checks and the service call of the HTTP route; the answer is
        a ``send_result`` frame with the HTTP status and body (problem documents included).
        The frame is released before the answer is written, and a client that does not read
        its answer within a heartbeat interval is closed (4004): a socket that stops reading
        cannot pin :data:`MAX_PENDING_SENDS` envelopes in memory."""
        answer = await self._answer_send(request_id, frame)
        del frame
        encoded = frames.encode(answer)
        problem = answer.get("problem")
        del answer
        try:
            await asyncio.wait_for(self._send(encoded), self.heartbeat_interval_s)
        except TimeoutError:
            self.close_soon(CLOSE_HEARTBEAT_TIMEOUT, "the client does not read its socket")
        if problem is not None and problem["status"] == 401:
            # After the answer: the device was removed, or the token expired or was revoked.
            code = protocol.close_code_for_refusal(ProblemCode(problem["code"]))
            self.close_soon(code, problem["code"])

    async def _answer_send(self, request_id: str, frame: dict[str, Any]) -> dict[str, Any]:
        try:
            # As the HTTP route authenticates every request: the token's expiry at once, the
            # device and its token family at least every heartbeat interval (a removal or a
            # revocation also closes the socket through the bus; this does not depend on it).
            if self.token_expired():
                raise Problem(401, ProblemCode.TOKEN_EXPIRED, "the access token expired; log in again")
            if self.reauth is not None:
                now = asyncio.get_running_loop().time()
                if now - self._auth_checked_at >= self.heartbeat_interval_s:
                    await self.reauth()
                    self._auth_checked_at = now
            parsed = SendFrame.model_validate(frame)
            req = send_request_from(decode_id(parsed.conversation_id, "conversation"), parsed.envelope)
            del parsed
            # Shielded: if the socket closes meanwhile, the send still finishes its post-commit
            # steps (bus wake-ups for other instances, metrics); only the answer is dropped.
            result = await _db(self.delivery.send(self._account_id, self._device_id, req))
            return {
                "type": "send_result",
                "request_id": request_id,
                "status": 202 if req.ephemeral else 201,
                "envelope_id": b64encode(result.envelope_id),
                "server_seq": result.server_seq,
                "server_ts": result.server_ts_ms,
                "replayed": result.replayed,
            }
        except Problem as problem:
            if problem.status == 401:
                self.close_soon(protocol.close_code_for_refusal(problem.code), problem.code.value)
            return protocol.send_problem(request_id, problem)
        except ValidationError as exc:
            return protocol.send_problem(
                request_id,
                Problem(
                    422,
                    ProblemCode.VALIDATION_FAILED,
                    "the send frame does not match the schema",
                    errors=validation_errors(exc.errors()),
                ),
            )
        except WriterClosedError:
            return protocol.send_problem(
                request_id, Problem(503, ProblemCode.SERVICE_UNAVAILABLE, "the server is shutting down")
            )
        except Exception as exc:  # as the HTTP routes: logged by type only, answered with a 500
            log.error("send over the delivery socket failed: %s", type(exc).__name__)
            return protocol.send_problem(
                request_id, Problem(500, ProblemCode.INTERNAL_ERROR, "internal error")
            )

    async def _heartbeat(self) -> None:
        """Ping every ``heartbeat_interval_s``; reap after ``heartbeat_missed_limit`` unanswered
        pings; close with 4003 when the access token's ``exp`` passes (it sleeps until then or
        the next ping, whichever is first, re-reading the app clock at least every interval:
        an injected clock may jump)."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.heartbeat_interval_s
        while True:
            delay = next_ping - loop.time()
            if self.token_exp_ms is not None:
                delay = min(delay, (self.token_exp_ms - self.delivery.clock()) / 1000)
            await asyncio.sleep(max(0.0, delay))
            if self.token_expired():
                self.close_soon(CLOSE_AUTH_FAILED, "token_expired")
                return
            if loop.time() < next_ping:
                continue
            next_ping = loop.time() + self.heartbeat_interval_s
            missed = protocol.heartbeat_tick(
                self.missed_pongs, self.heartbeat_missed_limit, reader_blocked=self._send_slots.locked()
            )
            if missed is None:
                self.metrics.heartbeat_reaps.inc()
                self.close_soon(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            self.missed_pongs = missed
            if not self.delivery.wakeups_lossless:
                # A lost bus wake-up (Redis) costs at most one heartbeat interval.
                self._need_read = True
                self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._send(frames.encode({"type": "ping", "queue_seq": self.last_sent})),
                    self.heartbeat_interval_s,
                )

    async def open_read(self, family_id: bytes) -> HolderState:
        """The token holder's state and the queue (retention, watermarks, the first window): one
        read (a write only if an entry expired). The caller decides on the holder before the
        socket is used; the queue snapshot is applied here."""
        self._need_read = False  # a wake-up or a dropped push during the read sets it again
        holder, snap = await _db(self.delivery.open_snapshot(self._device_id, family_id, self.window))
        self._apply_snapshot(snap)
        return holder

    def _apply_snapshot(self, snap: ConnectSnapshot) -> None:
        acked = snap.state.acked_through
        self.acked = self.ack_target = self.last_sent = acked
        self.metrics.queue_depth_on_connect.observe(snap.pending_count)
        if snap.state.purged_through > acked or len(snap.items) >= self.window:
            self._need_read = True  # a gap to report, or more behind a full window: read on
        if snap.state.purged_through <= acked:
            # Handed to the pump like the writer's pushes (ahead of any that came meanwhile).
            self._pushed.extendleft(reversed([i for i in snap.items if i.queue_seq > acked]))

    async def _pump(self) -> None:
        while True:
            self._wake.clear()
            while self._ephemeral:
                await self._send(self._ephemeral.popleft())
            if self.ack_target > self.acked:
                await self._commit_ack(self.ack_target)
            exhausted = await self._refill()
            if exhausted and not self.inflight and self._drained_reported != self.acked:
                self._drained_reported = self.acked
                await self._send(frames.encode({"type": "drained", "queue_seq": self.acked}))
            await self._wake.wait()

    async def _commit_ack(self, through: int) -> None:
        # The group-commit writer shields its jobs already: a cancelled pump leaves the ack's
        # commit running (no extra task per ack, as _db would add).
        await self.delivery.ack(self._device_id, through)
        now = self.delivery.clock()
        delivered = 0
        for seq in [s for s in self.inflight if s <= through]:
            ts = self.inflight.pop(seq)
            if ts is not None:
                delivered += 1
                self.metrics.latency.observe(max(0.0, (now - ts) / 1000))
        if delivered:
            self.metrics.delivered.inc(delivered)
            self.metrics.queue_depth.dec(delivered)
        self.acked = max(self.acked, through)

    async def _refill(self) -> bool:
        """Fill the window: first from the entries the writer pushed, while they continue
        ``last_sent``; from the database when something may be missing. True if the queue has
        nothing more to send."""
        while True:
            while self._pushed and len(self.inflight) < self.window:
                pushed = self._pushed[0]
                if pushed.queue_seq <= self.last_sent:
                    self._pushed.popleft()  # already sent (read from the database)
                    continue
                if self._need_read or pushed.queue_seq != self.last_sent + 1:
                    # Something in between (or a gap): the database has it; read from there.
                    self._need_read = True
                    break
                self._pushed.popleft()
                await self._send_item(pushed)
            room = self.window - len(self.inflight)
            if room <= 0:
                return False
            if not self._need_read:
                return not self._pushed
            # Cleared before the read: a wake-up that arrives during it sets it again.
            self._need_read = False
            items, state = await _db(self.delivery.pending(self._device_id, self.last_sent, room))
            if len(items) >= room:
                self._need_read = True  # the window is full; there may be more
            if state.purged_through > self.last_sent:
                self._need_read = True
                start = self.last_sent + 1
                self.last_sent = state.purged_through
                self.inflight[state.purged_through] = None
                await self._send(
                    frames.encode(
                        {"type": "gap", "from_queue_seq": start, "to_queue_seq": state.purged_through}
                    )
                )
                continue
            for item in items:
                await self._send_item(item)
            if len(items) < room and self._pushed and self._pushed[0].queue_seq > self.last_sent + 1:
                self._pushed.clear()  # the queue was just read to its end: nothing continues it

    async def _send_item(self, item: QueueItem) -> None:
        self.inflight[item.queue_seq] = item.server_ts_ms
        self.last_sent = item.queue_seq
        await self._send(
            frames.envelope_frame(
                queue_seq=item.queue_seq,
                conversation_id=item.conversation_id,
                server_seq=item.server_seq,
                server_ts=item.server_ts_ms,
                sender_account_id=item.sender_account_id,
                sender_device_id=item.sender_device_id,
                envelope_id=item.envelope_id,
                clock=item.clock,
                ciphertext=item.ciphertext,
            )
        )


#: The delivery socket's path (also dispatched directly by :class:`server.app.SaltlineApp`).
DELIVERY_PATH = "/v1/ws"


@router.websocket(DELIVERY_PATH)
async def delivery_socket(ws: WebSocket) -> None:
    ctx: AppContext = ws.app.state.ctx
    delivery: DeliveryService = ctx.delivery
    registry: ConnectionRegistry = ctx.connections
    metrics: DeliveryMetrics = delivery.metrics
    await ws.accept()
    authed = await _authenticate(ws, ctx)
    if authed is None:
        metrics.closes.labels(reason="auth_failed").inc()
        return
    claims = authed
    device = claims.device
    settings = ctx.settings
    conn = DeviceConnection(
        ws,
        device,
        delivery,
        metrics,
        window=settings.delivery_window,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        heartbeat_missed_limit=settings.heartbeat_missed_limit,
    )
    conn.token_exp_ms = claims.exp_ms
    conn.reauth = lambda: ctx.auth.check_token_holder(claims)
    subscription = None
    metrics.connections.inc()
    try:
        # Subscribed first, then the device and the token family are checked (one read, never
        # cached: see AuthService.check_token_holder): a removal or a revocation after the check
        # reaches this connection through the bus; one before it is seen by the check. Only then
        # does the socket replace an older one of the device (a refused token never does).
        # The check and the queue's first read share one read transaction (the reconnect
        # storm: one thread hand-off per open); the queue is used only if the check passes.
        subscription = delivery.bus.subscribe(conn.device_id, conn)
        # Across processes (Redis), the first read waits for the subscription to be active, so
        # the read and the bus together miss nothing without a second read (bus.until_live).
        await delivery.bus.until_live(subscription)
        try:
            _device_id, family_id = ctx.auth.holder_key(claims)
            holder = await conn.open_read(family_id)
            ctx.auth.check_holder_state(claims, holder.account_id, holder.revoked)
        except Problem as problem:  # a removed device or a revoked login: 4003 (spec § 5.3 rule 2)
            conn.close_soon(CLOSE_AUTH_FAILED, problem.code.value)
            await conn._close_socket(CLOSE_AUTH_FAILED, problem.code.value)
            return
        delivery.bus.claim(subscription)  # older sockets on other instances close (4001)
        if registry.register(conn) is not None:
            # The replaced socket of this device took the writer's pushes until now: one
            # committed during the read above went to it, so read the queue once more.
            conn.on_wake()
        await conn._send(
            frames.encode(
                {
                    "type": "ready",
                    "account_id": device.account_id,
                    "device_id": b64encode(conn.device_id),
                    "acked_queue_seq": conn.acked,
                    "window": conn.window,
                    "heartbeat_interval_s": conn.heartbeat_interval_s,
                }
            )
        )
        await conn.run()
    except Exception as exc:  # the socket may be gone already; nothing here may leak state
        if not isinstance(exc, WebSocketDisconnect | OSError):
            log.error("delivery connection failed: %s", type(exc).__name__)
        conn.close_soon(CLOSE_INTERNAL_ERROR, "internal error")
        await conn._close_socket(CLOSE_INTERNAL_ERROR, "internal error")
    finally:
        registry.unregister(conn)
        if subscription is not None:
            delivery.bus.unsubscribe(subscription)
        metrics.connections.dec()
        conn.released()
