"""``saltline safety-number`` and ``verify``; ``demo``."""

from __future__ import annotations

from typing import Annotated

import typer

from saltline.client_sdk.cli.app import (
    app,
    cli_state,
    fail,
    open_client,
    out,
    run,
)
from saltline.client_sdk.errors import SaltlineError

# -- trust --------------------------------------------------------------------------------------


@app.command("safety-number")
def safety_number(ctx: typer.Context, username: str) -> None:
    """Show the safety number you share with USERNAME (compare it with theirs)."""
    state = cli_state(ctx)

    async def work() -> str:
        async with open_client(state) as client:
            return (await client.safety_number(username)).display()

    out.print(run(work()))


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

    out.print(f"safety number with {username}:\n{run(number())}")
    if not yes and not typer.confirm(f"Does {username} see the same number?", default=False):
        fail("not verified")

    async def work() -> None:
        async with open_client(state) as client:
            await client.verify_contact(username)

    run(work())
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
    raise typer.Exit(0 if ok else 1)
