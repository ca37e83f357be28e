"""The examples in ``examples/`` run as their own processes against a real server: the echo bot
answers and stops cleanly on SIGTERM, send_file.py delivers a file that the receiver downloads
intact, desktop_and_phone.py converges."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.stores.memory import MemoryStore
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
WAIT = 30.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["SALTLINE_PASSWORD"] = PASSWORD  # never on the command line
    return env


async def _start(example: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / example),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(),
    )


async def _line(proc: asyncio.subprocess.Process, starting: str) -> str:
    assert proc.stdout is not None
    seen = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        if not raw:
            raise AssertionError(f"the example ended without {starting!r}: {b''.join(seen)!r}")
        seen.append(raw)
        if raw.decode().startswith(starting):
            return raw.decode().strip()


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _bob(server: LiveServer) -> Client:
    bob = await Client.create(server.base_url, MemoryStore())
    await bob.register(f"bob_{os.urandom(3).hex()}", PASSWORD)
    await bob.connect()
    return bob


async def test_echo_bot_answers_and_stops_on_sigterm(live_server: LiveServer, tmp_path: Path) -> None:
    bot_name = f"echo_{os.urandom(3).hex()}"
    args = ("--server", live_server.base_url, "--profile", str(tmp_path / "bot"))
    args += ("--username", bot_name)
    proc = await _start("echo_bot.py", *args, "--register")
    bob = await _bob(live_server)
    try:
        assert await _line(proc, "ready") == f"ready: {bot_name}"
        cid = await bob.create_conversation([bot_name])
        await bob.send_text(cid, "/echo hello from bob")
        while (reply := await bob.next_event(MessageReceived, WAIT)).sent_by_me:
            pass
        assert (reply.text, reply.sender_username) == ("hello from bob", bot_name)
        proc.send_signal(signal.SIGTERM)
        code, out = await _finish(proc)
        assert code == 0 and "stopped" in out, out
        # the store was closed cleanly: the next run opens it and signs in with the device key
        again = await _start("echo_bot.py", *args)
        assert await _line(again, "ready") == f"ready: {bot_name}"
        again.send_signal(signal.SIGINT)
        code, out = await _finish(again)
        assert code == 0 and "stopped" in out, out
    finally:
        if proc.returncode is None:
            proc.kill()
        await bob.close()


async def test_send_file_delivers_a_file(live_server: LiveServer, tmp_path: Path) -> None:
    bob = await _bob(live_server)
    try:
        payload = os.urandom(150_000)
        source = tmp_path / "report.bin"
        source.write_bytes(payload)
        proc = await _start(
            "send_file.py",
            *("--server", live_server.base_url, "--profile", str(tmp_path / "alice")),
            *("--username", f"alice_{os.urandom(3).hex()}", "--register"),
            *("--to", bob.username, "--trust-on-first-use", "--caption", "the report", str(source)),
        )
        code, out = await _finish(proc)
        assert code == 0 and out.startswith("sent report.bin"), out
        event = await bob.next_event(MessageReceived, WAIT)
        assert event.text == "the report" and event.attachment is not None
        assert out.strip().endswith(event.message_ref)  # one reference on both sides
        (tmp_path / "got").mkdir()  # a directory: the file keeps its name
        path = await bob.download(event.attachment, tmp_path / "got")
        assert path.read_bytes() == payload and path.name == "report.bin"
        key = tmp_path / "alice" / "store.key"
        assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
        assert int((tmp_path / "alice" / "store.counter").read_text()) > 0  # rollback detection

        again = await _start(  # bob is known now, but not verified: refused without the flag
            "send_file.py",
            *("--server", live_server.base_url, "--profile", str(tmp_path / "alice")),
            *("--username", "ignored", "--to", bob.username, str(source)),
        )
        code, out = await _finish(again)
        assert code == 3 and out.startswith("refused:"), out
    finally:
        await bob.close()


async def test_desktop_and_phone_converge(live_server: LiveServer, tmp_path: Path) -> None:
    proc = await _start("desktop_and_phone.py", "--server", live_server.base_url, "--data", str(tmp_path))
    code, out = await _finish(proc)
    assert code == 0, out
    assert "converged" in out and "(edited)" in out and "👍" in out, out
    for device in ("desktop", "phone", "bob"):  # each store encrypted, its key beside it (0600)
        profile = tmp_path / device
        assert (profile / "store.key").stat().st_mode & 0o077 == 0
        assert int((profile / "store.counter").read_text()) > 0
        stored = b"".join(p.read_bytes() for p in profile.glob("store.db*"))
        assert b"lunch?" not in stored and b"12:30" not in stored
