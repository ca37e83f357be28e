"""Accounts that survive a compromise and linking that cannot be phished (issue 12), end to end
on the real server over real sockets, with the attacker's moves made by hand (a removed phone
that kept its state, a photo of a link code, a server that forks a succession)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from saltline.client_sdk.client import Client, LinkConfirmation, LinkRequest
from saltline.client_sdk.core import api
from saltline.client_sdk.core import linking as link_fmt
from saltline.client_sdk.core.events import (
    AccountKeyRotated,
    DeviceRemoved,
    HistoryDownloadFailed,
    IdentityChanged,
    MessageReceived,
    OwnDeviceLinked,
    OwnDeviceUnlinked,
    UntrustedDeviceList,
)
from saltline.client_sdk.errors import (
    LinkError,
    LinkNotConfirmedError,
    NetworkError,
    UntrustedDeviceListError,
)
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, EphemeralKey, b64decode, b64encode
from tests.e2e.hostile_world import World, events_of, name, until
from tests.hostile import chain_body, forged_device, since_of
from tests.linking import link
from tests.live import LiveServer

PASSWORD = "correct horse battery staple"
WAIT = 15.0


async def _alice_with_phone(url: str) -> tuple[Client, Client]:
    desk = await Client.create(url, MemoryStore())
    await desk.register(name("alice"), PASSWORD)
    phone = await Client.create(url, MemoryStore())
    await link(desk, phone, name="alice's phone", wait_s=WAIT)
    return desk, phone


async def _alice_and_bob_with_history(url: str) -> tuple[Client, Client, str]:
    """alice's desk and bob, connected, with one message ("history") in their conversation."""
    desk = await Client.create(url, MemoryStore())
    await desk.register(name("alice"), PASSWORD)
    bob = await Client.create(url, MemoryStore())
    await bob.register(name("bob"), PASSWORD)
    for c in (desk, bob):
        await c.connect()
    cid = await bob.create_conversation([desk.username])
    await bob.send_text(cid, "history")
    assert (await desk.next_event(MessageReceived, WAIT)).text == "history"
    return desk, bob, cid


async def test_removed_device_cannot_publish_readd_itself_or_read(live_server: LiveServer) -> None:
    url = live_server.base_url
    desk, phone = await _alice_with_phone(url)
    bob = await Client.create(url, MemoryStore())
    await bob.register(name("bob"), PASSWORD)
    for c in (desk, phone, bob):
        await c.connect()
    cid = await bob.create_conversation([desk.username])
    await bob.send_text(cid, "before")
    assert (await desk.next_event(MessageReceived, WAIT)).text == "before"
    assert (await phone.next_event(MessageReceived, WAIT)).text == "before"
    # the thief's view: the phone's whole state, old account key included
    old_key = phone._ctx.account_key()
    own = phone.store.device_lists.get_contact(phone.account_id)
    assert own is not None
    old_list = dl.SignedDeviceList.decode(own.signed_list)
    old_token = await phone._ctx.token()

    await desk.remove_device(phone.device_id)
    assert (await phone.next_event(DeviceRemoved, WAIT)).reason
    # the account key rotated: the desk holds a new one, the old one signs nothing the server takes
    assert desk._ctx.account_key().public_key != old_key.public_key
    mine = desk.store.device_lists.get_contact(desk.account_id)
    assert mine is not None
    current = dl.SignedDeviceList.decode(mine.signed_list)
    assert current.content.succession is not None and current.content.account_key != old_key.public_key

    async with httpx.AsyncClient(base_url=url) as http:
        # 1. publish a list of its own (a device of the thief's) with the old key: no grant, no token
        rogue = forged_device()
        forged = dl.with_device_added(
            old_list, old_key, rogue.device_entry(old_list.content.root, 0, old_list.version + 1)
        )
        r = await http.put(
            f"/v1/accounts/{desk.account_id}/device-list/signed", json={"device_list": forged.to_b64()}
        )
        assert r.status_code in (403, 409) and r.headers["content-type"] == "application/problem+json"
        # 2. re-add itself: a fresh binding at the next version, signed with the old key
        readd = dl.sign(
            old_key,
            dl.DeviceList.create(
                current.version + 1,
                current.hash(),
                old_key.public_key,
                current.content.username,
                (
                    *current.content.devices,
                    phone._ctx.state.device_entry(current.content.root, 0, current.version + 1),
                ),
                current.content.root,
            ),
        )
        for headers in ({}, {"X-Device-Grant": b64encode(b"\x00" * 32)}):
            r = await http.put(
                f"/v1/accounts/{desk.account_id}/device-list/signed",
                json={"device_list": readd.to_b64()},
                headers=headers,
            )
            assert r.status_code in (403, 409, 422), r.text
        # ... and with its old bearer token on the authenticated route
        r = await http.put(
            "/v1/accounts/me/device-list",
            json={"device_list": readd.to_b64()},
            headers={"Authorization": f"Bearer {old_token}"},
        )
        assert r.status_code in (401, 403), r.text
    # 3. read what is sent after the removal: nothing reaches the phone
    await bob.send_text(cid, "after")
    assert (await desk.next_event(MessageReceived, WAIT)).text == "after"
    assert [e for e in events_of(phone, MessageReceived) if e.text == "after"] == []
    # the desk told the user, with the device's name
    unlinked = [e for e in events_of(desk, OwnDeviceUnlinked)]
    assert [(e.device_id, e.name) for e in unlinked] == [(phone.device_id, "alice's phone")]
    for c in (desk, phone, bob):
        await c.close()


