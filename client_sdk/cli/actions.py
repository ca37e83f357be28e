"""What is done to a message or a conversation: ``reply``, ``edit``, ``delete``, ``react``,
``unreact``, ``read``, ``title``, ``mute``, ``timer``, ``members list|add|remove`` and ``leave``.

A message is named by the REF that ``messages`` and ``follow`` print (``Ab3_x-.7``: the start of
its device id and its number; the whole reference works too), looked up in every conversation of
this device. Each command writes the operation to the outbox and reports it as ``send`` does
(sent, queued or failed; never "sent" for what the server did not store)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from saltline.client_sdk.cli.app import (
    IDS_MAY_START_WITH_DASH,
    app,
    cli_state,
    emit,
    members_app,
    open_client,
    out,
    run,
)
from saltline.client_sdk.cli.messaging import Sent, report_sent, sent_outcome, sync_now
from saltline.client_sdk.cli.render import conversation_doc, duration, ref_matches, shown
from saltline.client_sdk.errors import UsageError

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client
    from saltline.client_sdk.facets.timeline import TimelineMessage


async def find_message(client: Client, given: str) -> TimelineMessage:
    """The message ``given`` names (a REF as printed, a whole reference or an envelope id) in this
    device's conversations, after fetching what waits on the server if it is not here yet;
    :class:`UsageError` when none or several match."""
    found = await _matching(client, given)
    if not found:
        await sync_now(client)
        found = await _matching(client, given)
    if not found:
        raise UsageError(f"no message {given!r} on this device (REF as `saltline messages` prints it)")
    if len(found) > 1:
        raise UsageError(f"{given!r} names {len(found)} messages: give the whole reference")
    return next(iter(found.values()))


async def _matching(client: Client, given: str) -> dict[str, TimelineMessage]:
    found: dict[str, TimelineMessage] = {}
    for summary in client.conversations():
        for m in await client.timeline(summary.conversation_id, limit=100_000):
            if m.ref is not None and (ref_matches(given, m.ref) or m.envelope_id == given):
                found[m.ref] = m
    return found


def _on_message(
    ctx: typer.Context, given: str, act: Callable[[Client, TimelineMessage], Awaitable[str]], verb: str
) -> None:
    state = cli_state(ctx)

    async def work() -> Sent:
        async with open_client(state) as client:
            target = await find_message(client, given)
            assert target.ref is not None
            envelope_id = await act(client, target)
            return await sent_outcome(client, target.conversation_id, envelope_id)

    report_sent(state, run(work()), verb)


def _on_conversation(
    ctx: typer.Context, act: Callable[[Client], Awaitable[str]], cid: str, verb: str
) -> None:
    state = cli_state(ctx)

    async def work() -> Sent:
        async with open_client(state) as client:
            await client.conversation(cid)  # an unknown conversation fails here
            return await sent_outcome(client, cid, await act(client))

    report_sent(state, run(work()), verb)


# -- messages -------------------------------------------------------------------------------------


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def reply(ctx: typer.Context, ref: str, text: str) -> None:
    """Reply to the message REF (in its conversation) with TEXT."""

    async def act(client: Client, m: TimelineMessage) -> str:
        assert m.ref is not None
        return await client.reply(m.conversation_id, m.ref, text)

    _on_message(ctx, ref, act, "sent")


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def edit(ctx: typer.Context, ref: str, text: str) -> None:
    """Replace the text of your message REF with TEXT (on every device; shown as edited)."""

    async def act(client: Client, m: TimelineMessage) -> str:
        assert m.ref is not None
        if not m.sent_by_me:
            raise UsageError("only your own messages can be edited")
        if m.deleted:
            raise UsageError("the message was deleted")
        return await client.edit(m.conversation_id, m.ref, text)

    _on_message(ctx, ref, act, "edited")


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def delete(ctx: typer.Context, ref: str) -> None:
    """Delete your message REF for everyone (a tombstone stays; its text is gone)."""

    async def act(client: Client, m: TimelineMessage) -> str:
        assert m.ref is not None
        if not m.sent_by_me:
            raise UsageError("only your own messages can be deleted")
        return await client.delete(m.conversation_id, m.ref)

    _on_message(ctx, ref, act, "deleted")


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def react(ctx: typer.Context, ref: str, emoji: str) -> None:
    """React to the message REF with EMOJI."""

    async def act(client: Client, m: TimelineMessage) -> str:
        assert m.ref is not None
        return await client.react(m.conversation_id, m.ref, emoji)

    _on_message(ctx, ref, act, "reacted")


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def unreact(ctx: typer.Context, ref: str, emoji: str) -> None:
    """Take back your EMOJI reaction to the message REF."""

    async def act(client: Client, m: TimelineMessage) -> str:
        assert m.ref is not None
        return await client.unreact(m.conversation_id, m.ref, emoji)

    _on_message(ctx, ref, act, "unreacted")


# -- conversations --------------------------------------------------------------------------------


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def read(ctx: typer.Context, conversation_id: str) -> None:
    """Mark the conversation read up to its newest message (on all your devices; the others see
    a read receipt)."""
    _on_conversation(ctx, lambda client: client.mark_read(conversation_id), conversation_id, "marked read")


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def title(
    ctx: typer.Context,
    conversation_id: str,
    text: Annotated[str | None, typer.Argument(help="The new title (omit with --clear)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the title")] = False,
) -> None:
    """Set (or --clear) the conversation's title, for every member."""
    if (text is None) == (not clear):
        raise typer.BadParameter("give the TEXT, or --clear", param_hint="TEXT")
    value = None if clear else text
    _on_conversation(
        ctx, lambda client: client.set_title(conversation_id, value), conversation_id, "title set"
    )


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def mute(
    ctx: typer.Context,
    conversation_id: str,
    off: Annotated[bool, typer.Option("--off", help="Unmute")] = False,
) -> None:
    """Mute the conversation on all your devices (--off: unmute)."""
    _on_conversation(
        ctx,
        lambda client: client.set_mute(conversation_id, not off),
        conversation_id,
        "unmuted" if off else "muted",
    )


