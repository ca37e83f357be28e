"""Every command of the CLI that mirrors the SDK (reply, edit, delete, react/unreact, read, title,
mute, timer, members, leave, contacts, devices, profile unlink), ``messages``/``follow`` showing the
current state, a removed device, and ``--json`` validated against docs/cli-json.schema.json.

One real server and three profiles (alice, bob, carol) per module: most commands run in-process
(typer's runner: the real command code, store and sockets, without a Python start-up per command);
``follow`` runs as the real console script. SQLite only: nothing here differs by database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner, Result

from saltline.client_sdk.cli import app
from saltline.server.settings import Settings
from saltline.server.storage.migrate import upgrade
from tests.conftest import TEST_SETTINGS
from tests.live import LiveServer

pytestmark = pytest.mark.e2e
SALTLINE = str(Path(sys.executable).parent / "saltline")
PASSWORD = "correct horse battery staple"
SCHEMA: dict[str, Any] = json.loads((Path(__file__).parents[2] / "docs" / "cli-json.schema.json").read_text())


jsonschema.Draft202012Validator.check_schema(SCHEMA)
_ANY = jsonschema.Draft202012Validator(SCHEMA)
_KINDS = {
    kind: jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"})
    for kind in SCHEMA["$defs"]
}


def validate(document: object, kind: str) -> None:
    """``document`` is a ``kind`` document of the schema (and so one of the documented outputs)."""
    _KINDS[kind].validate(document)
    _ANY.validate(document)


@dataclass
class World:
    server: LiveServer
    home: Path
    names: dict[str, str]  # profile -> username

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
        return {**env, "SALTLINE_HOME": str(self.home), "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}

    def __call__(self, profile: str, *args: str, input: str | None = None, code: int = 0) -> Result:
        result = CliRunner().invoke(
            app,
            ["--profile", profile, "--server", self.server.base_url, *args],
            input=input,
            env={
                "SALTLINE_HOME": str(self.home),
                "COLUMNS": "250",
                "SALTLINE_PROFILE": None,
                "SALTLINE_JSON": None,
            },
        )
        assert result.exit_code == code, f"{args}: {result.stdout}{result.stderr}{result.exception!r}"
        assert "Traceback" not in result.stdout + result.stderr
        return result

    def json(self, profile: str, kind: str, *args: str, code: int = 0, input: str | None = None) -> Any:
        result = self(profile, "--json", *args, code=code, input=input)
        lines = result.stdout.splitlines()
        assert len(lines) == 1, result.stdout
        document = json.loads(lines[0])
        validate(document, kind)
        return document


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("cli-parity")
    url = f"sqlite+aiosqlite:///{base}/saltline.db"
    upgrade(url)
    settings = Settings(data_dir=base, database_url=url, port=0, **TEST_SETTINGS)  # type: ignore[arg-type]
    server = LiveServer(settings).start()
    suffix = os.urandom(3).hex()
    w = World(server, base / "home", {p: f"{p}_{suffix}" for p in ("alice", "bob", "carol")})
    try:
        for profile, username in w.names.items():
            doc = w.json(
                profile, "account", "account", "create", username, "--password-stdin", input=PASSWORD + "\n"
            )
            assert doc["username"] == username
        yield w
    finally:
        server.stop()


def by_text(messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
    return next(m for m in messages if m["text"] == text)


def test_account_create_states_the_password_rule_before_the_prompt(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--server", "http://127.0.0.1:9", "account", "create", "dave"],
        input="too short\ntoo short\n",
        env={"SALTLINE_HOME": str(tmp_path)},
    )
    assert result.exit_code == 1
    rule = result.output.index("10 to 256 characters")
    assert rule < result.output.index("Password")
    assert "the password has 9 characters" in result.stderr


def test_message_commands_and_the_current_state(world: World) -> None:
    w = world
    alice, bob = w.names["alice"], w.names["bob"]
    cid = w.json("bob", "conversation_created", "chat", "start", alice)["conversation_id"]

    hello = w.json("alice", "sent", "send", cid, "hello bob")
    assert hello["status"] == "sent" and hello["ref"]
    w.json("bob", "sent", "send", cid, "hi alice")
    # a REF as `messages` prints it (the start of the device id, a dot, the number)
    short = hello["ref"].split(".")[0][:6] + "." + hello["ref"].split(".")[1]
    reply = w.json("bob", "sent", "reply", short, "replying to you")
    assert w("alice", "edit", short, "hello bob (edited text)").stdout.startswith("edited ")
    w("bob", "react", short, "🎉")
    w.json("bob", "sent", "react", hello["ref"], "👍")  # one reaction per person: it replaces 🎉
    w("bob", "react", reply["ref"], "🎉")
    w.json("bob", "sent", "unreact", reply["ref"], "🎉")
    gone = w.json("alice", "sent", "send", cid, "a secret to delete")
    w.json("alice", "sent", "delete", gone["ref"])
    w.json("bob", "sent", "read", cid)

    # someone else's message cannot be edited; an unknown REF is one error line (and a JSON error)
    refused = w.json("bob", "error", "edit", short, "not mine", code=1)
    assert "only your own messages" in refused["error"]["message"]
    unknown = w("bob", "react", "zzzzzzzz.1", "👍", code=1)
    assert unknown.stderr.startswith("error: no message") and unknown.stderr.count("\n") == 1

    on_bob = w.json("bob", "conversation", "messages", cid)
    shown = on_bob["messages"]
    edited = by_text(shown, "hello bob (edited text)")
    assert edited["edited"] and edited["ref"] == hello["ref"] and edited["sender"]["username"] == alice
    assert [(r["username"], r["emoji"]) for r in edited["reactions"]] == [(bob, "👍")]
    assert by_text(shown, "replying to you")["reply_to"] == hello["ref"]
    assert by_text(shown, "replying to you")["reactions"] == []
    tombstone = next(m for m in shown if m["ref"] == gone["ref"])
    assert tombstone["deleted"] and tombstone["text"] is None
    assert "a secret to delete" not in json.dumps(on_bob)
    assert on_bob["unread"] == 0 and not any(m["unread"] for m in shown)

    on_alice = w.json("alice", "conversation", "messages", cid)
    mine = by_text(on_alice["messages"], "hello bob (edited text)")
    assert mine["sender"]["me"] and mine["read_by"] == [edited["reactions"][0]["account_id"]]
    assert by_text(on_alice["messages"], "replying to you")["ref"] == reply["ref"]
    assert on_alice["unread"] == 2  # bob's two messages
    assert [m["text"] for m in on_alice["messages"] if m["unread"]] == ["hi alice", "replying to you"]
    text = w("alice", "messages", cid).stdout
    assert text.count("· new") == 2
    w("alice", "read", cid)
    assert w.json("alice", "conversation", "messages", cid, "--offline")["unread"] == 0
    assert "hello bob (edited text) (edited)" in text and "(message deleted)" in text
    assert f'↪ {short} "hello bob (edited text)"' in text
    assert f"👍 {bob}" in text and f"read by {bob}" in text
    assert "a secret to delete" not in text and "🎉" not in text

    # the SDK's own messages() is current too (edited text, deleted text gone)
    import asyncio

    from saltline.client_sdk.cli.app import State, open_client
    from saltline.client_sdk.cli.profile import Profile

    async def sdk() -> list[str]:
        os.environ["SALTLINE_HOME"] = str(w.home)
        try:
            async with open_client(State(Profile.named("alice"), w.server.base_url)) as client:
                assert client.username_of(edited["sender"]["account_id"]) == alice
                return [m.text for m in client.messages(cid)]
        finally:
            del os.environ["SALTLINE_HOME"]

    texts = asyncio.run(sdk())
    assert "hello bob (edited text)" in texts and "hello bob" not in texts
    assert "a secret to delete" not in texts and "" in texts


def test_conversation_commands(world: World) -> None:
    w = world
    alice, bob, carol = w.names["alice"], w.names["bob"], w.names["carol"]
    gid = w.json("bob", "conversation_created", "chat", "start", alice, carol)["conversation_id"]
    w.json("bob", "sent", "title", gid, "Weekend plans")
    w.json("bob", "sent", "mute", gid)
    w.json("bob", "sent", "timer", gid, "1h")
    w.json("bob", "sent", "members", "remove", gid, carol)
    members = w.json("bob", "members", "members", "list", gid)["members"]
    assert sorted(m["username"] for m in members) == sorted([alice, bob])
    assert [m["username"] for m in members if m["admin"]] == [bob]
    w.json("bob", "sent", "members", "add", gid, carol)
    assert "not sent" not in w("bob", "mute", gid, "--off").stdout

    listed = w.json("bob", "conversations", "chat", "list")["conversations"]
    group = next(c for c in listed if c["conversation_id"] == gid)
    assert group["title"] == "Weekend plans" and group["disappearing_ms"] == 3_600_000 and not group["muted"]
    assert sorted(m["username"] for m in group["members"]) == sorted([alice, bob, carol])

    # alice is not an admin: she may not remove anyone, but she may leave
    refused = w.json("alice", "error", "members", "remove", gid, carol, code=1)
    assert "admin" in refused["error"]["message"]
    w("alice", "leave", gid)
    after = w.json("bob", "members", "members", "list", gid)["members"]
    assert alice not in [m["username"] for m in after]
    table = w("bob", "chat", "list").stdout
    assert "Weekend plans" in table and "timer 1h" in table
    assert w("bob", "timer", gid, "soon", code=2).exit_code == 2

    # contacts: unverified until the safety numbers were compared
    contacts = w.json("bob", "contacts", "contacts")["contacts"]
    assert {c["username"]: c["status"] for c in contacts} == {alice: "unverified", carol: "unverified"}
    w.json("bob", "safety_number", "verify", alice, "--yes")
    contacts = w.json("bob", "contacts", "contacts")["contacts"]
    assert {c["username"]: c["status"] for c in contacts}[alice] == "verified"
    assert "verified" in w("bob", "contacts").stdout
    w.json("bob", "safety_number", "safety-number", carol)

    devices = w.json("alice", "devices", "devices", "list")["devices"]
    assert len(devices) == 1 and devices[0]["this_device"]
    w.json("alice", "device_name", "devices", "name", "alice laptop")
    assert w.json("alice", "devices", "devices", "list")["devices"][0]["name"] == "alice laptop"
    w.json("alice", "account_show", "account", "show")


def test_a_send_the_server_did_not_get_is_pending(world: World) -> None:
    w = world
    cid = w.json("alice", "conversation_created", "chat", "start", w.names["carol"])["conversation_id"]
    offline = ("--server", "http://127.0.0.1:9")  # nothing listens: the send stays in the outbox
    queued = w.json("alice", "sent", *offline, "send", cid, "written offline")
    assert queued["status"] == "pending" and queued["ref"]
    assert "queued" in w("alice", *offline, "react", queued["ref"], "👀").stdout
    shown = w.json("alice", "conversation", *offline, "messages", cid, "--offline")["messages"]
    assert [(m["text"], m["status"], m["server_seq"]) for m in shown] == [
        ("written offline", "pending", None)
    ]
    assert "written offline (pending)" in w("alice", *offline, "messages", cid, "--offline").stdout
    # the next command that reaches the server sends it
    shown = w.json("alice", "conversation", "messages", cid)["messages"]
    assert [(m["text"], m["status"]) for m in shown] == [("written offline", "sent")]
    assert shown[0]["ref"] == queued["ref"] and shown[0]["reactions"][0]["emoji"] == "👀"


def test_contact_status_names_a_changed_key() -> None:
    from saltline.client_sdk.cli.render import contact_status
    from saltline.client_sdk.stores.base import ContactRecord

    contact = ContactRecord("acct", "bob", b"K" * 32, b"list")
    assert contact_status(contact) == "unverified"
    from dataclasses import replace

    assert contact_status(replace(contact, verified=True)) == "verified"
    assert contact_status(replace(contact, verified=True, pending_account_key=b"N" * 32)) == "changed"


def _follow(w: World, profile: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [SALTLINE, "--profile", profile, "--server", w.server.base_url, *args],
        env=w.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # connected: what happens from now on is shown
    assert "following as" in line, line + proc.stderr.read()
    return proc


def test_follow_json_lines_show_the_current_state(world: World) -> None:
    w = world
    alice = w.names["alice"]
    cid = w.json("bob", "conversation_created", "chat", "start", alice)["conversation_id"]
    proc = _follow(w, "alice", "--json", "follow", "--for", "30")
    try:
        first = w.json("bob", "sent", "send", cid, "live one")
        w("bob", "reply", first["ref"], "live two")
        w("bob", "edit", first["ref"], "live one, edited")
        w("bob", "delete", first["ref"])
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        for line in proc.stdout:
            event = json.loads(line)
            validate(event, "follow_event")
            seen.append(event)
            if event["event"] == "MessageDeleted":
                break
    finally:
        proc.kill()
        proc.wait()
    received = [e for e in seen if e["event"] == "MessageReceived"]
    assert [e["message"]["text"] for e in received] == ["live one", "live two"]
    assert received[1]["message"]["reply_to"] == first["ref"]
    assert any(e["event"] == "MessageEdited" and e["text"] == "live one, edited" for e in seen)


def test_a_removed_device_ends_follow_and_says_how_back(world: World) -> None:
    import asyncio

    from saltline.client_sdk.cli.profile import Profile
    from saltline.client_sdk.client import Client
    from saltline.client_sdk.stores.sqlite import SqliteStore
    from tests.linking import link

    w = world
    os.environ["SALTLINE_HOME"] = str(w.home)
    try:
        desk, phone = Profile.named("carol"), Profile.named("carol-phone")

        async def link_phone() -> str:
            stores = [SqliteStore.open(p.store_path, key=p.store_key()) for p in (desk, phone)]
            clients = [await Client.create(w.server.base_url, s) for s in stores]
            try:
                await link(clients[0], clients[1], name="carol phone")
                return clients[1].device_id
            finally:
                for c, s in zip(clients, stores, strict=True):
                    await c.close()
                    s.close()

        phone_id = asyncio.run(link_phone())
    finally:
        del os.environ["SALTLINE_HOME"]
    names = {d["device_id"]: d["name"] for d in w.json("carol", "devices", "devices", "list")["devices"]}
    assert names[phone_id] == "carol phone"
    cid = w.json("carol-phone", "conversation_created", "chat", "start", w.names["bob"])["conversation_id"]

    proc = _follow(w, "carol-phone", "follow", "--for", "30")
    w.json("carol", "device_removed", "devices", "remove", phone_id)
    _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 3, errors
    # a removed device can no longer fetch its account's list, so nothing proves the removal: the
    # server's refusal is reported, never remembered (a lying server could say the same)
    assert "the server refuses this device (not proven removed" in errors and "profile unlink" in errors
    marker = w.home / "profiles" / "carol-phone" / "removed.json"
    assert not marker.exists()

    # every command asks the server again and says so (exit 3), `send` never says "sent"
    sent = w("carol-phone", "send", cid, "after removal", code=3)
    assert "sent" not in sent.stdout and "not proven removed" in sent.stderr
    sent = w.json("carol-phone", "error", "send", cid, "after removal", code=3)
    assert sent["error"]["type"] == "device_removed" and not marker.exists()

    # the way back: unlink needs --force without proof (asks first), then `link show` works again
    assert "not proven removed" in w("carol-phone", "profile", "unlink", "--yes", code=1).stderr
    assert "not unlinked" in w("carol-phone", "profile", "unlink", "--force", input="n\n", code=1).stderr

    # with proof: the phone holds a verified list of its account that leaves it out (here the one
    # the desk verified; a device that fetched it before being cut off has it the same way)
    os.environ["SALTLINE_HOME"] = str(w.home)
    try:
        desk_store = SqliteStore.open(desk.store_path, key=desk.store_key())
        phone_store = SqliteStore.open(phone.store_path, key=phone.store_key())
        try:
            device = phone_store.identity.get_device()
            assert device is not None and device.account_id is not None
            newest = desk_store.device_lists.get_contact(device.account_id)
            assert newest is not None
            phone_store.device_lists.put_contact(newest)
        finally:
            desk_store.close()
            phone_store.close()
    finally:
        del os.environ["SALTLINE_HOME"]
    proven = w("carol-phone", "messages", cid, code=3).stderr
    assert "was removed from its account" in proven and "profile unlink" in proven
    version = json.loads(marker.read_text())["proof"]["device_list_version"]
    assert isinstance(version, int) and version >= 2
    assert "was removed" in w("carol-phone", "contacts", code=3).stderr  # remembered: asks no server
    moved = w.json("carol-phone", "unlinked", "profile", "unlink", "--yes")
    assert (
        Path(moved["moved_to"]).is_dir() and not (w.home / "profiles" / "carol-phone" / "store.db").exists()
    )
    shown = w("carol-phone", "--json", "link", "show", "--no-qr", "--timeout", "0.5", code=1)
    first = json.loads(shown.stdout.splitlines()[0])
    validate(first, "link_code")
    assert "timed out" in shown.stderr or "link" in shown.stderr
    # a device still in its account is not discarded by mistake
    assert "not proven removed" in w("bob", "profile", "unlink", "--yes", code=1).stderr


class _Refuser(BaseHTTPRequestHandler):
    """A lying server: every request is refused with 403 ``device_not_active`` (the detail
    carries terminal escapes too)."""

    def _refuse(self) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "code": "device_not_active",
                "detail": "this device was removed\x1b[2J\x1b]8;;https://evil.example/\x1b\\click\u202e",
            }
        ).encode()
        self.send_response(403)
        self.send_header("content-type", "application/problem+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_lying_server_cannot_make_a_healthy_device_removed(world: World) -> None:
    """403 device_not_active from a server that lies: reported as a refusal (exit 3), nothing
    remembered, no escape reaches the terminal; the honest server then serves the device as
    before and `profile unlink` still refuses to discard it without --force."""
    w = world
    cid = w.json("alice", "conversation_created", "chat", "start", w.names["bob"])["conversation_id"]
    liar = ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    fake = f"http://127.0.0.1:{liar.server_address[1]}"
    env = {"SALTLINE_HOME": str(w.home), "COLUMNS": "250", "SALTLINE_PROFILE": None, "SALTLINE_JSON": None}
    try:
        for args in (["messages", cid], ["send", cid, "hello?"], ["devices", "list"]):
            result = CliRunner().invoke(app, ["--profile", "alice", "--server", fake, *args], env=env)
            assert result.exit_code == 3, result.stderr
            assert "the server refuses this device (not proven removed" in result.stderr
            assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    finally:
        liar.shutdown()
        liar.server_close()
    assert not (w.home / "profiles" / "alice" / "removed.json").exists()
    # the honest server again (the lying URL was remembered: --server names the real one)
    w("alice", "messages", cid)
    w("alice", "send", cid, "still here")
    assert "not proven removed" in w("alice", "profile", "unlink", "--yes", code=1).stderr


def test_peer_text_is_shown_with_visible_escapes(world: World) -> None:
    """A peer's control, C1 and bidi characters reach neither the terminal nor split a --json line."""
    w = world
    cid = w.json("bob", "conversation_created", "chat", "start", w.names["alice"])["conversation_id"]
    evil = "ok\x1b[2J\x1b]0;pwned\x07 \u202egnp.exe\u202c\u2028" + '{"text":"forged"}\x85NEL\x9b31mC1'
    w("bob", "send", cid, evil)
    shown = w("alice", "messages", cid).stdout
    for raw in ("\x1b", "\u202e", "\u009b", "\u0085", "\u2028", "\x07"):
        assert raw not in shown, repr(raw)
    assert "\\x1b[2J" in shown and "\\u202egnp.exe" in shown and "\\x9b31mC1" in shown
    result = w("alice", "--json", "messages", cid)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stdout.isascii()
    document = json.loads(lines[0])
    validate(document, "conversation")
    assert any(m["text"] == evil for m in document["messages"])
