"""Hostile review of malformed operations as voids (docs/protocol/sync.md § 2.2): a hostile peer
and a hostile server with the fake relay."""

from __future__ import annotations

from typing import Any

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.events import DecryptionFailed
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import CompactClock
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.stores.memory import MemoryStore
from tests.client_sdk.harness import FakeRelay
from tests.client_sdk.test_client_harness import _add_device
from tests.client_sdk.test_op_unicode import _send_hostile, _state

URL = "http://relay.invalid"


async def _user(relay: FakeRelay, name: str) -> Client:
    client = await Client.create(URL, MemoryStore(), http_transport=relay)
    await client.register(name, "a long passphrase")
    return client


def _requeue(relay: FakeRelay, device_id: str, frame: dict[str, Any]) -> None:
    """The server hands ``frame`` again under a fresh queue_seq (a replay)."""
    relay.next_queue_seq[device_id] += 1
    relay.queues[device_id].append({**frame, "queue_seq": relay.next_queue_seq[device_id]})


async def test_an_envelope_that_decrypted_and_was_dropped_is_reported_once_however_often_it_comes() -> None:
    """A stored envelope that decrypts but is dropped (here a typing indicator a hostile peer sent
    as a stored operation; a malformed operation without a dot takes the same path) used to leave
    its message key unspent: a replay, and every later gap fill (its server_seq is never
    received, so every delivery asks for it again), decrypted it again and reported it again."""
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    failed: list[DecryptionFailed] = []
    bob.on(DecryptionFailed, failed.append)
    direct = await alice.create_conversation(["bob"])
    await alice.send_text(direct, "before")
    await relay.deliver(bob)
    await alice.outbound.send_op(direct, sync.Typing(True))  # hostile: a stored typing
    (bad,) = [f for f in relay.queues[bob.device_id] if f.get("type") == "envelope"]
    await alice.send_text(direct, "after")
    await relay.deliver(bob)
    assert [f.envelope_id for f in failed] == [bad["envelope_id"]]
    _requeue(relay, bob.device_id, bad)  # the server replays it
    await relay.deliver(bob)
    await alice.send_text(direct, "later")  # a delivery: the gap (its server_seq) is asked for again
    await relay.deliver(bob)
    await bob.fill_gaps()
    assert [m.text for m in bob.messages(direct)] == ["before", "after", "later"]
    assert [f.envelope_id for f in failed] == [bad["envelope_id"]]  # reported once
    assert not relay.queues[bob.device_id]
    await alice.close()
    await bob.close()


async def test_a_void_just_after_a_new_devices_floor_does_not_silence_the_conversation_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bob links a phone (history depth "none": its floor is the desktop's base). Alice's next
    operation is a void whose lamport bound is unknown on the phone (her previous operation is below
    the floor). It used to count as 0 there: her next message looked forged (above the bound built
    on that 0) and was consumed with no effect, and so was everything after it, on the phone only."""
    relay = FakeRelay()
    alice, desk = await _user(relay, "alice"), await _user(relay, "bob")
    direct = await alice.create_conversation(["bob"])
    await alice.send_text(direct, "one")
    await relay.deliver(desk)
    await desk.send_text(direct, "two")
    await relay.deliver(alice)
    phone = await _add_device(relay, desk)  # seeded with depth "none"
    floor = _state(phone, direct).base_seq
    assert floor == _state(desk, direct).base_seq == 3
    await desk.send_text(direct, "three")
    await relay.deliver(alice)
    await _send_hostile(alice, direct, "boom \ud800", monkeypatch)
    await alice.send_text(direct, "after")
    await relay.deliver(desk)
    await desk.send_text(direct, "reply")
    for device in (alice, desk, phone):
        await relay.deliver(device)
    assert [m.text for m in (await desk.conversation(direct)).messages] == [
        "one",
        "two",
        "three",
        "after",
        "reply",
    ]
    assert [m.text for m in (await phone.conversation(direct)).messages] == ["three", "after", "reply"]
    assert _state(phone, direct).held() == () and _state(phone, direct).base_seq == 7
    for c in (alice, desk, phone):
        await c.close()


def _nested(depth: int, lamport: int = 1) -> bytes:
    """An unknown type carrying arrays nested ``depth`` deep (the object itself is one more)."""
    return ('{"a":' + "[" * depth + "]" * depth + f',"lamport":{lamport},"type":"x","v":2}}').encode()


async def test_deeply_nested_operations_neither_stall_the_queue_nor_depend_on_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile peer sends unknown-type operations nested 600..999 deep. Some depth parsed, then
    failed the Unicode check with RecursionError (the encoder needs a few more frames than the
    parser), which is not a SyncFormatError: the inbound facet took it for a transient failure
    and stopped acknowledging (every conversation of the device waits, five back-offs per
    envelope), then dropped it (its dot never consumed). Where the limit falls depended on the
    stack, so a restart's replay could decode what arrival could not."""
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    failed: list[DecryptionFailed] = []
    bob.on(DecryptionFailed, failed.append)
    direct = await alice.create_conversation(["bob"])
    await alice.send_text(direct, "before")
    with monkeypatch.context() as m:
        m.setattr("saltline.client_sdk.facets.outbound.check_accepted", lambda *args: None)
        for depth in range(600, 1000):
            m.setattr(ops, "encode_plaintext", lambda op, d=depth: _nested(d, op.lamport))
            await alice.send_text(direct, "x")
    await alice.send_text(direct, "after")
    top = relay.conversations[direct]["last_server_seq"]
    await relay.deliver(bob)  # raised RetryLater("processing failed: maximum recursion depth ...")
    assert not relay.queues[bob.device_id]
    assert [m.text for m in bob.messages(direct)] == ["before", "after"]
    assert _state(bob, direct).base_seq == top and _state(bob, direct).held() == ()
    assert len(failed) == 400 and {f.code for f in failed} == {"malformed"}  # all voids
    await alice.close()
    await bob.close()


def test_the_nesting_limit_does_not_depend_on_the_stack() -> None:
    clock = CompactClock.of(0, {b"\x01" * 16: 3}).encode()

    def outcome(depth: int) -> str:
        try:
            return type(ops.decode(_nested(depth), clock, b"\x01" * 16, b"\xa1" * 16).body).__name__
        except SyncFormatError:
            return "refused"

    def deep(frames: int, depth: int) -> str:
        return outcome(depth) if frames == 0 else deep(frames - 1, depth)

    assert outcome(ops.MAX_NESTING - 1) == "Unknown"  # the object is one level, its array the rest
    for depth in (ops.MAX_NESTING, 100, 990, 995, 5000):
        assert outcome(depth) == deep(800, depth) == "refused"
    assert deep(800, ops.MAX_NESTING - 1) == "Unknown"