_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> int | None:
    """``off``/``0`` (None) or a number of seconds, with an optional unit s, m, h or d."""
    value = value.strip().lower()
    if value in ("off", "0"):
        return None
    match = _DURATION.fullmatch(value)
    if match is None or int(match.group(1)) == 0:
        raise typer.BadParameter("a duration such as 30, 90s, 5m, 12h, 7d, or off", param_hint="DURATION")
    return int(match.group(1)) * _UNITS[match.group(2)] * 1000


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def timer(
    ctx: typer.Context,
    conversation_id: str,
    duration_text: Annotated[str, typer.Argument(metavar="DURATION", help="30, 90s, 5m, 12h, 7d, or off")],
) -> None:
    """Disappearing messages: those sent from now on disappear DURATION after they were sent, on
    every device (off: never)."""
    ms = parse_duration(duration_text)
    _on_conversation(
        ctx,
        lambda client: client.set_disappearing_timer(conversation_id, ms),
        conversation_id,
        f"disappearing messages {duration(ms)}:",
    )


@app.command(context_settings=IDS_MAY_START_WITH_DASH)
def leave(ctx: typer.Context, conversation_id: str) -> None:
    """Leave the group (you receive nothing of it afterwards)."""
    _on_conversation(ctx, lambda client: client.leave(conversation_id), conversation_id, "left")


# -- members --------------------------------------------------------------------------------------


@members_app.command("list", context_settings=IDS_MAY_START_WITH_DASH)
def members_list(
    ctx: typer.Context,
    conversation_id: str,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new operations first")] = False,
) -> None:
    """The conversation's members (the membership every member's device checked) and admins."""
    state = cli_state(ctx)

    async def work() -> dict[str, object]:
        async with open_client(state) as client:
            if not offline:
                await sync_now(client)
            await client.conversation(conversation_id)
            summary = next(c for c in client.conversations() if c.conversation_id == conversation_id)
            return conversation_doc(summary, client.username_of)

    doc = run(work())
    if state.json:
        emit({"conversation_id": conversation_id, "members": doc["members"]})
        return
    table = Table("username", "account id", "")
    for m in doc["members"]:  # type: ignore[attr-defined]
        table.add_row(shown(m["username"] or "?"), shown(m["account_id"]), "admin" if m["admin"] else "")
    out.print(table)


@members_app.command("add", context_settings=IDS_MAY_START_WITH_DASH)
def members_add(
    ctx: typer.Context,
    conversation_id: str,
    username: str,
    admin: Annotated[bool, typer.Option("--admin", help="As an admin (promotes a member)")] = False,
) -> None:
    """Add USERNAME to the group (admins only); they see the history from the point they join."""
    _on_conversation(
        ctx,
        lambda client: client.add_member(conversation_id, username, admin=admin),
        conversation_id,
        "added",
    )


@members_app.command("remove", context_settings=IDS_MAY_START_WITH_DASH)
def members_remove(ctx: typer.Context, conversation_id: str, username: str) -> None:
    """Remove USERNAME from the group (admins only)."""
    _on_conversation(
        ctx, lambda client: client.remove_member(conversation_id, username), conversation_id, "removed"
    )
