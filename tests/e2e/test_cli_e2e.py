"""The ``saltline`` console script as a real subprocess: the demo, and profiles against a live server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live import LiveServer

pytestmark = pytest.mark.e2e
SALTLINE = str(Path(sys.executable).parent / "saltline")
PASSWORD = "correct horse battery staple"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
    return {**env, "SALTLINE_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def test_demo_shows_every_device_and_no_plaintext(tmp_path: Path) -> None:
    start = time.monotonic()
    done = subprocess.run(
        [SALTLINE, "demo"], env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    for line in (
        "[alice-desktop] bob: hi alice",
        "[alice-phone] bob: hi alice",
        "[bob] alice: hi bob, I'm on my phone",
        "[alice-desktop] me (from alice-phone): hi bob, I'm on my phone",
        "[bob] alice: back at my desk now",
        "[alice-phone] me (from alice-desktop): back at my desk now",
        "alice's and bob's numbers match: yes",
        "usernames found in it (metadata the server needs): alice, bob",
        "no plaintext: none of the 3 messages sent appears in the server's database or log",
    ):
        assert line in out, out
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"


class Cli:
    def __init__(self, home: Path, server: str) -> None:
        self.home = home
        self.server = server

    def __call__(
        self, profile: str, *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [SALTLINE, "--profile", profile, "--server", self.server, *args],
            env=_env(self.home),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if ok:
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done


def test_profiles_chat_link_and_messages(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = make_server()
    cli = Cli(tmp_path / "home", server.base_url)
    suffix = os.urandom(3).hex()
    alice, bob = f"alice_{suffix}", f"bob_{suffix}"

    cli("desktop", "account", "create", alice, "--password-stdin", stdin=PASSWORD + "\n")
    cli("bob", "account", "create", bob, "--password-stdin", stdin=PASSWORD + "\n")
    taken = cli("other", "account", "create", alice, "--password-stdin", stdin=PASSWORD + "\n", ok=False)
    assert taken.returncode == 1
    assert taken.stderr.startswith("error: ") and "Traceback" not in taken.stderr

    # a second device of alice: `link show` waits while the desktop accepts its code; both show
    # the same confirmation code, which the person compares before confirming on the desktop
    phone = subprocess.Popen(
        [
            SALTLINE,
            "--profile",
            "phone",
            "--server",
            server.base_url,
            "link",
            "show",
            "--name",
            "alice phone",
            "--timeout",
            "30",
        ],
        env=_env(cli.home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    desk: subprocess.Popen[str] | None = None
    try:
        assert phone.stdout is not None
        shown: list[str] = []
        code = None
        for line in phone.stdout:
            shown.append(line)
            match = re.search(r"saltline link accept (\S+)", line)
            if match:
                code = match.group(1)
            if "waiting up to" in line:
                break
        assert code is not None, "".join(shown)
        assert any("▀" in line or "█" in line for line in shown), "no QR code was printed"
        desk = subprocess.Popen(
            [
                SALTLINE,
                "--profile",
                "desktop",
                "--server",
                server.base_url,
                "link",
                "accept",
                code,
                "--history",
                "all",
                "--timeout",
                "30",
            ],
            env=_env(cli.home),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert desk.stdout is not None and desk.stdin is not None
        phone_code = None
        for line in phone.stdout:
            shown.append(line)
            match = re.search(r"confirmation code: (\d{3} \d{3})", line)
            if match:
                phone_code = match.group(1)
                break
        assert phone_code is not None, "".join(shown)
        assert any(alice in line for line in shown), "the new device must show the account it joins"
        assert phone.stdin is not None
        phone.stdin.write("y\n")  # yes, alice is my account
        phone.stdin.flush()
        desk_lines: list[str] = []
        desk_code = None
        while desk_code is None:
            line = desk.stdout.readline()
            assert line, "".join(desk_lines)
            desk_lines.append(line)
            match = re.search(r"confirmation code: (\d{3} \d{3})", line)
            if match:
                desk_code = match.group(1)
        assert any("alice phone" in line for line in desk_lines), "".join(desk_lines)
        assert desk_code == phone_code
        desk_out, desk_err = desk.communicate("y\n", timeout=30)
        assert desk.returncode == 0, desk_out + desk_err
        rest, errors = phone.communicate(timeout=30)
    finally:
        for proc in (phone, desk):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert phone.returncode == 0, rest + errors
    assert "linked: this profile is now device" in rest and alice in rest

    devices = cli("desktop", "devices", "list").stdout
    assert devices.count("this device") == 1
    assert len(re.findall(r"│ [A-Za-z0-9_-]{22} ", devices)) == 2, devices

    cid = cli("bob", "chat", "start", alice).stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cid), cid
    assert cli("bob", "send", cid, "hello alice from the CLI").stdout.startswith("sent ")
    assert cli("phone", "send", cid, "hi bob, phone here").stdout.startswith("sent ")

    on_desktop = cli("desktop", "messages", cid).stdout
    assert f"{bob}: hello alice from the CLI" in on_desktop
    assert "me (device" in on_desktop and "hi bob, phone here" in on_desktop
    on_bob = cli("bob", "messages", cid).stdout
    assert f"{alice}: hi bob, phone here" in on_bob
    assert "me: hello alice from the CLI" in on_bob

    # one process follows and sends: lines typed on stdin go to the conversation given with --to
    followed = cli("bob", "follow", "--to", cid, "--for", "4", stdin="typed while following\n")
    assert "sent " in followed.stderr, followed.stderr
    assert f"{bob}: typed while following" in cli("desktop", "messages", cid).stdout

    # the safety number is the same on both sides; verifying works non-interactively
    mine = cli("desktop", "safety-number", bob).stdout.split()
    theirs = cli("bob", "safety-number", alice).stdout.split()
    assert mine == theirs and len(mine) == 12
    assert "is verified" in cli("bob", "verify", alice, "--yes").stdout

    # errors from the SDK: one line, exit 1
    missing = cli("bob", "send", "no-such-conversation", "x", ok=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("error: ")

    # the server holds no plaintext
    server.stop()
    if not server.settings.database_url.startswith("sqlite"):
        return  # PostgreSQL: the database files are not ours to read
    blobs = b"".join(f.read_bytes() for f in tmp_path.rglob("saltline.db*") if f.is_file())
    assert blobs
    for text in ("hello alice from the CLI", "hi bob, phone here"):
        assert text.encode() not in blobs
