"""The SDK's request builders and parsers for the issue-12 endpoints (client_sdk/core/api.py),
executed against the real server: what the lead's linking client will send is what it accepts."""

from __future__ import annotations

import os

import httpx

from saltline.client_sdk.core import api
from saltline.crypto import device_list as dl
from saltline.crypto.keys import b64encode
from tests.server.helpers import add_device, login, new_device, register, with_added


def _run(client: httpx.Client, req: api.Request, token: str | None = None) -> api.Response:
    headers = dict(req.headers)
    if req.auth:
        assert token is not None, req.path
        headers["Authorization"] = f"Bearer {token}"
    r = client.request(req.method, req.path, json=req.json_body, headers=headers, params=dict(req.query))
    body = r.json() if r.content and r.headers["content-type"].endswith("json") else None
    return api.check(api.Response(r.status_code, body, dict(r.headers)))


def test_provisioning_builders(client: httpx.Client) -> None:
    channel = api.parse_provisioning_channel(_run(client, api.create_channel()).body)
    assert channel.expires_in > 0
    assert (
        api.parse_provisioning(_run(client, api.take_provisioning(channel.channel_id, channel.take_secret)))
        is None
    )
    for _ in range(2):  # one channel, several messages in turn
        sealed = b64encode(os.urandom(100))
        _run(client, api.put_provisioning(channel.channel_id, channel.put_secret, sealed))
        taken = api.parse_provisioning(
            _run(client, api.take_provisioning(channel.channel_id, channel.take_secret))
        )
        assert taken == sealed
    _run(client, api.delete_provisioning(channel.channel_id, channel.take_secret))


def test_grant_list_handoff_and_name_builders(client: httpx.Client) -> None:
    account = register(client)
    laptop = add_device(client, account)
    tablet = new_device(account.account_key)
    grant = api.parse_device_grant(
        _run(
            client, api.device_grant(tablet.id, bytes(tablet.entry.signing_key)), account.first.access_token
        ).body
    )
    assert grant.expires_in == 600
    v3 = with_added(account.signed_list, account.account_key, tablet)
    name = b64encode(os.urandom(40))
    r = _run(
        client, api.put_signed_device_list(account.account_id, v3.to_b64(), grant.grant, sealed_name=name)
    )
    assert r.body["added"] == [tablet.id]
    account.signed_list = v3
    account.devices.append(tablet)
    assert login(client, account, tablet).status_code == 200

    handoff = b64encode(os.urandom(64))
    v4 = dl.with_device_removed(account.signed_list, account.account_key, laptop.device_id)
    _run(client, api.put_device_list(v4.to_b64(), {tablet.id: handoff}), account.first.access_token)
    got = api.parse_key_handoffs(_run(client, api.key_handoffs(0), tablet.access_token).body)
    assert got == [(4, handoff)]

    mine = b64encode(os.urandom(20))
    _run(client, api.set_device_name(mine), account.first.access_token)
    names = api.parse_device_names(_run(client, api.device_names(), tablet.access_token).body)
    assert names == {account.first.id: mine, tablet.id: name}
