"""Signed device lists: the server accepts only lists signed by the account key that extend the
current one, serves the current list and the chain, and routes only listed devices."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, SigningContext, b64decode, b64encode
from tests.live import LiveServer
from tests.server.delivery_support import WsClient
from tests.server.helpers import (
    add_device,
    grant_for,
    login,
    new_account,
    new_device,
    put_list,
    put_signed,
    register,
    register_body,
    remove_device,
    with_added,
)


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def test_current_list_and_chain_verify_on_the_client(client: httpx.Client) -> None:
    account = register(client)
    tablet = add_device(client, account)
    remove_device(client, account, tablet)
    viewer = register(client)

    r = client.get(f"/v1/accounts/{account.account_id}/device-list", headers=viewer.first.headers)
    assert r.status_code == 200
    assert r.json()["version"] == 3
    chain = client.get(
        f"/v1/accounts/{account.account_id}/device-list/chain?since=0", headers=viewer.first.headers
    )
    lists = [b64decode(item["signed_list"]) for item in chain.json()["lists"]]
    assert len(lists) == 3
    verifier = dl.DeviceListChainVerifier(account.account_key.public_key)
    content = verifier.verify_chain(lists)
    assert content.device_ids == (account.first.device_id,)
    since = client.get(
        f"/v1/accounts/{account.account_id}/device-list/chain?since=2", headers=viewer.first.headers
    )
    assert [item["version"] for item in since.json()["lists"]] == [3]

    by_name = client.get(f"/v1/accounts/by-username/{account.username.upper()}", headers=viewer.first.headers)
    assert by_name.json()["account_id"] == account.account_id
    assert by_name.json()["account_key"] == account.account_key.public_key.to_b64()
    devices = client.get(f"/v1/accounts/{account.account_id}/devices", headers=viewer.first.headers).json()
    assert [d["device_id"] for d in devices["devices"]] == [account.first.id]


def test_rejects_a_list_signed_by_another_key(client: httpx.Client) -> None:
    account = register(client)
    intruder = AccountKey.generate()
    device = new_device(intruder)
    content = dl.DeviceList.create(
        2, account.signed_list.hash(), intruder.public_key, account.username, [device.entry]
    )
    forged = dl.sign(intruder, content)
    r = put_list(client, account.first, forged)
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")

    good = with_added(account.signed_list, account.account_key, new_device(account.account_key))
    tampered = dl.SignedDeviceList(good.content, bytes(64))
    r = put_list(client, account.first, tampered)
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")


def test_rejects_version_other_than_next(client: httpx.Client) -> None:
    account = register(client)
    v2 = with_added(account.signed_list, account.account_key, new_device(account.account_key))
    v3 = with_added(v2, account.account_key, new_device(account.account_key))
    r = put_list(client, account.first, v3)  # skips version 2
    assert (r.status_code, _code(r)) == (409, "device_list_stale")
    assert r.json()["current_version"] == 1
    assert put_list(client, account.first, v2).status_code == 200
    assert put_list(client, account.first, v2).status_code == 200  # the same list again: idempotent
    rolled_back = dl.successor(account.signed_list, account.account_key, [account.first.entry])  # another v2
    r = put_list(client, account.first, rolled_back)
    assert (r.status_code, _code(r)) == (409, "device_list_stale")


def test_rejects_wrong_predecessor_hash(client: httpx.Client) -> None:
    account = register(client)
    content = dl.DeviceList.create(
        2, os.urandom(32), account.account_key.public_key, account.username, [account.first.entry]
    )
    r = put_list(client, account.first, dl.sign(account.account_key, content))
    assert (r.status_code, _code(r)) == (409, "device_list_chain_broken")


def test_rejects_unbound_device(client: httpx.Client) -> None:
    account = register(client)
    device = new_device(account.account_key)
    unbound = dl.DeviceEntry(device.device_id, device.entry.signing_key, device.entry.dh_key, 0, bytes(64))
    content = dl.DeviceList.create(
        2,
        account.signed_list.hash(),
        account.account_key.public_key,
        account.username,
        [account.first.entry, unbound],
    )
    signature = account.account_key.sign(SigningContext.DEVICE_LIST, content.encode())
    r = put_list(client, account.first, dl.SignedDeviceList(content, signature))
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")
    # and the device never became routable
    devices = client.get(f"/v1/accounts/{account.account_id}/devices", headers=account.first.headers).json()
    assert [d["device_id"] for d in devices["devices"]] == [account.first.id]


def test_registration_list_checks(client: httpx.Client) -> None:
    account = new_account()
    other_name = dl.first(account.account_key, "someone_else", [account.first.entry])
    r = client.post("/v1/accounts", json=register_body(account) | {"device_list": other_name.to_b64()})
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")

    r = client.post(
        "/v1/accounts", json=register_body(account) | {"device_id": new_device(account.account_key).id}
    )
    assert (r.status_code, _code(r)) == (422, "device_not_in_list")

    v2 = dl.successor(account.signed_list, account.account_key, [account.first.entry])
    r = client.post("/v1/accounts", json=register_body(account) | {"device_list": v2.to_b64()})
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")

    r = client.post("/v1/accounts", json=register_body(account) | {"account_key": "AAAA"})
    assert (r.status_code, _code(r)) == (422, "malformed_key")


def test_device_ids_are_never_reused(client: httpx.Client) -> None:
    alice = register(client)
    bob = new_account()
    # Bob's list claims Alice's device id (with Bob's own keys bound to it).
    stolen = dl.bind_device(
        bob.account_key.public_key, alice.first.device_id, bob.first.signing, bob.first.dh.public_key, 0
    )
    bob.first.device_id = alice.first.device_id
    bob.signed_list = dl.first(bob.account_key, bob.username.lower(), [stolen])
    r = client.post("/v1/accounts", json=register_body(bob))
    assert (r.status_code, _code(r)) == (409, "device_id_taken")

    tablet = add_device(client, alice)
    remove_device(client, alice, tablet)
    again = with_added(alice.signed_list, alice.account_key, tablet)
    r = put_list(client, alice.first, again)
    assert (r.status_code, _code(r)) == (409, "device_id_taken")


def test_linked_device_can_change_the_list(client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    remove_device(client, account, account.first, acting=laptop)  # no primary device
    assert client.get("/v1/auth/me", headers=laptop.headers).status_code == 200


# -- token-less publication (linking): the account-key signature plus a one-time device grant ----


def _put_signed(
    client: httpx.Client, account_id: str, signed: dl.SignedDeviceList, grant: str | None = None
) -> httpx.Response:
    return put_signed(client, account_id, signed, grant)


def test_signed_list_is_accepted_with_a_grant_without_a_token(client: httpx.Client) -> None:
    account = register(client)
    tablet = new_device(account.account_key)
    v2 = with_added(account.signed_list, account.account_key, tablet)
    grant = grant_for(client, account, tablet)
    r = _put_signed(client, account.account_id, v2, grant)
    assert r.status_code == 200, r.text
    assert r.json() | {"hash": None} == {"version": 2, "hash": None, "added": [tablet.id], "removed": []}
    r = _put_signed(client, account.account_id, v2, grant)  # the grant is used up
    assert (r.status_code, _code(r)) == (403, "device_grant_invalid")
    account.signed_list = v2
    account.devices.append(tablet)
    assert login(client, account, tablet).status_code == 200
    current = client.get(f"/v1/accounts/{account.account_id}/device-list", headers=tablet.headers).json()
    assert current["version"] == 2
    assert current["signed_list"] == v2.to_b64()


def test_signed_list_refuses_bad_signatures_and_stale_lists(client: httpx.Client) -> None:
    account = register(client)
    other = register(client)
    tablet = new_device(account.account_key)
    v2 = with_added(account.signed_list, account.account_key, tablet)
    grant = grant_for(client, account, tablet)

    tampered = dl.SignedDeviceList(v2.content, bytes(64))
    r = _put_signed(client, account.account_id, tampered, grant)
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")
    intruder = AccountKey.generate()
    forged = dl.sign(
        intruder,
        dl.DeviceList.create(
            2, account.signed_list.hash(), intruder.public_key, account.username, [new_device(intruder).entry]
        ),
    )
    r = _put_signed(client, account.account_id, forged, grant)
    assert (r.status_code, _code(r)) == (422, "device_list_invalid")
    # A grant of one account is no authority over another.
    r = _put_signed(client, other.account_id, v2, grant)
    assert (r.status_code, _code(r)) == (403, "device_grant_invalid")

    v3 = with_added(v2, account.account_key, new_device(account.account_key))
    r = _put_signed(client, account.account_id, v3, grant)  # skips version 2
    assert (r.status_code, _code(r)) == (409, "device_list_stale")
    wrong_parent = dl.sign(
        account.account_key,
        dl.DeviceList.create(
            2,
            os.urandom(32),
            account.account_key.public_key,
            account.username,
            [account.first.entry, tablet.entry],
        ),
    )
    r = _put_signed(client, account.account_id, wrong_parent, grant)
    assert (r.status_code, _code(r)) == (409, "device_list_chain_broken")
    assert _put_signed(client, account.account_id, v2, grant).status_code == 200  # still unused
    # Replaying the old version 1 (a rollback) with a fresh grant is stale, not accepted.
    grant2 = grant_for(client, account, new_device(account.account_key))
    r = _put_signed(client, account.account_id, account.signed_list, grant2)
    assert (r.status_code, _code(r)) == (409, "device_list_stale")
    r = _put_signed(client, "not-an-id", v2, grant2)
    assert (r.status_code, _code(r)) == (404, "not_found")
    r = _put_signed(client, b64encode(os.urandom(16)), v2, grant2)
    assert (r.status_code, _code(r)) == (403, "device_grant_invalid")


async def test_removal_closes_the_removed_devices_socket(
    live_server: LiveServer, client: httpx.Client
) -> None:
    account = register(client)
    tablet = add_device(client, account)
    ws = await WsClient.connect(live_server.ws_url, tablet)
    assert await ws.envelopes_until_drained() == []
    v3 = dl.with_device_removed(account.signed_list, account.account_key, tablet.device_id)
    r = await asyncio.to_thread(put_list, client, account.first, v3)
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == [tablet.id]
    assert await ws.closed_with() == 4002
    r = await asyncio.to_thread(client.get, "/v1/auth/me", headers=tablet.headers)
    assert r.status_code == 401


def test_signed_list_rate_limited_per_ip(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(
        rate_limit_signed_list_per_ip="5/minute", rate_limit_signed_list_per_account="2/minute"
    )
    with server.client() as client:
        account = register(client)
        other = register(client)
        grant = grant_for(client, account, new_device(account.account_key))
        junk = dl.SignedDeviceList(account.signed_list.content, bytes(64))
        for _ in range(3):  # over the account's 2/minute: junk does not count per account
            assert _put_signed(client, account.account_id, junk, grant).status_code == 422
        for _ in range(2):  # without a grant: refused before the signature is even checked
            assert _put_signed(client, other.account_id, junk).status_code == 403
        # Now the IP budget (5) is spent for every account.
        r = _put_signed(client, other.account_id, junk)
        assert (r.status_code, _code(r)) == (429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1


def test_junk_signed_lists_do_not_use_up_the_owners_allowance(make_server: Callable[..., LiveServer]) -> None:
    """Issue 13: junk ``PUT .../device-list/signed`` requests must not make the owner's valid
    list get 429. The per-IP limit counts everything; the per-account limit only lists that
    verify (and, since issue 12, nothing without a grant of the account gets that far)."""
    server = make_server(
        rate_limit_signed_list_per_ip="10/minute", rate_limit_signed_list_per_account="3/minute"
    )
    with server.client() as client:
        account = register(client)
        tablet = new_device(account.account_key)
        grant = grant_for(client, account, tablet)
    intruder = AccountKey.generate()
    forged = dl.first(intruder, account.username.lower(), [new_device(intruder).entry])
    v2 = with_added(account.signed_list, account.account_key, tablet)
    raw = b64decode(v2.to_b64())
    tampered = b64encode(raw[:-1] + bytes([raw[-1] ^ 0x01]))  # a signature bit flipped: never valid
    with server.client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as attacker:
        codes = []
        for i in range(10):
            body = {"device_list": forged.to_b64() if i % 2 else tampered}
            headers = {"X-Device-Grant": grant} if i % 3 == 0 else {}  # even with the grant
            r = attacker.put(
                f"/v1/accounts/{account.account_id}/device-list/signed", json=body, headers=headers
            )
            codes.append((r.status_code, r.headers["content-type"].split(";")[0]))
        assert {c for c, _ in codes} == {403, 422}
        assert {t for _, t in codes} == {"application/problem+json"}
        r = attacker.put(
            f"/v1/accounts/{account.account_id}/device-list/signed", json={"device_list": tampered}
        )
        assert r.status_code == 429  # the attacker's address is limited
    with server.client() as owner:
        assert _put_signed(owner, account.account_id, v2, grant).status_code == 200


def test_a_list_every_client_would_refuse_is_refused(client: httpx.Client) -> None:
    """A holder of the account key on an active device re-signs a carried entry (another
    added_at): the server runs the clients' whole chain rule, so it cannot accept a list that
    would freeze every client's view of the account."""
    account = register(client)
    first = account.first
    rebound = dl.bind_device(
        account.signed_list.content.root,
        first.device_id,
        first.signing,
        first.dh.public_key,
        first.entry.added_at + 1,
        1,
    )
    poisoned = dl.sign(
        account.account_key,
        dl.DeviceList.create(
            2, account.signed_list.hash(), account.account_key.public_key, account.username, [rebound]
        ),
    )
    r = put_list(client, first, poisoned)
    assert r.status_code == 422 and r.json()["code"] == "device_list_invalid", r.text
    assert "changed its entry" in r.json()["detail"]
