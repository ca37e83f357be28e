"""Every user-facing failure of the client API is a :class:`SaltlineError` (never a crypto or wire
error escaping): a table of bad inputs against a real server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.events import MessageReceived, OperationRejected, Reaction, ReactionChanged
from saltline.client_sdk.errors import SaltlineError
from saltline.client_sdk.stores.memory import MemoryStore
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0


@dataclass
class World:
    alice: Client
    cid: str
    ref: str


@pytest.fixture
async def world(live_server: LiveServer) -> AsyncIterator[World]:
    alice = await Client.create(live_server.base_url, MemoryStore())
    bob = await Client.create(live_server.base_url, MemoryStore())
    try:
        await alice.register(f"alice_{os.urandom(3).hex()}", PASSWORD)
        bob_name = f"bob_{os.urandom(3).hex()}"
        await bob.register(bob_name, PASSWORD)
        cid = await alice.create_conversation([bob_name])
        await alice.send_text(cid, "hello")
        ref = (await alice.conversation(cid)).messages[-1].message_ref
        yield World(alice, cid, ref)
    finally:
        await alice.close()
        await bob.close()


Case = Callable[[World], Awaitable[object]]

CASES: dict[str, Case] = {
    "conversation with a bad username": lambda w: w.alice.create_conversation(["not a name!"]),
    "conversation with a non-ASCII username": lambda w: w.alice.create_conversation(["bøb"]),
    "conversation with an unknown username": lambda w: w.alice.create_conversation(["nobody_xyz_123"]),
    "safety number of a bad username": lambda w: w.alice.safety_number("x"),
    "safety number of a bad account id": lambda w: w.alice.safety_number(account_id="!!not-b64"),
    "safety number of an unknown account id": lambda w: w.alice.safety_number(account_id="AAAA"),
    "verify a bad account id": lambda w: w.alice.verify_contact(account_id="%%%"),
    "trust policy of a bad username": lambda w: w.alice.set_trust_policy("a b", "warn"),
    "trust policy unknown": lambda w: w.alice.set_trust_policy(
        None, "sometimes", account_id=w.alice.account_id
    ),
    "send to an unknown conversation": lambda w: w.alice.send_text("no-such-conversation", "hi"),
    "send to a non-base64 conversation": lambda w: w.alice.send_text("%%%", "hi"),
    "view of an unknown conversation": lambda w: w.alice.conversation("%%%"),
    "edit a malformed ref": lambda w: w.alice.edit(w.cid, "%%%.x", "new"),
    "edit a ref with a bad device": lambda w: w.alice.edit(w.cid, "!!.1", "new"),
    "reply to an unknown envelope": lambda w: w.alice.reply(w.cid, "not-an-envelope", "re"),
    "delete a malformed ref": lambda w: w.alice.delete(w.cid, "..."),
    "react with text": lambda w: w.alice.react(w.cid, w.ref, "hello"),
    "react with nothing": lambda w: w.alice.react(w.cid, w.ref, ""),
    "react with two emoji": lambda w: w.alice.react(w.cid, w.ref, "👍👍"),
    "react with a long string": lambda w: w.alice.react(w.cid, w.ref, "👍" * 100),
    "add a bad username": lambda w: w.alice.add_member(w.cid, "!"),
    "remove a bad username": lambda w: w.alice.remove_member(w.cid, "b"),
    "remove a bad device id": lambda w: w.alice.remove_device("%%%"),
    "remove an unknown device": lambda w: w.alice.remove_device("AAAA"),
    "device name too long": lambda w: w.alice.set_device_name("x" * 65),
    "device name empty": lambda w: w.alice.set_device_name(""),
    "mark read of an unknown conversation": lambda w: w.alice.mark_read("%%%"),
    "title of an unknown conversation": lambda w: w.alice.set_title("%%%", "t"),
    "retry an unknown outbox item": lambda w: w.alice.retry_outbox("%%%"),
    "approve a malformed link code": lambda w: w.alice.approve_link(
        "not a code", history="none", confirm=lambda r: True, wait_s=1
    ),
    "login with a bad username": lambda w: w.alice.login("!!", "password"),
    "a negative disappearing timer": lambda w: w.alice.set_disappearing_timer(w.cid, -5),
    "a title that is not text": lambda w: w.alice.set_title(w.cid, 5),  # type: ignore[arg-type]
    "a read marker below zero": lambda w: w.alice.mark_read(w.cid, -1),
    "a message that is not text": lambda w: w.alice.send_text(w.cid, b"bytes"),  # type: ignore[arg-type]
    "send a file that does not exist": lambda w: w.alice.send_file(w.cid, "/nonexistent/file.bin"),
    "typing in an unknown conversation": lambda w: w.alice.typing("%%%"),
    "unreact with text": lambda w: w.alice.unreact(w.cid, w.ref, "no"),
}


async def test_bad_input_raises_a_saltline_error(world: World) -> None:
    """One world for the whole table (registering is the slow part): every case must raise a
    SaltlineError; anything else (or nothing) is collected and reported together."""
    wrong: dict[str, str] = {}
    for name, case in sorted(CASES.items()):
        try:
            await case(world)
        except SaltlineError:
            continue
        except Exception as exc:  # the point of the test: nothing else may escape
            wrong[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        else:
            wrong[name] = "did not raise"
    assert wrong == {}
    # the client is still usable after all of that
    await world.alice.send_text(world.cid, "still here")


async def test_register_with_a_bad_username_is_a_saltline_error(live_server: LiveServer) -> None:
    async with await Client.create(live_server.base_url, MemoryStore()) as client:
        for bad in ("", "a", "bøb", "has space", "x" * 33):
            with pytest.raises(SaltlineError):
                await client.register(bad, PASSWORD)


async def test_a_peers_invalid_reaction_is_rejected_with_an_event(live_server: LiveServer) -> None:
    """A modified client (not ``react()``, which refuses) sends a reaction that is not one emoji:
    the receiving device reports it (``OperationRejected``, ``invalid_reaction``) and never shows
    it; a valid reaction after it is shown, with the reactor's username."""
    alice = await Client.create(live_server.base_url, MemoryStore())
    bob = await Client.create(live_server.base_url, MemoryStore())
    try:
        alice_name, bob_name = f"alice_{os.urandom(3).hex()}", f"bob_{os.urandom(3).hex()}"
        await alice.register(alice_name, PASSWORD)
        await bob.register(bob_name, PASSWORD)
        await alice.connect()
        await bob.connect()
        cid = await alice.create_conversation([bob_name])
        await alice.send_text(cid, "react to this")
        hello = await bob.next_event(MessageReceived, WAIT)
        target = bob.conversations.message_dot(cid, hello.message_ref)
        await bob.outbound.send_op(cid, sync.ReactionAdd(target, "<img src=x onerror=alert(1)>"))
        rejected = await alice.next_event(OperationRejected, WAIT)
        assert rejected.reason == "invalid_reaction" and rejected.account_id == bob.account_id
        assert (await alice.conversation(cid)).message(hello.message_ref).reactions == ()  # type: ignore[union-attr]
        await bob.react(cid, hello.message_ref, "🎉")
        changed = await alice.next_event(ReactionChanged, WAIT)
        assert changed.message_ref == hello.message_ref
        assert changed.reactions == (Reaction(bob.account_id, bob_name, "🎉"),)
    finally:
        await alice.close()
        await bob.close()
