"""Conversations: create, list, get, membership changes, and who may see what."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.live import LiveServer, ManualClock
from tests.server.delivery_support import create_conversation, envelope_body, send
from tests.server.helpers import add_device, register


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


def _problem(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def test_conversation_creation_rate_limited_per_device(make_server: Callable[..., LiveServer]) -> None:
    """Issue 13: 1,000 groups containing a victim were made in 31 s. Creation is now limited
    per device (``rate_limit_conversation_creations_per_device``)."""
    server = make_server(rate_limit_conversation_creations_per_device="3/hour")
    with server.client() as client:
        alice, bob = register(client), register(client)
        tablet = add_device(client, alice)
        for _ in range(3):
            create_conversation(client, alice, bob, kind="group")
        body = {"kind": "group", "members": [bob.account_id]}
        r = client.post("/v1/conversations", json=body, headers=alice.first.headers)
        assert (r.status_code, _problem(r)) == (429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 3600
        assert r.json()["retry_after"] == int(r.headers["Retry-After"])
        # A direct creation that would answer the existing conversation counts too.
        r = client.post(
            "/v1/conversations",
            json={"kind": "direct", "members": [bob.account_id]},
            headers=alice.first.headers,
        )
        assert r.status_code == 429
        # Per device: the account's other device and other accounts still create.
        assert client.post("/v1/conversations", json=body, headers=tablet.headers).status_code == 201
        assert (
            client.post(
                "/v1/conversations",
                json={"kind": "group", "members": [alice.account_id]},
                headers=bob.first.headers,
            ).status_code
            == 201
        )
        listed = client.get("/v1/conversations", headers=bob.first.headers).json()
        assert len(listed["conversations"]) == 5 and listed["next_after"] is None
        metrics = client.get("/metrics").text
        assert 'saltline_rate_limited_total{scope="conversation-create-device"} 2.0' in metrics


def test_conversation_list_is_paged_with_a_cursor(
    make_server: Callable[..., LiveServer], clock: ManualClock
) -> None:
    """``GET /v1/conversations`` pages by ``(created_at_ms, id)``: ``limit`` (default and max
    1000) and ``after`` = the previous page's ``next_after``; every conversation exactly once."""
    server = make_server()
    with server.client() as client:
        alice, bob = register(client), register(client)
        made = []
        for i in range(7):
            made.append(create_conversation(client, alice, bob, kind="group"))
            if i % 3 == 2:
                clock.advance(1)  # some share a creation time (ordered by id), some do not
        pages = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 3} | ({"after": after} if after else {})
            r = client.get("/v1/conversations", params=params, headers=bob.first.headers)
            assert r.status_code == 200, r.text
            page = r.json()
            pages.append([c["conversation_id"] for c in page["conversations"]])
            after = page["next_after"]
            if after is None:
                break
        assert [len(p) for p in pages] == [3, 3, 1]
        seen = [c for p in pages for c in p]
        assert sorted(seen) == sorted(made) and len(set(seen)) == 7
        whole = client.get("/v1/conversations", headers=bob.first.headers).json()
        assert [c["conversation_id"] for c in whole["conversations"]] == seen  # one page by default
        assert whole["next_after"] is None
        exact = client.get("/v1/conversations", params={"limit": 7}, headers=bob.first.headers).json()
        assert len(exact["conversations"]) == 7 and exact["next_after"] is None  # a full last page
        for bad in ({"limit": 0}, {"limit": 1001}, {"after": "short"}, {"after": "_" * 32}):
            r = client.get("/v1/conversations", params=bad, headers=bob.first.headers)
            assert (r.status_code, _problem(r)) == (422, "validation_failed"), bad
