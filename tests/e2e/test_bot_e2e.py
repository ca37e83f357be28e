"""The bot layer against a real server: a bot answers /echo (as a reply, with usernames and
message refs in the events), a handler that raises is offered the message again until it
returns, and SIGTERM shuts the bot down cleanly (client closed, store released)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import pytest

from saltline.client_sdk.bot import Bot, CommandContext, MessageContext, RateLimit
from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import Connected, MessageReceived, MessageSent
from saltline.client_sdk.stores.memory import MemoryStore
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
WAIT = 15.0


async def _reply(client: Client, text: str) -> MessageReceived:
    while True:
        event = await client.next_event(MessageReceived, WAIT)
        if not event.sent_by_me and event.text == text:
            return event


async def _no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


async def test_bot_answers_retries_and_stops_on_sigterm(live_server: LiveServer) -> None:
    bot_name, bob_name = f"bot_{os.urandom(3).hex()}", f"bob_{os.urandom(3).hex()}"
    store = MemoryStore()
    client = await Client.create(live_server.base_url, store)
    bob = await Client.create(live_server.base_url, MemoryStore())
    try:
        await client.register(bot_name, PASSWORD)
        await bob.register(bob_name, PASSWORD)
        bot = Bot(client, sleep=_no_wait, retry_delay_s=0.0)
        calls: list[str] = []
        seen: list[str] = []

        @bot.command("echo")
        async def echo(ctx: CommandContext) -> None:
            await ctx.reply(ctx.args)

        @bot.command("flaky")
        async def flaky(ctx: CommandContext) -> None:
            calls.append(ctx.message.envelope_id)
            if len(calls) < 3:
                raise RuntimeError("a crash in the handler")
            await ctx.reply(f"ok after {len(calls)} tries")

        @bot.on_message(lambda m: m.text.startswith("/"))
        async def log(ctx: MessageContext) -> None:
            seen.append(ctx.message.sender_username)

        runner = asyncio.create_task(bot.run(signals=(signal.SIGTERM,)))
        await client.next_event(Connected, WAIT)  # the bot's socket is up
        await bob.connect()
        cid = await bob.create_conversation([bot_name])

        eid = await bob.send_text(cid, "/echo hello bot")
        asked = await _sent(bob, eid)
        answer = await _reply(bob, "hello bot")
        assert answer.sender_username == bot_name and answer.reply_to == asked.message_ref
        view = await bob.conversation(cid)
        assert view.message(asked.message_ref) is not None  # one reference everywhere

        await bob.send_text(cid, "/flaky")
        await _reply(bob, "ok after 3 tries")
        await bot.wait_handled(calls[0], WAIT)
        assert len(calls) == 3 and len(set(calls)) == 1  # the same message, offered again
        assert bot.failures == 2 and calls[0] in bot.handled
        assert client.store.handler_inbox.pending() == []  # handled: nothing left to redeliver
        assert bob_name in seen

        await bob.send_text(cid, "not a command")  # no handler answers; still handled
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runner, WAIT)
        assert client._closed
        with pytest.raises(Exception):  # noqa: B017 -- the closed client refuses to reconnect
            await client.connect()
        store.acquire()  # released by the shutdown: another client may take it
        store.release()
    finally:
        await bob.close()
        await client.close()


async def _sent(client: Client, envelope_id: str) -> MessageSent:
    while True:
        event = await client.next_event(MessageSent, WAIT)
        if event.envelope_id == envelope_id:
            return event


class _Clock:
    """The bot's clock and sleep: time moves only when the bot sleeps, and sleeping waits for
    ``gate`` (set: sleeps return at once)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.gate = asyncio.Event()
        self.gate.set()
        self.sleeping = 0
        self.asleep = asyncio.Event()  # set when a sleep begins

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeping += 1
        self.asleep.set()
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.sleeping -= 1
        self.now += seconds


async def _pair(live_server: LiveServer) -> tuple[Client, Client]:
    sfx = os.urandom(3).hex()
    botc = await Client.create(live_server.base_url, MemoryStore())
    other = await Client.create(live_server.base_url, MemoryStore())
    await botc.register(f"bot_{sfx}", PASSWORD)
    await other.register(f"mal_{sfx}", PASSWORD)
    return botc, other


