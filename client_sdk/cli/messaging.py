"""``saltline chat``, ``send``, ``messages`` and ``follow``."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from saltline.client_sdk.cli.app import (
    EXIT_REMOVED,
    IDS_MAY_START_WITH_DASH,
    REMOVED_CODES,
    State,
    app,
    chat_app,
    cli_state,
    emit,
    err,
    fail,
    open_client,
    out,
    refused_message,
    removal_proof,
    removed_message,
    run,
)
from saltline.client_sdk.cli.render import (
    conversation_doc,
    duration,
    event_doc,
    event_line,
    message_doc,
    message_line,
    safe,
    short_ref,
    shown,
)
from saltline.client_sdk.core import events as ev
from saltline.client_sdk.errors import AuthError, SaltlineError

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

    cid = run(work())
    if state.json:
        emit({"conversation_id": cid})
    else:
        out.print(cid)


@chat_app.command("list")
def chat_list(
    ctx: typer.Context,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new messages first")] = False,
) -> None:
    """The conversations this device knows (title, members, unread count)."""
    state = cli_state(ctx)

    async def work() -> list[dict[str, Any]]:
        async with open_client(state) as client:
            if not offline:
                await sync_now(client)
            return [conversation_doc(c, client.username_of) for c in client.conversations()]

    docs = run(work())
    if state.json:
        emit({"conversations": docs})
        return
    table = Table("conversation id", "kind", "title", "members", "unread", "")
    for c in docs:
        members = ", ".join(
            (m["username"] or m["account_id"]) + (" (admin)" if m["admin"] and c["kind"] == "group" else "")
            for m in c["members"]
        )
        flags = " ".join(
            f for f in ("muted" if c["muted"] else "", f"timer {duration(c['disappearing_ms'])}"
                        if c["disappearing_ms"] else "") if f
        )  # fmt: skip
        table.add_row(
            c["conversation_id"], c["kind"], shown(c["title"] or ""), shown(members), str(c["unread"]), flags
        )
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

    async def work() -> Sent:
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
            return await sent_outcome(client, conversation_id, envelope_id)

    report_sent(state, run(work()))


@dataclass(frozen=True)
class Sent:
    conversation_id: str
    envelope_id: str
    status: str  # "sent", "pending" (queued: the server was unreachable) or "failed"
    ref: str | None
    reason: str | None = None
    code: str | None = None


async def sent_outcome(client: Client, conversation_id: str, envelope_id: str) -> Sent:
    """What became of an operation just written to the outbox (``client.send_*`` returned)."""
    item = client.store.outbox.get_outbox(envelope_id)
    ref = next(
        (m.ref for m in await client.timeline(conversation_id, 20) if m.envelope_id == envelope_id), None
    )
    if ref is None and item is not None:
        ref = outbox_ref(client, item.body, item.clock)
    if item is None:
        return Sent(conversation_id, envelope_id, "sent", ref)
    if item.failed_reason is None:
        return Sent(conversation_id, envelope_id, "pending", ref)
    if item.failed_code in REMOVED_CODES:  # open_client decides, on proof only, whether it was removed
        raise AuthError(403, item.failed_code, item.failed_reason)
    return Sent(conversation_id, envelope_id, "failed", ref, item.failed_reason, item.failed_code)


def outbox_ref(client: Client, body: bytes, clock: bytes) -> str | None:
    from saltline.client_sdk.core.diff import message_ref
    from saltline.client_sdk.facets.conversations import decode_op

    op = decode_op(body, clock, client.device_id, client.account_id)
    return message_ref(op.dot) if op is not None else None


def report_sent(state: State, sent: Sent, verb: str = "sent") -> None:
    """Say what became of it: sent, queued (sent by a later command) or failed (refused for good;
    exit code 1, or 3 when the device was removed). Never "sent" for what the server did not store."""
    if sent.status == "failed":
        if sent.code in REMOVED_CODES:  # not reached through open_client (which checks for proof)
            fail(refused_message(state.profile), kind="device_removed", code=EXIT_REMOVED)
        fail(f"not sent (refused for good): {sent.reason}", kind="failed")
    if state.json:
        emit(
            {
                "status": sent.status,
                "envelope_id": sent.envelope_id,
                "ref": sent.ref,
                "conversation_id": sent.conversation_id,
            }
        )
    elif sent.status == "pending":
        out.print(
            f"queued {sent.envelope_id} in the outbox (server unreachable); it is sent on the next command",
            markup=False,
        )
    else:
        out.print(
            f"{verb} {sent.envelope_id}" + (f" [{short_ref(sent.ref)}]" if sent.ref else ""), markup=False
        )


async def sync_now(client: Client, wait_s: float = 20.0) -> None:
    """Connect, send what waits in the outbox (now, whatever its back-off: a command is short),
    and wait until the server says this device's queue is drained."""
    from saltline.client_sdk.core.events import Drained

    await client.connect()
    await flush_outbox(client)
    await client.next_event(Drained, wait_s)


