"""Provisioning channels (issue 12): split secrets. The put secret (in the link code) only puts,
the take secret (kept by the new device) only takes; the channel is a one-slot mailbox that
carries several messages, one at a time, until it expires or is deleted. No bearer token."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from saltline.crypto.keys import b64decode, b64encode
from tests.live import LiveServer, ManualClock

SECRET = "X-Channel-Secret"


def _code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return str(r.json()["code"])


@dataclass
class Chan:
    url: str
    put: dict[str, str]
    take: dict[str, str]


def _channel(client: httpx.Client) -> Chan:
    r = client.post("/v1/provisioning")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"channel_id", "put_secret", "take_secret", "expires_in"}
    assert len(b64decode(body["put_secret"])) == len(b64decode(body["take_secret"])) == 32
    assert body["put_secret"] != body["take_secret"]
    return Chan(
        f"/v1/provisioning/{body['channel_id']}", {SECRET: body["put_secret"]}, {SECRET: body["take_secret"]}
    )


def _sealed(n: int = 64) -> dict[str, str]:
    return {"payload": b64encode(os.urandom(n))}


def test_put_needs_no_token_and_take_empties_the_slot(client: httpx.Client) -> None:
    c = _channel(client)
    assert client.get(c.url, headers=c.take).status_code == 204
    first = _sealed(200)
    r = client.put(c.url, json=first, headers=c.put)  # no Authorization header at all
    assert r.status_code == 204, r.text
    r = client.get(c.url, headers=c.take)
    assert (r.status_code, r.json()) == (200, first)
    assert client.get(c.url, headers=c.take).status_code == 204  # emptied, the channel lives on


def test_the_mailbox_carries_several_messages_one_at_a_time(client: httpx.Client) -> None:
    """The linking handshake: two messages each way over one channel."""
    c = _channel(client)
    messages = [_sealed() for _ in range(4)]
    for message in messages:
        assert client.put(c.url, json=message, headers=c.put).status_code == 204
        r = client.put(c.url, json=_sealed(), headers=c.put)
        assert (r.status_code, _code(r)) == (409, "provisioning_payload_exists")  # slot is full
        assert client.get(c.url, headers=c.take).json() == message  # the first one, not the refused


def test_secrets_are_not_interchangeable(client: httpx.Client) -> None:
    """Reading the link code (the put secret) never lets anyone take; the take secret cannot put.
    Both are indistinguishable from an unknown channel."""
    c = _channel(client)
    r = client.put(c.url, json=_sealed(), headers=c.take)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    message = _sealed()
    assert client.put(c.url, json=message, headers=c.put).status_code == 204
    for headers in (c.put, {}, {SECRET: b64encode(os.urandom(32))}, {SECRET: "!!"}, {SECRET: "AAAA"}):
        r = client.get(c.url, headers=headers)
        assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
        r = client.delete(c.url, headers=headers)
        assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    for headers in ({}, {SECRET: b64encode(os.urandom(32))}, {SECRET: "!!"}):
        r = client.put(c.url, json=_sealed(), headers=headers)
        assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    unknown = f"/v1/provisioning/{b64encode(os.urandom(16))}"
    r = client.get(unknown, headers=c.take)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    assert client.get(c.url, headers=c.take).json() == message  # nothing consumed by the probes


def test_delete_with_the_take_secret(client: httpx.Client) -> None:
    c = _channel(client)
    assert client.put(c.url, json=_sealed(), headers=c.put).status_code == 204
    assert client.delete(c.url, headers=c.take).status_code == 204
    for r in (client.get(c.url, headers=c.take), client.put(c.url, json=_sealed(), headers=c.put)):
        assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    r = client.delete(c.url, headers=c.take)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")


def test_channel_expires(live_server: LiveServer, client: httpx.Client) -> None:
    clock = live_server.clock
    assert isinstance(clock, ManualClock)
    c = _channel(client)
    assert client.put(c.url, json=_sealed(), headers=c.put).status_code == 204
    clock.advance(live_server.settings.provisioning_ttl_s + 1)
    r = client.get(c.url, headers=c.take)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")
    r = client.put(c.url, json=_sealed(), headers=c.put)
    assert (r.status_code, _code(r)) == (404, "provisioning_channel_not_found")


def test_puts_per_channel_are_bounded(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(max_provisioning_puts_per_channel=3)
    with server.client() as client:
        c = _channel(client)
        for _ in range(3):
            assert client.put(c.url, json=_sealed(), headers=c.put).status_code == 204
            assert client.get(c.url, headers=c.take).status_code == 200
        r = client.put(c.url, json=_sealed(), headers=c.put)
        assert (r.status_code, _code(r)) == (429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1
        assert client.get(c.url, headers=c.take).status_code == 204  # nothing was stored


def test_puts_are_rate_limited_per_ip(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(rate_limit_provisioning_puts_per_ip="3/minute")
    with server.client() as client:
        c = _channel(client)
        wrong = {SECRET: b64encode(os.urandom(32))}
        for _ in range(3):  # guessing puts count too
            assert client.put(c.url, json=_sealed(), headers=wrong).status_code == 404
        r = client.put(c.url, json=_sealed(), headers=c.put)
        assert (r.status_code, _code(r)) == (429, "rate_limited")
    with server.client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        assert other.put(c.url, json=_sealed(), headers=c.put).status_code == 204


def test_payload_size_and_shape(live_server: LiveServer, client: httpx.Client) -> None:
    c = _channel(client)
    too_big = {"payload": b64encode(os.urandom(live_server.settings.max_provisioning_payload_bytes + 1))}
    r = client.put(c.url, json=too_big, headers=c.put)
    assert r.status_code in (413, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    for body in ({}, {"payload": ""}, {"payload": "a+b/"}, {"payload": 5}, _sealed() | {"x": 1}):
        r = client.put(c.url, json=body, headers=c.put)
        assert (r.status_code, _code(r)) in {(422, "validation_failed"), (422, "malformed_key")}, body
    assert client.get(c.url, headers=c.take).status_code == 204


async def _race(server: LiveServer, c: Chan) -> None:
    async with server.async_client(limits=httpx.Limits(max_connections=20)) as client:
        puts = await asyncio.gather(*(client.put(c.url, json=_sealed(32), headers=c.put) for _ in range(6)))
        assert sorted(r.status_code for r in puts) == [204] + [409] * 5, [r.text for r in puts]
        takes = await asyncio.gather(*(client.get(c.url, headers=c.take) for _ in range(10)))
        assert sorted(r.status_code for r in takes) == [200] + [204] * 9, [r.text for r in takes]


def test_one_put_wins_and_a_message_is_taken_once_under_concurrency(
    live_server: LiveServer, client: httpx.Client
) -> None:
    c = _channel(client)
    asyncio.run(_race(live_server, c))
    assert client.get(c.url, headers=c.take).status_code == 204
