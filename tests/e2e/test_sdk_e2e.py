"""The SDK against a real server on a real socket: alice-desktop, alice-phone (linked) and bob.

Waits are on events with timeouts, never on sleeps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import Drained, MessageReceived
from saltline.client_sdk.errors import UntrustedDeviceListError
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, b64decode, b64encode
from tests.linking import link
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0


def _name(prefix: str) -> str:
    return f"{prefix}_{os.urandom(3).hex()}"


def _all_bytes(root: Path) -> bytes:
    return b"".join(f.read_bytes() for f in root.rglob("*") if f.is_file())


async def _received(client: Client, n: int = 1) -> list[MessageReceived]:
    return [await client.next_event(MessageReceived, WAIT) for _ in range(n)]


async def test_three_devices_end_to_end(
    live_server: LiveServer,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = live_server
    url = server.base_url
    sent: list[str] = []

    def said(text: str) -> str:
        sent.append(text)
        return text

    alice_name, bob_name = _name("alice"), _name("bob")
    # the desktop keeps a durable store (outside tmp_path, whose files are the server's)
    desk_path = tmp_path_factory.mktemp("desktop-device") / "store.db"
    desk = await Client.create(url, SqliteStore.open(desk_path))
    await desk.register(alice_name, PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(bob_name, PASSWORD)

    phone_store = MemoryStore()
    phone = await Client.create(url, phone_store)
    assert await link(desk, phone, wait_s=WAIT) == desk.account_id
    assert {d.device_id for d in await desk.devices()} == {desk.device_id, phone.device_id}

    for c in (desk, phone, bob):
        await c.connect()

    # bob -> both of alice's devices
    cid = await bob.create_conversation([alice_name])
    await bob.send_text(cid, said("hello alice, from bob"))
    for device in (desk, phone):
        (event,) = await _received(device)
        assert (event.text, event.sender_account_id, event.sent_by_me) == (
            "hello alice, from bob",
            bob.account_id,
            False,
        )
        assert event.sender_username == bob_name

    # alice's phone -> bob, and to her desktop as sent by her
    await phone.send_text(cid, said("hi bob, from alice's phone"))
    (on_bob,) = await _received(bob)
    (on_desk,) = await _received(desk)
    assert on_bob.text == on_desk.text == "hi bob, from alice's phone"
    assert on_desk.sent_by_me and on_desk.sender_device_id == phone.device_id
    assert not on_bob.sent_by_me

    # the desktop is offline while the conversation goes on: everything arrives on reconnect,
    # in order, exactly once
    await desk.disconnect()
    offline = [said(f"while you were away {i}") for i in range(3)]
    for i, text in enumerate(offline):
        await (bob if i % 2 == 0 else phone).send_text(cid, text)
    await _received(phone, 2)  # bob's two messages reached the phone
    await _received(bob, 1)  # and the phone's one reached bob
    await desk.connect()
    got = await _received(desk, 3)
    assert [e.text for e in got] == offline
    assert [e.server_seq for e in got] == sorted(e.server_seq for e in got)
    await desk.next_event(Drained, WAIT)
    texts = [m.text for m in desk.messages(cid)]
    assert len(texts) == len(set(texts)) == 5

    # the desktop restarts from its durable store (closed, reopened) and continues its sessions
    # both ways
    await desk.close()
    desk.store.close()  # type: ignore[attr-defined]
    desk = await Client.create(url, SqliteStore.open(desk_path))
    assert [m.text for m in desk.messages(cid)] == texts
    await desk.connect()
    await bob.send_text(cid, said("after your restart"))
    (event,) = await _received(desk)
    assert event.text == "after your restart"
    await desk.send_text(cid, said("the desktop is back"))
    assert (await _received(bob))[0].text == "the desktop is back"
    on_phone = await _received(phone, 2)
    assert [e.text for e in on_phone] == ["after your restart", "the desktop is back"], on_phone

    # link a third device, remove the phone: the phone no longer receives
    laptop = await Client.create(url, MemoryStore())
    await link(desk, laptop, wait_s=WAIT)
    await laptop.connect()
    await desk.remove_device(phone.device_id)
    await bob.send_text(cid, said("only for desktop and laptop"))
    assert (await _received(desk))[0].text == "only for desktop and laptop"
    assert (await _received(laptop))[0].text == "only for desktop and laptop"
    await laptop.send_text(cid, said("hello from the laptop"))
    assert (await _received(bob))[0].text == "hello from the laptop"
    assert {e.text for e in await _received(desk)} == {"hello from the laptop"}
    assert all(m.text != "only for desktop and laptop" for m in phone.messages(cid))

    for c in (desk, phone, bob, laptop):
        await c.close()
    desk.store.close()  # type: ignore[attr-defined]

    # the server's database and logs hold none of the plaintexts
    server.stop()
    blobs = _all_bytes(tmp_path)
    logs = caplog.text
    for text in sent:
        assert text.encode() not in blobs
        assert text not in logs


class DeviceInjector(httpx.AsyncBaseTransport):
    """An attacker between the SDK and the real server: it adds a device of its own to every
    device list it relays (it has no account key, so the list keeps its old signature), and
    records every envelope sent through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rogue_signing = DeviceSigningKey.generate()
        self.rogue_id = os.urandom(16)
        self.envelopes: list[dict[str, Any]] = []

    def _inject(self, signed_b64: str) -> str:
        signed = dl.SignedDeviceList.from_b64(signed_b64)
        c = signed.content
        rogue = dl.bind_device(
            c.root, self.rogue_id, self.rogue_signing, DeviceDHKey.generate().public_key, 0, c.version
        )
        content = dl.DeviceList.create(
            c.version, c.previous_hash, c.account_key, c.username, [*c.devices, rogue]
        )
        return dl.SignedDeviceList(content, signed.signature).to_b64()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/envelopes"):
            self.envelopes.append(json.loads(request.content))
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/device-list/chain") and response.status_code == 200:
            body = json.loads(await response.aread())
            for item in body["lists"]:
                item["signed_list"] = self._inject(item["signed_list"])
            return httpx.Response(200, json=body)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_injected_device_is_refused(live_server: LiveServer) -> None:
    server = live_server
    alice_name = _name("alice")
    alice = await Client.create(server.base_url, MemoryStore())
    await alice.register(alice_name, PASSWORD)
    attacker = DeviceInjector()
    bob = await Client.create(server.base_url, MemoryStore(), http_transport=attacker)
    await bob.register(_name("bob"), PASSWORD)
    with pytest.raises(UntrustedDeviceListError):
        await bob.create_conversation([alice_name])
    rogue = b64encode(attacker.rogue_id)
    assert all(c["device_id"] != rogue for e in attacker.envelopes for c in e["ciphertexts"])
    assert bob.store.device_lists.get_contact(alice.account_id) is None
    assert b64decode(rogue) == attacker.rogue_id
    for c in (alice, bob):
        await c.close()


async def test_store_is_exclusive(live_server: LiveServer) -> None:
    from saltline.client_sdk.errors import StoreLockedError

    server = live_server
    store = MemoryStore()
    first = await Client.create(server.base_url, store)
    with pytest.raises(StoreLockedError):
        await Client.create(server.base_url, store)
    await first.close()
    again = await Client.create(server.base_url, store)
    await again.close()
    assert AccountKey  # imported for the attacker's type hints above
