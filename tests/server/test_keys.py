"""The key directory: signature checks on upload, exactly-once one-time prekeys under
concurrency, last-resort fallback, counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from sqlalchemy import func, select

from saltline.crypto.keys import KeyKind, OneTimePreKey, PreKeyPublic, SignedPreKey
from saltline.server.storage.schema import prekeys
from tests.live import LiveServer
from tests.server.helpers import Account, add_device, prekeys_body, register, remove_device


def _claim(client: httpx.Client, claimer: Account, *targets: tuple[str, str]) -> httpx.Response:
    return client.post(
        "/v1/keys/claim",
        json={"devices": [{"account_id": a, "device_id": d} for a, d in targets]},
        headers=claimer.first.headers,
    )


def _claim_one(client: httpx.Client, claimer: Account, owner: Account) -> dict[str, object]:
    r = _claim(client, claimer, (owner.account_id, owner.first.id))
    assert r.status_code == 200, r.text
    [bundle] = r.json()["bundles"]
    return dict(bundle)


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def test_upload_count_claim_and_fallback(client: httpx.Client) -> None:
    bob = register(client)
    alice = register(client)
    r = client.put("/v1/keys", json=prekeys_body(bob.first, one_time=2), headers=bob.first.headers)
    assert r.json() == {"one_time": 2, "signed_prekey_id": 1, "last_resort_prekey_id": 1}

    seen = []
    for remaining in (1, 0):
        bundle = _claim_one(client, alice, bob)
        assert bundle["one_time_remaining"] == remaining
        assert bundle["last_resort_prekey"] is None
        prekey = PreKeyPublic.from_b64(str(bundle["one_time_prekey"]))
        prekey.verify(bob.first.signing.public_key)
        seen.append(prekey.key_id)
    assert sorted(seen) == [1, 2]
    bundle = _claim_one(client, alice, bob)
    assert bundle["one_time_prekey"] is None
    assert PreKeyPublic.from_b64(str(bundle["last_resort_prekey"])).kind is KeyKind.LAST_RESORT_PREKEY
    assert PreKeyPublic.from_b64(str(bundle["signed_prekey"])).kind is KeyKind.SIGNED_PREKEY
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 0


def test_upload_rejects_bad_signatures_and_kinds(client: httpx.Client) -> None:
    bob = register(client)
    mallory = register(client)
    forged = prekeys_body(mallory.first, one_time=1)  # signed by another device's key
    r = client.put("/v1/keys", json=forged, headers=bob.first.headers)
    assert (r.status_code, _code(r)) == (422, "prekey_signature_invalid")
    assert r.json()["field"] == "signed_prekey"

    good = prekeys_body(bob.first, one_time=2)
    good["one_time_prekeys"][1] = forged["one_time_prekeys"][0]
    r = client.put("/v1/keys", json=good, headers=bob.first.headers)
    assert (r.status_code, _code(r)) == (422, "prekey_signature_invalid")
    assert r.json()["field"] == "one_time_prekeys[1]"

    wrong_kind = {
        "signed_prekey": OneTimePreKey.generate_with_id(9).signed_public(bob.first.signing).to_b64()
    }
    r = client.put("/v1/keys", json=wrong_kind, headers=bob.first.headers)
    assert (r.status_code, _code(r)) == (422, "prekey_kind_mismatch")
    r = client.put("/v1/keys", json={"signed_prekey": "AAAA"}, headers=bob.first.headers)
    assert (r.status_code, _code(r)) == (422, "malformed_key")
    # nothing was stored by the failed uploads
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["signed_prekey_id"] is None
    r = _claim(client, mallory, (bob.account_id, bob.first.id))
    assert (r.status_code, _code(r)) == (404, "no_prekeys")
    r = client.get(f"/v1/keys/{bob.account_id}/{bob.first.id}", headers=mallory.first.headers)
    assert (r.status_code, _code(r)) == (404, "no_prekeys")


def test_batch_limit(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_prekeys_per_upload=5)
    with server.client() as client:
        bob = register(client)
        r = client.put("/v1/keys", json=prekeys_body(bob.first, one_time=6), headers=bob.first.headers)
        assert (r.status_code, _code(r)) == (413, "prekey_batch_too_large")
        assert client.put(
            "/v1/keys", json=prekeys_body(bob.first, one_time=5), headers=bob.first.headers
        ).is_success


def test_signed_prekey_rotation_replaces(client: httpx.Client) -> None:
    bob = register(client)
    client.put("/v1/keys", json=prekeys_body(bob.first), headers=bob.first.headers)
    rotated = SignedPreKey.generate_with_id(7).signed_public(bob.first.signing).to_b64()
    r = client.put("/v1/keys", json={"signed_prekey": rotated}, headers=bob.first.headers)
    assert r.json()["signed_prekey_id"] == 7


def test_claim_whole_account_and_removed_devices(client: httpx.Client) -> None:
    bob = register(client)
    alice = register(client)
    laptop = add_device(client, bob)
    for device in (bob.first, laptop):
        client.put("/v1/keys", json=prekeys_body(device, one_time=1), headers=device.headers)
    r = client.get(f"/v1/keys/{bob.account_id}", headers=alice.first.headers)
    assert sorted(b["device_id"] for b in r.json()["bundles"]) == sorted([bob.first.id, laptop.id])
    remove_device(client, bob, laptop)
    r = client.get(f"/v1/keys/{bob.account_id}/{laptop.id}", headers=alice.first.headers)
    assert (r.status_code, _code(r)) == (404, "not_found")
    r = client.post(
        "/v1/keys/claim",
        json={"devices": [{"account_id": bob.account_id, "device_id": bob.first.id}]},
        headers=alice.first.headers,
    )
    assert [b["device_id"] for b in r.json()["bundles"]] == [bob.first.id]


async def _claim_concurrently(
    server: LiveServer, bob: Account, claimer: Account, n: int
) -> list[dict[str, object]]:
    body = {"devices": [{"account_id": bob.account_id, "device_id": bob.first.id}]}
    async with server.async_client(limits=httpx.Limits(max_connections=n)) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/keys/claim", json=body, headers=claimer.first.headers) for _ in range(n))
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json()["bundles"][0] for r in responses]


def test_concurrent_claims_hand_out_each_one_time_prekey_once(
    live_server: LiveServer, client: httpx.Client
) -> None:
    """20 concurrent claims for 10 one-time prekeys (run on SQLite and on PostgreSQL, where the
    claim is DELETE ... FOR UPDATE SKIP LOCKED): each key exactly once, the rest last-resort."""
    bob = register(client)
    alice = register(client)
    assert client.put(
        "/v1/keys", json=prekeys_body(bob.first, one_time=10), headers=bob.first.headers
    ).is_success
    bundles = asyncio.run(_claim_concurrently(live_server, bob, alice, 20))
    one_time = [b["one_time_prekey"] for b in bundles if b["one_time_prekey"] is not None]
    last_resort = [b for b in bundles if b["one_time_prekey"] is None]
    assert len(one_time) == 10
    assert len(set(one_time)) == 10
    assert sorted(PreKeyPublic.from_b64(str(k)).key_id for k in one_time) == list(range(1, 11))
    assert len(last_resort) == 10
    assert all(b["last_resort_prekey"] is not None for b in last_resort)
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 0


def test_get_routes_do_not_consume_one_time_prekeys(client: httpx.Client) -> None:
    """GETs are safe: they hand out the signed and last-resort prekeys, never a one-time one."""
    bob = register(client)
    alice = register(client)
    client.put("/v1/keys", json=prekeys_body(bob.first, one_time=2), headers=bob.first.headers)
    for _ in range(3):
        r = client.get(f"/v1/keys/{bob.account_id}/{bob.first.id}", headers=alice.first.headers)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["one_time_prekey"] is None
        assert PreKeyPublic.from_b64(bundle["last_resort_prekey"]).kind is KeyKind.LAST_RESORT_PREKEY
        assert bundle["one_time_remaining"] == 2
        [peeked] = client.get(f"/v1/keys/{bob.account_id}", headers=alice.first.headers).json()["bundles"]
        assert peeked["one_time_prekey"] is None
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 2


def test_claim_deduplicates_targets(client: httpx.Client) -> None:
    bob = register(client)
    alice = register(client)
    client.put("/v1/keys", json=prekeys_body(bob.first, one_time=5), headers=bob.first.headers)
    target = (bob.account_id, bob.first.id)
    r = _claim(client, alice, *[target] * 50)
    assert r.status_code == 200, r.text
    assert len(r.json()["bundles"]) == 1
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 4


def test_claim_target_cap(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_claim_targets=2)
    with server.client() as client:
        alice = register(client)
        owners = [register(client) for _ in range(3)]
        for owner in owners:
            client.put("/v1/keys", json=prekeys_body(owner.first, one_time=1), headers=owner.first.headers)
        r = _claim(client, alice, *[(o.account_id, o.first.id) for o in owners])
        assert (r.status_code, _code(r)) == (413, "too_many_claim_targets")
        assert _claim(client, alice, *[(o.account_id, o.first.id) for o in owners[:2]]).status_code == 200


def test_failed_claim_consumes_nothing(client: httpx.Client) -> None:
    """All targets are claimed in one transaction: one unreachable device fails the whole claim
    and no one-time prekey of the others is used up."""
    bob = register(client)
    carol = register(client)
    alice = register(client)
    client.put("/v1/keys", json=prekeys_body(bob.first, one_time=1), headers=bob.first.headers)
    r = _claim(client, alice, (bob.account_id, bob.first.id), (carol.account_id, carol.first.id))
    assert (r.status_code, _code(r)) == (404, "no_prekeys")
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 1


def test_claim_rate_limited_per_device(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_prekey_claims_per_device="3/minute")
    with server.client() as client:
        bob = register(client)
        alice = register(client)
        carol = register(client)
        client.put("/v1/keys", json=prekeys_body(bob.first, one_time=10), headers=bob.first.headers)
        for _ in range(3):
            _claim_one(client, alice, bob)
        r = _claim(client, alice, (bob.account_id, bob.first.id))
        assert (r.status_code, _code(r)) == (429, "rate_limited")
        assert _claim_one(client, carol, bob)["one_time_prekey"] is not None  # per claiming device
        assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 6


def test_stored_one_time_prekeys_are_capped(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_stored_one_time_prekeys=8)
    with server.client() as client:
        bob = register(client)
        assert client.put(
            "/v1/keys", json=prekeys_body(bob.first, one_time=5), headers=bob.first.headers
        ).is_success
        r = client.put(
            "/v1/keys", json=prekeys_body(bob.first, one_time=5, start_id=6), headers=bob.first.headers
        )
        assert (r.status_code, _code(r)) == (422, "prekey_store_full")
        assert r.json()["limit"] == 8
        assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 5
        # re-uploading existing ids replaces them and does not count twice
        r = client.put("/v1/keys", json=prekeys_body(bob.first, one_time=8), headers=bob.first.headers)
        assert r.status_code == 200, r.text
        assert r.json()["one_time"] == 8


async def _upload_concurrently(server: LiveServer, bob: Account, n: int) -> list[httpx.Response]:
    async with server.async_client(limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(
            *(
                client.put("/v1/keys", json=prekeys_body(bob.first, one_time=20), headers=bob.first.headers)
                for _ in range(n)
            )
        )


def test_concurrent_uploads_do_not_collide(live_server: LiveServer, client: httpx.Client) -> None:
    """Overlapping uploads of the same ids (on PostgreSQL: READ COMMITTED) all succeed and leave
    exactly one signed and one last-resort prekey."""
    bob = register(client)
    alice = register(client)
    for _ in range(3):
        responses = asyncio.run(_upload_concurrently(live_server, bob, 12))
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ]
    assert client.get("/v1/keys/count", headers=bob.first.headers).json()["one_time"] == 20
    db = live_server.ctx.db

    async def rows_per_kind() -> list[tuple[int, int]]:
        async with db.read() as conn:
            rows = await conn.execute(
                select(prekeys.c.kind, func.count())
                .where(prekeys.c.device_id == bob.first.device_id)
                .group_by(prekeys.c.kind)
                .order_by(prekeys.c.kind)
            )
            return [(int(kind), int(n)) for kind, n in rows]

    signed, one_time, last_resort = (
        int(KeyKind.SIGNED_PREKEY),
        int(KeyKind.ONE_TIME_PREKEY),
        int(KeyKind.LAST_RESORT_PREKEY),
    )
    assert live_server.run_in_loop(rows_per_kind()) == [(signed, 1), (one_time, 20), (last_resort, 1)]
    assert _claim_one(client, alice, bob)["one_time_remaining"] == 19


def test_one_time_prekeys_limited_per_target_device(make_server: Callable[..., LiveServer]) -> None:
    """Issue 13: one account with two devices took all of a victim's one-time prekeys (the limit
    was per caller only). Now each target device hands out at most
    ``rate_limit_prekey_claims_per_target_device`` one-time prekeys, whoever claims; beyond it the
    claim still succeeds, with the last-resort prekey."""
    server = make_server(rate_limit_prekey_claims_per_target_device="5/hour")
    with server.client() as client:
        victim = register(client)
        other = register(client)
        attacker = register(client)
        second = add_device(client, attacker)
        for target in (victim, other):
            r = client.put(
                "/v1/keys", json=prekeys_body(target.first, one_time=20), headers=target.first.headers
            )
            assert r.is_success, r.text
        bundles = []
        for device in (attacker.first, second) * 10:  # 20 claims from two devices of one account
            r = client.post(
                "/v1/keys/claim",
                json={"devices": [{"account_id": victim.account_id, "device_id": victim.first.id}]},
                headers=device.headers,
            )
            assert r.status_code == 200, r.text
            bundles.extend(r.json()["bundles"])
        with_one_time = [b for b in bundles if b["one_time_prekey"] is not None]
        assert len(with_one_time) == 5
        fallback = [b for b in bundles if b["one_time_prekey"] is None]
        assert len(fallback) == 15
        for b in fallback:
            assert PreKeyPublic.from_b64(str(b["last_resort_prekey"])).kind is KeyKind.LAST_RESORT_PREKEY
            assert b["one_time_remaining"] == 15
        assert client.get("/v1/keys/count", headers=victim.first.headers).json()["one_time"] == 15
        # Per target: another device's supply is untouched, in the same claim as the exhausted one.
        r = _claim(client, attacker, (victim.account_id, victim.first.id), (other.account_id, other.first.id))
        assert r.status_code == 200, r.text
        got = {b["device_id"]: b for b in r.json()["bundles"]}
        assert got[victim.first.id]["one_time_prekey"] is None
        assert got[other.first.id]["one_time_prekey"] is not None
        assert got[other.first.id]["last_resort_prekey"] is None
        metrics = client.get("/metrics").text
        assert 'saltline_rate_limited_total{scope="prekey-claims-target"} 16.0' in metrics
