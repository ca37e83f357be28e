"""Conversations: create, list, get, membership changes, and who may see what."""

from __future__ import annotations

import httpx

from tests.live import LiveServer
from tests.server.delivery_support import create_conversation, envelope_body, send
from tests.server.helpers import register


def test_direct_conversation_is_unique_per_pair(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    r = client.post(
        "/v1/conversations", json={"kind": "direct", "members": [bob.account_id]}, headers=alice.first.headers
    )
    assert r.status_code == 201, r.text
    conv = r.json()
    assert conv["kind"] == "direct" and sorted(conv["members"]) == sorted([alice.account_id, bob.account_id])
    assert conv["created_by"] == alice.account_id and conv["last_server_seq"] == 0
    r = client.post(
        "/v1/conversations", json={"kind": "direct", "members": [alice.account_id]}, headers=bob.first.headers
    )
    assert r.status_code == 200 and r.json()["conversation_id"] == conv["conversation_id"]
    r = client.post("/v1/conversations", json={"kind": "direct", "members": []}, headers=bob.first.headers)
    assert r.status_code == 422


def test_group_lifecycle(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob, carol, dave = (register(client) for _ in range(4))
    cid = create_conversation(client, alice, bob, carol)
    assert create_conversation(client, alice, bob, carol) != cid  # groups are never deduplicated

    listed = client.get("/v1/conversations", headers=bob.first.headers).json()["conversations"]
    assert cid in [c["conversation_id"] for c in listed]
    assert client.get("/v1/conversations", headers=dave.first.headers).json()["conversations"] == []

    r = client.get(f"/v1/conversations/{cid}", headers=dave.first.headers)
    assert r.status_code == 404 and r.json()["code"] == "conversation_not_found"
    r = client.post(
        f"/v1/conversations/{cid}/members", json={"account_id": carol.account_id}, headers=dave.first.headers
    )
    assert r.status_code == 404

    r = client.post(
        f"/v1/conversations/{cid}/members", json={"account_id": dave.account_id}, headers=bob.first.headers
    )
    assert r.status_code == 200 and dave.account_id in r.json()["members"]
    assert client.get(f"/v1/conversations/{cid}", headers=dave.first.headers).status_code == 200

    # The sender must now address dave's device too.
    body = envelope_body(alice.first, [alice, bob, carol], b"x")
    body["device_list_versions"][dave.account_id] = dave.signed_list.version
    assert send(client, alice.first, cid, body).json()["code"] == "recipients_mismatch"
    assert (
        send(
            client, alice.first, cid, envelope_body(alice.first, [alice, bob, carol, dave], b"x")
        ).status_code
        == 201
    )

    r = client.delete(f"/v1/conversations/{cid}/members/{carol.account_id}", headers=alice.first.headers)
    assert r.status_code == 200 and carol.account_id not in r.json()["members"]
    r = client.post(
        f"/v1/conversations/{cid}/envelopes",
        json=envelope_body(carol.first, [carol], b"x"),
        headers=carol.first.headers,
    )
    assert r.status_code == 404
    r = client.delete(f"/v1/conversations/{cid}/members/{dave.account_id}", headers=dave.first.headers)
    assert r.status_code == 204  # left
    assert client.get(f"/v1/conversations/{cid}", headers=dave.first.headers).status_code == 404
    assert client.get(f"/v1/conversations/{cid}", headers=alice.first.headers).json()["last_server_seq"] == 1


def test_membership_rules(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob, carol = register(client), register(client), register(client)
    direct = create_conversation(client, alice, bob)
    r = client.post(
        f"/v1/conversations/{direct}/members",
        json={"account_id": carol.account_id},
        headers=alice.first.headers,
    )
    assert r.status_code == 409 and r.json()["code"] == "direct_conversation_fixed"
    ghost = "A" * 22
    r = client.post(
        "/v1/conversations", json={"kind": "group", "members": [ghost]}, headers=alice.first.headers
    )
    assert r.status_code == 422 and r.json()["code"] == "unknown_accounts" and r.json()["accounts"] == [ghost]
    r = client.get("/v1/conversations/not-an-id", headers=alice.first.headers)
    assert r.status_code == 404
    assert client.get("/v1/conversations").status_code == 401
