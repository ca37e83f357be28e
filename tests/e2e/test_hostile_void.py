"""A hostile peer against malformed-operation voids (docs/protocol/sync.md § 2.1-2.2), with the
real server: bob's client is the attacker's, alice's the victim's."""

from __future__ import annotations

import pytest

from saltline.client_sdk.core.events import DecryptionFailed, MessageReceived
from saltline.client_sdk.core.sync import ops
from tests.e2e.hostile_world import World, events_of, until


def _nested(depth: int, lamport: int) -> bytes:
    return ('{"a":' + "[" * depth + "]" * depth + f',"lamport":{lamport},"type":"x","v":2}}').encode()


async def test_deeply_nested_operations_are_voids_and_do_not_stall_delivery(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown-type operations nested 600..999 deep: around the stack's limit a parse succeeded
    and the Unicode check raised RecursionError, which the inbound facet took for a transient
    failure (no acknowledgement, reconnection with back-off, five times, then a drop that held
    bob's later operations). Now every one is a void, reported once, and bob's next message
    arrives."""
    w = world
    events_of(w.alice, DecryptionFailed)  # (nothing before)
    connections = w.ws.accepted.value
    with monkeypatch.context() as m:
        m.setattr("saltline.client_sdk.facets.outbound.check_accepted", lambda *args: None)
        for depth in range(600, 1000):
            m.setattr(ops, "encode_plaintext", lambda op, d=depth: _nested(d, op.lamport))
            await w.bob.send_text(w.cid, "x")
    await w.bob.send_text(w.cid, "after")
    await until(w.alice, MessageReceived, lambda e: e.text == "after")
    failed = events_of(w.alice, DecryptionFailed)
    assert w.ws.accepted.value == connections  # alice's socket never gave up on an envelope
    assert len(failed) == 400 and {f.code for f in failed} == {"malformed"}
    assert [m.text for m in w.alice.messages(w.cid)][-2:] == ["hello alice", "after"]
