"""The ``saltline`` Typer application and what every command shares: the command groups, the
consoles, the per-invocation state (profile, server), running SDK work with one-line errors, and
opening the profile's client. The commands are in :mod:`saltline.client_sdk.cli.accounts`,
:mod:`saltline.client_sdk.cli.messaging` and :mod:`saltline.client_sdk.cli.trust`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from saltline.client_sdk.cli.profile import DEFAULT_SERVER, Profile
from saltline.client_sdk.errors import AuthError, SaltlineError, UsageError

if TYPE_CHECKING:
    from saltline.client_sdk.client import Client

T = TypeVar("T")

app = typer.Typer(help="Saltline: end-to-end encrypted messaging", no_args_is_help=True, add_completion=False)
account_app = typer.Typer(help="Accounts", no_args_is_help=True)
link_app = typer.Typer(help="Link this profile to an account as a new device", no_args_is_help=True)
devices_app = typer.Typer(help="The devices of this account", no_args_is_help=True)
chat_app = typer.Typer(help="Conversations", no_args_is_help=True)
members_app = typer.Typer(help="The members of a group", no_args_is_help=True)
profile_app = typer.Typer(help="This machine's profiles (devices)", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(link_app, name="link")
app.add_typer(devices_app, name="devices")
app.add_typer(chat_app, name="chat")
app.add_typer(members_app, name="members")
app.add_typer(profile_app, name="profile")

#: Exit codes: 0 done; 1 an error (one line on stderr; with --json also a document on stdout);
#: 2 a usage error (click); 3 the server refuses this device as removed (remembered, and discarded by
#: `saltline profile unlink`, only when a verified device list proves it).
EXIT_ERROR = 1
EXIT_REMOVED = 3
#: The server's problem codes that mean this device is no longer part of its account.
REMOVED_CODES = ("device_not_active", "token_revoked")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

#: Click context settings of commands whose arguments go to another program unread.
_PASSTHROUGH: dict[str, Any] = {"allow_extra_args": True, "ignore_unknown_options": True}


# -- server commands (delegated) ----------------------------------------------------------------


def _exec_server(args: list[str]) -> None:
    missing = [m for m in ("fastapi", "sqlalchemy", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        err.print(
            "The relay server is not installed here (missing: " + ", ".join(missing) + "). "
            "Install it with: pip install 'saltline[server]'",
            markup=False,
        )
        raise typer.Exit(2)
    argv = [sys.executable, "-m", "saltline.server", *args]
    os.execv(sys.executable, argv)  # noqa: S606 - runs this interpreter on our own module


# Ids are unpadded base64url and may begin with "-": without this, click would read such an id
# (e.g. "-VPSZ...") as an unknown option. Commands that take ids treat unknown options as arguments.
IDS_MAY_START_WITH_DASH = {"ignore_unknown_options": True}


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Run the relay server (see `saltline serve --help`)."""
    _exec_server(["serve", *ctx.args])


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
def db(ctx: typer.Context) -> None:
    """Database migrations: `saltline db upgrade|downgrade|current`."""
    _exec_server(["db", *ctx.args])


@dataclass
class State:
    profile: Profile
    server: str | None
    json: bool = False


def cli_state(ctx: typer.Context) -> State:
    state = ctx.find_object(State)
    assert state is not None
    return state


@app.callback()
def _main(
    ctx: typer.Context,
    profile: Annotated[
        str, typer.Option("--profile", "-p", envvar="SALTLINE_PROFILE", help="Device profile to use")
    ] = "default",
    server: Annotated[
        str | None,
        typer.Option("--server", help=f"Server URL, remembered in the profile (default {DEFAULT_SERVER})"),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            envvar="SALTLINE_JSON",
            help="Machine-readable output on stdout: one JSON document (for `follow`, one object per "
            "line); see docs/cli-json.schema.json",
        ),
    ] = False,
) -> None:
    """Saltline: end-to-end encrypted messaging. Each --profile is one device with its own encrypted
    store in $SALTLINE_HOME/profiles/NAME (default ~/.saltline)."""
    global _json_mode
    _json_mode = as_json
    # with --json, stdout carries only JSON: what is said to the person goes to stderr
    out.file = sys.stderr if as_json else None  # type: ignore[assignment]
    try:
        ctx.obj = State(Profile.named(profile), server, as_json)
    except SaltlineError as exc:
        fail(str(exc))


# -- running SDK work ---------------------------------------------------------------------------


_json_mode = False


def json_mode() -> bool:
    return _json_mode


