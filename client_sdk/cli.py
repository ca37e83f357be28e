"""The ``saltline`` command: a terminal client on the SDK, plus the server commands.

Server commands (``serve``, ``db``) are delegated to ``python -m server`` (the SDK never imports the
server package). Every other command opens one *profile*, a device of its own::

    $SALTLINE_HOME/profiles/NAME/        (SALTLINE_HOME defaults to ~/.saltline; directory 0700)
        config.json    {"server": "http://127.0.0.1:8080"}   (set with --server, remembered)
        store.key      32 random bytes, file mode 0600: the key the store is encrypted with
        store.db       the device's SqliteStore (keys, sessions, messages), encrypted at rest

``--profile desktop`` and ``--profile phone`` are two devices on one machine. The store key lives
next to the store, so the encryption at rest protects copies of ``store.db`` (backups, a synced
folder) but not an attacker who can read the whole profile directory as you: an app would keep
the key in the platform keystore instead.

Each command runs its async work in one ``asyncio.run``. Errors of the SDK
(:mod:`client_sdk.errors`) are printed as one line, exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from client_sdk.errors import SaltlineError, UsageError

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8080"
STORE_KEY_SIZE = 32

app = typer.Typer(help="Saltline: end-to-end encrypted messaging", no_args_is_help=True, add_completion=False)
account_app = typer.Typer(help="Accounts", no_args_is_help=True)
link_app = typer.Typer(help="Link this profile to an account as a new device", no_args_is_help=True)
devices_app = typer.Typer(help="The devices of this account", no_args_is_help=True)
chat_app = typer.Typer(help="Conversations", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(link_app, name="link")
app.add_typer(devices_app, name="devices")
app.add_typer(chat_app, name="chat")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

_PASSTHROUGH = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


# -- server commands (delegated) ----------------------------------------------------------------


def _exec_server(args: list[str]) -> None:
    argv = [sys.executable, "-m", "server", *args]
    os.execv(sys.executable, argv)  # noqa: S606 - runs this interpreter on our own module


# Ids are unpadded base64url and may begin with "-": without this, click would read such an id
# (e.g. "-VPSZ...") as an unknown option. Commands that take ids treat unknown options as arguments.
_IDS_MAY_START_WITH_DASH = {"ignore_unknown_options": True}


@app.command(**_PASSTHROUGH)
def serve(ctx: typer.Context) -> None:
    """Run the relay server (see `saltline serve --help`)."""
    _exec_server(["serve", *ctx.args])


@app.command(**_PASSTHROUGH)
def db(ctx: typer.Context) -> None:
    """Database migrations: `saltline db upgrade|downgrade|current`."""
    _exec_server(["db", *ctx.args])


# -- profiles -----------------------------------------------------------------------------------


def saltline_home() -> Path:
    return Path(os.environ.get("SALTLINE_HOME") or "~/.saltline").expanduser()


@dataclass(frozen=True)
class Profile:
    """One device of the CLI: a directory with its config, store key and encrypted store."""

    name: str
    directory: Path

    @classmethod
    def named(cls, name: str) -> Profile:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise UsageError(f"invalid profile name {name!r}: use letters, digits, '-', '_' and '.'")
        return cls(name, saltline_home() / "profiles" / name)

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def key_path(self) -> Path:
        return self.directory / "store.key"

    @property
    def store_path(self) -> Path:
        return self.directory / "store.db"

    def ensure(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def config(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {self.config_path}: {exc}") from exc
        return loaded

    def save_config(self, config: dict[str, Any]) -> None:
        self.ensure()
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.config_path)

    def server_url(self, override: str | None) -> str:
        config = self.config()
        if override:
            url = override.rstrip("/")
            if config.get("server") != url:
                self.save_config({**config, "server": url})
            return url
        return str(config.get("server") or os.environ.get("SALTLINE_SERVER") or DEFAULT_SERVER)

    def store_key(self) -> bytes:
        """The store's key, created (0600, never overwritten) the first time."""
        self.ensure()
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = self.key_path.read_bytes()
            if len(key) != STORE_KEY_SIZE:
                raise UsageError(f"{self.key_path} is not a {STORE_KEY_SIZE}-byte store key") from None
            return key
        key = secrets.token_bytes(STORE_KEY_SIZE)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def exists(self) -> bool:
        return self.store_path.exists()


@dataclass
class State:
    profile: Profile
    server: str | None


def _state(ctx: typer.Context) -> State:
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
) -> None:
    """Saltline: end-to-end encrypted messaging. Each --profile is one device with its own encrypted
    store in $SALTLINE_HOME/profiles/NAME (default ~/.saltline)."""
    try:
        ctx.obj = State(Profile.named(profile), server)
    except SaltlineError as exc:
        _fail(str(exc))


# -- running SDK work ---------------------------------------------------------------------------


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(1)


