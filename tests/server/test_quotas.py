"""Quotas (issue 13): envelope sends (count and bytes per device), blob bytes per account (stored
and uploaded), refresh-token rotations (and refresh-token rows stay bounded), device-list versions
per account. Each refusal is problem+json with ``Retry-After`` (429) or ``limit``/``stored``
(507), and is counted in ``/metrics``. Real server, real socket; counted in requests, never
seconds."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto.keys import b64decode, b64encode
from tests.live import LiveServer, ManualClock
from tests.server.delivery_support import create_conversation, envelope_body, send
from tests.server.helpers import (
    add_device,
    grant_for,
    login,
    new_device,
    put_list,
    put_signed,
    register,
    with_added,
)


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code


def _metric(client: httpx.Client, line_prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_envelope_sends_limited_per_device(make_server: Callable[..., LiveServer]) -> None:
    with make_server(rate_limit_envelopes_per_device="3/hour").client() as client:
        alice, bob = register(client), register(client)
        phone = add_device(client, alice)
        cid = create_conversation(client, alice, bob)
        for _ in range(3):
            r = send(client, alice.first, cid, envelope_body(alice.first, [alice, bob], b"hi"))
            assert r.status_code == 201, r.text
        r = send(client, alice.first, cid, envelope_body(alice.first, [alice, bob], b"one too many"))
        _refused(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        # per device: alice's phone and bob still send
        assert send(client, phone, cid, envelope_body(phone, [alice, bob], b"phone")).status_code == 201
        assert send(client, bob.first, cid, envelope_body(bob.first, [alice, bob], b"bob")).status_code == 201
        assert _metric(client, 'saltline_rate_limited_total{scope="send-device"}') == 1.0


def test_envelope_bytes_limited_per_device(make_server: Callable[..., LiveServer]) -> None:
    # Each envelope: a 2-byte clock and two sealed copies of 1000 bytes (+48 each) = 2098 bytes.
    with make_server(
        rate_limit_envelope_bytes_per_device="5000/hour", max_envelope_bytes=4096
    ).client() as client:
        alice, bob = register(client), register(client)
        add_device(client, alice)
        cid = create_conversation(client, alice, bob)
        body = lambda: envelope_body(alice.first, [alice, bob], os.urandom(1000))  # noqa: E731
        assert send(client, alice.first, cid, body()).status_code == 201
        assert send(client, alice.first, cid, body()).status_code == 201
        r = send(client, alice.first, cid, body())  # 6294 > 5000
        _refused(r, 429, "rate_limited")
        assert "Retry-After" in r.headers
        # a small envelope still fits the remaining 804 bytes: nothing was counted for the refusal
        small = envelope_body(alice.first, [alice, bob], b"ok")
        assert send(client, alice.first, cid, small).status_code == 201
        assert _metric(client, 'saltline_rate_limited_total{scope="send-bytes-device"}') == 1.0


def test_blob_stored_bytes_quota_per_account(
    make_server: Callable[..., LiveServer], clock: ManualClock
) -> None:
    server = make_server(blob_quota_bytes_per_account=2500, blob_retention_s=60, access_token_ttl_s=3600)
    with server.client() as client:
        alice = register(client)
        phone = add_device(client, alice)

        def upload(headers: dict[str, str], size: int) -> httpx.Response:
            return client.post("/v1/blobs", json={"data": b64encode(os.urandom(size))}, headers=headers)

        assert upload(alice.first.headers, 1000).status_code == 201
        assert upload(phone.headers, 1000).status_code == 201  # the quota is the account's
        r = upload(alice.first.headers, 1000)
        _refused(r, 507, "storage_quota_exceeded")
        assert (r.json()["limit"], r.json()["stored"]) == (2500, 2000)
        assert upload(alice.first.headers, 500).status_code == 201  # exactly at the quota
        other = register(client)
        assert upload(other.first.headers, 2000).status_code == 201  # another account: its own
        assert _metric(client, 'saltline_quota_refused_total{quota="blob-stored-bytes"}') == 1.0
        clock.advance(61)  # the stored blobs expire: room again
        assert upload(alice.first.headers, 2500).status_code == 201


def test_blob_upload_bytes_limited_per_account(make_server: Callable[..., LiveServer]) -> None:
    with make_server(rate_limit_blob_bytes_per_account="2500/hour", max_blob_bytes=1000).client() as client:
        alice = register(client)
        phone = add_device(client, alice)
        data = b64encode(os.urandom(1000))
        assert client.post("/v1/blobs", json={"data": data}, headers=alice.first.headers).status_code == 201
        assert client.post("/v1/blobs", json={"data": data}, headers=phone.headers).status_code == 201
        r = client.post("/v1/blobs", json={"data": data}, headers=phone.headers)
        _refused(r, 429, "rate_limited")
        assert "Retry-After" in r.headers
        assert _metric(client, 'saltline_rate_limited_total{scope="blob-bytes-account"}') == 1.0


def test_refresh_rotations_limited_per_device(make_server: Callable[..., LiveServer]) -> None:
    with make_server(rate_limit_refresh_per_device="3/hour").client() as client:
        alice = register(client)
        token = alice.first.refresh_token
        for _ in range(3):
            r = client.post("/v1/auth/refresh", json={"refresh_token": token})
            assert r.status_code == 200, r.text
            token = r.json()["refresh_token"]
        r = client.post("/v1/auth/refresh", json={"refresh_token": token})
        _refused(r, 429, "rate_limited")
        assert "Retry-After" in r.headers
        # unknown tokens are refused as such and never counted against a device
        r = client.post("/v1/auth/refresh", json={"refresh_token": b64encode(os.urandom(32))})
        _refused(r, 401, "unauthorized")
        # the refused token was not rotated: presenting it again is not reuse
        r = client.post("/v1/auth/refresh", json={"refresh_token": token})
        _refused(r, 429, "rate_limited")
        assert _metric(client, 'saltline_rate_limited_total{scope="refresh-device"}') == 2.0


def test_refresh_token_rows_stay_bounded(make_server: Callable[..., LiveServer], clock: ManualClock) -> None:
    server = make_server(max_refresh_logins_per_device=2, refresh_token_ttl_s=3600)
    with server.client() as client:
        alice = register(client)
        device_id = b64decode(alice.first.id)

        def rows() -> int:
            n: int = server.run_in_loop(server.ctx.auth_repo.count_refresh_rows(device_id))
            return n

        tokens = [alice.first.refresh_token]
        for _ in range(30):
            clock.advance(1)  # rows are ordered by issue time
            r = client.post("/v1/auth/refresh", json={"refresh_token": tokens[-1]})
            assert r.status_code == 200, r.text
            tokens.append(r.json()["refresh_token"])
        assert rows() == 1 + 8  # the live token and the newest 8 used ones
        # a used token still kept is detected as reuse; an older one is simply unknown
        r = client.post("/v1/auth/refresh", json={"refresh_token": tokens[0]})
        _refused(r, 401, "unauthorized")
        r = client.post("/v1/auth/refresh", json={"refresh_token": tokens[-2]})
        _refused(r, 401, "refresh_token_reused")

        # logins of the same device: only the newest two families are kept
        clock.advance(1)
        first_login = login(client, alice, alice.first).json()["refresh_token"]
        clock.advance(1)
        login(client, alice, alice.first)
        clock.advance(1)
        login(client, alice, alice.first)
        assert rows() == 2
        r = client.post("/v1/auth/refresh", json={"refresh_token": first_login})
        _refused(r, 401, "unauthorized")
        # expired rows go at the next login or rotation
        clock.advance(3601)
        login(client, alice, alice.first)
        assert rows() == 1


def test_device_list_versions_limited_per_account(make_server: Callable[..., LiveServer]) -> None:
    with make_server(rate_limit_device_list_versions_per_account="2/hour").client() as client:
        alice = register(client)
        # junk (not signed by alice's account key) never counts
        forged = dl.SignedDeviceList(alice.signed_list.content, bytes(64))  # a signature of zeros
        device = new_device(alice.account_key)
        grant = grant_for(client, alice, device)
        for _ in range(3):
            r = put_signed(client, alice.account_id, forged, grant)
            _refused(r, 422, "device_list_invalid")
        add_device(client, alice)  # version 2, by the authenticated route
        signed = with_added(alice.signed_list, alice.account_key, device)
        r = put_signed(client, alice.account_id, signed, grant)
        assert r.status_code == 200, r.text  # version 3, by the token-less route
        alice.signed_list = signed
        third = with_added(alice.signed_list, alice.account_key, new_device(alice.account_key))
        r = put_list(client, alice.first, third)
        _refused(r, 429, "rate_limited")
        assert "Retry-After" in r.headers
        scope = 'saltline_rate_limited_total{scope="device-list-versions-account"}'
        assert _metric(client, scope) == 1.0
