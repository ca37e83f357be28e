"""What the client does per message, against the in-memory relay: the private state is decoded once
per written state (not per send or receive), the server's one-time prekey count is asked for at
most once per interval (not per drained queue), an idempotent request that meets a connection the
server was closing is sent again at once, and envelopes go over the ready delivery socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.prekeys import BATCH as PREKEY_BATCH
from saltline.client_sdk.core.prekeys import CHECK_INTERVAL_MS as PREKEY_CHECK_INTERVAL_MS
from saltline.client_sdk.core.prekeys import LOW_WATER as PREKEY_LOW_WATER
from saltline.client_sdk.core.prekeys import SPK_ROTATION_MS
from saltline.client_sdk.errors import NetworkError
from saltline.client_sdk.facets.inbound import RetryLater
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.transport.ws import DeliverySocket, SocketUnavailable
from saltline.crypto import private_state
from tests.client_sdk.harness import FakeRelay
from tests.client_sdk.test_client_harness import URL, Clock, _add_device, _texts, _user


def _stored_state(c: Client) -> private_state.DeviceState:
    record = c.store.identity.get_device()
    assert record is not None
    return private_state.decode(record.state)


class _Decodes:
    """Counts ``private_state.decode`` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = private_state.decode

        def counting(data: bytes) -> private_state.DeviceState:
            self.calls += 1
            return real(data)

        monkeypatch.setattr(private_state, "decode", counting)


# -- 1. the decoded private state is cached ------------------------------------------------------------


async def test_sending_and_receiving_do_not_decode_the_private_state(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "hello")  # a prekey message: alice uses (and deletes) a one-time prekey
    await relay.deliver(alice)
    decodes = _Decodes(monkeypatch)
    for i in range(5):
        await alice.send_text(cid, f"a{i}")
        await bob.send_text(cid, f"b{i}")
    await relay.deliver(alice)
    await relay.deliver(bob)
    assert _texts(alice) == ["hello", *(f"b{i}" for i in range(5))]
    assert _texts(bob) == [f"a{i}" for i in range(5)]
    assert decodes.calls == 0


async def test_the_cached_state_follows_every_write_and_a_reopened_client_reads_the_store() -> None:
    relay = FakeRelay()
    clock = Clock()
    store = MemoryStore()
    alice = await Client.create(URL, store, http_transport=relay, clock=clock)
    await alice.register("alice", "a long passphrase")
    bob = await _user(relay, "bob")
    assert alice._ctx.state == _stored_state(alice)

    cid = await bob.create_conversation(["alice"])
    await bob.send_text(cid, "uses a one-time prekey")
    held = set(alice._ctx.state.one_time_prekeys)
    await relay.deliver(alice)
    assert len(alice._ctx.state.one_time_prekeys) == len(held) - 1
    assert alice._ctx.state == _stored_state(alice)

    del relay.keys[alice.device_id].one_time[5:]
    assert await alice.replenish_prekeys() == PREKEY_BATCH - 5
    assert alice._ctx.state == _stored_state(alice)
    assert len(alice._ctx.state.one_time_prekeys) > len(held)

    clock.ms += SPK_ROTATION_MS
    first = alice._ctx.state.signed_prekey.key_id
    assert await alice.rotate_signed_prekey_if_due()
    assert alice._ctx.state.signed_prekey.key_id != first
    assert alice._ctx.state == _stored_state(alice)
    expected = alice._ctx.state

    await alice.close()
    again = await Client.create(URL, store, http_transport=relay, clock=clock)
    assert again._ctx.state == expected
    await again.close()


