"""``saltline account``, ``login``, ``link`` and ``devices``."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from saltline.client_sdk.cli.app import (
    IDS_MAY_START_WITH_DASH,
    PasswordStdin,
    account_app,
    app,
    cli_state,
    devices_app,
    emit,
    fail,
    format_time,
    link_app,
    open_client,
    out,
    profile_app,
    read_password,
    run,
)
from saltline.client_sdk.cli.render import safe, shown
from saltline.client_sdk.errors import UsageError

if TYPE_CHECKING:
    from saltline.client_sdk.client import DeviceInfo, LinkConfirmation, LinkRequest
    from saltline.client_sdk.facets.linking import HistoryDepth

# -- accounts -----------------------------------------------------------------------------------

#: The server's rule for a new account's password (it refuses others with 422 password_weak).
PASSWORD_MIN, PASSWORD_MAX = 10, 256
PASSWORD_RULE = (
    f"The password needs {PASSWORD_MIN} to {PASSWORD_MAX} characters (a few words make a good one)."
)


@account_app.command("create")
def account_create(ctx: typer.Context, username: str, password_stdin: PasswordStdin = False) -> None:
    """Create an account with this profile as its first device. The password needs 10 to 256
    characters (said before the prompt)."""
    state = cli_state(ctx)
    if not password_stdin:
        out.print(PASSWORD_RULE, markup=False)  # before the first prompt
    password = read_password(password_stdin, confirm=True)
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        fail(f"the password has {len(password)} characters: {PASSWORD_RULE.lower()}", kind="password_weak")

    async def work() -> tuple[str, str, str]:
        async with open_client(state, need_account=False) as client:
            account_id = await client.register(username, password)
            return client.username, account_id, client.device_id

    name, account_id, device_id = run(work())
    if state.json:
        emit({"username": name, "account_id": account_id, "device_id": device_id})
    else:
        out.print(f"created account {name} ({account_id}); this device is {device_id}")


@account_app.command("show")
def account_show(ctx: typer.Context) -> None:
    """Print this profile's account, device and server."""
    state = cli_state(ctx)

    async def work() -> tuple[str, str, str]:
        async with open_client(state) as client:
            return client.username, client.account_id, client.device_id

    name, account_id, device_id = run(work())
    server = state.profile.server_url(state.server)
    if state.json:
        emit(
            {
                "profile": state.profile.name,
                "server": server,
                "username": name,
                "account_id": account_id,
                "device_id": device_id,
            }
        )
        return
    out.print(f"profile   {state.profile.name}\nserver    {server}")
    out.print(f"username  {name}\naccount   {account_id}\ndevice    {device_id}")


@app.command()
def login(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Argument(help="Default: this profile's username")] = None,
    password_stdin: PasswordStdin = False,
    device_key: Annotated[
        bool, typer.Option("--device-key", help="Log in with the device key instead of a password")
    ] = False,
) -> None:
    """Log this device in again (with the account password, or --device-key)."""
    state = cli_state(ctx)
    password = None if device_key else read_password(password_stdin, confirm=False)

    async def work() -> str:
        async with open_client(state) as client:
            await client.login(username, password)
            return client.username

    name = run(work())
    if state.json:
        emit({"username": name})
    else:
        out.print(f"logged in as {name}")


# -- linking ------------------------------------------------------------------------------------


@link_app.command("show")
def link_show(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option("--name", help="This device's name, shown on your other devices (encrypted)")
    ] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for approval")] = 300.0,
    qr: Annotated[bool, typer.Option("--qr/--no-qr", help="Also print the code as a QR code")] = True,
) -> None:
    """New device: print a link code (text and QR), show the confirmation code and the account to
    join once a device of that account answers, then wait until it is approved there."""
    state = cli_state(ctx)
    device_name = name or socket.gethostname()[:64] or "New device"

    def confirm_account(c: LinkConfirmation) -> bool:
        out.print(f"joining account [bold]{shown(c.username)}[/] ({shown(c.account_id)})")
        out.print(f"  account fingerprint: {c.fingerprint}")
        out.print(f"confirmation code: [bold]{c.code}[/]")
        sys.stdout.flush()
        if not typer.confirm(f"Is {safe(c.username)} your account?", default=False, err=state.json):
            return False
        out.print("check that your other device shows the same code, and confirm there")
        sys.stdout.flush()
        return True

    async def work() -> tuple[str, str, str]:
        async with open_client(state, need_account=False) as client:
            code = await client.begin_link(device_name)
            out.print("On a device of your account run:\n")
            out.print(f"  saltline link accept {code}\n")
            if qr:
                import segno

                segno.make(code, error="L").terminal(
                    out=sys.stderr if state.json else sys.stdout, compact=True
                )
            if state.json:
                emit({"link_code": code})
            out.print(f"waiting up to {timeout:g} s for approval...")
            sys.stdout.flush()
            account_id = await client.complete_link(wait_s=timeout, on_code=confirm_account)
            # What was sent while the link was in progress comes in a follow-up bundle.
            await client.finish_link(wait_s=timeout)
            return client.username, account_id, client.device_id

    username, account_id, device_id = run(work())
    if state.json:
        emit({"username": username, "account_id": account_id, "device_id": device_id})
    else:
        out.print(f"linked: this profile is now device {device_id} of {username} ({account_id})")