def _run(work: Awaitable[T]) -> T:
    """``asyncio.run`` with SDK errors as one line and exit code 1."""
    try:
        return asyncio.run(work)  # type: ignore[arg-type]
    except SaltlineError as exc:
        _fail(str(exc))
    except TimeoutError:
        _fail("timed out")
    raise AssertionError("unreachable")


@asynccontextmanager
async def _client(state: State, *, need_account: bool = True) -> Any:
    from client_sdk.client import Client
    from client_sdk.stores.sqlite import SqliteStore

    profile = state.profile
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
    try:
        if need_account and client.store.identity.get_device().account_id is None:  # type: ignore[union-attr]
            raise UsageError(
                f"profile {profile.name!r} has no account yet: run `saltline --profile {profile.name} "
                "account create USERNAME` or `... link show`"
            )
        yield client
    finally:
        await client.close()
        store.close()


def _password(stdin: bool, *, confirm: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not password:
        _fail("the password is empty")
    return password


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin")
]


# -- accounts -----------------------------------------------------------------------------------


@account_app.command("create")
def account_create(ctx: typer.Context, username: str, password_stdin: PasswordStdin = False) -> None:
    """Create an account with this profile as its first device."""
    state = _state(ctx)
    password = _password(password_stdin, confirm=True)

    async def work() -> tuple[str, str, str]:
        async with _client(state, need_account=False) as client:
            account_id = await client.register(username, password)
            return client.username, account_id, client.device_id

    name, account_id, device_id = _run(work())
    out.print(f"created account {name} ({account_id}); this device is {device_id}")


@account_app.command("show")
def account_show(ctx: typer.Context) -> None:
    """Print this profile's account, device and server."""
    state = _state(ctx)

    async def work() -> tuple[str, str, str]:
        async with _client(state) as client:
            return client.username, client.account_id, client.device_id

    name, account_id, device_id = _run(work())
    out.print(f"profile   {state.profile.name}\nserver    {state.profile.server_url(state.server)}")
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
    state = _state(ctx)
    password = None if device_key else _password(password_stdin, confirm=False)

    async def work() -> str:
        async with _client(state) as client:
            await client.login(username, password)
            return client.username

    out.print(f"logged in as {_run(work())}")


# -- linking ------------------------------------------------------------------------------------


@link_app.command("show")
def link_show(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for approval")] = 300.0,
    qr: Annotated[bool, typer.Option("--qr/--no-qr", help="Also print the code as a QR code")] = True,
) -> None:
    """New device: print a link code (text and QR), wait until an existing device accepts it."""
    state = _state(ctx)

    async def work() -> tuple[str, str, str]:
        async with _client(state, need_account=False) as client:
            code = await client.begin_link()
            out.print("On a device of your account run:\n")
            out.print(f"  saltline link accept {code}\n")
            if qr:
                import segno

                segno.make(code, error="L").terminal(out=sys.stdout, compact=True)
            out.print(f"waiting up to {timeout:g} s for approval...")
            sys.stdout.flush()
            account_id = await client.complete_link(wait_s=timeout)
            # What was sent while the link was in progress comes in a follow-up bundle.
            await client.finish_link(wait_s=timeout)
            return client.username, account_id, client.device_id

    name, account_id, device_id = _run(work())
    out.print(f"linked: this profile is now device {device_id} of {name} ({account_id})")


@link_app.command("accept")
def link_accept(
    ctx: typer.Context,
    code: str,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new device to join")] = 600.0,
) -> None:
    """Existing device: approve the new device that shows CODE (it gets the account key), then
    wait until it has joined and send it what arrived meanwhile."""
    state = _state(ctx)

    async def work() -> None:
        async with _client(state) as client:
            await client.approve_link(code)
            out.print("approved: waiting for the new device to join...")
            sys.stdout.flush()
            await client.finish_link(wait_s=timeout)

    _run(work())
    out.print("linked: the new device has joined and has the history")


# -- devices ------------------------------------------------------------------------------------


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


@devices_app.command("list")
def devices_list(ctx: typer.Context) -> None:
    """The account's devices, from its verified device list."""
    state = _state(ctx)

    async def work() -> list[Any]:
        async with _client(state) as client:
            return await client.devices()

    table = Table("device id", "added", "")
    for d in _run(work()):
        table.add_row(d.device_id, _when(d.added_at), "this device" if d.this_device else "")
    out.print(table)


@devices_app.command("remove", context_settings=_IDS_MAY_START_WITH_DASH)
def devices_remove(ctx: typer.Context, device_id: str) -> None:
    """Remove a device: sign and publish a device list without it."""
    state = _state(ctx)

    async def work() -> None:
        async with _client(state) as client:
            if device_id == client.device_id:
                raise UsageError("this is the device you are using; remove it from another device")
            await client.remove_device(device_id)

    _run(work())
    out.print(f"removed device {device_id}")


