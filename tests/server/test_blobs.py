"""Blobs: an account's devices share encrypted uploads (history bundles); other accounts cannot
read them, uploads are size-limited and rate-limited per device, and blobs expire."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx

from saltline.crypto.keys import b64decode, b64encode
from tests.live import LiveServer, ManualClock
from tests.server.helpers import add_device, register


def test_upload_and_download_by_any_device_of_the_account(client: httpx.Client) -> None:
    alice = register(client)
    data = os.urandom(3000)
    r = client.post("/v1/blobs", json={"data": b64encode(data)}, headers=alice.first.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["size"] == len(data)
    blob_id = body["blob_id"]
    assert len(b64decode(blob_id)) == 16
    r = client.get(f"/v1/blobs/{blob_id}", headers=alice.first.headers)
    assert r.status_code == 200, r.text
    assert b64decode(r.json()["data"]) == data
    second = add_device(client, alice)
    r = client.get(f"/v1/blobs/{blob_id}", headers=second.headers)
    assert r.status_code == 200, r.text
    assert b64decode(r.json()["data"]) == data


def test_other_accounts_and_anonymous_callers_cannot_read(client: httpx.Client) -> None:
    alice, mallory = register(client), register(client)
    r = client.post("/v1/blobs", json={"data": b64encode(b"secret bundle")}, headers=alice.first.headers)
    blob_id = r.json()["blob_id"]
    r = client.get(f"/v1/blobs/{blob_id}", headers=mallory.first.headers)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert client.get(f"/v1/blobs/{blob_id}").status_code == 401
    assert client.post("/v1/blobs", json={"data": b64encode(b"x")}).status_code == 401
    unknown = b64encode(os.urandom(16))
    assert client.get(f"/v1/blobs/{unknown}", headers=alice.first.headers).status_code == 404


def test_size_limit(client: httpx.Client) -> None:
    alice = register(client)
    too_big = b64encode(os.urandom(512 * 1024 + 1))
    r = client.post("/v1/blobs", json={"data": too_big}, headers=alice.first.headers)
    assert r.status_code in (413, 422), r.text
    if r.status_code == 413:
        assert r.json()["limit"] == 512 * 1024
    r = client.post("/v1/blobs", json={"data": "not base64!"}, headers=alice.first.headers)
    assert r.status_code == 422


def test_too_large_problem_names_the_limit(make_server: Callable[..., LiveServer]) -> None:
    """A client splitting a history bundle learns the part size from the 413's ``limit``."""
    with make_server(max_blob_bytes=1000).client() as client:
        alice = register(client)
        r = client.post("/v1/blobs", json={"data": b64encode(os.urandom(1001))}, headers=alice.first.headers)
        assert (r.status_code, r.json()["code"], r.json()["limit"]) == (413, "payload_too_large", 1000)
        r = client.post("/v1/blobs", json={"data": b64encode(os.urandom(1000))}, headers=alice.first.headers)
        assert r.status_code == 201, r.text


def test_expired_blob_is_gone(make_server: Callable[..., LiveServer], clock: ManualClock) -> None:
    with make_server(blob_retention_s=60, access_token_ttl_s=3600).client() as client:
        alice = register(client)
        r = client.post("/v1/blobs", json={"data": b64encode(b"old bundle")}, headers=alice.first.headers)
        old = r.json()["blob_id"]
        clock.advance(59)
        assert client.get(f"/v1/blobs/{old}", headers=alice.first.headers).status_code == 200
        r = client.post("/v1/blobs", json={"data": b64encode(b"new bundle")}, headers=alice.first.headers)
        new = r.json()["blob_id"]
        clock.advance(2)  # old: 61 s, new: 2 s
        r = client.get(f"/v1/blobs/{old}", headers=alice.first.headers)
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        assert client.get(f"/v1/blobs/{new}", headers=alice.first.headers).status_code == 200
        clock.advance(120)  # the next upload purges both expired rows
        r = client.post("/v1/blobs", json={"data": b64encode(b"newest")}, headers=alice.first.headers)
        assert r.status_code == 201
        for blob_id in (old, new):
            assert client.get(f"/v1/blobs/{blob_id}", headers=alice.first.headers).status_code == 404
        r = client.get(f"/v1/blobs/{r.json()['blob_id']}", headers=alice.first.headers)
        assert b64decode(r.json()["data"]) == b"newest"


def test_upload_rate_limit_per_device(make_server: Callable[..., LiveServer]) -> None:
    with make_server(rate_limit_blob_uploads_per_device="2/minute").client() as client:
        alice = register(client)
        body = {"data": b64encode(b"part")}
        for _ in range(2):
            assert client.post("/v1/blobs", json=body, headers=alice.first.headers).status_code == 201
        r = client.post("/v1/blobs", json=body, headers=alice.first.headers)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        second = add_device(client, alice)  # per device, not per account
        assert client.post("/v1/blobs", json=body, headers=second.headers).status_code == 201