async def test_a_rolled_back_receive_leaves_no_stale_cached_state(monkeypatch: pytest.MonkeyPatch) -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])  # the genesis: bob's first (prekey) message
    await bob.send_text(cid, "first")
    before = alice._ctx.state
    real_put = alice.store.sync.put_sync_op

    def failing(record: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(alice.store.sync, "put_sync_op", failing)
    with pytest.raises(RetryLater):  # not acknowledged: the connection is dropped and resumed
        await relay.deliver(alice)  # the one-time prekey was deleted, then the transaction rolled back
    assert alice._ctx.state == before == _stored_state(alice)

    monkeypatch.setattr(alice.store.sync, "put_sync_op", real_put)
    await relay.deliver(alice)  # the same prekey message again: the prekey is still held
    assert _texts(alice) == ["first"]
    assert len(alice._ctx.state.one_time_prekeys) == len(before.one_time_prekeys) - 1


# -- 2. the prekey count is checked at most once per interval -----------------------------------------


def _count_requests(relay: FakeRelay) -> int:
    return relay.requests.count(("GET", "/v1/keys/count"))


async def _drained(c: Client, seq: int = 0) -> None:
    await c.delivery.on_frame({"type": "drained", "queue_seq": seq})
    await asyncio.gather(*c._tasks)


async def test_drains_count_the_prekeys_at_start_up_then_once_per_interval() -> None:
    relay = FakeRelay()
    clock = Clock()
    alice = await _user(relay, "alice", clock)
    base = _count_requests(relay)
    await _drained(alice)  # the first drain after start-up always counts
    assert _count_requests(relay) == base + 1
    assert alice.store.prekeys.get_prekey_meta().last_count_check_ms == clock.ms
    for i in range(20):
        clock.ms += 1000
        await _drained(alice, i)
    assert _count_requests(relay) == base + 1

    clock.ms += PREKEY_CHECK_INTERVAL_MS
    await _drained(alice)
    assert _count_requests(relay) == base + 2
    await _drained(alice)
    assert _count_requests(relay) == base + 2

    # a new connection counts again once its backlog drained
    await alice.delivery.on_frame({"type": "ready", "acked_queue_seq": 0})
    await asyncio.gather(*alice._tasks)
    await _drained(alice)
    assert _count_requests(relay) == base + 3


async def test_prekey_messages_that_may_have_used_up_the_prekeys_trigger_a_count_at_once() -> None:
    relay = FakeRelay()
    clock = Clock()
    alice = await _user(relay, "alice", clock)
    keys = relay.keys[alice.device_id].one_time
    del keys[: len(keys) - (PREKEY_LOW_WATER + 1)]  # claimed by others: still enough
    await _drained(alice)
    base = _count_requests(relay)
    assert len(keys) == PREKEY_LOW_WATER + 1

    for name in ("bob", "carol"):  # two first messages: two one-time prekeys handed out and used
        other = await _user(relay, name)
        await other.send_text(await other.create_conversation(["alice"]), f"hi from {name}")
    await relay.deliver(alice)
    assert len(_texts(alice)) == 2
    await _drained(alice)  # long before the interval is over
    assert _count_requests(relay) == base + 1
    assert len(relay.keys[alice.device_id].one_time) == PREKEY_BATCH  # replenished
    await _drained(alice)
    assert _count_requests(relay) == base + 1


async def test_a_drain_still_rotates_the_signed_prekey_when_due() -> None:
    relay = FakeRelay()
    clock = Clock()
    alice = await _user(relay, "alice", clock)
    await _drained(alice)
    published = relay.keys[alice.device_id].signed_prekey
    clock.ms += SPK_ROTATION_MS
    await _drained(alice)
    assert relay.keys[alice.device_id].signed_prekey != published
    assert alice.store.prekeys.get_prekey_meta().signed_prekey_rotated_at_ms == clock.ms


# -- 3. one immediate retry of idempotent requests on a failed connection ------------------------------


class FlakyConnection(httpx.AsyncBaseTransport):
    """The relay behind connections that break: the next ``failures`` requests matching
    ``(method, path suffix)`` raise ``error``, before reaching the relay or (``after``) once the
    relay has handled them (the response is lost)."""

    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.match: tuple[str, str] = ("", "")
        self.failures = 0
        self.after = False
        self.error: type[httpx.TransportError] = httpx.RemoteProtocolError
        self.attempts: list[tuple[str, str]] = []

    def fail(
        self, method: str, suffix: str, failures: int = 1, *, after: bool = False, error: Any = None
    ) -> None:
        self.match, self.failures, self.after = (method, suffix), failures, after
        self.error = error or httpx.RemoteProtocolError

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append((request.method, request.url.path))
        hit = request.method == self.match[0] and request.url.path.endswith(self.match[1])
        if hit and self.failures > 0:
            self.failures -= 1
            if self.after:
                await self.relay.handle_async_request(request)
            raise self.error("Server disconnected without sending a response.", request=request)
        return await self.relay.handle_async_request(request)


async def _flaky_user(relay: FakeRelay, name: str) -> tuple[Client, FlakyConnection]:
    flaky = FlakyConnection(relay)
    c = await Client.create(URL, MemoryStore(), http_transport=flaky)
    await c.register(name, "a long passphrase")
    return c, flaky


def _posts(flaky: FlakyConnection) -> int:
    return sum(1 for m, p in flaky.attempts if m == "POST" and p.endswith("/envelopes"))


@pytest.mark.parametrize(
    ("error", "after"),
    [(httpx.RemoteProtocolError, False), (httpx.ReadError, False), (httpx.ReadError, True)],
)
async def test_a_send_on_a_closing_connection_is_retried_at_once(error: Any, after: bool) -> None:
    relay = FakeRelay()
    alice = await _user(relay, "alice")
    bob, flaky = await _flaky_user(relay, "bob")
    cid = await bob.create_conversation(["alice"])  # its genesis is at server_seq 1
    flaky.attempts.clear()
    flaky.fail("POST", "/envelopes", error=error, after=after)
    envelope_id = await bob.send_text(cid, "through a closing connection")
    assert _posts(flaky) == 2
    assert not bob.store.outbox.outbox()
    sent = bob.store.conversations.get_message(envelope_id)
    assert sent is not None and sent.status == "sent" and sent.server_seq == 2
    assert len(relay.sends) == 2  # the genesis; a replay after a lost response is not stored again
    await relay.deliver(alice)
    assert _texts(alice) == ["through a closing connection"]


async def test_a_send_is_retried_only_once_then_stays_in_the_outbox() -> None:
    relay = FakeRelay()
    await _user(relay, "alice")
    bob, flaky = await _flaky_user(relay, "bob")
    cid = await bob.create_conversation(["alice"])
    flaky.attempts.clear()
    flaky.fail("POST", "/envelopes", failures=2)
    envelope_id = await bob.send_text(cid, "later")
    assert _posts(flaky) == 2
    assert [i.envelope_id for i in bob.store.outbox.outbox()] == [envelope_id]
    assert await bob.flush_outbox() == 1


async def test_gets_are_retried_but_other_requests_are_not() -> None:
    relay = FakeRelay()
    alice, flaky = await _flaky_user(relay, "alice")
    flaky.fail("GET", "/v1/keys/count")
    assert await alice.replenish_prekeys() == 0
    assert flaky.attempts.count(("GET", "/v1/keys/count")) == 2

    del relay.keys[alice.device_id].one_time[:-1]
    flaky.fail("PUT", "/v1/keys")  # uploading one-time prekeys twice would publish them twice
    with pytest.raises(NetworkError):
        await alice.replenish_prekeys()
    assert flaky.attempts.count(("PUT", "/v1/keys")) == 2  # register's upload, then this one
    assert PREKEY_BATCH > len(relay.keys[alice.device_id].one_time)


# -- 4. sending over the delivery socket ------------------------------------------------------------


class RelaySocket:
    """Stands in for a ready delivery socket: a ``send`` goes to the relay's send route and its
    HTTP answer comes back as the ``send_result`` frame the server would send. ``lose_answer``:
    the relay handles the next send, then the socket closes before its answer (``SocketUnavailable``);
    ``hang``: no answer comes (the socket's timeout)."""

    def __init__(self, relay: FakeRelay, owner: Client) -> None:
        self.relay, self.owner = relay, owner
        self.ready = True
        self.sent: list[dict[str, Any]] = []
        self.lose_answer = False
        self.hang = False

    async def stop(self) -> None:
        self.ready = False

    async def send_envelope(self, conversation_id: str, envelope: dict[str, Any] | bytes) -> dict[str, Any]:
        if self.hang:
            raise TimeoutError
        if isinstance(envelope, bytes):  # the outbox's stored request body
            envelope = json.loads(envelope)
        assert isinstance(envelope, dict)
        self.sent.append(envelope)
        request = httpx.Request(
            "POST",
            f"{URL}/v1/conversations/{conversation_id}/envelopes",
            json=envelope,
            headers={"Authorization": f"Bearer access.{self.owner.device_id}"},
        )
        response = await self.relay.handle_async_request(request)
        await response.aread()
        if self.lose_answer:
            self.lose_answer = False
            raise SocketUnavailable("closed before the answer")
        if response.status_code >= 300:
            return {
                "type": "send_result",
                "request_id": "1",
                "status": response.status_code,
                "problem": response.json(),
            }
        return {"type": "send_result", "request_id": "1", "status": response.status_code, **response.json()}


def _http_envelope_posts(relay: FakeRelay, socket: RelaySocket) -> int:
    posts = sum(1 for m, p in relay.requests if m == "POST" and p.endswith("/envelopes"))
    return posts - len(socket.sent)


async def test_sends_use_the_ready_socket_and_its_statuses_are_handled_as_over_http() -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])  # its genesis goes over HTTP
    relay.requests.clear()
    socket = RelaySocket(relay, bob)
    bob.delivery.socket = socket  # type: ignore[assignment]
    await bob.send_text(cid, "one")
    assert len(socket.sent) == 1 and _http_envelope_posts(relay, socket) == 0

    # alice links a phone: bob's send is answered 410 (a stale list) over the socket; bob fetches
    # the new list and sends the same envelope again, now for the phone too
    phone = await _add_device(relay, alice)
    envelope_id = await bob.send_text(cid, "two")
    assert [s["envelope_id"] for s in socket.sent[1:]] == [envelope_id, envelope_id]
    assert {c["device_id"] for c in socket.sent[-1]["ciphertexts"]} == {alice.device_id, phone.device_id}
    assert _http_envelope_posts(relay, socket) == 0
    assert not bob.store.outbox.outbox()
    for device in (alice, phone):
        await relay.deliver(device)
        assert _texts(device)[-1] == "two"

    socket.ready = False  # reconnecting: HTTP
    await bob.send_text(cid, "three")
    assert _http_envelope_posts(relay, socket) == 1


