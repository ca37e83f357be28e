"""Provisioning channels: only a device that saw the link code (channel id *and* secret) can put
the payload; the new device takes it exactly once."""

from __future__ import annotations

import asyncio
import os

import httpx

from crypto.keys import b64encode
from tests.live import LiveServer
from tests.server.helpers import Account, register

SECRET = "X-Channel-Secret"


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


def _channel(client: httpx.Client) -> tuple[str, str]:
    r = client.post("/v1/provisioning")
    assert r.status_code == 201, r.text
    body = r.json()
    return f"/v1/provisioning/{body['channel_id']}", str(body["channel_secret"])


def test_happy_path(client: httpx.Client) -> None:
    existing = register(client)
    url, secret = _channel(client)
    assert client.get(url, headers={SECRET: secret}).status_code == 204
    sealed = b64encode(os.urandom(200))
    r = client.put(url, json={"payload": sealed}, headers=existing.first.headers | {SECRET: secret})
    assert r.status_code == 204, r.text
    r = client.get(url, headers={SECRET: secret})
    assert (r.status_code, r.json()) == (200, {"payload": sealed})


def test_put_requires_the_channel_secret(client: httpx.Client) -> None:
    """Knowing the channel id alone (e.g. from a log or a shoulder-surfed half of the code) must
    not let any account's device put a payload on it."""
    attacker = register(client)
    url, secret = _channel(client)
    sealed = b64encode(os.urandom(64))
    r = client.put(url, json={"payload": sealed}, headers=attacker.first.headers)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    wrong = {SECRET: b64encode(os.urandom(32))}
    r = client.put(url, json={"payload": sealed}, headers=attacker.first.headers | wrong)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    r = client.put(url, json={"payload": sealed}, headers=attacker.first.headers | {SECRET: "!!"})
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    assert client.get(url, headers={SECRET: secret}).status_code == 204  # still empty


def test_get_with_wrong_secret(client: httpx.Client) -> None:
    existing = register(client)
    url, secret = _channel(client)
    sealed = b64encode(os.urandom(64))
    assert client.put(
        url, json={"payload": sealed}, headers=existing.first.headers | {SECRET: secret}
    ).is_success
    r = client.get(url, headers={SECRET: b64encode(os.urandom(32))})
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    r = client.get(url)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    assert client.get(url, headers={SECRET: secret}).json() == {"payload": sealed}  # not consumed


def test_double_put_is_409(client: httpx.Client) -> None:
    existing = register(client)
    url, secret = _channel(client)
    headers = existing.first.headers | {SECRET: secret}
    first = b64encode(os.urandom(64))
    assert client.put(url, json={"payload": first}, headers=headers).status_code == 204
    r = client.put(url, json={"payload": b64encode(os.urandom(64))}, headers=headers)
    assert (r.status_code, _code(r)) == (409, "provisioning_payload_exists")
    assert client.get(url, headers={SECRET: secret}).json() == {"payload": first}


async def _race(server: LiveServer, existing: Account, url: str, secret: str) -> None:
    async with server.async_client(limits=httpx.Limits(max_connections=20)) as client:
        headers = existing.first.headers | {SECRET: secret}
        puts = await asyncio.gather(
            *(
                client.put(url, json={"payload": b64encode(os.urandom(32))}, headers=headers)
                for _ in range(10)
            )
        )
        assert sorted(r.status_code for r in puts) == [204] + [409] * 9, [r.text for r in puts]
        takes = await asyncio.gather(*(client.get(url, headers={SECRET: secret}) for _ in range(10)))
        assert sorted(r.status_code for r in takes) == [200] + [404] * 9, [r.text for r in takes]


def test_payload_is_put_once_and_taken_once_under_concurrency(
    live_server: LiveServer, client: httpx.Client
) -> None:
    existing = register(client)
    url, secret = _channel(client)
    asyncio.run(_race(live_server, existing, url, secret))
    r = client.get(url, headers={SECRET: secret})
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
