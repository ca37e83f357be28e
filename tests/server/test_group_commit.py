"""Group commit: concurrent sends share transactions, server_seq stays gap-free, and a failed
batch never fails the innocent sends in it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from saltline.server.services.delivery_writer import GroupCommitWriter
from saltline.server.storage.envelopes_repo import (
    Accepted,
    AckRequest,
    NewEnvelope,
    SendOutcome,
    StoredEnvelope,
)
from tests.live import LiveServer
from tests.server.delivery_support import WsClient, create_conversation, envelope_body
from tests.server.helpers import add_device, register


async def test_concurrent_sends_gap_free(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob, carol = register(client), register(client), register(client)
    add_device(client, bob)
    cid = create_conversation(client, alice, bob, carol)
    other = create_conversation(client, bob, carol)
    senders = [alice, bob, carol]
    n = 60

    async with live_server.async_client() as ac:

        async def one(i: int) -> tuple[str, int]:
            sender = senders[i % 3]
            conv, members = (other, [bob, carol]) if i % 5 == 0 and sender is not alice else (cid, senders)
            body = envelope_body(sender.first, members, b"c%d" % i)
            r = await ac.post(f"/v1/conversations/{conv}/envelopes", json=body, headers=sender.first.headers)
            assert r.status_code == 201, r.text
            return conv, r.json()["server_seq"]

        results = await asyncio.gather(*(one(i) for i in range(n)))

    for conv in (cid, other):
        seqs = sorted(s for c, s in results if c == conv)
        assert seqs == list(range(1, len(seqs) + 1))
    batches = live_server.ctx.registry.get_sample_value("saltline_group_commit_batch_size_count")
    jobs = live_server.ctx.registry.get_sample_value("saltline_group_commit_batch_size_sum")
    assert jobs is not None and batches is not None and jobs >= n and batches <= jobs

    # Every recipient device has every envelope exactly once, in server_seq order per conversation.
    ws = await WsClient.connect(live_server.ws_url, carol.first)
    got = await ws.envelopes_until_drained()
    mine = [f for f in got if f["sender"]["account_id"] != carol.account_id]
    assert len(mine) == sum(1 for i in range(n) if senders[i % 3] is not carol)
    for conv in (cid, other):
        seqs = [f["server_seq"] for f in got if f["conversation_id"] == conv]
        assert seqs == sorted(seqs)
    queue_seqs = [f["queue_seq"] for f in got]
    assert queue_seqs == sorted(queue_seqs) and len(set(queue_seqs)) == len(queue_seqs)
    await ws.close()


async def test_same_envelope_id_concurrently_stored_once(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    body = envelope_body(alice.first, [alice, bob], b"dup")
    async with live_server.async_client() as ac:
        rs = await asyncio.gather(
            *(
                ac.post(f"/v1/conversations/{cid}/envelopes", json=body, headers=alice.first.headers)
                for _ in range(10)
            )
        )
    assert {r.status_code for r in rs} == {201}
    assert {r.json()["server_seq"] for r in rs} == {1}
    ws = await WsClient.connect(live_server.ws_url, bob.first)
    assert len(await ws.envelopes_until_drained()) == 1
    await ws.close()


class FlakyStore:
    """Fails any batch that contains a poisoned envelope; records the batches it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seq = 0
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def write_batch(
        self, sends: Sequence[NewEnvelope], acks: Sequence[AckRequest], now_ms: int
    ) -> list[SendOutcome]:
        self.entered.set()
        await self.gate.wait()
        self.batches.append(len(sends) + len(acks))
        if any(e.clock == b"poison" for e in sends):
            raise RuntimeError("constraint violated")
        out: list[SendOutcome] = []
        for e in sends:
            self.seq += 1
            out.append(Accepted(StoredEnvelope(e.conversation_id, e.envelope_id, self.seq, now_ms, b""), ()))
        return out


def _env(i: int, clock: bytes = b"ok") -> NewEnvelope:
    return NewEnvelope(b"c" * 16, i.to_bytes(16, "big"), b"a" * 16, b"d" * 16, clock, b"h" * 32, ())


async def test_failed_batch_does_not_fail_innocent_sends() -> None:
    store = FlakyStore()
    writer = GroupCommitWriter(store, lambda: 0)
    await writer.start()
    try:
        blocker = asyncio.create_task(writer.send(_env(0)))  # holds the writer in write_batch
        await store.entered.wait()
        tasks = [
            asyncio.create_task(writer.send(_env(i, b"poison" if i == 3 else b"ok"))) for i in range(1, 6)
        ]
        ack = asyncio.create_task(writer.ack(AckRequest(b"d" * 16, 1)))
        store.gate.set()
        await blocker
        results = await asyncio.gather(*tasks, ack, return_exceptions=True)
    finally:
        await writer.close()
    assert isinstance(results[2], RuntimeError)  # only the poisoned send fails
    ok = [r for i, r in enumerate(results[:5]) if i != 2]
    assert all(isinstance(r, Accepted) for r in ok)
    assert results[5] is None
    # One batch for the blocker, one failed batch of 6 jobs, then 6 single retries.
    assert store.batches[:2] == [1, 6] and store.batches[2:] == [1] * 6
