"""uvicorn's HTTP and WebSocket protocols with the limits uvicorn's own settings cannot express
(issue 13, docs/deploy.md § "Transport limits").

uvicorn 0.55 leaves four holes that a client needs no account to use:

- **Pipelining.** ``HttpToolsProtocol`` queues every pipelined request it parses and resumes
  reading after *each* response, even while requests are still queued, so one connection that
  pipelines ``GET /healthz`` and never reads grows the queue without bound (+690 MiB in 8 s).
  Here reading resumes only once the queue is empty, and a connection whose queue passes
  ``http_max_pipeline`` is dropped.
- **Idle and slow request heads.** The keep-alive timer is armed only after a response and is
  cancelled by any byte received, so a connection that sends nothing, or one byte now and then,
  is held for ever, and httptools puts no bound on a head's size. Here every request head must be
  complete within ``http_head_timeout_s`` of the connection opening or of the previous response
  (otherwise the connection is closed) and within ``http_max_head_bytes`` (otherwise 431).
- **Connections.** Nothing caps them (``limit_concurrency`` answers only requests that arrive):
  idle connections exhaust the file descriptors. Here, at ``max_connections`` (HTTP and WebSocket
  together), a new connection evicts the connection that has waited longest for a request head;
  when none is waiting, it gets a 503 problem+json and is closed.
- **WebSocket write buffers.** Protocol PONGs are written whatever the peer reads, and a close
  ends with ``transport.close()``, which waits for a buffer that never drains. Here a socket
  whose write buffer passes ``ws_write_buffer_max_bytes`` is aborted (the application's own frames
  wait at uvicorn's 64 KiB high-water mark, so only a peer that does not read gets there), and a
  close or an application that returns drops the transport (``abort``).

- **Slow request bodies.** Once a head is complete nothing bounds how long its body may take: a
  client that sends a head with ``Content-Length: 1000000`` and then one byte a minute holds the
  connection and a task for ever. Here a body must arrive within ``http_body_timeout_s`` of its
  head plus one second per ``http_body_min_rate`` bytes received (Apache's ``mod_reqtimeout``
  rule: a slow but moving upload goes on, a trickle does not); time during which the application
  is not reading (reading paused by flow control) does not count. Otherwise the request is
  answered 408 problem+json if no answer started (the application sees a disconnect) and the
  connection is dropped.
- **Unread responses.** A response larger than the transport's high-water mark waits for the
  peer to read; a peer that never reads holds the response's bytes and the connection for ever
  (``close()`` waits for the buffer to drain). Here a connection whose writing stays paused for
  ``http_write_timeout_s`` (the peer read less than the buffer's high-to-low-water span in that
  time) is aborted, which frees the buffered bytes.
- **uvicorn's last-resort 500.** An exception that escapes the application before it started its
  answer, or an application that returns without answering, gets uvicorn's plain-text ``500
  Internal Server Error``; here it is the same 500 as problem+json (``internal_error``).

Refusals written here (connection cap, malformed HTTP, oversized head, slow body, a WebSocket
handshake the ``websockets`` library refuses, the last-resort 500) are problem+json like the
application's.

Each rule is a small method on the subclass; the limits come from :class:`TransportLimits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import orjson
from prometheus_client import Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import Response

from saltline.server.errors import Problem, ProblemCode

PROBLEM_MEDIA_TYPE = b"application/problem+json"
#: A refused connection is dropped this long after its 503 if the client has not closed it.
REFUSED_GRACE_S = 1.0
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class TransportLimits:
    max_connections: int
    http_head_timeout_s: float
    http_max_pipeline: int
    http_max_head_bytes: int
    ws_write_buffer_max_bytes: int
    ws_close_timeout_s: float
    http_body_timeout_s: float
    http_body_min_rate: int
    http_write_timeout_s: float


def raw_problem_response(problem: Problem) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response carrying ``problem`` (written straight
    to the transport, where no application runs)."""
    body = orjson.dumps(problem.to_dict())
    reason = REASONS.get(problem.status, b"Error")
    head = [
        b"HTTP/1.1 %d %s" % (problem.status, reason),
        b"content-type: " + PROBLEM_MEDIA_TYPE,
        b"content-length: %d" % len(body),
        b"connection: close",
        *(f"{k}: {v}".encode("latin-1") for k, v in problem.headers.items()),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


TOO_MANY_CONNECTIONS = raw_problem_response(
    Problem(
        503,
        ProblemCode.SERVICE_UNAVAILABLE,
        "the server holds as many connections as it is configured for; retry shortly",
        headers={"Retry-After": "1"},
    )
)
HEAD_TOO_LARGE = raw_problem_response(
    Problem(431, ProblemCode.VALIDATION_FAILED, "the request head (request line and headers) is too large")
)
BODY_TIMEOUT = raw_problem_response(
    Problem(408, ProblemCode.REQUEST_TIMEOUT, "the request body did not arrive in time")
)
INTERNAL_ERROR_PROBLEM = Problem(500, ProblemCode.INTERNAL_ERROR, "an unexpected error occurred")
INTERNAL_ERROR_RESPONSE = raw_problem_response(INTERNAL_ERROR_PROBLEM)
MALFORMED_HTTP = raw_problem_response(
    Problem(400, ProblemCode.VALIDATION_FAILED, "malformed HTTP request (the request could not be parsed)")
)


async def _send_500_problem(cycle: RequestResponseCycle) -> None:
    """uvicorn's ``send_500_response`` (an exception escaped the application before it started
    its answer, or it returned without one), as problem+json."""
    body = orjson.dumps(INTERNAL_ERROR_PROBLEM.to_dict())
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await cycle.send({"type": "http.response.start", "status": 500, "headers": headers})
    await cycle.send({"type": "http.response.body", "body": body, "more_body": False})


def handshake_problem(response: Response) -> Response:
    """A handshake refusal from the websockets library (400 bad key or headers, 426 wrong
    version) as problem+json; its other headers (``Sec-WebSocket-Version``) are kept."""
    detail = response.body.decode("utf-8", "replace").strip() or "WebSocket handshake refused"
    problem = Problem(response.status_code, ProblemCode.VALIDATION_FAILED, detail[:200])
    body = orjson.dumps(problem.to_dict())
    headers = Headers()
    for name, value in response.headers.raw_items():
        if name.lower() not in ("content-type", "content-length"):
            headers[name] = value
    headers["Content-Type"] = PROBLEM_MEDIA_TYPE.decode()
    headers["Content-Length"] = str(len(body))
    return Response(response.status_code, response.reason_phrase, headers, body)


#: Connections this process closed or refused here, by reason (``saltline_transport_closes_total``
#: in ``/metrics``, through :class:`TransportCollector`): per process, whatever app serves it.
#: A prometheus-client counter, so that with ``serve --workers N`` its samples are summed over
#: the workers like every other metric (server/workers.py); registered in no registry itself.
CLOSE_REASONS = (
    "body_timeout",
    "connection_cap",
    "head_timeout",
    "head_too_large",
    "idle_evicted",
    "pipeline_overflow",
    "write_timeout",
    "ws_write_buffer",
)
CLOSES = Counter(
    "saltline_transport_closes",
    "Connections the transport limits closed or refused (server/transport.py), by reason",
    ["reason"],
    registry=None,
)
_CLOSE_COUNTERS = {reason: CLOSES.labels(reason=reason) for reason in CLOSE_REASONS}


def count_close(reason: str) -> None:
    """Count one connection closed or refused for ``reason`` (one of :data:`CLOSE_REASONS`)."""
    _CLOSE_COUNTERS[reason].inc()


def closes(reason: str) -> float:
    """How many connections this process closed for ``reason`` so far."""
    for metric in CLOSES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("reason") == reason:
                return sample.value
    return 0.0


class TransportCollector(Collector):
    """Exposes :data:`CLOSES` in an app's registry (many apps may share one process)."""

    def collect(self) -> Iterator[Metric]:
        yield from CLOSES.collect()


#: ``SO_LINGER`` on with a zero timeout: ``close()`` resets the connection (RST) and discards
#: the unsent bytes instead of queueing a FIN behind them.
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Drop a connection: ``abort()``, made an abortive close. A plain ``abort()`` closes the
    socket, and when nothing sent by the peer is left unread the kernel queues a FIN behind
    the bytes the peer has not read: a peer that does not read never sees it (its writes wait
    on a zero window, without the RST a closed socket would answer new data with) and the
    kernel keeps up to a send buffer of bytes per dropped connection until its retransmissions
    give up. With ``SO_LINGER`` 0 the kernel frees them and the peer gets a RST at once."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class _BoundedTransport:
    """Delegates to a transport; a write that leaves more than ``limit`` bytes buffered aborts it."""

    def __init__(self, transport: asyncio.Transport, limit: int) -> None:
        self._transport = transport
        self._limit = limit
        self.aborted_for_buffer = False

    def write(self, data: bytes) -> None:
        self._transport.write(data)
        if self._transport.get_write_buffer_size() > self._limit and not self._transport.is_closing():
            self.aborted_for_buffer = True
            count_close("ws_write_buffer")
            reset(self._transport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_classes(limits: TransportLimits) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The HTTP and WebSocket protocol classes for ``limits`` (uvicorn's ``http=`` and ``ws=``)."""

    class SaltlineWebSocketProtocol(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            bounded = _BoundedTransport(cast(asyncio.Transport, transport), limits.ws_write_buffer_max_bytes)
            self.transport = cast(asyncio.Transport, bounded)
            self.close_timeout = limits.ws_close_timeout_s

        _drop_armed = False

        async def send(self, message: Any) -> None:
            await super().send(message)
            if self.close_timer is not None and not self._drop_armed:
                self._drop_armed = True
                # uvicorn's timer calls transport.close(), which waits for the buffer to drain
                self.close_timer.cancel()
                self.close_timer = self.loop.call_later(self.close_timeout, self._drop)

        def on_task_complete(self, task: asyncio.Task[None]) -> None:
            super().on_task_complete(task)
            if self.transport.get_write_buffer_size() > 0:
                # the application has finished with the socket; a peer that does not read it
                # must not hold the buffer (closing would wait for the drain)
                self._drop()

        def _drop(self) -> None:
            reset(self.transport)

        _answered_500 = False

        def send_500_response(self) -> None:
            # uvicorn's plain-text 500 (the application raised or returned before accepting the
            # handshake, or the server shuts down mid-handshake), as problem+json
            if self.initial_response or self.handshake_complete or self._answered_500:
                return
            self._answered_500 = True
            self.transport.write(INTERNAL_ERROR_RESPONSE)

        # -- refused handshakes: problem+json instead of the websockets library's plain text ---

        def handle_connect(self, event: Any) -> None:
            accept = self.conn.accept

            def accept_as_problem(request: Any) -> Response:
                response = accept(request)
                if response.status_code == 101:
                    return response
                return handshake_problem(response)

            self.conn.accept = accept_as_problem  # type: ignore[method-assign]
            super().handle_connect(event)

        def handle_handshake_exception(self) -> None:
            # websockets queues a plain-text 414/431 for its limits, else nothing
            self.handshake_complete = True
            self.close_sent = True
            queued = b"".join(self.conn.data_to_send())
            status = int(queued.split(b" ", 2)[1]) if queued.startswith(b"HTTP/1.1 ") else 400
            detail = "malformed WebSocket handshake request"
            self.transport.write(raw_problem_response(Problem(status, ProblemCode.VALIDATION_FAILED, detail)))
            self.transport.close()

    #: HTTP connections waiting for a request head, oldest first (evicted first at the cap)
    idle: dict[SaltlineHttpProtocol, None] = {}

    class SaltlineHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _refused = False
        _head_bytes = 0
        _body_timer: asyncio.TimerHandle | None = None
        _body_started = 0.0
        _body_bytes = 0
        #: From a request's head until its body's end, answered or not: the bytes in between
        #: are body (never counted as the next head, nor timed as one).
        _body_pending = False
        _write_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport = cast(asyncio.Transport, transport)  # asyncio's or uvloop's
            if len(self.connections) >= limits.max_connections and idle:
                # at the cap, the connection waiting longest for a request head makes room: a
                # flood of idle connections cannot keep out a client that sends its request
                oldest = next(iter(idle))
                del idle[oldest]
                reset(oldest.transport)
                count_close("idle_evicted")
            elif len(self.connections) >= limits.max_connections:
                # answer, half-close so the client reads the answer before our close (a close
                # with its request unread would be a reset), and drop it after a grace period
                self._refused = True
                count_close("connection_cap")
                self.transport = transport
                transport.write(TOO_MANY_CONNECTIONS)
                if transport.can_write_eof():
                    transport.write_eof()
                    self.loop.call_later(REFUSED_GRACE_S, transport.abort)
                else:
                    transport.close()
                return
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            self._cancel_body_timer()
            self._cancel_write_timer()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            awaiting_head = self in idle
            super().data_received(data)
            # The head is still incomplete after this read, and was awaited before it: all of it
            # was head. (A head awaited from within this read, after the end of a body in it, is
            # counted from the next read: the bound is http_max_head_bytes plus one read.)
            if awaiting_head and self in idle:
                self._head_bytes += len(data)
                if self._head_bytes > limits.http_max_head_bytes and not self.transport.is_closing():
                    self._cancel_head_timer()
                    self.transport.write(HEAD_TOO_LARGE)
                    count_close("head_too_large")
                    self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self.transport.write(MALFORMED_HTTP)
            self.transport.close()

        # -- request heads: complete within the timeout, not reset by each byte ----------------

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(limits.http_head_timeout_s, self._head_timeout)
            self._head_bytes = 0
            idle[self] = None

        def _cancel_head_timer(self) -> None:
            idle.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            count_close("head_timeout")
            if not self.transport.is_closing():
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            before = self.cycle
            super().on_headers_complete()
            if len(self.pipeline) > limits.http_max_pipeline:
                self.pipeline.clear()
                count_close("pipeline_overflow")
                reset(self.transport)
                return
            if self.cycle is not before and not self.pipeline:  # a new request (not an upgrade)
                self._arm_body_timer()  # cancelled at once by on_message_complete if bodiless

        # -- request bodies: a deadline that grows with the bytes received ---------------------

        def _arm_body_timer(self) -> None:
            self._cancel_body_timer()
            self._body_started = self.loop.time()
            self._body_bytes = 0
            self._body_pending = True
            self._body_timer = self.loop.call_later(limits.http_body_timeout_s, self._body_deadline)

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._cancel_body_timer()
            self._body_pending = False
            answered = self.cycle is not None and self.cycle.response_complete
            super().on_message_complete()
            if answered and not self.pipeline and not self.transport.is_closing():
                # answered before its body ended (a 413, say): the next head starts now
                self._arm_head_timer()

        def _body_deadline(self) -> None:
            """Fires at the body's deadline as it stood; re-arms while the deadline moved on (more
            bytes came) or while the application, not the client, holds the body up."""
            self._body_timer = None
            cycle = self.cycle
            if cycle is None or not self._body_pending or self.transport.is_closing():
                return
            now = self.loop.time()
            if self.flow.read_paused:  # the application is not reading: not the client's delay
                self._body_started, self._body_bytes = now, 0
            allowed = limits.http_body_timeout_s + self._body_bytes / limits.http_body_min_rate
            deadline = self._body_started + allowed
            if now < deadline:
                self._body_timer = self.loop.call_later(deadline - now, self._body_deadline)
                return
            count_close("body_timeout")
            if cycle.response_complete:  # answered already; its body still not arriving: drop
                reset(self.transport)
                return
            started = cycle.response_started
            cycle.disconnected = True  # the application's reads end, its answer goes nowhere
            cycle.message_event.set()
            if not started:
                self.transport.write(BODY_TIMEOUT)
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                self.loop.call_later(REFUSED_GRACE_S, self.transport.abort)
            else:
                reset(self.transport)

        # -- responses the peer does not read ---------------------------------------------------

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(limits.http_write_timeout_s, self._write_timeout)

        def resume_writing(self) -> None:
            self._cancel_write_timer()
            super().resume_writing()

        def _write_timeout(self) -> None:
            self._write_timer = None
            count_close("write_timeout")
            reset(self.transport)

        def _cancel_write_timer(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        # -- uvicorn's last-resort 500, as problem+json ----------------------------------------

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            cycle.send_500_response = partial(_send_500_problem, cycle)  # type: ignore[method-assign]
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            # uvicorn's version resumes reading after every response, queue or not
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._unset_keepalive_if_required()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self.flow.resume_reading()
                if not self._body_pending:  # else armed when the answered request's body ends
                    self._arm_head_timer()

        def handle_websocket_upgrade(self) -> None:
            self._cancel_head_timer()
            super().handle_websocket_upgrade()

    return SaltlineHttpProtocol, SaltlineWebSocketProtocol
