"""The delivery socket: auth, replacement, removal, heartbeat reaping, the window, retention gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from tests.live import LiveServer, ManualClock
from tests.server.delivery_support import WsClient, create_conversation, envelope_body, send
from tests.server.helpers import Account, add_device, register, remove_device


def gauge(server: LiveServer, name: str = "saltline_ws_connections") -> float:
    value = server.ctx.registry.get_sample_value(name)
    return 0.0 if value is None else value


def server_conn(server: LiveServer, device_id: bytes) -> Any:
    conn = server.ctx.connections.get(device_id)
    assert conn is not None
    return conn


async def released(server: LiveServer, conn: Any) -> None:
    """Wait (on the server's own event) until the connection released all its state."""
    await asyncio.wait_for(
        asyncio.wrap_future(asyncio.run_coroutine_threadsafe(conn.wait_closed(), server.loop)), 10
    )


def send_many(
    client: httpx.Client, sender: Account, to: Account, cid: str, n: int, tag: bytes = b"m"
) -> None:
    for i in range(n):
        r = send(client, sender.first, cid, envelope_body(sender.first, [sender, to], tag + b"%d" % i))
        assert r.status_code == 201, r.text


async def test_auth_first_frame(live_server: LiveServer, client: httpx.Client) -> None:
    alice = register(client)
    ws = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
    await ws.send({"type": "auth", "token": "not-a-jwt"})
    assert await ws.closed_with() == 4003

    ws = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
    await ws.send({"type": "ack", "queue_seq": 1})
    assert await ws.closed_with() == 4003

    ws = await WsClient.connect(live_server.ws_url, alice.first)
    assert ws.ready["device_id"] == alice.first.id and ws.ready["acked_queue_seq"] == 0
    await ws.send({"type": "bogus"})
    assert await ws.closed_with() == 4005


async def test_expired_token_refused(
    live_server: LiveServer, client: httpx.Client, clock: ManualClock
) -> None:
    alice = register(client)
    clock.advance(live_server.settings.access_token_ttl_s + 1)
    ws = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
    await ws.send({"type": "auth", "token": alice.first.access_token})
    assert await ws.closed_with() == 4003


async def test_new_socket_replaces_old(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    before = gauge(live_server)
    old = await WsClient.connect(live_server.ws_url, bob.first)
    assert await old.envelopes_until_drained() == []
    old_conn = server_conn(live_server, bob.first.device_id)
    new = await WsClient.connect(live_server.ws_url, bob.first)
    assert await old.closed_with() == 4001
    await released(live_server, old_conn)
    assert gauge(live_server) == before + 1
    assert await new.envelopes_until_drained() == []
    send_many(client, alice, bob, cid, 1)
    got = await new.envelopes_until_drained()
    assert len(got) == 1
    await new.close()


async def test_device_removal_closes_socket(live_server: LiveServer, client: httpx.Client) -> None:
    alice = register(client)
    phone = add_device(client, alice)
    ws = await WsClient.connect(live_server.ws_url, phone)
    assert await ws.envelopes_until_drained() == []
    remove_device(client, alice, phone)
    assert await ws.closed_with() == 4002
    # And it cannot come back.
    ws = await WsClient.connect(live_server.ws_url, phone, auth=False)
    await ws.send({"type": "auth", "token": phone.access_token})
    assert await ws.closed_with() == 4003


async def test_dead_client_is_reaped(make_server: Callable[..., LiveServer]) -> None:
    server = await asyncio.to_thread(make_server, heartbeat_interval_s=0.2, heartbeat_missed_limit=2)
    with server.client() as client:
        alice = register(client)
    before = gauge(server)
    reaps = gauge(server, "saltline_heartbeat_reaps_total")
    ws = await WsClient.connect(server.ws_url, alice.first)
    conn = server_conn(server, alice.first.device_id)
    assert gauge(server) == before + 1
    # The client keeps its socket open but never answers a ping.
    pings = 0
    while True:
        frame = await ws.recv()
        if frame["type"] == "ping":
            pings += 1
        if pings == 2:
            break
    assert await ws.closed_with() == 4004
    await released(server, conn)
    assert gauge(server) == before
    assert gauge(server, "saltline_heartbeat_reaps_total") == reaps + 1
    assert alice.first.device_id not in server.ctx.connections
    assert server.ctx.bus.subscriber_count() == 0


async def test_socket_closes_when_the_token_expires(
    make_server: Callable[..., LiveServer], clock: ManualClock
) -> None:
    """The heartbeat task also watches the access token's ``exp`` (re-reading the app clock at
    least every interval): a socket that answers every ping is still closed with 4003 once the
    token it authenticated with has expired, and not before."""
    server = await asyncio.to_thread(make_server, heartbeat_interval_s=0.1, heartbeat_missed_limit=2)
    with server.client() as client:
        alice = register(client)
    ws = await WsClient.connect(server.ws_url, alice.first)
    assert await ws.envelopes_until_drained() == []
    for _ in range(3):  # alive across several intervals while the token is valid
        await ws.expect("ping", skip_pings=False)
        await ws.send({"type": "pong"})
    assert alice.first.device_id in server.ctx.connections
    clock.advance(server.settings.access_token_ttl_s + 1)
    code = None
    while code is None:
        try:
            frame = await ws.recv()
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else -1
        else:
            if frame["type"] == "ping":
                await ws.send({"type": "pong"})
    assert code == 4003


async def test_pongs_keep_the_connection(make_server: Callable[..., LiveServer]) -> None:
    server = await asyncio.to_thread(make_server, heartbeat_interval_s=0.1, heartbeat_missed_limit=2)
    with server.client() as client:
        alice = register(client)
    ws = await WsClient.connect(server.ws_url, alice.first)
    for _ in range(6):  # six intervals, three times the limit
        frame = await ws.expect("ping", skip_pings=False) if _ else await ws.expect("drained")
        if frame["type"] == "ping":
            await ws.send({"type": "pong"})
    assert alice.first.device_id in server.ctx.connections
    await ws.close()


async def test_window_bounds_unacked(make_server: Callable[..., LiveServer]) -> None:
    server = await asyncio.to_thread(make_server, delivery_window=4, heartbeat_interval_s=0.3)
    with server.client() as client:
        alice, bob = register(client), register(client)
        cid = create_conversation(client, alice, bob)
        send_many(client, alice, bob, cid, 10)
    ws = await WsClient.connect(server.ws_url, bob.first)
    first = [await ws.expect("envelope") for _ in range(4)]
    # The window is full: the next frame is a heartbeat, not a fifth envelope.
    ping = await ws.expect("ping", skip_pings=False)
    assert ping["queue_seq"] == first[-1]["queue_seq"]
    conn = server_conn(server, bob.first.device_id)
    assert len(conn.inflight) == 4
    await ws.ack(first[1]["queue_seq"])  # frees two slots
    more = [await ws.expect("envelope") for _ in range(2)]
    assert [f["queue_seq"] for f in more] == [first[-1]["queue_seq"] + 1, first[-1]["queue_seq"] + 2]
    await ws.send({"type": "pong"})
    assert (await ws.expect("ping", skip_pings=False))["queue_seq"] == more[-1]["queue_seq"]
    assert len(conn.inflight) == 4
    await ws.ack(more[-1]["queue_seq"])  # acks again: the remaining ones flow
    rest = await ws.envelopes_until_drained()
    assert len(rest) == 4
    await ws.close()


async def test_retention_gap_marker(make_server: Callable[..., LiveServer], clock: ManualClock) -> None:
    server = await asyncio.to_thread(make_server, queue_retention_s=60)
    with server.client() as client:
        alice, bob = register(client), register(client)
        cid = create_conversation(client, alice, bob)
        send_many(client, alice, bob, cid, 3, b"old")
        clock.advance(61)  # the three expire
        send_many(client, alice, bob, cid, 1, b"new")
    ws = await WsClient.connect(server.ws_url, bob.first)
    gap = await ws.expect("gap")
    assert gap == {"type": "gap", "from_queue_seq": 1, "to_queue_seq": 3}
    frame = await ws.expect("envelope")
    assert ws.plaintext(frame) == b"new0" and frame["queue_seq"] == 4
    await ws.ack(4)
    assert (await ws.expect("drained"))["queue_seq"] == 4
    await ws.close()
    # Acknowledged past the gap: a later connection gets no gap marker again.
    ws = await WsClient.connect(server.ws_url, bob.first)
    assert await ws.envelopes_until_drained() == []
    await ws.close()


async def test_gap_is_repeated_until_acknowledged(
    make_server: Callable[..., LiveServer], clock: ManualClock
) -> None:
    server = await asyncio.to_thread(make_server, queue_retention_s=60)
    with server.client() as client:
        alice, bob = register(client), register(client)
        cid = create_conversation(client, alice, bob)
        send_many(client, alice, bob, cid, 2)
    clock.advance(61)
    ws = await WsClient.connect(server.ws_url, bob.first)
    assert (await ws.expect("gap"))["to_queue_seq"] == 2
    await ws.close()  # never acked the gap
    ws = await WsClient.connect(server.ws_url, bob.first)
    assert await ws.expect("gap") == {"type": "gap", "from_queue_seq": 1, "to_queue_seq": 2}
    await ws.ack(2)
    assert (await ws.expect("drained"))["queue_seq"] == 2
    await ws.close()
