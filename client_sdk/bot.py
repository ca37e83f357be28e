"""Bots on the SDK: command handlers and filters on incoming messages, delivered at least once,
with rate-limited replies and a run loop that shuts down cleanly on SIGINT/SIGTERM.

::

    bot = Bot(client)

    @bot.command("echo")
    async def echo(ctx: CommandContext) -> None:
        await ctx.reply(ctx.args or "(nothing to echo)")

    @bot.on_message(lambda m: "ping" in m.text)
    async def pong(ctx: MessageContext) -> None:
        await ctx.reply("pong")

    await bot.run()          # until SIGINT/SIGTERM (or bot.stop()); then the client is closed

Delivery: the bot registers an ``at_least_once`` callback (:meth:`Client.on`) that queues
each message for its conversation and returns at once; one task per conversation runs the
handlers in order, so a slow or rate-limited conversation never holds up another one. A message
counts as handled (settled in the client's handler inbox) only once every matching handler
returned. A handler that raises or exceeds ``handler_timeout_s`` leaves it pending: it is offered
again after ``retry_delay_s`` (and after a restart or reconnection), up to the client's attempt
limit. A message is never run again while it is queued or once it was handled (the latest
:data:`HANDLED_KEPT`); handlers must still tolerate seeing a message twice after a restart.

Replies go through a token bucket per conversation (:class:`RateLimit`): a burst of
``burst`` replies, then ``per_second``; a reply over the limit waits for its token in its
conversation's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from saltline.client_sdk.core.commands import Command, RateLimit, TokenBuckets, parse_command
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.eventbus import Deferred

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client

log = logging.getLogger("saltline.client_sdk.bot")

#: How many handled messages :attr:`Bot.handled` remembers (for :meth:`Bot.wait_handled`, metrics).
HANDLED_KEPT = 1000

Filter = Callable[[MessageReceived], bool]
H = TypeVar("H", bound=Callable[..., Awaitable[None]])


@dataclass
class MessageContext:
    """What a handler gets: the message, and replies that respect the rate limit."""

    bot: Bot
    message: MessageReceived

    @property
    def client(self) -> Client:
        return self.bot.client

    @property
    def text(self) -> str:
        return self.message.text

    async def reply(self, text: str, *, quote: bool = True) -> str:
        """Send ``text`` to the message's conversation (``quote``: as a reply to it); waits for
        the conversation's rate limit. Returns the envelope id."""
        ref = self.message.message_ref if quote else None
        return await self.bot.send(self.message.conversation_id, text, reply_to=ref)

    async def react(self, emoji: str) -> str:
        await self.bot.limit(self.message.conversation_id)
        return await self.client.react(self.message.conversation_id, self.message.message_ref, emoji)


@dataclass
class CommandContext(MessageContext):
    command: Command = field(default_factory=lambda: Command("", "", ()))

    @property
    def args(self) -> str:
        """The text after the command (leading blanks removed)."""
        return self.command.args

    @property
    def argv(self) -> tuple[str, ...]:
        return self.command.argv


@dataclass(frozen=True)
class _Handler:
    fn: Callable[[Any], Awaitable[None]]
    command: str | None = None
    filter: Filter | None = None