async def test_a_socket_closing_mid_send_resends_the_same_envelope_over_http() -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    cid = await bob.create_conversation(["alice"])  # its genesis goes over HTTP
    relay.requests.clear()
    socket = RelaySocket(relay, bob)
    bob.delivery.socket = socket  # type: ignore[assignment]
    socket.lose_answer = True  # the server stored it; the answer was lost with the socket
    envelope_id = await bob.send_text(cid, "once")
    assert _http_envelope_posts(relay, socket) == 1
    assert [s["envelope_id"] for s in relay.sends[1:]] == [envelope_id]  # the HTTP send was a replay
    sent = bob.store.conversations.get_message(envelope_id)
    assert sent is not None and sent.status == "sent" and sent.server_seq == 2
    await relay.deliver(alice)
    assert _texts(alice) == ["once"]

    socket.hang = True  # no answer in time: unknown outcome, so the same envelope goes over HTTP
    posts = _http_envelope_posts(relay, socket)
    later = await bob.send_text(cid, "later")
    assert _http_envelope_posts(relay, socket) == posts + 1
    assert bob.store.outbox.outbox() == []
    sent = bob.store.conversations.get_message(later)
    assert sent is not None and sent.status == "sent"
    await relay.deliver(alice)
    assert _texts(alice) == ["later"]  # exactly once, though it may have gone twice


