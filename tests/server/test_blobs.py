"""Blobs: an account's devices share encrypted uploads (history bundles); other accounts cannot
read them, and uploads are size-limited."""

from __future__ import annotations

import os

import httpx

from crypto.keys import b64decode, b64encode
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
    r = client.post("/v1/blobs", json={"data": "not base64!"}, headers=alice.first.headers)
    assert r.status_code == 422
