"""Sending over the delivery socket: the ``send`` frame is the HTTP send route's body and rules,
answered by a ``send_result`` frame carrying the HTTP status (and problem document)."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from saltline.crypto.keys import b64encode
from tests.live import LiveServer
from tests.server.delivery_support import WsClient, create_conversation, envelope_body, send
from tests.server.helpers import add_device, register, remove_device


def send_frame(cid: str, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "send",
        "request_id": request_id or b64encode(os.urandom(6)),
        "conversation_id": cid,
        "envelope": body,
    }


async def connected(ws_url: str, device: Any) -> WsClient:
    """A device's socket, past its initial catch-up (nothing queued in these tests)."""
    ws = await WsClient.connect(ws_url, device)
    assert await ws.envelopes_until_drained() == []
    return ws


async def ws_send(ws: WsClient, cid: str, body: dict[str, Any]) -> dict[str, Any]:
    frame = send_frame(cid, body)
    await ws.send(frame)
    answer = await ws.expect("send_result")
    assert answer["request_id"] == frame["request_id"]
    return answer


async def test_send_over_socket_reaches_every_other_device(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    alice_phone = add_device(client, alice)
    cid = create_conversation(client, alice, bob)
    sender = await connected(live_server.ws_url, alice.first)
    phone = await connected(live_server.ws_url, alice_phone)
    receiver = await connected(live_server.ws_url, bob.first)

    body = envelope_body(alice.first, [alice, bob], b"hello over the socket")
    answer = await ws_send(sender, cid, body)
    assert answer["status"] == 201 and answer["server_seq"] == 1 and answer["replayed"] is False
    assert answer["envelope_id"] == body["envelope_id"]

    for ws in (receiver, phone):
        frame = await ws.expect("envelope")
        assert frame["envelope_id"] == body["envelope_id"] and frame["server_seq"] == 1
        assert frame["sender"]["device_id"] == alice.first.id
        assert ws.plaintext(frame) == b"hello over the socket"
        await ws.ack(frame["queue_seq"])
    # The same envelope through HTTP is the idempotent replay of the socket's send.
    r = send(client, alice.first, cid, body)
    assert r.status_code == 201 and r.json()["server_seq"] == 1
    assert r.headers["Idempotent-Replayed"] == "true"


async def test_replay_and_conflict(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    ws = await connected(live_server.ws_url, alice.first)
    body = envelope_body(alice.first, [alice, bob], b"once")
    first = await ws_send(ws, cid, body)
    again = await ws_send(ws, cid, body)
    assert first["status"] == again["status"] == 201
    assert again["server_seq"] == first["server_seq"] and again["replayed"] is True

    other = envelope_body(alice.first, [alice, bob], b"twice", envelope_id=body["envelope_id"])
    conflict = await ws_send(ws, cid, other)
    assert conflict["status"] == 409
    assert conflict["problem"]["code"] == "idempotency_conflict"
    assert conflict["problem"]["status"] == 409


async def test_routing_problems_are_those_of_http(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob, carol = register(client), register(client), register(client)
    cid = create_conversation(client, alice, bob)
    ws = await connected(live_server.ws_url, alice.first)

    stale = envelope_body(alice.first, [alice, bob], b"x", versions={alice.account_id: 0, bob.account_id: 1})
    over_ws = await ws_send(ws, cid, stale)
    over_http = send(client, alice.first, cid, stale)
    assert over_ws["status"] == over_http.status_code == 410
    assert over_ws["problem"] == over_http.json()
    assert over_ws["problem"]["code"] == "device_list_outdated"

    missing = envelope_body(alice.first, [alice, bob], b"x", recipients=[])
    answer = await ws_send(ws, cid, missing)
    assert answer["status"] == 409 and answer["problem"]["code"] == "recipients_mismatch"

    outsider = await connected(live_server.ws_url, carol.first)
    answer = await ws_send(outsider, cid, envelope_body(carol.first, [alice, bob, carol], b"x"))
    assert answer["status"] == 404 and answer["problem"]["code"] == "conversation_not_found"

    # Nothing of it was stored: the next accepted envelope is server_seq 1.
    ok = await ws_send(ws, cid, envelope_body(alice.first, [alice, bob], b"ok"))
    assert ok["status"] == 201 and ok["server_seq"] == 1


async def test_invalid_send_is_answered_and_the_socket_stays(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    ws = await connected(live_server.ws_url, alice.first)
    body = envelope_body(alice.first, [alice, bob], b"x")

    for broken in (
        {k: v for k, v in body.items() if k != "clock"},
        {**body, "ciphertexts": "nope"},
        {**body, "envelope_id": "short"},
        {**body, "unknown": 1},
    ):
        answer = await ws_send(ws, cid, broken)
        assert answer["status"] == 422, answer
        assert answer["problem"]["code"] == "validation_failed"
        # The problem names where, never the submitted values.
        assert body["ciphertexts"][0]["ciphertext"] not in str(answer["problem"])

    answer = await ws_send(ws, "not-an-id!", body)
    assert answer["status"] in (404, 422)
    ok = await ws_send(ws, cid, body)
    assert ok["status"] == 201


async def test_send_without_request_id_is_a_protocol_error(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    ws = await connected(live_server.ws_url, alice.first)
    frame = send_frame(cid, envelope_body(alice.first, [alice, bob], b"x"))
    del frame["request_id"]
    await ws.send(frame)
    assert await ws.closed_with() == 4005

    ws = await connected(live_server.ws_url, alice.first)
    await ws.send(
        send_frame(cid, envelope_body(alice.first, [alice, bob], b"x"), request_id="not base64url!")
    )
    assert await ws.closed_with() == 4005


async def test_pipelined_sends_all_committed_gap_free(live_server: LiveServer, client: httpx.Client) -> None:
    """More sends than the per-socket limit, without waiting: every one is answered once, the
    server_seqs are 1..N, and the receiver gets all N in that order."""
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    sender = await connected(live_server.ws_url, alice.first)
    receiver = await connected(live_server.ws_url, bob.first)
    n = 80
    frames = [send_frame(cid, envelope_body(alice.first, [alice, bob], b"m%d" % i)) for i in range(n)]
    for frame in frames:
        await sender.send(frame)
    answers = {}
    while len(answers) < n:
        answer = await sender.expect("send_result")
        assert answer["request_id"] not in answers
        answers[answer["request_id"]] = answer
    assert all(a["status"] == 201 for a in answers.values())
    seqs = [answers[f["request_id"]]["server_seq"] for f in frames]
    assert sorted(seqs) == list(range(1, n + 1))

    got: list[bytes] = []
    while len(got) < n:
        frame = await receiver.expect("envelope")
        got.append(receiver.plaintext(frame))
        await receiver.ack(frame["queue_seq"])
    by_seq = {answers[f["request_id"]]["server_seq"]: b"m%d" % i for i, f in enumerate(frames)}
    assert got == [by_seq[s] for s in range(1, n + 1)]


async def test_ephemeral_over_socket(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    sender = await connected(live_server.ws_url, alice.first)
    receiver = await connected(live_server.ws_url, bob.first)
    answer = await ws_send(sender, cid, envelope_body(alice.first, [alice, bob], b"typing", ephemeral=True))
    assert answer["status"] == 202 and answer["server_seq"] is None
    frame = await receiver.expect("ephemeral")
    assert receiver.plaintext(frame) == b"typing"


async def test_socket_closing_mid_send_loses_nothing(live_server: LiveServer, client: httpx.Client) -> None:
    """A client that disconnects right after sending: whatever was committed is delivered, and a
    resend with the same envelope id is answered as a replay, never stored twice."""
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    sender = await connected(live_server.ws_url, alice.first)
    bodies = [envelope_body(alice.first, [alice, bob], b"c%d" % i) for i in range(10)]
    for body in bodies:
        await sender.send(send_frame(cid, body))
    await sender.close()

    again = await connected(live_server.ws_url, alice.first)
    results = [await ws_send(again, cid, body) for body in bodies]
    assert all(r["status"] == 201 for r in results)
    assert sorted(r["server_seq"] for r in results) == list(range(1, 11))

    receiver = await WsClient.connect(live_server.ws_url, bob.first)
    got = await receiver.envelopes_until_drained()
    assert sorted(receiver.plaintext(f) for f in got) == sorted(b"c%d" % i for i in range(10))
    assert len({f["envelope_id"] for f in got}) == 10


async def test_removed_device_cannot_send_even_if_its_socket_stays_open(
    live_server: LiveServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket of a removed device is closed by the removal event on the bus; if that event is
    lost (Redis is at-most-once), the socket must still not be able to send as the account: the
    writer checks, in the send's transaction, that the sending device is still active."""
    alice, bob = register(client), register(client)
    phone = add_device(client, alice)
    cid = create_conversation(client, alice, bob)
    ws = await connected(live_server.ws_url, phone)

    async def lost(_device_id: bytes) -> None:
        return None

    monkeypatch.setattr(live_server.ctx.bus, "publish_device_removed", lost)
    remove_device(client, alice, phone)
    answer = await ws_send(ws, cid, envelope_body(phone, [alice, bob], b"after removal"))
    assert answer["status"] == 401 and answer["problem"]["code"] == "token_revoked"
    assert await ws.closed_with() == 4002

    receiver = await WsClient.connect(live_server.ws_url, bob.first)
    assert await receiver.envelopes_until_drained() == []  # nothing was stored for bob