async def test_contacts_follow_a_rotation_without_alarm(live_server: LiveServer) -> None:
    url = live_server.base_url
    desk, phone = await _alice_with_phone(url)
    laptop = await Client.create(url, MemoryStore())
    await link(desk, laptop, name="alice's laptop", wait_s=WAIT)
    bob = await Client.create(url, MemoryStore())
    await bob.register(name("bob"), PASSWORD)
    for c in (desk, laptop, bob):
        await c.connect()
    cid = await bob.create_conversation([desk.username])
    await bob.verify_contact(desk.username)
    await bob.send_text(cid, "hi")
    assert (await desk.next_event(MessageReceived, WAIT)).text == "hi"
    events_of(bob, IdentityChanged)
    await desk.remove_device(phone.device_id)
    # bob learns of the removal (the next send refreshes) and follows the succession
    await bob.send_text(cid, "after the rotation")
    assert (await desk.next_event(MessageReceived, WAIT)).text == "after the rotation"
    await until(laptop, MessageReceived, lambda e: e.text == "after the rotation")
    rotated = events_of(bob, AccountKeyRotated)
    assert rotated and rotated[0].account_id == desk.account_id and rotated[0].verified is True
    assert events_of(bob, IdentityChanged) == []
    contact = bob.store.device_lists.get_contact(desk.account_id)
    assert contact is not None and contact.verified
    assert contact.account_key == bytes(desk._ctx.account_key().public_key)
    # the laptop took the new key from its handoff and can manage devices
    assert laptop._ctx.account_key().public_key == desk._ctx.account_key().public_key
    assert [e.name for e in events_of(laptop, OwnDeviceUnlinked)] == ["alice's phone"]
    await laptop.send_text(cid, "from the laptop")
    assert (await bob.next_event(MessageReceived, WAIT)).text == "from the laptop"
    for c in (desk, phone, laptop, bob):
        await c.close()


