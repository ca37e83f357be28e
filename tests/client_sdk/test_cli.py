"""The ``saltline`` CLI without a server: argument parsing, profiles and error reporting."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest
from rich.text import Text
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
        "safety-number", "verify", "serve", "db", "demo", "reply", "edit", "delete", "react",
        "unreact", "read", "title", "mute", "timer", "members", "leave", "contacts", "profile",
        "--json",
    ):  # fmt: skip
        assert command in result.output
    for group, subs in {"account": ["create"], "link": ["show", "accept"],
                        "devices": ["list", "remove", "name"], "chat": ["start", "list"],
                        "members": ["list", "add", "remove"], "profile": ["unlink"]}.items():  # fmt: skip
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
        ["reply", "-VPSZD.1", "hi"],
        ["edit", "AbCdEf.1", "new"],
        ["delete", "AbCdEf.1"],
        ["react", "AbCdEf.1", "x"],
        ["unreact", "AbCdEf.1", "x"],
        ["read", "c"],
        ["title", "c", "t"],
        ["mute", "c"],
        ["timer", "c", "1h"],
        ["members", "list", "c"],
        ["members", "add", "c", "bob"],
        ["members", "remove", "c", "bob"],
        ["leave", "c"],
        ["contacts"],
        ["chat", "list"],
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


def test_a_removed_profile_says_so_for_every_command(home: Path) -> None:
    """Once a device was seen removed, every command says so (exit 3) with the way back; --json
    also prints the error document."""
    profile = Profile.named("phone")
    profile.store_key()
    (profile.directory / "store.db").write_bytes(b"")
    profile.mark_removed("this device was removed from its account", 7)
    for args in (["send", "c", "hi"], ["messages", "c"], ["follow"], ["link", "show"], ["contacts"]):
        result = runner.invoke(app, ["--profile", "phone", *args])
        assert result.exit_code == 3, result.output
        assert "profile unlink" in result.stderr and "link show" in result.stderr
    result = runner.invoke(app, ["--profile", "phone", "--json", "reply", "AbCdEf.1", "x"])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["type"] == "device_removed"
    # unlink: nothing is deleted, the server setting is kept
    Profile.named("phone").save_config({"server": "http://example.test:1"})
    result = runner.invoke(app, ["--profile", "phone", "profile", "unlink", "--yes"])
    assert result.exit_code == 0, result.output
    assert not profile.removed_path.exists() and not profile.key_path.exists()
    assert profile.config() == {"server": "http://example.test:1"}
    kept = list((home / "discarded").iterdir())
    assert len(kept) == 1 and (kept[0] / "store.key").exists()
    assert stat.S_IMODE((home / "discarded").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("text", "ms"),
    [("off", None), ("0", None), ("30", 30_000), ("90s", 90_000), ("5m", 300_000), ("12h", 43_200_000),
     ("7d", 604_800_000), (" 1H ", 3_600_000)],
)  # fmt: skip
def test_timer_durations(text: str, ms: int | None) -> None:
    from saltline.client_sdk.cli.actions import parse_duration
    from saltline.client_sdk.cli.render import duration

    assert parse_duration(text) == ms
    assert parse_duration(duration(ms)) == ms


@pytest.mark.parametrize("text", ["", "soon", "-5", "1.5h", "5w", "00"])
def test_bad_timer_durations(text: str) -> None:
    import typer

    from saltline.client_sdk.cli.actions import parse_duration

    with pytest.raises(typer.BadParameter):
        parse_duration(text)


def test_refs_short_and_whole() -> None:
    from saltline.client_sdk.cli.render import ref_matches, short_ref

    ref = "AbCdEfGhIjKlMnOpQrStUv.12"
    assert short_ref(ref) == "AbCdEf.12" and short_ref(None) == "-"
    assert ref_matches(ref, ref) and ref_matches("AbCdEf.12", ref) and ref_matches("AbCdEfGh.12", ref)
    assert not ref_matches("AbCdEf.1", ref)  # the number is whole
    assert not ref_matches("AbCdE.12", ref)  # too short to name a device
    assert not ref_matches("AbCdEf", ref) and not ref_matches("XbCdEf.12", ref)


def test_event_documents_are_plain_json() -> None:
    from saltline.client_sdk.cli.render import event_doc
    from saltline.client_sdk.core import events as ev

    doc = event_doc(ev.ReactionChanged("c", "d.1", (("acct", "👍"),)))
    assert doc == {
        "event": "ReactionChanged",
        "conversation_id": "c",
        "message_ref": "d.1",
        "reactions": [["acct", "👍"]],
    }
    assert json.loads(json.dumps(event_doc(ev.DeviceRemoved("gone")))) == {
        "event": "DeviceRemoved",
        "reason": "gone",
    }


def test_pending_and_failed_sends_are_marked() -> None:
    from saltline.client_sdk.cli.render import message_line
    from saltline.client_sdk.facets.timeline import TimelineMessage

    def message(status: str, reason: str | None = None) -> TimelineMessage:
        return TimelineMessage(
            "c", "dev.1", "e", "me-acct", "alice", "dev", True, 0, None, status, "hello [b]x[/b]",  # type: ignore[arg-type]
            False, False, None, (), (), False, None, reason,
        )  # fmt: skip

    assert message_line(message("pending"), "dev", lambda a: None, {}).endswith("[yellow](pending)[/]")
    failed = message_line(message("failed", "refused: 403"), "dev", lambda a: None, {})
    assert "(failed: refused: 403)" in failed
    assert "hello \\[b]x\\[/b]" in failed  # the text is escaped, never markup


def test_follow_lines_for_state_changes() -> None:
    from saltline.client_sdk.cli.render import event_line
    from saltline.client_sdk.core import events as ev

    names = {"acct-bob": "bob"}.get
    ref = "AbCdEfGhIjKlMnOpQrStUv.3"
    expected: list[tuple[ev.Event, str, bool]] = [
        (ev.MessageEdited("conv1234x", ref, "new [text]"), r"[AbCdEf.3][/] edited: new \[text]", True),
        (ev.MessageDeleted("conv1234x", ref), "(message deleted)", True),
        (
            ev.ReactionChanged("conv1234x", ref, (ev.Reaction("acct-bob", "bob", "👍"),)),
            "reactions: 👍 bob",
            True,
        ),
        (ev.ReadStateChanged("conv1234x", {"acct-bob": 7}, 0), "read: bob up to #7 (0 unread)", True),
        (ev.SettingsChanged("conv1234x", "title", "Plans", ()), "title: Plans", True),
        (
            ev.SettingsChanged("conv1234x", "disappearing_ms", 3_600_000, ()),
            "disappearing messages: 1h",
            True,
        ),
        (ev.SettingsChanged("conv1234x", "mute", False, ()), "unmuted", True),
        (ev.MembershipChanged("conv1234x", ("acct-bob", "acct-x")), "members: bob, acct-x", True),
        (ev.OutboxItemFailed("conv1234x", "env", "refused", 403, "x"), "error: env failed: refused", False),
        (ev.OwnDeviceLinked("dev-2", "alice phone", 2), "a device joined your account: alice phone", False),
        (ev.AddedToConversation("conv1234x", "acct-bob", ()), "you were added by bob", True),
    ]
    for event, text, to_stdout in expected:
        shown = event_line(event, names)
        assert shown is not None and text in shown[0] and shown[1] == to_stdout, (event, shown)
        if getattr(event, "conversation_id", None):
            assert shown[0].startswith("[dim]conv1234[/]") or not to_stdout
    assert event_line(ev.MessageSent("c", "r.1", "e", 1), names) is None


def test_a_marker_without_proof_is_ignored_and_unlink_needs_force(home: Path) -> None:
    """A removed.json without a verified device list's version (the server's word, as older
    versions wrote it) neither blocks the profile nor lets `profile unlink` discard it unasked."""
    profile = Profile.named("phone")
    profile.store_key()
    (profile.directory / "store.db").write_bytes(b"")
    for doc in ({"reason": "device_not_active"}, {"reason": "x", "proof": {"device_list_version": 0}}, []):
        profile.removed_path.write_text(json.dumps(doc), encoding="utf-8")
        assert profile.removed() is None
        result = runner.invoke(app, ["--profile", "phone", "profile", "unlink", "--yes"])
        assert result.exit_code == 1 and "not proven removed" in result.stderr
    profile.removed_path.unlink()
    profile.mark_removed("removed", 3)
    assert json.loads(profile.removed_path.read_text())["proof"] == {"device_list_version": 3}
    assert runner.invoke(app, ["--profile", "phone", "profile", "unlink", "--yes"]).exit_code == 0


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, émoji 👍 and ünïcode", "plain text, émoji 👍 and ünïcode"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("a\nb\r\tc", "a\\nb\\r\\tc"),
        ("\x00\x7f", "\\x00\\x7f"),
        ("\x85NEL\x9b31m", "\\x85NEL\\x9b31m"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\u202egnp.exe\u202c", "\\u202egnp.exe\\u202c"),
        ("\u202a\u202b\u202d\u2066\u2067\u2068\u2069", "\\u202a\\u202b\\u202d\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("\u200d zero-width joiner stays", "\u200d zero-width joiner stays"),
    ],
)
def test_safe_shows_controls_as_visible_escapes(raw: str, shown: str) -> None:
    from saltline.client_sdk.cli.render import safe

    assert safe(raw) == shown


def test_peer_text_never_reaches_the_terminal_raw() -> None:
    """Every line built from a peer's or the server's text: no control, C1 or bidi character
    survives (message text and sender, reactions, reasons, event lines, settings)."""
    from saltline.client_sdk.cli import render
    from saltline.client_sdk.core import events as ev
    from saltline.client_sdk.facets.timeline import TimelineMessage

    evil = "ok\x1b[2J\u202egnp.exe\u2028x\x85y\x9bz\n[bold]"
    fields = {f.name for f in dataclasses.fields(TimelineMessage)}
    reaction = type("R", (), {"account_id": "acc", "username": evil, "emoji": evil})()
    values = {
        "conversation_id": "c" * 22, "ref": "d" * 22 + ".1", "envelope_id": "e", "sender_account_id": "a",
        "sender_username": evil, "sender_device_id": "d" * 22, "sent_by_me": False, "sent_at_ms": 0,
        "server_seq": 1, "status": "failed", "text": evil, "edited": True, "deleted": False, "reply_to": None,
        "reactions": (reaction,), "read_by": (), "unread": False, "attachment": None, "failed_reason": evil,
    }  # fmt: skip
    message = TimelineMessage(**{k: v for k, v in values.items() if k in fields})
    lines = [render.message_line(message, "me", lambda _a: evil, {})]
    for event in (
        ev.OutboxItemFailed(**_event_args(ev.OutboxItemFailed, evil)),
        ev.DecryptionFailed(**_event_args(ev.DecryptionFailed, evil)),
        ev.OwnDeviceLinked(**_event_args(ev.OwnDeviceLinked, evil)),
        ev.SettingsChanged(**_event_args(ev.SettingsChanged, evil)),
        ev.OperationRejected(**_event_args(ev.OperationRejected, evil)),
        ev.MessageEdited(**_event_args(ev.MessageEdited, evil)),
    ):
        described = render.event_line(event, lambda _a: evil)
        assert described is not None
        lines.append(described[0])
    for line in lines:
        bad = [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or ord(c) in render.BIDI_CONTROLS]
        assert not bad and "\u2028" not in line, (line, bad)
        assert "[bold]" in Text.from_markup(line).plain  # the peer's markup is shown, not applied


def _event_args(cls: type, evil: str) -> dict[str, object]:
    """Arguments for an event class: every text field ``evil``, the others plausible."""
    args: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if "tuple" in kind or "list" in kind or "Sequence" in kind:
            args[f.name] = ()
        elif "int" in kind and "str" not in kind:
            args[f.name] = 1
        elif "bool" in kind and "str" not in kind:
            args[f.name] = False
        elif f.name == "field":
            args[f.name] = "title"
        else:
            args[f.name] = evil
    return args


def test_json_output_is_one_line_for_every_line_splitter(capsys: pytest.CaptureFixture[str]) -> None:
    from saltline.client_sdk.cli.app import emit

    text = "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci\rj\nk 👍 é"
    emit({"text": text})
    written = capsys.readouterr().out
    assert written.isascii() and len(written.splitlines()) == 1
    assert json.loads(written.splitlines()[0]) == {"text": text}


def test_the_sender_refuses_c1_and_bidi_controls_in_a_file_name() -> None:
    from saltline.client_sdk.core.attachments import sendable_name, valid_name

    for name in ("a\u202etxt.exe", "a\x9bb", "x\u2066y", "z\u200f", "q\u061c"):
        assert valid_name(name) and not sendable_name(name)  # received: accepted (shown escaped)
    assert sendable_name("photo 👍 é.png")
