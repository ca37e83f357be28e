"""``saltline demo``: the whole system in one command.

1. Start a throw-away server: ``python -m saltline.server db upgrade`` then
   ``python -m saltline.server serve`` on a free 127.0.0.1 port, SQLite in a temporary directory
   (the SDK never imports the server: it is a subprocess). Wait until ``/readyz`` answers.
2. Three SDK clients with in-memory stores: alice's desktop registers alice, bob registers bob,
   alice's phone is linked to alice's account with the link flow (code shown by the phone,
   approved by the desktop).
3. A short scripted conversation; each device prints what it receives.
4. Stop the server and search its database files (and its log) for every plaintext sent: none
   may be there. The usernames, which the server does know, are searched too to show that the
   search itself works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from saltline.client_sdk.client import Client, LinkConfirmation, LinkRequest
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.errors import NetworkError
from saltline.client_sdk.stores.memory import MemoryStore

PASSWORD = "demo passphrase, not a real one"  # noqa: S105 - a throw-away demo account
WAIT_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TempServer:
    """A Saltline server subprocess on a temporary SQLite database."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        # The user's SALTLINE_* settings (a production database URL...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
        return {**env, "SALTLINE_LOG_LEVEL": "warning", **self.env}

    def start(self, timeout_s: float = 30.0) -> TempServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = [sys.executable, "-m", "saltline.server"]
        where = ["--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            done = subprocess.run(  # noqa: S603 - this interpreter, our own module
                [*base, "db", "upgrade", *where], env=self._env(), stdout=log, stderr=subprocess.STDOUT
            )
        if done.returncode != 0:
            raise RuntimeError(f"`python -m saltline.server db upgrade` failed:\n{self.log_tail()}")
        self.port = free_port()
        log = open(self.log_path, "ab")  # closed below: the child keeps its own descriptor
        self.proc = subprocess.Popen(  # noqa: S603
            [*base, "serve", *where, "--host", "127.0.0.1", "--port", str(self.port)],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server was not ready after {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (checkpoints SQLite)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def database_bytes(self) -> bytes:
        return b"".join(f.read_bytes() for f in sorted(self.data_dir.rglob("*")) if f.is_file())


@contextlib.contextmanager
def temp_server(*, keep: bool = False, env: dict[str, str] | None = None) -> Iterator[TempServer]:
    root = Path(tempfile.mkdtemp(prefix="saltline-demo-"))
    server = TempServer(root, env or {})
    try:
        yield server.start()
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


class Demo:
    def __init__(self, console: Console, url: str) -> None:
        self.console = console
        self.url = url
        self.names: dict[str, str] = {}  # device id -> device name
        self.sent: list[str] = []

    def say(self, text: str) -> None:
        self.console.print(text, markup=True)

    async def device(self, name: str) -> Client:
        client = await Client.create(self.url, MemoryStore())
        self.names[client.device_id] = name
        return client

    async def send(self, name: str, client: Client, cid: str, text: str) -> None:
        self.sent.append(text)
        await client.send_text(cid, text)
        self.say(f"\n[bold]{name}[/] sends: {text!r}")

    async def receive(self, name: str, client: Client) -> MessageReceived:
        event = await client.next_event(MessageReceived, WAIT_S)
        device = self.names.get(event.sender_device_id, event.sender_device_id[:8])
        who = f"me (from {device})" if event.sent_by_me else event.sender_username
        self.say(f"  [cyan]\\[{name}][/] {who}: {event.text}")
        return event

    async def play(self) -> None:
        say = self.say
        say("\n[bold]1. Devices[/]")
        desktop = await self.device("alice-desktop")
        await desktop.register("alice", PASSWORD)
        say(f"alice-desktop registers [bold]alice[/] (device {desktop.device_id[:8]}…)")
        bob = await self.device("bob")
        await bob.register("bob", PASSWORD)
        say(f"bob registers [bold]bob[/] (device {bob.device_id[:8]}…)")
        phone = await self.device("alice-phone")
        code = await phone.begin_link("alice's phone")
        say(f"alice-phone shows a link code ({len(code)} characters, also a QR code): {code[:24]}…")
        shown: list[str] = []

        def phone_shows(c: LinkConfirmation) -> None:
            shown.append(c.code)
            say(f"alice-phone: joining [bold]{c.username}[/], confirmation code {c.code}")

        def desktop_confirms(request: LinkRequest) -> bool:
            say(
                f"alice-desktop: new device {request.name!r} shows code {request.code}? (alice compares: yes)"
            )
            return shown == [request.code]

        await asyncio.gather(
            desktop.approve_link(code, history="all", confirm=desktop_confirms),
            phone.complete_link(wait_s=WAIT_S, on_code=phone_shows),
        )
        say("alice-desktop sealed the account key to the phone, which joined with a one-time grant")
        devices = await desktop.devices()
        say(f"alice-phone is linked: alice's signed device list names {len(devices)} devices")
        clients = {"alice-desktop": desktop, "alice-phone": phone, "bob": bob}
        try:
            for client in clients.values():
                await client.connect()
            say("\n[bold]2. Conversation[/] (each line is what a device received and decrypted)")
            cid = await bob.create_conversation(["alice"])
            await self.send("bob", bob, cid, "hi alice")
            await self.receive("alice-desktop", desktop)
            await self.receive("alice-phone", phone)
            await self.send("alice-phone", phone, cid, "hi bob, I'm on my phone")
            await self.receive("bob", bob)
            await self.receive("alice-desktop", desktop)
            await self.send("alice-desktop", desktop, cid, "back at my desk now")
            await self.receive("bob", bob)
            await self.receive("alice-phone", phone)

            say("\n[bold]3. Verification[/]")
            mine = await desktop.safety_number("bob")
            theirs = await bob.safety_number("alice")
            same = mine.digits == theirs.digits
            say("safety number alice↔bob (both sides compute it):")
            say(mine.display())
            say(f"alice's and bob's numbers match: {'yes' if same else 'NO'}")

            table = Table("device", "messages in its store", title="What each device stored")
            for name, client in clients.items():
                table.add_row(name, str(len(client.messages(cid))))
            self.console.print(table)
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    await client.close()


def check_no_plaintext(console: Console, server: TempServer, sent: list[str]) -> bool:
    data = server.database_bytes()
    log = server.log_path.read_bytes() if server.log_path.exists() else b""
    files = [f.name for f in server.data_dir.rglob("*") if f.is_file()]
    console.print(
        f"\n[bold]4. The server's database[/] ({len(data)} bytes in {', '.join(sorted(files))})", markup=True
    )
    found = [text for text in sent if text.encode() in data or text.encode() in log]
    metadata = [name for name in ("alice", "bob") if name.encode() in data]
    console.print(f"usernames found in it (metadata the server needs): {', '.join(metadata) or 'none'}")
    if found:
        console.print(f"[bold red]PLAINTEXT FOUND[/] in the server's files: {found}", markup=True)
        return False
    console.print(
        f"[bold green]no plaintext:[/] none of the {len(sent)} messages sent appears in the server's "
        "database or log",
        markup=True,
    )
    return True


def run_demo(console: Console | None = None, *, keep: bool = False) -> bool:
    """Run the demo; True when every step worked and no plaintext reached the server."""
    console = console or Console(soft_wrap=True, highlight=False)
    start = time.monotonic()
    with temp_server(keep=keep) as server:
        console.print(
            f"[bold]Saltline demo[/]: server on {server.base_url} (SQLite in {server.data_dir})", markup=True
        )
        demo = Demo(console, server.base_url)
        try:
            asyncio.run(demo.play())
        except NetworkError as exc:
            raise NetworkError(f"{exc}\nserver log:\n{server.log_tail()}") from exc
        server.stop()
        ok = check_no_plaintext(console, server, demo.sent)
        if keep:
            console.print(f"kept {server.root}")
    console.print(f"\ndemo finished in {time.monotonic() - start:.1f} s")
    return ok