async def test_a_forked_succession_is_refused(world: World, live_server: LiveServer) -> None:
    """bob rotates (removing a device); the thief who kept bob's old key signs another succession
    at the same version; the server shows it to alice after the real one: refused, reported."""
    w = world
    bob_phone = await Client.create(live_server.base_url, MemoryStore())
    await link(w.bob, bob_phone, wait_s=WAIT)
    old_key = w.bob._ctx.account_key()
    own = w.bob.store.device_lists.get_contact(w.bob.account_id)
    assert own is not None
    before = dl.SignedDeviceList.decode(own.signed_list)
    await w.bob.remove_device(bob_phone.device_id)
    await w.alice.send_text(w.cid, "after bob's rotation")  # alice refreshes and follows it
    assert (await w.bob.next_event(MessageReceived, WAIT)).text == "after bob's rotation"
    assert events_of(w.alice, AccountKeyRotated)
    thief_key = AccountKey.generate()
    forged = dl.with_device_removed(before, old_key, b64decode(bob_phone.device_id), rotate_to=thief_key)
    now = w.bob.store.device_lists.get_contact(w.bob.account_id)
    assert now is not None
    real = now.signed_list
    assert forged.encode() != real and forged.version == dl.SignedDeviceList.decode(real).version

    # the thief's branch continues past the real head: its next list (signed by the thief's key)
    # is what alice fetches next; asked for the whole chain, the server shows the thief's branch
    thief_next = dl.successor(forged, thief_key, forged.content.devices)
    prefix = [raw for raw in await w.bob.contacts._fetch_chain(w.bob.account_id, 0)][: before.version]
    branch = [*prefix, forged.encode(), thief_next.encode()]

    def fork(request: httpx.Request, body: Any) -> Any:
        return chain_body(branch, since_of(request))

    w.http.rewrite("GET", rf"/v1/accounts/{w.bob.account_id}/device-list/chain", fork)
    with pytest.raises(UntrustedDeviceListError):
        await w.alice.contacts.refresh(w.bob.account_id)
    await w.alice._ctx.flush()  # the refusal's event is published
    refused = [e for e in events_of(w.alice, UntrustedDeviceList) if e.account_id == w.bob.account_id]
    assert refused and "fork" in refused[0].reason and "two different" in refused[0].reason
    assert events_of(w.alice, IdentityChanged) == []  # never an identity change the policy adopts
    contact = w.alice.store.device_lists.get_contact(w.bob.account_id)
    assert contact is not None and contact.account_key == bytes(w.bob._ctx.account_key().public_key)
    await bob_phone.close()


async def test_link_not_confirmed_seals_nothing(live_server: LiveServer) -> None:
    url = live_server.base_url
    desk = await Client.create(url, MemoryStore())
    await desk.register(name("alice"), PASSWORD)
    new = await Client.create(url, MemoryStore())
    code = await new.begin_link("attacker's tablet")
    asked: list[LinkRequest] = []

    def refuse(request: LinkRequest) -> bool:
        asked.append(request)
        return False

    approve = desk.approve_link(code, history="all", confirm=refuse)
    complete = new.complete_link(wait_s=2.0)
    results = await asyncio.gather(approve, complete, return_exceptions=True)
    assert isinstance(results[0], LinkNotConfirmedError)
    assert isinstance(results[1], LinkError)  # no payload ever came
    assert [r.name for r in asked] == ["attacker's tablet"] and len(asked[0].code) == 7
    assert new._ctx.state.account_key is None and new._ctx.device.account_id is None
    assert [d.device_id for d in await desk.devices()] == [desk.device_id]
    for c in (desk, new):
        await c.close()


