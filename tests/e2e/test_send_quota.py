"""The envelope-send quota (issue 13) with real SDK clients: a 429 leaves the message queued in the
outbox (back-off, never ``OutboxItemFailed``), and once the window has room every message arrives
exactly once. The window is emptied by resetting the server's limiter, not by waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from saltline.client_sdk import errors
from saltline.client_sdk.core import events as ev
from tests.e2e.test_never_wedge import Devices, _serve, devices, fast_backoff
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

__all__ = ["devices"]  # the fixture, imported for this module's tests


def _refused_sends(server: LiveServer) -> float:
    with httpx.Client(base_url=server.base_url) as client:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('saltline_rate_limited_total{scope="send-device"} '):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_429_on_send_backs_off_and_delivers_later(
    make_server: Callable[..., LiveServer], devices: Devices
) -> None:
    server = await _serve(make_server, rate_limit_envelopes_per_device="4/hour")
    alice = await devices.register(server.base_url, "alice", backoff=fast_backoff())
    bob = await devices.register(server.base_url, "bob")
    for d in (alice, bob):
        await d.client.connect()
    cid = await alice.client.create_conversation([bob.username])
    texts = [f"message {i}" for i in range(6)]
    for text in texts:
        try:
            await alice.client.send_text(cid, text)
        except errors.ServerError as exc:  # the first attempt's answer may be raised to the caller
            assert exc.status == 429, exc
    assert await alice.client.flush_outbox() == 0  # still over the quota: nothing more stored
    assert await asyncio.to_thread(_refused_sends, server) >= 2
    queued = [e for e in alice.client.outbox() if e.state == "queued"]
    assert len(queued) >= 2, alice.client.outbox()
    assert not alice.inbox.of(ev.OutboxItemFailed)

    await asyncio.to_thread(server.run_in_loop, server.ctx.rate_limiter.reset())  # the window passes
    await alice.client.flush_outbox()
    await bob.inbox.received(*texts)
    bob.inbox.assert_exactly_once(*texts)
    assert alice.client.outbox() == []
    assert not alice.inbox.of(ev.OutboxItemFailed)
