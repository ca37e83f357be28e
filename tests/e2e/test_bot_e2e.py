"""The bot layer against a real server: a bot answers /echo (as a reply, with usernames and
message refs in the events), a handler that raises is offered the message again until it
returns, and SIGTERM shuts the bot down cleanly (client closed, store released)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from saltline.client_sdk.bot import Bot, CommandContext, MessageContext
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
