"""Attachments on the server: TUS-core resumable uploads (creation, HEAD, PATCH at the offset),
ranged downloads by any authenticated device holding the id, Padmé lengths, limits, quota,
retention (410) — on both attachment stores and both databases."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.crypto.keys import b64decode
from saltline.crypto.padding import is_padme, padme
from saltline.server.errors import Problem
from saltline.server.services.attachments import parse_range
from tests.live import LiveServer, ManualClock
from tests.server.helpers import register

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def create(client: httpx.Client, headers: dict[str, str], length: int) -> httpx.Response:
    return client.post("/v1/attachments", headers={**headers, **TUS, "Upload-Length": str(length)})


def patch(
    client: httpx.Client, headers: dict[str, str], ref: str, offset: int, data: bytes
) -> httpx.Response:
    return client.patch(
        f"/v1/attachments/{ref}", headers={**headers, **OCTETS, "Upload-Offset": str(offset)}, content=data
    )


def upload(client: httpx.Client, headers: dict[str, str], data: bytes, chunk: int = 1024 * 1024) -> str:
    r = create(client, headers, len(data))
    assert r.status_code == 201, r.text
    ref = r.json()["attachment_id"]
    offset = 0
    while offset < len(data):
        r = patch(client, headers, ref, offset, data[offset : offset + chunk])
        assert r.status_code == 204, r.text
        offset = int(r.headers["Upload-Offset"])
    return ref


@pytest.fixture(params=["filesystem", "database"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_upload_resume_and_ranged_download(make_server: Callable[..., LiveServer], store: str) -> None:
    with make_server(attachment_store=store).client() as client:
        alice, bob = register(client), register(client)
        data = os.urandom(padme(3 * 1024 * 1024 + 12345))
        r = create(client, alice.first.headers, len(data))
        assert r.status_code == 201, r.text
        assert r.headers["Tus-Resumable"] == "1.0.0" and r.headers["Upload-Offset"] == "0"
        ref = r.json()["attachment_id"]
        assert r.headers["Location"] == f"/v1/attachments/{ref}"
        assert len(b64decode(ref)) == 32
        assert patch(client, alice.first.headers, ref, 0, data[:1_000_000]).status_code == 204
        # a retry of the same piece (its answer was lost): 409 naming the offset
        r = patch(client, alice.first.headers, ref, 0, data[:1_000_000])
        assert (r.status_code, r.json()["code"], r.json()["offset"]) == (
            409,
            "attachment_offset_mismatch",
            1_000_000,
        )
        r = client.head(f"/v1/attachments/{ref}", headers={**alice.first.headers, **TUS})
        assert r.status_code == 200, (r.status_code, r.headers)
        assert (r.headers["Upload-Offset"], r.headers["Upload-Length"]) == ("1000000", str(len(data)))
        r = client.get(f"/v1/attachments/{ref}", headers=bob.first.headers)
        assert (r.status_code, r.json()["code"]) == (409, "attachment_incomplete")
        # only the uploader's account appends
        r = patch(client, bob.first.headers, ref, 1_000_000, data[1_000_000:1_000_010])
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        offset = 1_000_000
        while offset < len(data):
            r = patch(client, alice.first.headers, ref, offset, data[offset : offset + 1024 * 1024])
            assert r.status_code == 204, r.text
            offset = int(r.headers["Upload-Offset"])
        r = client.get(f"/v1/attachments/{ref}", headers=bob.first.headers)
        assert r.status_code == 200 and r.content == data
        r = client.get(f"/v1/attachments/{ref}", headers={**bob.first.headers, "Range": "bytes=2000000-"})
        assert r.status_code == 206 and r.content == data[2_000_000:]
        assert r.headers["Content-Range"] == f"bytes 2000000-{len(data) - 1}/{len(data)}"
        r = client.get(f"/v1/attachments/{ref}", headers={**bob.first.headers, "Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        r = client.get(
            f"/v1/attachments/{ref}", headers={**bob.first.headers, "Range": f"bytes={len(data)}-"}
        )
        assert (r.status_code, r.json()["code"]) == (416, "range_not_satisfiable")
        assert client.get(f"/v1/attachments/{ref}").status_code == 401


def test_unknown_ids_lengths_and_media_types(make_server: Callable[..., LiveServer], store: str) -> None:
    with make_server(attachment_store=store, max_attachment_bytes=1024 * 1024).client() as client:
        alice = register(client)
        h = alice.first.headers
        unknown = "A" * 43
        r = client.get(f"/v1/attachments/{unknown}", headers=h)
        assert (r.status_code, r.headers["content-type"]) == (404, "application/problem+json")
        r = create(client, h, 1001)
        assert (r.status_code, r.json()["code"], r.json()["padded"]) == (
            422,
            "attachment_length_not_padded",
            1024,
        )
        r = create(client, h, padme(1024 * 1024 + 1))
        assert (r.status_code, r.json()["code"], r.json()["limit"]) == (413, "payload_too_large", 1024 * 1024)
        r = client.post("/v1/attachments", headers={**h, "Upload-Length": "1024"})
        assert r.status_code == 422  # no Tus-Resumable
        ref = create(client, h, 1024).json()["attachment_id"]
        r = client.patch(
            f"/v1/attachments/{ref}",
            headers={**h, **TUS, "Upload-Offset": "0", "Content-Type": "application/json"},
            content=b"{}",
        )
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
        r = patch(client, h, ref, 0, os.urandom(1025))  # past Upload-Length
        assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")
        r = patch(client, h, ref, 0, os.urandom(2 * 1024 * 1024))  # past the request body limit
        assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")


def test_quota_and_expiry(make_server: Callable[..., LiveServer], clock: ManualClock, store: str) -> None:
    server = make_server(
        attachment_store=store,
        attachment_quota_bytes_per_account=3000,
        attachment_retention_s=60,
        access_token_ttl_s=3600,
    )
    with server.client() as client:
        alice, bob = register(client), register(client)
        old = upload(client, alice.first.headers, os.urandom(2048))
        r = create(client, alice.first.headers, 1024)
        assert (r.status_code, r.json()["code"], r.json()["stored"]) == (507, "storage_quota_exceeded", 2048)
        assert create(client, bob.first.headers, 1024).status_code == 201  # per account
        clock.advance(61)
        r = client.get(f"/v1/attachments/{old}", headers=bob.first.headers)
        assert (r.status_code, r.json()["code"]) == (410, "attachment_expired")
        r = client.head(f"/v1/attachments/{old}", headers={**bob.first.headers, **TUS})
        assert r.status_code == 410
        new = upload(client, alice.first.headers, os.urandom(2048))  # the quota counts unexpired only
        assert client.get(f"/v1/attachments/{new}", headers=bob.first.headers).status_code == 200
        r = client.get(f"/v1/attachments/{old}", headers=bob.first.headers)
        assert (r.status_code, r.json()["code"]) == (410, "attachment_expired")  # a tombstone
    if store == "filesystem":
        files = [p for p in (server.settings.data_dir / "attachments").rglob("*") if p.is_file()]
        assert len(files) == 1  # the expired one was purged when the next upload was created


def test_upload_rate_per_device(make_server: Callable[..., LiveServer]) -> None:
    with make_server(
        rate_limit_enabled=True, rate_limit_attachment_uploads_per_device="2/hour"
    ).client() as c:
        alice = register(c)
        assert create(c, alice.first.headers, 8).status_code == 201
        assert create(c, alice.first.headers, 8).status_code == 201
        r = create(c, alice.first.headers, 8)
        assert (r.status_code, r.json()["code"]) == (429, "rate_limited")
        assert r.headers["content-type"] == "application/problem+json"


@given(st.integers(min_value=0, max_value=2**40))
def test_padme_is_a_bucket_above_and_close(length: int) -> None:
    padded = padme(length)
    assert padded >= length and is_padme(padded) and padme(padded) == padded
    assert padded - length <= max(1, length) * 0.12 + 1


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0), st.integers(min_value=0))
def test_parse_range_answers_a_span_inside_or_416(length: int, a: int, b: int) -> None:
    for header in (f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{b}"):
        try:
            start, end = parse_range(header, length)  # type: ignore[misc]
        except Problem as problem:
            assert problem.status == 416
        else:
            assert 0 <= start < end <= length


def _cut_after(data: bytes, limit: int) -> Iterator[bytes]:
    """A body that breaks off (the client's connection closes) after ``limit`` bytes."""
    for start in range(0, limit, 64 * 1024):
        yield data[start : min(start + 64 * 1024, limit)]
    raise ConnectionResetError("cut (test)")


def test_one_patch_carries_the_rest_and_a_cut_one_keeps_what_arrived(
    make_server: Callable[..., LiveServer], store: str
) -> None:
    """A PATCH may carry the whole upload (far above the 1 MiB body limit of other requests);
    one cut off midway keeps a durable prefix of what it sent, which HEAD names and from which
    the upload completes exactly once."""
    server = make_server(attachment_store=store, attachment_commit_bytes=256 * 1024)
    with server.client() as client:
        alice, bob = register(client), register(client)
        h = alice.first.headers
        data = os.urandom(padme(5 * 1024 * 1024))
        ref = create(client, h, len(data)).json()["attachment_id"]
        cut = 3 * 1024 * 1024 + 4321
        headers = {**h, **OCTETS, "Upload-Offset": "0", "Content-Length": str(len(data))}
        with pytest.raises((httpx.HTTPError, ConnectionResetError)):
            client.patch(f"/v1/attachments/{ref}", headers=headers, content=_cut_after(data, cut))
        # the cut request's writer has committed a first 256 KiB (so it holds the upload's writer
        # lock) once HEAD shows an offset; a PATCH from the start again waits for that writer
        # to finish (one per upload), then is refused naming what the server kept
        for _ in range(10_000):
            r = client.head(f"/v1/attachments/{ref}", headers={**h, **TUS})
            if r.headers["Upload-Offset"] != "0":
                break
        r = patch(client, h, ref, 0, data)
        assert (r.status_code, r.json()["code"]) == (409, "attachment_offset_mismatch")
        kept = r.json()["offset"]
        assert 0 < kept <= cut
        r = client.head(f"/v1/attachments/{ref}", headers={**h, **TUS})
        assert r.headers["Upload-Offset"] == str(kept)
        r = client.get(f"/v1/attachments/{ref}", headers=bob.first.headers)
        assert (r.status_code, r.json()["code"]) == (409, "attachment_incomplete")
        r = patch(client, h, ref, kept, data[kept:])  # the rest in one request
        assert (r.status_code, r.headers["Upload-Offset"]) == (204, str(len(data)))
        r = client.get(f"/v1/attachments/{ref}", headers=bob.first.headers)
        assert r.status_code == 200 and r.content == data
        # one request for a whole upload, committed every 256 KiB on the way
        other = upload(client, h, data, chunk=len(data))
        assert client.get(f"/v1/attachments/{other}", headers=bob.first.headers).content == data
        r = client.post("/v1/accounts", headers=h, content=bytes(2 * 1024 * 1024))
        assert (r.status_code, r.json()["code"]) == (413, "payload_too_large")  # other routes: 1 MiB