async def flush_outbox(client: Client) -> None:
    """Send the outbox now; an item held for the user (a changed identity...) stays, and what
    is refused for good is marked failed (``messages`` shows both)."""
    if client.outbox():
        with contextlib.suppress(SaltlineError):
            await client.flush_outbox()


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def messages(
    ctx: typer.Context,
    conversation_id: str,
    limit: Annotated[int, typer.Option(help="At most this many (the latest)")] = 50,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new messages first")] = False,
) -> None:
    """Show a conversation's messages as they stand now (after fetching what is waiting on the
    server): edits, deletions, replies, reactions, read state, pending and failed sends. [REF] is
    the message's reference for reply, edit, delete and react."""
    state = cli_state(ctx)

    async def work() -> tuple[list[str], dict[str, Any]]:
        async with open_client(state) as client:
            if not offline:
                await sync_now(client)
            summary = next((c for c in client.conversations() if c.conversation_id == conversation_id), None)
            if summary is None:
                await client.conversation(conversation_id)  # fetched (or NotFoundError)
                summary = next(c for c in client.conversations() if c.conversation_id == conversation_id)
            items = await client.timeline(conversation_id, limit)
            quoted = {m.ref: m for m in await client.timeline(conversation_id) if m.ref} if any(
                m.reply_to for m in items
            ) else {}  # fmt: skip
            lines = [message_line(m, client.device_id, client.username_of, quoted) for m in items]
            doc = conversation_doc(summary, client.username_of)
            doc["messages"] = [message_doc(m) for m in items]
            return lines, doc

    lines, doc = run(work())
    if state.json:
        emit(doc)
        return
    for line in lines:
        out.print(line, markup=True)


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
    """Print what happens live until Ctrl-C: new messages, edits, deletions, reactions, read
    markers, settings and members; with --to, also send the lines typed on stdin. Ends (exit code
    3) if this device is removed from its account. With --json: one event object per line."""
    state = cli_state(ctx)
    removed: list[str] = []
    proof: list[int] = []

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
                err.print(f"error: {safe(str(exc))}", markup=False)
                continue
            item = client.store.outbox.get_outbox(envelope_id)
            if item is None:
                err.print(f"sent {envelope_id}")
            elif item.failed_reason is None:
                err.print(f"queued {envelope_id} (pending)")
            # a failed send: OutboxItemFailed is shown (and DeviceRemoved ends the command)

    async def show(client: Client) -> None:
        async for event in client.events():
            if isinstance(event, ev.DeviceRemoved):
                removed.append(event.reason)
                if state.json:
                    emit(event_doc(event))
                return
            if isinstance(event, ev.OutboxItemFailed) and event.code in REMOVED_CODES:
                removed.append(event.reason)
                if state.json:
                    emit(event_doc(event))
                return
            if isinstance(event, ev.MessageReceived):
                items = await client.timeline(event.conversation_id, 200)
                item = next((m for m in items if m.envelope_id == event.envelope_id), None)
                if state.json:
                    emit(event_doc(event, message=message_doc(item) if item is not None else None))
                elif item is not None:
                    quoted = {m.ref: m for m in items if m.ref}
                    line = message_line(item, client.device_id, client.username_of, quoted)
                    out.print(f"[dim]{shown(event.conversation_id[:8])}[/] {line}", markup=True)
                continue
            if state.json:
                emit(event_doc(event))
                continue
            described = event_line(event, client.username_of)
            if described is not None:
                text, to_stdout = described
                (out if to_stdout else err).print(text, markup=True)

    async def work() -> None:
        async with open_client(state) as client:
            await client.connect()
            await flush_outbox(client)
            err.print(f"following as {client.username} (Ctrl-C to stop)")
            reader = None
            if to is not None:
                await client.conversation(to)  # an unknown conversation fails here, before any typing
                reader = asyncio.create_task(typed(client, to))
            try:
                await asyncio.wait_for(show(client), seconds)
            except TimeoutError:
                pass
            finally:
                if reader is not None:
                    reader.cancel()
            if removed:  # the server's word: remembered only with a verified list that proves it
                version = await removal_proof(client)
                if version is not None:
                    proof.append(version)

    try:
        run(work())
    except KeyboardInterrupt:
        err.print("stopped")
        return
    if removed and proof:
        state.profile.mark_removed(removed[0], proof[0])
        fail(removed_message(state.profile), kind="device_removed", code=EXIT_REMOVED)
    if removed:
        fail(refused_message(state.profile), kind="device_removed", code=EXIT_REMOVED)
