"""Issue 12, server side: device-list changes need a live, listed device (the ``me`` path) or a
one-time device grant issued by one (linking); sealed key handoffs and encrypted device names."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, b64encode
from tests.live import LiveServer, ManualClock
from tests.server.helpers import (
    Account,
    Device,
    add_device,
    grant_for,
    login,
    new_device,
    put_list,
    put_signed,
    register,
    remove_device,
    with_added,
)

GRANTS = "/v1/accounts/me/device-grants"


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def bound(previous: dl.SignedDeviceList, device: Device) -> Device:
    """``device`` bound to the account at the version after ``previous`` (device lists v2)."""
    device.entry = dl.bind_device(
        previous.content.root, device.device_id, device.signing, device.dh.public_key, 0, previous.version + 1
    )
    return device


def _grant_body(device: Device) -> dict[str, str]:
    return {"device_id": device.id, "signing_key": b64encode(bytes(device.entry.signing_key))}


def _sealed(n: int = 48) -> str:
    return b64encode(os.urandom(n))


# -- issuing grants ------------------------------------------------------------------------------


def test_grant_issuance_rules(client: httpx.Client) -> None:
    account = register(client)
    tablet = new_device(account.account_key)
    r = client.post(GRANTS, json=_grant_body(tablet))
    assert (r.status_code, _code(r)) == (401, "unauthorized")
    r = client.post(GRANTS, json=_grant_body(tablet), headers=account.first.headers)
    assert r.status_code == 201, r.text
    assert r.json()["expires_in"] == 600
    assert len(r.json()["grant"]) == 43  # 32 bytes
    # An id in use (here: the caller's own) is refused, and so is one of another account.
    other = register(client)
    for used in (account.first, other.first):
        r = client.post(GRANTS, json=_grant_body(used), headers=account.first.headers)
        assert (r.status_code, _code(r)) == (409, "device_id_taken")
    for body in (
        {"device_id": tablet.id},
        {"device_id": tablet.id, "signing_key": bytes(tablet.entry.signing_key.encode()).hex()},
        {"device_id": tablet.id, "signing_key": tablet.entry.signing_key.to_b64()},  # encoded, 34 bytes
        _grant_body(tablet) | {"extra": 1},
    ):
        r = client.post(GRANTS, json=body, headers=account.first.headers)
        assert r.status_code == 422, body


def test_at_most_five_unexpired_grants(live_server: LiveServer, client: httpx.Client) -> None:
    clock = live_server.clock
    assert isinstance(clock, ManualClock)
    account = register(client)
    for _ in range(5):
        grant_for(client, account, new_device(account.account_key))
    r = client.post(GRANTS, json=_grant_body(new_device(account.account_key)), headers=account.first.headers)
    assert (r.status_code, _code(r)) == (429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    other = register(client)  # per account
    grant_for(client, other, new_device(other.account_key))
    clock.advance(601)
    grant_for(client, account, new_device(account.account_key))  # the old ones expired


def test_grants_are_rate_limited_per_account(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_device_grants_per_account="2/hour")
    with server.client() as client:
        account = register(client)
        for _ in range(2):
            grant_for(client, account, new_device(account.account_key))
        r = client.post(
            GRANTS, json=_grant_body(new_device(account.account_key)), headers=account.first.headers
        )
        assert (r.status_code, _code(r)) == (429, "rate_limited")


# -- linking with a grant ------------------------------------------------------------------------


def _link(client: httpx.Client, account: Account, **extra: str) -> Device:
    tablet = new_device(account.account_key)
    grant = grant_for(client, account, tablet)
    v2 = with_added(account.signed_list, account.account_key, tablet)
    r = put_signed(client, account.account_id, v2, grant, **extra)
    assert r.status_code == 200, r.text
    account.signed_list = v2
    account.devices.append(tablet)
    assert login(client, account, tablet).status_code == 200
    return tablet


def test_a_grant_adds_exactly_the_granted_device(client: httpx.Client) -> None:
    account = register(client)
    tablet = new_device(account.account_key)
    grant = grant_for(client, account, tablet)
    base = account.signed_list

    def refused(signed: dl.SignedDeviceList, grant: str | None = grant) -> None:
        r = put_signed(client, account.account_id, signed, grant)
        assert (r.status_code, _code(r)) == (403, "device_grant_invalid"), r.text

    refused(with_added(base, account.account_key, tablet), None)  # no grant
    refused(with_added(base, account.account_key, tablet), "AAAA")  # malformed
    refused(with_added(base, account.account_key, tablet), _sealed(32))  # unknown
    refused(with_added(base, account.account_key, new_device(account.account_key)))
    # the granted id, but another signing key bound to it
    impostor = dl.bind_device(
        base.content.root,
        tablet.device_id,
        DeviceSigningKey.generate(),
        DeviceDHKey.generate().public_key,
        0,
        base.version + 1,
    )
    refused(dl.with_device_added(base, account.account_key, impostor))
    # the granted device plus another one
    with_added(base, account.account_key, tablet)  # binds tablet at version 2
    another = bound(base, new_device(account.account_key))
    plus = dl.successor(base, account.account_key, [account.first.entry, tablet.entry, another.entry])
    refused(plus)
    # the granted device, with the existing device dropped
    refused(dl.successor(base, account.account_key, [tablet.entry]))
    # the granted device alone (nothing else changed) is accepted, once
    v2 = with_added(base, account.account_key, tablet)
    assert put_signed(client, account.account_id, v2, grant).status_code == 200
    refused(with_added(v2, account.account_key, new_device(account.account_key)))


def test_an_expired_grant_is_refused(live_server: LiveServer, client: httpx.Client) -> None:
    clock = live_server.clock
    assert isinstance(clock, ManualClock)
    account = register(client)
    tablet = new_device(account.account_key)
    grant = grant_for(client, account, tablet)
    clock.advance(601)
    v2 = with_added(account.signed_list, account.account_key, tablet)
    r = put_signed(client, account.account_id, v2, grant)
    assert (r.status_code, _code(r)) == (403, "device_grant_invalid")


def test_a_grant_is_consumed_once_under_concurrency(live_server: LiveServer, client: httpx.Client) -> None:
    account = register(client)
    tablet = new_device(account.account_key)
    grant = grant_for(client, account, tablet)
    v2 = with_added(account.signed_list, account.account_key, tablet)

    async def race() -> list[int]:
        async with live_server.async_client() as c:
            url = f"/v1/accounts/{account.account_id}/device-list/signed"
            rs = await asyncio.gather(
                *(
                    c.put(url, json={"device_list": v2.to_b64()}, headers={"X-Device-Grant": grant})
                    for _ in range(5)
                )
            )
            return sorted(r.status_code for r in rs)

    statuses = asyncio.run(race())
    # one request adds the tablet; the others are refused (403: grant used; 409: list moved on) or,
    # arriving after the winner committed the very same list, answered as an idempotent retry
    assert statuses[0] == 200 and set(statuses[1:]) <= {200, 403, 409}, statuses
    r = client.get(f"/v1/accounts/{account.account_id}/device-list", headers=account.first.headers)
    assert r.json()["version"] == 2
    r = client.get(
        f"/v1/accounts/{account.account_id}/device-list/chain?since=0", headers=account.first.headers
    )
    assert len(r.json()["lists"]) == 2  # one version added, once


def test_the_new_devices_name_comes_with_the_list(client: httpx.Client) -> None:
    account = register(client)
    name = _sealed(100)
    tablet = _link(client, account, sealed_name=name)
    r = client.get("/v1/accounts/me/device-names", headers=account.first.headers)
    assert r.json() == {"names": {tablet.id: name}}


# -- the me path needs a live, listed device ----------------------------------------------------


def test_removed_devices_never_return(client: httpx.Client) -> None:
    account = register(client)
    tablet = add_device(client, account)
    remove_device(client, account, tablet)
    # its token can no longer publish anything
    v_next = with_added(account.signed_list, account.account_key, new_device(account.account_key))
    r = put_list(client, tablet, v_next)
    assert r.status_code in (401, 403), r.text
    # re-listed with its old entry (signed as is), or a fresh binding of its old id: refused
    previous = account.signed_list
    old_entry = dl.sign(
        account.account_key,
        dl.DeviceList.create(
            previous.version + 1,
            previous.hash(),
            account.account_key.public_key,
            account.username,
            [*previous.content.devices, tablet.entry],
            previous.content.root,
        ),
    )
    r = put_list(client, account.first, old_entry)
    assert (r.status_code, _code(r)) == (409, "device_id_taken")
    tablet.signing, tablet.dh = DeviceSigningKey.generate(), DeviceDHKey.generate()
    fresh = with_added(previous, account.account_key, tablet)  # new keys, bound at this version
    r = put_list(client, account.first, fresh)
    assert (r.status_code, _code(r)) == (409, "device_id_taken")
    # nor through a grant
    r = client.post(GRANTS, json=_grant_body(tablet), headers=account.first.headers)
    assert (r.status_code, _code(r)) == (409, "device_id_taken")


def test_a_device_may_remove_itself(client: httpx.Client) -> None:
    account = register(client)
    tablet = add_device(client, account)
    remove_device(client, account, tablet, acting=tablet)
    assert client.get("/v1/auth/me", headers=tablet.headers).status_code == 401


# -- key handoffs ---------------------------------------------------------------------------------


def test_key_handoffs_reach_only_their_device(live_server: LiveServer, client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    tablet = add_device(client, account)
    v4 = with_added(account.signed_list, account.account_key, new_device(account.account_key))
    handoffs = {laptop.id: _sealed(200), tablet.id: _sealed(512)}
    r = client.put(
        "/v1/accounts/me/device-list",
        json={"device_list": v4.to_b64(), "key_handoffs": handoffs, "sealed_name": _sealed()},
        headers=account.first.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 4
    url = "/v1/accounts/me/key-handoffs"
    for device in (laptop, tablet):
        r = client.get(url, headers=device.headers)
        assert r.json() == {"handoffs": [{"version": 4, "sealed": handoffs[device.id]}]}
        assert client.get(url + "?since=4", headers=device.headers).json() == {"handoffs": []}
        assert client.get(url + "?since=3", headers=device.headers).json()["handoffs"][0]["version"] == 4
    assert client.get(url, headers=account.first.headers).json() == {"handoffs": []}
    assert client.get(url).status_code == 401
    clock = live_server.clock
    assert isinstance(clock, ManualClock)
    clock.advance(live_server.settings.queue_retention_s + 1)
    assert login(client, account, laptop).status_code == 200
    assert client.get(url, headers=laptop.headers).json() == {"handoffs": []}  # expired


def test_key_handoff_rules(client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    outsider = new_device(account.account_key)
    v3 = with_added(account.signed_list, account.account_key, new_device(account.account_key))

    def put(**extra: object) -> httpx.Response:
        return client.put(
            "/v1/accounts/me/device-list",
            json={"device_list": v3.to_b64(), **extra},
            headers=account.first.headers,
        )

    for handoffs in (
        {outsider.id: _sealed()},  # not in the new list
        {laptop.id: _sealed(513)},  # too large
        {laptop.id: ""},
        {"not-an-id": _sealed()},
    ):
        r = put(key_handoffs=handoffs)
        assert r.status_code == 422, (handoffs, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = put(sealed_name=_sealed(513))
    assert r.status_code == 422
    # a list refused for its handoffs changed nothing
    r = client.get(f"/v1/accounts/{account.account_id}/device-list", headers=account.first.headers)
    assert r.json()["version"] == 2
    # the linking path carries no handoffs
    grant = grant_for(client, account, outsider)
    v3b = with_added(account.signed_list, account.account_key, outsider)
    r = put_signed(client, account.account_id, v3b, grant, key_handoffs={laptop.id: _sealed()})
    assert r.status_code == 422


# -- encrypted device names ----------------------------------------------------------------------


def test_device_names(client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    names = {account.first.id: _sealed(), laptop.id: _sealed(512)}
    for device in (account.first, laptop):
        r = client.put(
            "/v1/accounts/me/device-name", json={"sealed_name": names[device.id]}, headers=device.headers
        )
        assert r.status_code == 204, r.text
    assert client.get("/v1/accounts/me/device-names", headers=laptop.headers).json() == {"names": names}
    renamed = _sealed(10)
    assert (
        client.put(
            "/v1/accounts/me/device-name", json={"sealed_name": renamed}, headers=laptop.headers
        ).status_code
        == 204
    )
    names[laptop.id] = renamed
    assert client.get("/v1/accounts/me/device-names", headers=account.first.headers).json() == {
        "names": names
    }
    other = register(client)  # names are per account
    assert client.get("/v1/accounts/me/device-names", headers=other.first.headers).json() == {"names": {}}
    remove_device(client, account, laptop)  # removed devices' names are gone
    del names[laptop.id]
    assert client.get("/v1/accounts/me/device-names", headers=account.first.headers).json() == {
        "names": names
    }
    for body in ({"sealed_name": _sealed(513)}, {"sealed_name": ""}, {}, {"sealed_name": 5}):
        r = client.put("/v1/accounts/me/device-name", json=body, headers=account.first.headers)
        assert r.status_code == 422, body
    assert client.put("/v1/accounts/me/device-name", json={"sealed_name": _sealed()}).status_code == 401


# -- account-key succession: only on the authenticated path --------------------------------------


def test_account_key_succession_only_by_a_live_device(client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    rotated = AccountKey.generate()
    # through a grant: refused, even though the list is otherwise the current list plus the device
    tablet = new_device(account.account_key)
    grant = grant_for(client, account, tablet)
    bound(account.signed_list, tablet)
    sneaky = dl.successor(
        account.signed_list,
        account.account_key,
        [*account.signed_list.content.devices, tablet.entry],
        rotate_to=rotated,
    )
    r = put_signed(client, account.account_id, sneaky, grant)
    assert (r.status_code, _code(r)) == (403, "device_grant_invalid")
    # by an active device (removing the laptop and rotating): the stored account key moves on
    v3 = dl.with_device_removed(account.signed_list, account.account_key, laptop.device_id, rotate_to=rotated)
    r = client.put(
        "/v1/accounts/me/device-list",
        json={"device_list": v3.to_b64(), "key_handoffs": {}},
        headers=account.first.headers,
    )
    assert r.status_code == 200, r.text
    info = client.get(f"/v1/accounts/{account.account_id}", headers=account.first.headers).json()
    assert info["account_key"] == rotated.public_key.to_b64()
    old_key = account.account_key
    account.signed_list, account.account_key = v3, rotated
    # the old key is no authority any more; the new one is
    by_old_key = dl.sign(
        old_key,
        dl.DeviceList.create(
            4, v3.hash(), old_key.public_key, account.username, v3.content.devices, v3.content.root
        ),
    )
    r = put_list(client, account.first, by_old_key)
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")
    # the grant the refused rotation left unused adds its device under the new key
    v4 = with_added(v3, rotated, tablet)
    assert put_signed(client, account.account_id, v4, grant).status_code == 200
    assert put_list(client, account.first, with_added(v4, rotated, new_device(rotated))).status_code == 200


# -- concurrency: the bounds hold and nothing collides -------------------------------------------


def test_concurrent_grants_and_renames(live_server: LiveServer, client: httpx.Client) -> None:
    account = register(client)
    candidates = [new_device(account.account_key) for _ in range(10)]

    async def race() -> tuple[list[int], list[int]]:
        async with live_server.async_client(limits=httpx.Limits(max_connections=20)) as c:
            grants = await asyncio.gather(
                *(c.post(GRANTS, json=_grant_body(d), headers=account.first.headers) for d in candidates)
            )
            renames = await asyncio.gather(
                *(
                    c.put(
                        "/v1/accounts/me/device-name",
                        json={"sealed_name": _sealed()},
                        headers=account.first.headers,
                    )
                    for _ in range(10)
                )
            )
            return sorted(r.status_code for r in grants), [r.status_code for r in renames]

    grants, renames = asyncio.run(race())
    assert grants == [201] * 5 + [429] * 5
    assert renames == [204] * 10
    names = client.get("/v1/accounts/me/device-names", headers=account.first.headers).json()["names"]
    assert list(names) == [account.first.id]