def emit(document: dict[str, Any]) -> None:
    """Write one JSON document (one line) to stdout; ASCII only, so that no character of a peer's
    text (U+2028, U+0085, ...) splits the line for a reader that splits on more than ``\\n``."""
    sys.stdout.write(json.dumps(document, ensure_ascii=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(message: str, *, kind: str = "error", code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr (with --json also ``{"error": {...}}`` on stdout); exit ``code``."""
    from saltline.client_sdk.cli.render import safe

    err.print(f"[bold red]error:[/] {escape(safe(message))}", markup=True)
    if _json_mode:
        emit({"error": {"type": kind, "message": message, "exit_code": code}})
    raise typer.Exit(code)


class DeviceRemovedError(UsageError):
    """This profile's device was removed from its account (exit code 3)."""


class DeviceRefusedError(UsageError):
    """The server refuses this device, but no verified device list proves it was removed (exit
    code 3; nothing is remembered: the next command asks the server again)."""


def refused_message(profile: Profile) -> str:
    return (
        "the server refuses this device (not proven removed; check `saltline devices list` on another "
        f"device; if it was removed: `saltline --profile {profile.name} profile unlink --force`)"
    )


async def removal_proof(client: Client) -> int | None:
    """The version of a verified device list of this account that leaves this device out, if this
    device holds one: the account's list is refreshed (fetched and checked against the pinned
    chain, as `devices list` does) when the server still answers, else the stored verified list is
    used. None: no proof (the server's word alone proves nothing)."""
    from saltline.client_sdk.core import trust
    from saltline.crypto.errors import CryptoError
    from saltline.crypto.keys import b64encode

    account_id = client.account_id
    try:
        await client.contacts.refresh(account_id)
    except SaltlineError:
        pass  # the server refuses this device: what it verified before is all there is
    contact = client.store.device_lists.get_contact(account_id)
    if contact is None:
        return None
    try:
        content = trust.verified_content(contact.account_key, contact.signed_list)
    except (SaltlineError, CryptoError):
        return None
    if any(b64encode(d.device_id) == client.device_id for d in content.devices):
        return None
    return content.version


async def refused(client: Client, profile: Profile, reason: str) -> NoReturn:
    """The server refused this device: remember it as removed only with proof; raise either way."""
    proof = await removal_proof(client)
    if proof is None:
        raise DeviceRefusedError(refused_message(profile))
    profile.mark_removed(reason, proof)
    raise DeviceRemovedError(removed_message(profile))


def removed_message(profile: Profile) -> str:
    return (
        f"this device (profile {profile.name!r}) was removed from its account: run `saltline --profile "
        f"{profile.name} profile unlink` to discard it, then `saltline --profile {profile.name} link show` "
        "to link it again"
    )


def run(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with SDK errors as one line and exit code 1 (3: the device was removed)."""
    try:
        return asyncio.run(work)
    except (DeviceRemovedError, DeviceRefusedError) as exc:
        fail(str(exc), kind="device_removed", code=EXIT_REMOVED)
    except SaltlineError as exc:
        fail(str(exc), kind=type(exc).__name__)
    except TimeoutError:
        fail("timed out", kind="timeout")
    raise AssertionError("unreachable")


@asynccontextmanager
async def open_client(state: State, *, need_account: bool = True) -> AsyncIterator[Client]:
    from saltline.client_sdk.client import Client
    from saltline.client_sdk.stores.sqlite import SqliteStore

    profile = state.profile
    if profile.removed() is not None:
        raise DeviceRemovedError(removed_message(profile))
    if need_account and not profile.exists():
        raise UsageError(
            f"profile {profile.name!r} has no device yet: run `saltline --profile {profile.name} "
            "account create USERNAME` or `... link show`"
        )
    url = profile.server_url(state.server)
    store = SqliteStore.open(profile.store_path, key=profile.store_key())
    try:
        client = await Client.create(url, store)
    except BaseException:
        store.close()
        raise
    client.attachments.spool_dir = profile.directory / "spool"  # encrypted pieces awaiting upload
    try:
        device = client.store.identity.get_device()
        if need_account and (device is None or device.account_id is None):
            raise UsageError(
                f"profile {profile.name!r} has no account yet: run `saltline --profile {profile.name} "
                "account create USERNAME` or `... link show`"
            )
        try:
            yield client
        except AuthError as exc:
            if exc.code not in REMOVED_CODES:
                raise
            await refused(client, profile, str(exc))
    finally:
        await client.close()
        store.close()


def read_password(stdin: bool, *, confirm: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not password:
        fail("the password is empty")
    return password


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin")
]


def format_time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
