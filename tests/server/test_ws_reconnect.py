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


@contextmanager
def counted_db(server: LiveServer) -> Iterator[dict[str, int]]:
    """Count the database transactions and statements (by kind) while the block runs, on every
    engine of the server's Database (async engine, SQLite reader and writer threads)."""
    db = server.ctx.db
    engines = [db.engine.sync_engine] + [t.engine for t in (db.sync_readers, db.sync_writer) if t is not None]
    counts = {"transactions": 0, "select": 0, "write": 0}

    def on_begin(_conn: Any) -> None:
        counts["transactions"] += 1

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        kind = statement.lstrip().split(None, 1)[0].upper()
        if kind == "SELECT":
            counts["select"] += 1
        elif kind in ("INSERT", "UPDATE", "DELETE"):
            counts["write"] += 1

    for engine in engines:
        event.listen(engine, "begin", on_begin)
        event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield counts
    finally:
        for engine in engines:
            event.remove(engine, "begin", on_begin)
            event.remove(engine, "before_cursor_execute", on_execute)


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
    # The token's holder (device and family, one read) and the queue (state, first window,
    # depth, expiry: one read); no retention write, no second queue read before `drained`.
    assert counts == {"transactions": 2, "select": 5, "write": 0}
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
    assert counts == {"transactions": 2, "select": 5, "write": 0}
    await ws.ack(2)
    await ws.close()
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
    original = auth.check_token_holder

    async def refuse(claims: Any) -> None:
        from saltline.server.errors import Problem, ProblemCode

        raise Problem(401, ProblemCode.TOKEN_REVOKED, "revoked")

    auth.check_token_holder = refuse  # type: ignore[method-assign]
    try:
        other = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
        await other.send({"type": "auth", "token": alice.first.access_token})
        assert await other.closed_with() == 4003
    finally:
        auth.check_token_holder = original  # type: ignore[method-assign]
    await current.send({"type": "ping"})
    assert (await current.expect("pong"))["type"] == "pong"
    assert isinstance(live_server.ctx.connections.get(alice.first.device_id), ws_module.DeviceConnection)
    await current.close()
