"""``saltline contacts``, ``safety-number`` and ``verify``; ``demo``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from saltline.client_sdk.cli.app import (
    app,
    cli_state,
    emit,
    fail,
    json_mode,
    open_client,
    out,
    run,
)
from saltline.client_sdk.cli.render import contact_doc, shown
from saltline.client_sdk.errors import SaltlineError

# -- trust --------------------------------------------------------------------------------------


@app.command("safety-number")
def safety_number(ctx: typer.Context, username: str) -> None:
    """Show the safety number you share with USERNAME (compare it with theirs)."""
    state = cli_state(ctx)

    async def work() -> str:
        async with open_client(state) as client:
            return (await client.safety_number(username)).display()

    number = run(work())
    if state.json:
        emit({"username": username, "safety_number": number})
    else:
        out.print(number)


@app.command()
def contacts(ctx: typer.Context) -> None:
    """The people this device knows, each verified (safety numbers compared), unverified, or
    changed (their account key changed: compare safety numbers again, then `saltline verify`)."""
    state = cli_state(ctx)

    async def work() -> list[dict[str, str]]:
        async with open_client(state) as client:
            records = client.store.device_lists.contacts()
            return [contact_doc(c) for c in records if c.account_id != client.account_id]

    docs = sorted(run(work()), key=lambda d: d["username"])
    if state.json:
        emit({"contacts": docs})
        return
    table = Table("username", "account id", "status", "policy")
    style = {"verified": "green", "unverified": "", "changed": "bold red"}
    for d in docs:
        status = f"[{style[d['status']]}]{d['status']}[/]" if style[d["status"]] else d["status"]
        table.add_row(shown(d["username"]), shown(d["account_id"]), status, d["trust_policy"])
    out.print(table)


@app.command()
def verify(
    ctx: typer.Context,
    username: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask: the numbers were compared")] = False,
) -> None:
    """Mark USERNAME verified after comparing safety numbers (also accepts a changed key)."""
    state = cli_state(ctx)

    async def number() -> str:
        async with open_client(state) as client:
            return (await client.safety_number(username)).display()

    number_text = run(number())
    out.print(f"safety number with {username}:\n{number_text}")
    if not yes and not typer.confirm(f"Does {username} see the same number?", default=False, err=state.json):
        fail("not verified")

    async def work() -> None:
        async with open_client(state) as client:
            await client.verify_contact(username)

    run(work())
    if state.json:
        emit({"username": username, "safety_number": number_text, "status": "verified"})
    else:
        out.print(f"{username} is verified")


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary server directory")] = False,
) -> None:
    """Start a throw-away server and play alice (desktop + phone) and bob talking through it."""
    from saltline.client_sdk.demo import run_demo

    try:
        ok = run_demo(out, keep=keep)
    except SaltlineError as exc:
        fail(str(exc))
    if json_mode():
        emit({"ok": ok})
    raise typer.Exit(0 if ok else 1)