async def test_the_socket_reads_a_send_answer_while_the_handler_waits_for_that_send() -> None:
    """The handler of a frame that arrived before the answer waits (as the client's does, for its
    lock) until the send returned: the answer is still read. A close before the answer fails the
    send with SocketUnavailable."""
    from websockets.asyncio.server import serve

    async def server(ws: Any) -> None:
        await ws.recv()  # auth
        await ws.send(json.dumps({"type": "ready", "acked_queue_seq": 0}))
        send = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "envelope", "queue_seq": 1}))
        await ws.send(
            json.dumps(
                {"type": "send_result", "request_id": send["request_id"], "status": 201, "server_seq": 7}
            )
        )
        acks.append(json.loads(await ws.recv()))
        await ws.recv()  # a second send: closed without an answer
        await ws.close()

    ready, sent = asyncio.Event(), asyncio.Event()
    acks: list[dict[str, Any]] = []

    async def handler(frame: dict[str, Any]) -> int | None:
        if frame["type"] == "ready":
            ready.set()
        if frame["type"] == "envelope":
            await sent.wait()
            return int(frame["queue_seq"])
        return None

    async def token() -> str:
        return "t"

    async with serve(server, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        socket = DeliverySocket(f"ws://127.0.0.1:{port}", token, handler, max_attempts=0)
        task = asyncio.create_task(socket.run())
        await asyncio.wait_for(ready.wait(), 10)
        answer = await asyncio.wait_for(socket.send_envelope("c", {"envelope_id": "e"}), 10)
        assert answer["status"] == 201 and answer["server_seq"] == 7
        sent.set()
        with pytest.raises(SocketUnavailable):
            await asyncio.wait_for(socket.send_envelope("c", {"envelope_id": "f"}), 10)
        await socket.stop()
        await asyncio.wait_for(task, 10)
    assert acks == [{"type": "ack", "queue_seq": 1}]  # the envelope was acknowledged after the send
    assert not socket.ready
    with pytest.raises(SocketUnavailable):
        await socket.send_envelope("c", {"envelope_id": "g"})
