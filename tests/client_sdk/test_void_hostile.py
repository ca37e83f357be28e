"""Hostile review of malformed operations as voids (docs/protocol/sync.md § 2.2): a hostile peer
and a hostile server with the fake relay."""

from __future__ import annotations

from typing import Any

from saltline.client_sdk.client import Client
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.events import DecryptionFailed
from saltline.client_sdk.stores.memory import MemoryStore
from tests.client_sdk.harness import FakeRelay

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