class Bot:
    """Handlers on one client. ``prefix``: what starts a command (``/echo hi``); ``rate``: the
    reply limit per conversation; ``retry_delay_s``: when a message whose handler raised is
    offered again; ``handler_timeout_s``: how long one handler may run on one message (None: no
    limit; a timeout is a failure); ``answer_own``: also handle messages of this account's devices (off: a bot
    never answers itself); ``clock``/``sleep``: injectable for tests."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "/",
        rate: RateLimit | None = None,
        retry_delay_s: float = 2.0,
        handler_timeout_s: float | None = 60.0,
        answer_own: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise UsageError("a command prefix is one or more non-blank characters")
        self.client = client
        self.prefix = prefix
        self.buckets = TokenBuckets(rate or RateLimit(), clock)
        self.retry_delay_s = retry_delay_s
        self.handler_timeout_s = handler_timeout_s
        self.answer_own = answer_own
        self._sleep = sleep
        self._handlers: list[_Handler] = []
        self._queued: set[str] = set()  # envelope ids queued or running
        self._queues: dict[str, deque[MessageReceived]] = {}  # conversation id -> messages
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._retry_due = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Event | None = None
        self._started = False
        #: the envelope ids of the latest messages handled (every matching handler returned)
        self.handled: deque[str] = deque(maxlen=HANDLED_KEPT)
        self.failures = 0
        self._progress = asyncio.Condition()

    # -- registration ---------------------------------------------------------------------------------

    def command(self, name: str) -> Callable[[H], H]:
        """Register ``handler(ctx: CommandContext)`` for ``<prefix><name> [args]``."""
        parsed = parse_command(self.prefix + name, self.prefix)
        if parsed is None or parsed.name != name.lower() or parsed.args:
            raise UsageError(f"not a command name: {name!r} (letters, digits and '_', at most 32)")

        def register(fn: H) -> H:
            self._handlers.append(_Handler(fn, command=parsed.name))
            return fn

        return register

    def on_message(self, filter: Filter | None = None) -> Callable[[H], H]:
        """Register ``handler(ctx: MessageContext)`` for every message ``filter`` accepts (all
        messages without one), commands included."""

        def register(fn: H) -> H:
            self._handlers.append(_Handler(fn, filter=filter))
            return fn

        return register

    # -- sending ---------------------------------------------------------------------------------------

    async def limit(self, conversation_id: str) -> None:
        """Wait until the conversation's bucket has a token, and take it."""
        while (wait := self.buckets.take(conversation_id)) > 0:
            await self._sleep(wait)

    async def send(self, conversation_id: str, text: str, *, reply_to: str | None = None) -> str:
        await self.limit(conversation_id)
        if reply_to is not None:
            return await self.client.reply(conversation_id, reply_to, text)
        return await self.client.send_text(conversation_id, text)

    # -- delivery --------------------------------------------------------------------------------------

    def _matching(self, event: MessageReceived) -> Iterable[tuple[_Handler, MessageContext]]:
        command = parse_command(event.text, self.prefix)
        for h in self._handlers:
            if h.command is not None:
                if command is not None and command.name == h.command:
                    yield h, CommandContext(self, event, command)
            elif h.filter is None or h.filter(event):
                yield h, MessageContext(self, event)

    async def _on_message(self, event: MessageReceived) -> None:
        """The ``at_least_once`` callback: queue the message for its conversation's task and
        return at once (:class:`Deferred`: the task settles it when its handlers finished)."""
        if event.sent_by_me and not self.answer_own:
            return
        eid = event.envelope_id
        if eid in self.handled:
            return  # offered again after it was handled: settled, never run twice
        if eid in self._queued:
            raise Deferred(eid)  # offered again while queued or running: that run settles it
        self._queued.add(eid)
        cid = event.conversation_id
        self._queues.setdefault(cid, deque()).append(event)
        if cid not in self._workers:
            task = asyncio.get_running_loop().create_task(self._work(cid))
            self._workers[cid] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        raise Deferred(eid)

    async def _work(self, cid: str) -> None:
        queue = self._queues[cid]
        try:
            while queue:
                event = queue[0]
                try:
                    await self._handle(event)
                finally:
                    queue.popleft()
                    self._queued.discard(event.envelope_id)
        finally:  # done, or cancelled at shutdown (what is left stays pending in the inbox)
            del self._workers[cid]
            del self._queues[cid]
            for left in queue:
                self._queued.discard(left.envelope_id)

    async def _handle(self, event: MessageReceived) -> None:
        settle = self.client.inbound.handlers.settle
        try:
            for handler, ctx in list(self._matching(event)):
                await asyncio.wait_for(handler.fn(ctx), self.handler_timeout_s)
        except Exception:
            log.exception("handler failed on message %s", event.envelope_id)
            self.failures += 1
            settle(event, "failed")  # not handled: offered again
            self._schedule_retry()
            return
        self.handled.append(event.envelope_id)
        settle(event, "ok")
        async with self._progress:
            self._progress.notify_all()

    async def wait_handled(self, envelope_id: str, wait_s: float = 10.0) -> None:
        """Wait until the message ``envelope_id`` was handled (:class:`TimeoutError`)."""

        async def handled() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: envelope_id in self.handled)

        await asyncio.wait_for(handled(), wait_s)

    def _schedule_retry(self) -> None:
        if not self._retry_due:
            self._retry_due = True
            task = asyncio.get_running_loop().create_task(self._redeliver())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _redeliver(self) -> None:
        await self._sleep(self.retry_delay_s)
        self._retry_due = False  # a failure during this redelivery schedules the next one
        try:
            await self.client.inbound.redeliver_unhandled()
        finally:
            await self.client.inbound.ctx.flush()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the handlers' callback and connect (idempotent). Messages left unhandled by
        an earlier run are offered again once the socket is ready."""
        if not self._started:
            self._started = True
            self.client.on(MessageReceived, self._on_message, at_least_once=True)
        await self.client.connect()

    def stop(self) -> None:
        """Make :meth:`run` return (what SIGINT and SIGTERM do)."""
        if self._stop is not None:
            self._stop.set()

    async def run(
        self,
        *,
        signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
        close: bool = True,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        """Start, then serve until :meth:`stop` or one of ``signals``; then shut down cleanly:
        the retry timer stops, handlers still running are cancelled (their messages stay pending,
        offered again on the next start), and (``close``) the client closes (unsent replies stay
        in the outbox, sent on the next start) and a store that can be closed is closed.
        ``on_ready()`` is called once the signals are handled and the socket is up."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        installed: list[signal.Signals] = []
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        try:
            await self.start()
            if on_ready is not None:
                on_ready()
            await self._stop.wait()
            log.info("bot stopping")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            for task in list(self._tasks):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            if close:
                await self.client.close()
                closer = getattr(self.client.store, "close", None)
                if callable(closer):
                    closer()


async def run_forever(client: Client, bot: Bot | None = None) -> None:
    """Serve ``client`` (with ``bot``'s handlers, or none: events only) until SIGINT/SIGTERM,
    then close it cleanly."""
    await (bot or Bot(client)).run()


__all__ = ["Bot", "Command", "CommandContext", "Filter", "MessageContext", "RateLimit", "run_forever"]