def _history(value: str | None) -> HistoryDepth:
    if value is None:
        value = typer.prompt("Share history with the new device: all, none, or a number of days")
    value = value.strip().lower()
    if value in ("all", "none"):
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise UsageError("history is 'all', 'none' or a number of days")


@link_app.command("accept")
def link_accept(
    ctx: typer.Context,
    code: str,
    history: Annotated[
        str | None,
        typer.Option(help="History the new device gets: all, none or a number of days (asked if not given)"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new device to join")] = 600.0,
) -> None:
    """Existing device: approve the new device that shows CODE. Shows its name and a confirmation
    code; only after you confirm that the new device shows the same code does it get the account
    key; then waits until it has joined and sends it what arrived meanwhile."""
    state = cli_state(ctx)

    def confirm(request: LinkRequest) -> bool:
        out.print(f"new device: [bold]{shown(request.name)}[/] ({shown(request.device_id)})")
        out.print(f"confirmation code: [bold]{request.code}[/]")
        sys.stdout.flush()
        return typer.confirm(f"Does the new device show {request.code}?", default=False, err=state.json)

    async def work() -> None:
        async with open_client(state) as client:
            depth = _history(history)  # asked once the profile is known to have an account
            await client.approve_link(code, history=depth, confirm=confirm, wait_s=timeout)
            out.print("approved: waiting for the new device to join...")
            sys.stdout.flush()
            await client.finish_link(wait_s=timeout)

    run(work())
    if state.json:
        emit({"status": "linked"})
    else:
        out.print("linked: the new device has joined and has the history")


@devices_app.command("name")
def devices_name(ctx: typer.Context, name: str) -> None:
    """Name this device (shown on your other devices; end-to-end encrypted)."""
    state = cli_state(ctx)

    async def work() -> None:
        async with open_client(state) as client:
            await client.set_device_name(name)

    run(work())
    if state.json:
        emit({"name": name})
    else:
        out.print(f"this device is now named {name!r}", markup=False)


# -- devices ------------------------------------------------------------------------------------


@devices_app.command("list")
def devices_list(ctx: typer.Context) -> None:
    """The account's devices (with their names), from its verified device list."""
    state = cli_state(ctx)

    async def work() -> list[DeviceInfo]:
        async with open_client(state) as client:
            return await client.devices()

    devices = run(work())
    if state.json:
        emit(
            {
                "devices": [
                    {
                        "device_id": d.device_id,
                        "name": d.name,
                        "added_at_ms": d.added_at,
                        "this_device": d.this_device,
                    }
                    for d in devices
                ]
            }
        )
        return
    table = Table("device id", "name", "added", "")
    for d in devices:
        table.add_row(
            shown(d.device_id), shown(d.name), format_time(d.added_at), "this device" if d.this_device else ""
        )
    out.print(table)


@devices_app.command("remove", context_settings=IDS_MAY_START_WITH_DASH)
def devices_remove(ctx: typer.Context, device_id: str) -> None:
    """Remove a device: sign and publish a device list without it."""
    state = cli_state(ctx)

    async def work() -> None:
        async with open_client(state) as client:
            if device_id == client.device_id:
                raise UsageError("this is the device you are using; remove it from another device")
            await client.remove_device(device_id)

    run(work())
    if state.json:
        emit({"removed": device_id})
    else:
        out.print(f"removed device {device_id}")


# -- profiles -----------------------------------------------------------------------------------


@profile_app.command("unlink")
def profile_unlink(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also when the device was not removed (it stays in its account's list)"),
    ] = False,
) -> None:
    """Discard this profile's device (after it was removed from its account) so that `link show`
    can link the profile again. Nothing is deleted: the device's store and key are moved to
    $SALTLINE_HOME/discarded/; the remembered server is kept."""
    state = cli_state(ctx)
    profile = state.profile
    reason = profile.removed()
    if not profile.exists() and reason is None:
        fail(f"profile {profile.name!r} has no device to unlink")
    if reason is None and not force:
        fail(
            f"profile {profile.name!r} is not proven removed from its account (no verified device list "
            "leaves it out): remove it from another device (saltline devices remove ID) first, or give "
            "--force to discard it anyway"
        )
    if not yes and not typer.confirm(
        f"Discard the device of profile {profile.name!r} (keys and messages move to the discarded folder)?",
        default=False,
        err=state.json,
    ):
        fail("not unlinked")
    moved = profile.discard()
    if state.json:
        emit({"profile": profile.name, "moved_to": str(moved) if moved else None})
    else:
        out.print(
            f"profile {profile.name!r} is empty again (the old device is in {moved}); link it with: "
            f"saltline --profile {profile.name} link show",
            markup=False,
        )
