"""The hostile-server world of the attacker tests: alice talks to the real server through the
man in the middle (``tests/hostile.py`` for HTTP, ``tests/proxy.py``'s ``WsMitm`` for frames); bob
and mallory (the attacker's own real account) talk to it directly. The ``world`` fixture is in
``tests/e2e/conftest.py``."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import Event, MessageReceived
from saltline.client_sdk.stores.memory import MemoryStore
from tests.hostile import HostileHttp
from tests.live import LiveServer
from tests.proxy import WsMitm

PASSWORD = "correct horse battery staple"
WAIT = 15.0


def name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


@dataclass
class World:
    """alice talks to the server through the attacker; bob and mallory (the attacker's own real
    account, whose account key the attacker holds) talk to it directly."""

    alice: Client
    bob: Client
    mallory: Client
    http: HostileHttp
    ws: WsMitm
    cid: str  # alice <-> bob, direct, with sessions both ways


async def make_world(
    live_server: LiveServer, make_mitm: Callable[[str], Awaitable[WsMitm]]
) -> AsyncIterator[World]:
    url = live_server.base_url
    http = HostileHttp()
    ws = await make_mitm(live_server.ws_url)
    alice = await Client.create(url, MemoryStore(), http_transport=http, ws_url=ws.ws_url)
    bob = await Client.create(url, MemoryStore())
    mallory = await Client.create(url, MemoryStore())
    await alice.register(name("alice"), PASSWORD)
    await bob.register(name("bob"), PASSWORD)
    await mallory.register(name("mallory"), PASSWORD)
    for c in (alice, bob, mallory):
        await c.connect()
    cid = await alice.create_conversation([bob.username])
    await alice.send_text(cid, "hello bob")
    assert (await bob.next_event(MessageReceived, WAIT)).text == "hello bob"
    await bob.send_text(cid, "hello alice")
    assert (await alice.next_event(MessageReceived, WAIT)).text == "hello alice"
    try:
        yield World(alice, bob, mallory, http, ws, cid)
    finally:
        for c in (alice, bob, mallory):
            await c.close()


def device_ids_encrypted_to(w: World) -> set[str]:
    """Every device id alice put a ciphertext for, over HTTP and over the socket."""
    out: set[str] = set()
    bodies: list[Any] = [json.loads(b) for b in w.http.sent_bodies(r"/v1/conversations/[^/]+/envelopes")]
    bodies += [f["envelope"] for f in w.ws.to_server if isinstance(f, dict) and f.get("type") == "send"]
    for body in bodies:
        out.update(c["device_id"] for c in body.get("ciphertexts", []))
    return out


async def genuine_conversation_still_works(w: World, text: str) -> None:
    """alice -> bob and bob -> alice still decrypt (alice used the genuine sessions)."""
    await w.alice.send_text(w.cid, text)
    assert (await w.bob.next_event(MessageReceived, WAIT)).text == text
    await w.bob.send_text(w.cid, text + " (reply)")
    assert (await w.alice.next_event(MessageReceived, WAIT)).text == text + " (reply)"


def events_of(c: Client, kind: type[Event]) -> list[Any]:
    return [e for e in c._ctx.bus.drain() if isinstance(e, kind)]


async def mallory_messages_alice(w: World, text: str) -> str:
    """mallory's real client opens a direct conversation with alice and sends ``text``."""
    cid = await w.mallory.create_conversation([w.alice.username])
    await w.mallory.send_text(cid, text)
    return cid


async def until(c: Client, kind: type[Event], predicate: Callable[[Any], bool]) -> Any:
    while True:
        event = await c.next_event(kind, WAIT)
        if predicate(event):
            return event