async def test_a_photographed_code_cannot_take_or_replace_the_payload(live_server: LiveServer) -> None:
    url = live_server.base_url
    desk = await Client.create(url, MemoryStore())
    await desk.register(name("alice"), PASSWORD)
    mallory = await Client.create(url, MemoryStore())
    await mallory.register(name("mallory"), PASSWORD)
    new = await Client.create(url, MemoryStore())
    text = await new.begin_link("alice's phone")
    code = link_fmt.LinkCode.parse(text)  # what the photo shows
    channel = b64encode(code.channel_id)
    async with httpx.AsyncClient(base_url=url) as http:
        # the code's secret cannot take
        r = await http.get(f"/v1/provisioning/{channel}", headers={"X-Channel-Secret": code.secret})
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        # ... nor delete
        r = await http.delete(f"/v1/provisioning/{channel}", headers={"X-Channel-Secret": code.secret})
        assert r.status_code == 404
    # mallory puts a hello of her own account first (pulling the new device into hers) ...
    mallory_key = EphemeralKey.generate()
    reply = api.parse_provisioning_channel((await mallory._ctx.call(api.create_channel())).body)
    hello = link_fmt.Hello(
        bytes(mallory_key.public_key),
        reply.channel_id,
        reply.put_secret,
        mallory.account_id,
        mallory.username,
        mallory._ctx.account_key().public_key,
    )
    box = link_fmt.seal_payload(code, link_fmt.encode_hello(hello))
    await mallory._ctx.call(api.put_provisioning(channel, code.secret, b64encode(box)))
    shown: list[LinkConfirmation] = []
    requests: list[LinkRequest] = []

    def confirm(request: LinkRequest) -> bool:
        requests.append(request)
        return any(s.code == request.code for s in shown)

    async def new_device() -> str:
        return await new.complete_link(wait_s=3.0, on_code=shown.append)

    results = await asyncio.gather(
        desk.approve_link(text, history="none", confirm=confirm, wait_s=3.0),
        new_device(),
        return_exceptions=True,
    )
    # ... the real approval fails: its hello either finds mallory's still waiting ("someone else
    # answered this code first") or is taken as the payload and never answered
    assert isinstance(results[0], LinkError)
    # the new device showed mallory's account (what the person would refuse on sight) ...
    assert shown and shown[0].username == mallory.username
    # ... and joined nothing: mallory never confirmed with a grant (her approval was never made)
    assert isinstance(results[1], LinkError)
    assert requests == []
    for c in (desk, mallory, new):
        await c.close()


async def test_new_device_is_reachable_when_its_history_fails_and_retries(
    live_server: LiveServer,
) -> None:
    url = live_server.base_url
    desk, bob, cid = await _alice_and_bob_with_history(url)
    new = await Client.create(url, MemoryStore())
    new.linking.history_retry_s = 0.01
    download = new.linking._download_bundle
    failures: list[int] = []

    async def unreachable_twice(ref: Any) -> Any:
        if len(failures) < 2:
            failures.append(1)
            raise NetworkError("the blob store is unreachable")
        return await download(ref)

    new.linking._download_bundle = unreachable_twice  # type: ignore[method-assign]
    await link(desk, new, wait_s=WAIT)
    # reachable at once: prekeys were published before the history
    await new.connect()
    await bob.send_text(cid, "to every device")
    assert (await new.next_event(MessageReceived, WAIT)).text == "to every device"
    await new.finish_link(wait_s=WAIT)
    failed = [e for e in events_of(new, HistoryDownloadFailed)]
    assert [(e.attempt, e.retrying) for e in failed] == [(1, True), (2, True)]
    texts = [m.text for m in (await new.conversation(cid)).messages]
    assert "history" in texts and "to every device" in texts
    for c in (desk, bob, new):
        await c.close()


async def test_corrupted_history_bundle_is_refused_and_the_device_stays_reachable(
    live_server: LiveServer,
) -> None:
    url = live_server.base_url
    desk, bob, cid = await _alice_and_bob_with_history(url)
    upload = desk.linking._upload_parts

    async def corrupting(ciphertext: bytes) -> list[str]:  # a server that flips a stored bit
        return await upload(ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))

    desk.linking._upload_parts = corrupting  # type: ignore[method-assign]
    new = await Client.create(url, MemoryStore())
    new.linking.history_retry_s = 0.01
    await link(desk, new, wait_s=WAIT)
    await new.connect()
    await bob.send_text(cid, "still reachable")
    assert (await new.next_event(MessageReceived, WAIT)).text == "still reachable"
    with pytest.raises(LinkError, match="history"):
        await new.finish_link(wait_s=WAIT)
    failed = [e for e in events_of(new, HistoryDownloadFailed)]
    assert len(failed) == 5 and failed[-1].retrying is False and "digest" in failed[0].reason
    assert "history" not in [m.text for m in (await new.conversation(cid)).messages]
    for c in (desk, bob, new):
        await c.close()


async def test_every_device_is_told_when_a_device_joins(live_server: LiveServer) -> None:
    url = live_server.base_url
    desk, phone = await _alice_with_phone(url)
    for c in (desk, phone):
        await c.connect()
    laptop = await Client.create(url, MemoryStore())
    await link(desk, laptop, name="alice's laptop", wait_s=WAIT)
    event = await until(phone, OwnDeviceLinked, lambda e: e.device_id == laptop.device_id)
    assert event.name == "alice's laptop"
    names = {d.device_id: d.name for d in await phone.devices()}
    assert names == {
        desk.device_id: names[desk.device_id],
        phone.device_id: "alice's phone",
        laptop.device_id: "alice's laptop",
    }
    for c in (desk, phone, laptop):
        await c.close()


