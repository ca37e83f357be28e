"""The ``saltline`` CLI without a server: argument parsing, profiles and error reporting."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saltline.client_sdk.cli import Profile, app

runner = CliRunner()
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SALTLINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SALTLINE_PROFILE", raising=False)
    monkeypatch.delenv("SALTLINE_SERVER", raising=False)
    return tmp_path / "home"


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "account", "login", "link", "devices", "chat", "send", "follow", "messages",
        "safety-number", "verify", "serve", "db", "demo",
    ):  # fmt: skip
        assert command in result.output
    for group, subs in {"account": ["create"], "link": ["show", "accept"], "devices": ["list", "remove"],
                        "chat": ["start"]}.items():  # fmt: skip
        sub_help = runner.invoke(app, [group, "--help"])
        assert sub_help.exit_code == 0
        assert all(s in sub_help.output for s in subs)


@pytest.mark.parametrize(
    "args",
    [
        ["messages", "some-conversation"],
        ["send", "some-conversation", "hello"],
        ["devices", "list"],
        ["chat", "start", "bob"],
        ["safety-number", "bob"],
        ["verify", "bob", "--yes"],
        ["follow", "--for", "1"],
        ["link", "accept", "saltline-link:xyz"],
        # base64url ids may begin with "-": they must reach the command, not be read as options
        ["send", "-VPSZD4qkUCabcdefghijk", "hello"],
        ["send", "-p-looks-like-an-option", "- a text with a leading dash"],
        ["messages", "-VPSZD4qkUCabcdefghijk"],
        ["devices", "remove", "-VPSZD4qkUCabcdefghijk"],
    ],
)
def test_commands_need_an_account(args: list[str], home: Path) -> None:
    result = runner.invoke(app, ["--profile", "phone", *args])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "profile 'phone' has no device yet" in line
    assert "account create" in line


def test_missing_arguments_are_usage_errors() -> None:
    assert runner.invoke(app, ["send", "only-a-conversation"]).exit_code == 2
    assert runner.invoke(app, ["chat", "start"]).exit_code == 2
    assert runner.invoke(app, ["account", "create"]).exit_code == 2


def test_invalid_profile_name() -> None:
    result = runner.invoke(app, ["--profile", "../escape", "devices", "list"])
    assert result.exit_code == 1
    assert "invalid profile name" in _one_line_error(result.output)


def test_unreachable_server_is_one_line(home: Path) -> None:
    result = runner.invoke(
        app,
        ["--profile", "desktop", "--server", UNREACHABLE, "account", "create", "alice", "--password-stdin"],
        input="a long enough password\n",
    )
    assert result.exit_code == 1
    assert "could not reach the server" in _one_line_error(result.output)
    # the profile was created: server remembered, key 0600, store encrypted with it
    profile = home / "profiles" / "desktop"
    assert json.loads((profile / "config.json").read_text())["server"] == UNREACHABLE
    key = profile / "store.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(profile.stat().st_mode) == 0o700
    from saltline.client_sdk.errors import StoreKeyError
    from saltline.client_sdk.stores.sqlite import SqliteStore

    with pytest.raises(StoreKeyError):
        SqliteStore.open(profile / "store.db")  # not readable without the key
    SqliteStore.open(profile / "store.db", key=key.read_bytes()).close()
    # the next command reuses the remembered server and the same key
    again = runner.invoke(app, ["--profile", "desktop", "login", "--device-key"])
    assert again.exit_code == 1
    assert "has no account yet" in _one_line_error(again.output)
    assert key.read_bytes() == Profile.named("desktop").store_key()


def test_empty_password_is_refused() -> None:
    result = runner.invoke(
        app, ["--server", UNREACHABLE, "account", "create", "alice", "--password-stdin"], input="\n"
    )
    assert result.exit_code == 1
    assert "password is empty" in _one_line_error(result.output)


def test_prompted_password_must_be_confirmed() -> None:
    result = runner.invoke(
        app, ["--server", UNREACHABLE, "account", "create", "alice"], input="first password\nsecond one\n"
    )
    assert result.exit_code != 0  # the prompt insists; the input ends before a match


def test_profile_server_default_and_override(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = Profile.named("desktop")
    assert profile.directory == home / "profiles" / "desktop"
    assert profile.server_url(None) == "http://127.0.0.1:8080"
    monkeypatch.setenv("SALTLINE_SERVER", "http://example.test:1")
    assert profile.server_url(None) == "http://example.test:1"
    assert profile.server_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert profile.server_url(None) == "http://127.0.0.1:9000"  # remembered over the env default


def test_store_in_use_is_one_line(home: Path) -> None:
    from saltline.client_sdk.stores.sqlite import SqliteStore

    profile = Profile.named("desktop")
    store = SqliteStore.open(profile.store_path, key=profile.store_key())
    try:
        result = runner.invoke(app, ["--profile", "desktop", "devices", "list"])
    finally:
        store.close()
    assert result.exit_code == 1
    assert "profiles/desktop/store.db is already" in _one_line_error(result.output)


def test_tampered_store_is_one_line(home: Path) -> None:
    import sqlite3

    from saltline.client_sdk.stores.base import ContactRecord
    from saltline.client_sdk.stores.sqlite import SqliteStore

    profile = Profile.named("desktop")
    with SqliteStore.open(profile.store_path, key=profile.store_key()) as store:
        store.device_lists.put_contact(ContactRecord("acct-bob", "bob", b"K" * 32, b"list"))
    conn = sqlite3.connect(profile.store_path, isolation_level=None)
    conn.execute("UPDATE contacts SET verified = 1")
    conn.close()
    result = runner.invoke(app, ["--profile", "desktop", "devices", "list"])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "failed its integrity check" in line and "link this device again" in line