async def test_a_message_is_never_run_twice_by_redelivery(live_server: LiveServer) -> None:
    """Rate 1/s, one transient failure, six commands queued behind a busy handler, and
    redelivery passes while they wait: every handler runs once per message (the failed one
    twice), and the redelivered message keeps its reply_to."""
    botc, mal = await _pair(live_server)
    clock = _Clock()
    try:
        bot = Bot(
            botc, rate=RateLimit(burst=1, per_second=1.0), retry_delay_s=0.5, clock=clock, sleep=clock.sleep
        )
        runs: Counter[str] = Counter()
        busy, release = asyncio.Event(), asyncio.Event()
        replies_to: dict[str, str | None] = {}

        @bot.command("c")
        async def c(ctx: CommandContext) -> None:
            runs[ctx.args] += 1
            replies_to[ctx.args] = ctx.message.reply_to
            if ctx.args == "fail" and runs["fail"] == 1:
                raise RuntimeError("transient")
            if ctx.args == "n0":
                busy.set()
                await release.wait()
            await ctx.reply("ok " + ctx.args)

        await bot.start()
        await mal.connect()
        cid = await mal.create_conversation([botc.username])
        first = await mal.send_text(cid, "/c fail")
        asked = await _sent(mal, first)
        eids = [first] + [await mal.send_text(cid, f"/c n{i}") for i in range(6)]
        await asyncio.wait_for(busy.wait(), WAIT)
        for _ in eids:  # every message reached the bot (first offers are buffered events too)
            await botc.next_event(MessageReceived, WAIT)
        assert len(botc.store.handler_inbox.pending()) == 7
        for _ in range(2):  # offered again while queued: never run twice
            await botc.inbound.redeliver_unhandled()
        release.set()
        for eid in eids:
            await bot.wait_handled(eid, WAIT)
        assert runs == Counter({"fail": 2, **{f"n{i}": 1 for i in range(6)}})
        assert bot.failures == 1 and botc.store.handler_inbox.pending() == []
        await botc.inbound.redeliver_unhandled()  # handled: nothing runs again
        assert sum(runs.values()) == 8
        assert replies_to["fail"] is None and asked.message_ref
    finally:
        release.set()
        await botc.close()
        await mal.close()


async def test_one_conversations_rate_limit_does_not_stall_another(live_server: LiveServer) -> None:
    """Mallory spends her conversation's token and her next command waits for one; bob's
    command in another conversation is handled meanwhile (her handler is still waiting)."""
    botc, mal = await _pair(live_server)
    bob = await Client.create(live_server.base_url, MemoryStore())
    clock = _Clock()
    clock.gate.clear()  # a reply that must wait for its token waits until the test says so
    try:
        await bob.register(f"bob_{os.urandom(3).hex()}", PASSWORD)
        bot = Bot(botc, rate=RateLimit(burst=1, per_second=0.5), clock=clock, sleep=clock.sleep)
        order: list[str] = []

        @bot.command("c")
        async def c(ctx: CommandContext) -> None:
            order.append(ctx.args)
            await ctx.reply("ok " + ctx.args)
            order.append("replied " + ctx.args)

        await bot.start()
        await mal.connect()
        await bob.connect()
        spam = await mal.create_conversation([botc.username])
        quiet = await bob.create_conversation([botc.username])
        spammed = [await mal.send_text(spam, f"/c a{i}") for i in range(3)]
        await asyncio.wait_for(clock.asleep.wait(), WAIT)  # a1 waits for mallory's token
        asked = await bob.send_text(quiet, "/c b")
        await bot.wait_handled(asked, WAIT)
        assert order == ["a0", "replied a0", "a1", "b", "replied b"]
        assert clock.now == 0.0 and clock.sleeping == 1  # mallory's reply still waiting
        clock.gate.set()
        for eid in spammed:
            await bot.wait_handled(eid, WAIT)
        assert order[5:] == ["replied a1", "a2", "replied a2"]
    finally:
        clock.gate.set()
        await botc.close()
        await mal.close()
        await bob.close()


async def test_a_handler_that_hangs_times_out_and_is_offered_again(live_server: LiveServer) -> None:
    botc, mal = await _pair(live_server)
    try:
        bot = Bot(botc, retry_delay_s=0.0, handler_timeout_s=0.2, sleep=_no_wait)
        calls: list[str] = []

        @bot.command("hang")
        async def hang(ctx: CommandContext) -> None:
            calls.append(ctx.message.envelope_id)
            if len(calls) == 1:
                await asyncio.Event().wait()  # never returns: the timeout ends it

        await bot.start()
        await mal.connect()
        cid = await mal.create_conversation([botc.username])
        eid = await mal.send_text(cid, "/hang")
        await bot.wait_handled(eid, WAIT)
        assert calls == [eid, eid] and bot.failures == 1
    finally:
        await botc.close()
        await mal.close()