async def test_a_payload_put_by_someone_else_is_refused(live_server: LiveServer) -> None:
    """The photographer waits for the real hello to be taken, then puts a payload of her own
    account (sealed to the code's key, with the code's secret): the new device refuses it, since
    it names another account than the hello it showed, and joins nothing."""
    from saltline.client_sdk.core import history

    url = live_server.base_url
    desk = await Client.create(url, MemoryStore())
    await desk.register(name("alice"), PASSWORD)
    mallory = await Client.create(url, MemoryStore())
    await mallory.register(name("mallory"), PASSWORD)
    new = await Client.create(url, MemoryStore())
    text = await new.begin_link("alice's phone")
    code = link_fmt.LinkCode.parse(text)
    own = mallory.store.device_lists.get_contact(mallory.account_id)
    assert own is not None
    fake = history.LinkPayload(
        mallory.account_id,
        mallory.username,
        bytes(mallory._ctx.account_key()),
        own.signed_list,
        (),
        (),
        None,
        None,
    )

    async def photographer_strikes(c: LinkConfirmation) -> None:
        assert c.username == desk.username  # the real hello was shown
        box = link_fmt.seal_payload(code, history.encode_link_payload(fake))
        await mallory._ctx.call(api.put_provisioning(b64encode(code.channel_id), code.secret, b64encode(box)))

    results = await asyncio.gather(
        desk.approve_link(text, history="none", confirm=lambda r: True, wait_s=5.0),
        new.complete_link(wait_s=5.0, on_code=photographer_strikes),
        return_exceptions=True,
    )
    assert isinstance(results[1], LinkError) and "another account" in str(results[1])
    assert new._ctx.device.account_id is None and new._ctx.state.account_key is None
    assert {d.device_id for d in await mallory.devices()} == {mallory.device_id}
    for c in (desk, mallory, new):
        await c.close()


async def test_a_rotation_survives_a_crash_before_its_commit(live_server: LiveServer) -> None:
    """The removing device published the rotated list, then crashed before storing the new key:
    its own sealed copy on the server gives the key back at its next check."""
    desk, phone = await _alice_with_phone(live_server.base_url)
    old_state = desk._ctx.state
    old_contact = desk.store.device_lists.get_contact(desk.account_id)
    assert old_contact is not None
    await desk.remove_device(phone.device_id)
    rotated = desk._ctx.account_key().public_key
    assert rotated != old_state.account_key.public_key  # type: ignore[union-attr]
    desk._ctx.put_state(old_state)  # what the store held before the lost commit
    desk.store.device_lists.put_contact(old_contact)
    await desk.inbound.own_list_check()
    assert desk._ctx.account_key().public_key == rotated
    for c in (desk, phone):
        await c.close()


async def test_the_new_device_can_refuse_the_account_it_is_shown(live_server: LiveServer) -> None:
    """The person sees another account than theirs on the new device and says no: the new device
    answers nothing, so no approving device ever learns its keys or name."""
    url = live_server.base_url
    other = await Client.create(url, MemoryStore())
    await other.register(name("stranger"), PASSWORD)
    new = await Client.create(url, MemoryStore())
    code = await new.begin_link("my phone")
    asked: list[LinkRequest] = []

    def confirm(request: LinkRequest) -> bool:
        asked.append(request)
        return True

    results = await asyncio.gather(
        other.approve_link(code, history="none", confirm=confirm, wait_s=2.0),
        new.complete_link(wait_s=2.0, on_code=lambda c: False),
        return_exceptions=True,
    )
    assert isinstance(results[1], LinkNotConfirmedError) and other.username in str(results[1])
    assert isinstance(results[0], LinkError) and asked == []
    assert new._ctx.device.account_id is None
    for c in (other, new):
        await c.close()
