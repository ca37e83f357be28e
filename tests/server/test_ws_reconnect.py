"""The reconnect path of the delivery socket (issue 13, the reconnect storm): one database read
for the token's holder and one for the queue, and every security check still made on each
reconnect (nothing about a device or a token family is cached, except permanent revocations)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event

from saltline.server.api import ws as ws_module
from tests.live import LiveServer
from tests.server.delivery_support import WsClient, create_conversation, envelope_body, send
from tests.server.helpers import Account, add_device, register, remove_device
from tests.server.test_ws import released


@contextmanager
def counted_db(server: LiveServer) -> Iterator[dict[str, int]]:
    """Count the database transactions and statements (by kind) while the block runs, on every
    engine of the server's Database (async engine, SQLite reader and writer threads). Statements
    are counted by the driver (SQLite's trace callback), so driver SQL on the raw cursor counts
    too; on PostgreSQL only transactions are counted (statements stay 0)."""
    db = server.ctx.db
    engines = [db.engine.sync_engine] + [t.engine for t in (db.sync_readers, db.sync_writer) if t is not None]
    counts = {"transactions": 0, "select": 0, "write": 0}

    def on_begin(_conn: Any) -> None:
        counts["transactions"] += 1

    def on_statement(statement: str) -> None:
        kind = statement.lstrip().split(None, 1)[0].upper()
        if kind == "SELECT":
            counts["select"] += 1
        elif kind in ("INSERT", "UPDATE", "DELETE"):
            counts["write"] += 1

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", dbapi_conn)
        if hasattr(driver, "set_trace_callback"):
            driver.set_trace_callback(on_statement)

    def on_checkin(dbapi_conn: Any, _record: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", dbapi_conn)
        if hasattr(driver, "set_trace_callback"):
            driver.set_trace_callback(None)

    for engine in engines:
        event.listen(engine, "begin", on_begin)
        event.listen(engine.pool, "checkout", on_checkout)
        event.listen(engine.pool, "checkin", on_checkin)
    try:
        yield counts
    finally:
        for engine in engines:
            event.remove(engine, "begin", on_begin)
            event.remove(engine.pool, "checkout", on_checkout)
            event.remove(engine.pool, "checkin", on_checkin)


def send_to(client: httpx.Client, sender: Account, to: Account, n: int) -> None:
    cid = create_conversation(client, sender, to)
    for i in range(n):
        body = envelope_body(sender.first, [sender, to], b"m%d" % i)
        r = send(client, sender.first, cid, body)
        assert r.status_code == 201, r.text


async def test_reconnect_reads_twice_and_writes_nothing(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice = register(client)
    ws = await WsClient.connect(live_server.ws_url, alice.first)
    assert await ws.envelopes_until_drained() == []
    await ws.close()
    with counted_db(live_server) as counts:
        ws = await WsClient.connect(live_server.ws_url, alice.first)
        assert await ws.envelopes_until_drained() == []
    # The token's holder (device and family) and the queue (state, first window, depth,
    # expiry): five statements in ONE read transaction; no retention write, no second queue
    # read before `drained`.
    assert counts["transactions"] == 1
    assert counts["write"] == 0
    assert counts["select"] in (0, 5)  # 0: PostgreSQL (statements not counted)
    await ws.close()


async def test_resume_delivers_the_queue_from_the_connect_read(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    send_to(client, alice, bob, 3)
    with counted_db(live_server) as counts:
        ws = await WsClient.connect(live_server.ws_url, bob.first)
        got = [await ws.expect("envelope") for _ in range(3)]  # unacknowledged: no `drained` yet
    assert [f["queue_seq"] for f in got] == [1, 2, 3]
    assert counts["transactions"] == 1 and counts["write"] == 0 and counts["select"] in (0, 5)
    conn = live_server.ctx.connections.get(bob.first.device_id)
    await ws.ack(2)
    await ws.close()
    await released(live_server, conn)  # an ack read before the close is committed
    ws = await WsClient.connect(live_server.ws_url, bob.first)  # resumes after the acked entry
    assert [f["queue_seq"] for f in await ws.envelopes_until_drained()] == [3]
    await ws.close()


async def test_resume_beyond_one_window(make_server: Callable[..., LiveServer]) -> None:
    server = await asyncio.to_thread(make_server, delivery_window=2)
    with server.client() as client:
        alice, bob = register(client), register(client)
        send_to(client, alice, bob, 5)
    ws = await WsClient.connect(server.ws_url, bob.first)
    assert [f["queue_seq"] for f in await ws.envelopes_until_drained()] == [1, 2, 3, 4, 5]
    await ws.close()


async def test_removed_device_is_refused_on_every_reconnect(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice = register(client)
    phone = add_device(client, alice)
    for _ in range(2):  # connected before: nothing about it is remembered
        ws = await WsClient.connect(live_server.ws_url, phone)
        assert await ws.envelopes_until_drained() == []
        await ws.close()
    remove_device(client, alice, phone)
    for _ in range(2):
        ws = await WsClient.connect(live_server.ws_url, phone, auth=False)
        await ws.send({"type": "auth", "token": phone.access_token})  # still within its exp
        assert await ws.closed_with() == 4003
    assert phone.device_id not in live_server.ctx.connections
    assert live_server.ctx.bus.subscriber_count() == 0


async def test_revoked_login_is_refused_on_reconnect(live_server: LiveServer, client: httpx.Client) -> None:
    alice = register(client)
    ws = await WsClient.connect(live_server.ws_url, alice.first)
    assert await ws.envelopes_until_drained() == []
    await ws.close()
    stolen = alice.first.refresh_token
    for expected in (200, 401):  # the second use of a rotated token revokes the family
        r = await asyncio.to_thread(client.post, "/v1/auth/refresh", json={"refresh_token": stolen})
        assert r.status_code == expected, r.text
    # As if the revocation had happened on another instance: only the database knows it.
    live_server.ctx.auth._revoked_families.clear()
    for _ in range(2):  # the first refusal from the database, the second from the cache
        ws = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
        await ws.send({"type": "auth", "token": alice.first.access_token})
        assert await ws.closed_with() == 4003


async def test_refused_token_never_replaces_the_devices_socket(
    live_server: LiveServer, client: httpx.Client
) -> None:
    """The holder check runs before the socket replaces the device's current one (4001)."""
    alice = register(client)
    current = await WsClient.connect(live_server.ws_url, alice.first)
    assert await current.envelopes_until_drained() == []
    auth = live_server.ctx.auth
    original = auth.check_holder_state

    def refuse(*_args: Any) -> None:
        from saltline.server.errors import Problem, ProblemCode

        raise Problem(401, ProblemCode.TOKEN_REVOKED, "revoked")

    auth.check_holder_state = refuse  # type: ignore[method-assign]
    try:
        other = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
        await other.send({"type": "auth", "token": alice.first.access_token})
        assert await other.closed_with() == 4003
    finally:
        auth.check_holder_state = original  # type: ignore[method-assign]
    await current.send({"type": "ping"})
    assert (await current.expect("pong"))["type"] == "pong"
    assert isinstance(live_server.ctx.connections.get(alice.first.device_id), ws_module.DeviceConnection)
    await current.close()


async def test_an_entry_pushed_to_the_replaced_socket_during_the_open_read_reaches_the_new_one(
    live_server: LiveServer, client: httpx.Client
) -> None:
    """The open reads the queue before the new socket replaces the device's current one (a
    refused token must not replace it), so an entry committed in between is pushed to the old
    socket; the new one reads the queue again once it has replaced it."""
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    old = await WsClient.connect(live_server.ws_url, bob.first)
    assert await old.envelopes_until_drained() == []
    delivery = live_server.ctx.delivery
    original = delivery.open_snapshot

    async def read_then_send(*args: Any) -> Any:
        result = await original(*args)
        body = envelope_body(alice.first, [alice, bob], b"between")
        r = await asyncio.to_thread(send, client, alice.first, cid, body)
        assert r.status_code == 201, r.text
        return result

    delivery.open_snapshot = read_then_send  # type: ignore[method-assign]
    try:
        new = await WsClient.connect(live_server.ws_url, bob.first)
    finally:
        delivery.open_snapshot = original  # type: ignore[method-assign]
    got = await new.envelopes_until_drained()
    assert [new.plaintext(f) for f in got] == [b"between"]
    assert await old.closed_with() == 4001
    await new.close()