# -- conversations ------------------------------------------------------------------------------


@chat_app.command("start")
def chat_start(ctx: typer.Context, usernames: list[str]) -> None:
    """Start a conversation with these people; prints its id."""
    state = _state(ctx)

    async def work() -> str:
        async with _client(state) as client:
            return await client.create_conversation(usernames)

    out.print(_run(work()))


@chat_app.command("list")
def chat_list(ctx: typer.Context) -> None:
    """The conversations this device knows."""
    state = _state(ctx)

    async def work() -> list[tuple[str, str, str]]:
        async with _client(state) as client:
            names = {c.account_id: c.username for c in client.store.device_lists.contacts()}
            return [
                (c.conversation_id, c.kind, ", ".join(names.get(m, m) for m in c.members))
                for c in client.store.conversations.conversations()
            ]

    table = Table("conversation id", "kind", "members")
    for row in _run(work()):
        table.add_row(*row)
    out.print(table)


@app.command(context_settings=_IDS_MAY_START_WITH_DASH)
def send(ctx: typer.Context, conversation_id: str, text: str) -> None:
    """Encrypt TEXT for every device of the conversation's members and send it."""
    state = _state(ctx)

    async def work() -> tuple[str, str]:
        async with _client(state) as client:
            envelope_id = await client.send_text(conversation_id, text)
            record = client.store.conversations.get_message(envelope_id)
            return envelope_id, record.status if record is not None else "pending"

    envelope_id, status = _run(work())
    if status == "pending":
        out.print(f"queued {envelope_id} in the outbox (server unreachable); it is sent on the next command")
    else:
        out.print(f"sent {envelope_id}")


def _names(client: Any) -> dict[str, str]:
    return {c.account_id: c.username for c in client.store.device_lists.contacts()}


def _sender(client: Any, account_id: str, device_id: str, names: dict[str, str]) -> str:
    if account_id == client.account_id:
        return "me" if device_id == client.device_id else f"me (device {device_id[:8]})"
    return names.get(account_id, account_id)


async def _sync(client: Any, wait_s: float) -> None:
    """Connect and wait until the server says this device's queue is drained."""
    from client_sdk.core.events import Drained

    await client.connect()
    await client.next_event(Drained, wait_s)


@app.command(context_settings=_IDS_MAY_START_WITH_DASH)
def messages(
    ctx: typer.Context,
    conversation_id: str,
    limit: Annotated[int, typer.Option(help="At most this many (the latest)")] = 50,
    offline: Annotated[bool, typer.Option("--offline", help="Do not fetch new messages first")] = False,
) -> None:
    """Show a conversation's messages (after fetching what is waiting on the server)."""
    state = _state(ctx)

    async def work() -> list[tuple[str, str, str]]:
        async with _client(state) as client:
            if not offline:
                await _sync(client, 20.0)
            await client.conversation(conversation_id)
            names = _names(client)
            rows = [
                (_when(m.sent_at_ms), _sender(client, m.sender_account_id, m.sender_device_id, names), m.text)
                for m in client.messages(conversation_id)
            ]
            return rows[-limit:]

    for when, who, text in _run(work()):
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
    from client_sdk.core import events as ev
    from client_sdk.errors import SaltlineError

    state = _state(ctx)

    async def typed(client: Any, conversation_id: str) -> None:
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
        async with _client(state) as client:
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
                            f"[dim]{event.conversation_id[:8]}[/] [bold]{who}[/]: {event.text}",
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
        _run(work())
    except KeyboardInterrupt:
        err.print("stopped")


# -- trust --------------------------------------------------------------------------------------


@app.command("safety-number")
def safety_number(ctx: typer.Context, username: str) -> None:
    """Show the safety number you share with USERNAME (compare it with theirs)."""
    state = _state(ctx)

    async def work() -> str:
        async with _client(state) as client:
            return (await client.safety_number(username)).display()

    out.print(_run(work()))


@app.command()
def verify(
    ctx: typer.Context,
    username: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask: the numbers were compared")] = False,
) -> None:
    """Mark USERNAME verified after comparing safety numbers (also accepts a changed key)."""
    state = _state(ctx)

    async def number() -> str:
        async with _client(state) as client:
            return (await client.safety_number(username)).display()

    out.print(f"safety number with {username}:\n{_run(number())}")
    if not yes and not typer.confirm(f"Does {username} see the same number?", default=False):
        _fail("not verified")

    async def work() -> None:
        async with _client(state) as client:
            await client.verify_contact(username)

    _run(work())
    out.print(f"{username} is verified")


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary server directory")] = False,
) -> None:
    """Start a throw-away server and play alice (desktop + phone) and bob talking through it."""
    from client_sdk.demo import run_demo

    try:
        ok = run_demo(out, keep=keep)
    except SaltlineError as exc:
        _fail(str(exc))
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    app()
