"""``saltline chat``, ``send``, ``messages`` and ``follow``."""

from __future__ import annotations

import asyncio
import mimetypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from saltline.client_sdk.cli.app import (
    IDS_MAY_START_WITH_DASH,
    app,
    chat_app,
    cli_state,
    err,
    fail,
    format_time,
    open_client,
    out,
    run,
)
from saltline.client_sdk.cli.files import attachment_label, message_pointer

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client

# -- conversations ------------------------------------------------------------------------------


@chat_app.command("start")
def chat_start(ctx: typer.Context, usernames: list[str]) -> None:
    """Start a conversation with these people; prints its id."""
    state = cli_state(ctx)

    async def work() -> str:
        async with open_client(state) as client:
            return await client.create_conversation(usernames)

    out.print(run(work()))


@chat_app.command("list")
def chat_list(ctx: typer.Context) -> None:
    """The conversations this device knows."""
    state = cli_state(ctx)

    async def work() -> list[tuple[str, str, str]]:
        async with open_client(state) as client:
            names = {c.account_id: c.username for c in client.store.device_lists.contacts()}
            return [
                (c.conversation_id, c.kind, ", ".join(names.get(m, m) for m in c.members))
                for c in client.store.conversations.conversations()
            ]

    table = Table("conversation id", "kind", "members")
    for row in run(work()):
        table.add_row(*row)
    out.print(table)


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def send(
    ctx: typer.Context,
    conversation_id: str,
    text: Annotated[str | None, typer.Argument(help="The message (with --file: its caption)")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Send this file (encrypted, uploaded resumably)")
    ] = None,
    caption: Annotated[str | None, typer.Option("--caption", help="The file's caption")] = None,
) -> None:
    """Encrypt TEXT (or --file PATH) for every device of the conversation's members and send it."""
    state = cli_state(ctx)
    if file is None and text is None:
        raise typer.BadParameter("give the message TEXT, or --file PATH", param_hint="TEXT")
    if file is not None and not file.is_file():
        fail(f"no such file: {file}")

    async def work() -> tuple[str, str]:
        async with open_client(state) as client:
            if file is not None:
                await client.resume_uploads()  # an earlier upload a crash interrupted
                mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                envelope_id = await client.send_file(
                    conversation_id, file, mime=mime.lower(), caption=caption if caption is not None else text
                )
            else:
                assert text is not None
                envelope_id = await client.send_text(conversation_id, text)
            record = client.store.conversations.get_message(envelope_id)
            return envelope_id, record.status if record is not None else "pending"

    envelope_id, status = run(work())
    if status == "pending":
        out.print(f"queued {envelope_id} in the outbox (server unreachable); it is sent on the next command")
    else:
        out.print(f"sent {envelope_id}")


def _names(client: Client) -> dict[str, str]:
    return {c.account_id: c.username for c in client.store.device_lists.contacts()}


def _sender(client: Client, account_id: str, device_id: str, names: dict[str, str]) -> str:
    if account_id == client.account_id:
        return "me" if device_id == client.device_id else f"me (device {device_id[:8]})"
    return names.get(account_id, account_id)


async def _sync(client: Client, wait_s: float) -> None:
    """Connect and wait until the server says this device's queue is drained."""
    from saltline.client_sdk.core.events import Drained

    await client.connect()
    await client.next_event(Drained, wait_s)


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def messages(
    ctx: typer.Context,
    conversation_id: str,
    limit: Annotated[int, typer.Option(help="At most this many (the latest)")] = 50,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new messages first")] = False,
) -> None:
    """Show a conversation's messages (after fetching what is waiting on the server)."""
    state = cli_state(ctx)

    async def work() -> list[tuple[str, str, str]]:
        async with open_client(state) as client:
            if not offline:
                await _sync(client, 20.0)
            await client.conversation(conversation_id)
            names = _names(client)
            rows = [
                (
                    format_time(m.sent_at_ms),
                    _sender(client, m.sender_account_id, m.sender_device_id, names),
                    m.text + escape(attachment_label(message_pointer(m))),
                )
                for m in client.messages(conversation_id)
            ]
            return rows[-limit:]

    for when, who, text in run(work()):
        out.print(f"[dim]{when}[/] [bold]{who}[/]: {text}", markup=True)


@app.command()
def follow(
    ctx: typer.Context,
    seconds: Annotated[
        float | None, typer.Option("--for", help="Stop after this many seconds (default: until Ctrl-C)")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="CONVERSATION_ID",
            help="Also send every line read from stdin to this conversation (follow and send in one process)",
        ),
    ] = None,
) -> None:
    """Print incoming messages live until Ctrl-C; with --to, also send the lines typed on stdin."""
    from saltline.client_sdk.core import events as ev
    from saltline.client_sdk.errors import SaltlineError

    state = cli_state(ctx)

    async def typed(client: Client, conversation_id: str) -> None:
        """Send each stdin line (empty lines skipped) until end of input; errors are reported and
        the line stays in the outbox when it was written there."""
        import threading

        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:  # a daemon thread: a blocked read never keeps the process alive
            try:
                for line in sys.stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, "")
            except RuntimeError:  # the loop closed: the command is over
                return

        threading.Thread(target=read, name="saltline-stdin", daemon=True).start()
        while True:
            line = await lines.get()
            if not line:
                return
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                envelope_id = await client.send_text(conversation_id, text)
            except SaltlineError as exc:
                err.print(f"error: {exc}")
                continue
            err.print(f"sent {envelope_id}")

    async def work() -> None:
        async with open_client(state) as client:
            await client.connect()
            err.print(f"following as {client.username} (Ctrl-C to stop)")
            if to is not None:
                await client.conversation(to)  # an unknown conversation fails here, before any typing
                reader = asyncio.create_task(typed(client, to))

            async def show() -> None:
                async for event in client.events():
                    if isinstance(event, ev.MessageReceived):
                        if event.sent_by_me:
                            who = f"me (device {event.sender_device_id[:8]})"
                        else:
                            who = event.sender_username or event.sender_account_id
                        out.print(
                            f"[dim]{event.conversation_id[:8]}[/] [bold]{who}[/]: {escape(event.text)}"
                            + escape(attachment_label(event.attachment)),
                            markup=True,
                        )
                    elif isinstance(event, ev.DeviceListChanged):
                        err.print(
                            f"{event.username}: devices added {list(event.added)}, removed "
                            f"{list(event.removed)}"
                        )
                    elif isinstance(event, ev.IdentityChanged):
                        err.print(
                            f"warning: the account key of {event.username} changed; compare "
                            f"safety numbers (saltline safety-number {event.username})"
                        )
                    elif isinstance(event, ev.DecryptionFailed):
                        err.print(f"warning: dropped a message that could not be decrypted: {event.reason}")

            try:
                await asyncio.wait_for(show(), seconds)
            except TimeoutError:
                pass
            finally:
                if to is not None:
                    reader.cancel()

    try:
        run(work())
    except KeyboardInterrupt:
        err.print("stopped")
