"""``saltline daemon`` as a real subprocess against a live server, driven by programs that are not
Python where it matters: ``curl`` (``POST /rpc``, ``curl -N`` reading the SSE stream,
``curl --unix-socket``) and ``socat`` (JSON lines on the UNIX socket); stdio from a pipe."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from saltline.client_sdk.cli.profile import Profile
from saltline.client_sdk.client import Client
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.live import LiveServer
from tests.pg import free_port

pytestmark = pytest.mark.e2e
SALTLINE = str(Path(sys.executable).parent / "saltline")
PASSWORD = "correct horse battery staple"
WAIT_S = 20.0
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None and not os.environ.get("CI"), reason="curl is not installed")


class Lines:
    """A child's output read line by line in a thread (``get`` waits with a deadline)."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def get(self, wait_s: float = WAIT_S) -> str:
        line = self.queue.get(timeout=wait_s)
        self.seen.append(line)
        return line

    def until(self, match: Callable[[str], bool], wait_s: float = WAIT_S) -> str:
        while True:
            line = self.get(wait_s)
            if not line:
                raise AssertionError("the stream ended; it showed:\n" + "".join(self.seen))
            if match(line):
                return line


async def _make_profile(home: Path, name: str, username: str, url: str) -> None:
    profile = Profile(name, home / "profiles" / name)
    profile.save_config({"server": url})
    store = SqliteStore.open(profile.store_path, key=profile.store_key())
    client = await Client.create(url, store)
    try:
        await client.register(username, PASSWORD)
    finally:
        await client.close()
        store.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    stderr: Lines
    home: Path
    alice: str
    bob: str
    carol: str
    port: int | None = None
    socket: Path | None = None
    token: str = ""
    stdout: Lines | None = None
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def curl(self, *args: str, body: Any = None, token: bool = True) -> tuple[int, str]:
        assert CURL is not None
        cmd = [CURL, "-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(WAIT_S)]
        if token:
            cmd += ["-H", f"Authorization: Bearer {self.token}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        data = body if isinstance(body, str) or body is None else json.dumps(body)
        done = subprocess.run([*cmd, *args], input=data, capture_output=True, text=True, timeout=WAIT_S + 5)
        assert done.returncode == 0, done.stderr
        text, _, status = done.stdout.rpartition("\n")
        return int(status), text

    def rpc(self, method: str, via: str = "http", **params: Any) -> Any:
        """One call over HTTP with curl (``via="unix"``: curl on the UNIX socket, no token)."""
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        if via == "unix":
            status, text = self.curl(
                "--unix-socket", str(self.socket), "http://daemon/rpc", body=request, token=False
            )
        else:
            status, text = self.curl(f"http://127.0.0.1:{self.port}/rpc", body=request)
        assert status == 200, text
        answer = json.loads(text)
        assert "error" not in answer, answer
        return answer["result"]

    def error(self, method: str, **params: Any) -> dict[str, Any]:
        status, text = self.curl(
            f"http://127.0.0.1:{self.port}/rpc",
            body={"jsonrpc": "2.0", "id": 7, "method": method, "params": params},
        )
        assert status == 200, text
        answer = json.loads(text)
        assert answer["id"] == 7 and "result" not in answer, answer
        error: dict[str, Any] = answer["error"]
        return error


@pytest.fixture
def start_daemon(live_server: LiveServer, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    import asyncio

    home = tmp_path / "home"
    suffix = os.urandom(3).hex()
    alice, bob = f"alice_{suffix}", f"bob_{suffix}"

    async def accounts() -> None:
        await _make_profile(home, "alice", alice, live_server.base_url)
        await _make_profile(home, "bob", bob, live_server.base_url)
        await _make_profile(home, "carol", f"carol_{suffix}", live_server.base_url)  # never served

    asyncio.run(accounts())
    started: list[Daemon] = []

    def start(*args: str, stdio: bool = False) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SALTLINE_")}
        env |= {"SALTLINE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        cmd = [SALTLINE, "daemon", "--profile", "alice", "--profile", "bob", *args]
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None and proc.stdout is not None
        d = Daemon(proc, Lines(proc.stderr), home, alice, bob, f"carol_{suffix}")
        if stdio:
            d.stdout = Lines(proc.stdout)
        started.append(d)
        d.stderr.until(lambda line: "saltline daemon: ready" in line)
        return d

    yield start
    for d in started:
        for child in d.children:
            child.kill()
            child.wait(5)
        if d.proc.poll() is None:
            d.proc.terminate()
            try:
                d.proc.wait(15)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(5)


def _http_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path, *extra: str) -> Daemon:
    port = free_port()
    token_file = tmp_path / "daemon-state" / "token"
    sock = tmp_path / "sock" / "saltline.sock"
    d = start_daemon(
        "--http", f"127.0.0.1:{port}", "--token-file", str(token_file), "--socket", str(sock), *extra
    )
    d.port, d.socket = port, sock
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    d.token = token_file.read_text().strip()
    return d


def _sse(d: Daemon, *query: str) -> Lines:
    """``curl -N`` on GET /events; returns once the stream says it is subscribed."""
    assert CURL is not None
    url = f"http://127.0.0.1:{d.port}/events" + ("?" + "&".join(query) if query else "")
    proc = subprocess.Popen(
        [CURL, "-sS", "-N", "-H", f"Authorization: Bearer {d.token}", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    d.children.append(proc)
    assert proc.stdout is not None
    lines = Lines(proc.stdout)
    lines.until(lambda line: line.startswith("event: subscribed"))
    assert "subscription" in json.loads(lines.get().removeprefix("data: "))
    return lines


def _event(lines: Lines, kind: str, **fields: Any) -> dict[str, Any]:
    """The next SSE ``data:`` line of an event of type ``kind`` whose fields include ``fields``."""
    while True:
        line = lines.until(lambda x: x.startswith("data: "))
        data: dict[str, Any] = json.loads(line[len("data: ") :])
        if data["type"] == kind and all(data["event"].get(k) == v for k, v in fields.items()):
            return data


@needs_curl
def test_http_with_curl_rpc_and_sse(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = _http_daemon(start_daemon, tmp_path, "--max-body", "4096")
    served = {p["profile"]: p for p in d.rpc("profiles")}
    assert served["alice"]["username"] == d.alice and served["bob"]["username"] == d.bob

    bob_events = _sse(d, "profile=bob")
    cid = d.rpc("create_conversation", profile="alice", usernames=[d.bob])["conversation_id"]
    sent = d.rpc("send", profile="alice", conversation_id=cid, text="hello from curl")
    assert sent["status"] in ("sent", "pending") and sent["envelope_id"]
    got = _event(bob_events, "MessageReceived", text="hello from curl")
    assert got["profile"] == "bob" and got["event"]["conversation_id"] == cid
    assert got["event"]["sender_username"] == d.alice and got["event"]["envelope_id"] == sent["envelope_id"]

    # bob's view, then a reaction and an edit flowing back as events
    [message] = d.rpc("messages", profile="bob", conversation_id=cid)
    assert message["text"] == "hello from curl" and message["sender"]["username"] == d.alice
    alice_events = _sse(d, "profile=alice")
    d.rpc("react", profile="bob", conversation_id=cid, message_ref=message["message_ref"], emoji="👍")
    reaction = _event(alice_events, "ReactionChanged", message_ref=message["message_ref"])
    assert [r["emoji"] for r in reaction["event"]["reactions"]] == ["👍"]
    d.rpc(
        "edit", profile="alice", conversation_id=cid, message_ref=message["message_ref"], text="hello, edited"
    )
    _event(bob_events, "MessageEdited", message_ref=message["message_ref"], text="hello, edited")
    [message] = d.rpc("messages", profile="bob", conversation_id=cid)
    assert message["edited"] and message["text"] == "hello, edited"
    assert message["reactions"] == [
        {"account_id": served["bob"]["account_id"], "username": d.bob, "emoji": "👍"}
    ]
    [conversation] = d.rpc("conversations", profile="bob")
    assert conversation["conversation_id"] == cid and conversation["unread"] == 1
    assert {m["username"] for m in conversation["members"]} == {d.alice, d.bob}
    safety = d.rpc("safety_number", profile="alice", username=d.bob)
    assert len(safety["digits"]) == 60 and safety["verified"] is False
    assert d.rpc("verify", profile="alice", username=d.bob)["verified"] is True
    assert d.rpc("safety_number", profile="alice", username=d.bob)["verified"] is True
    [device] = d.rpc("devices", profile="alice")
    assert device["this_device"] is True

    # errors: JSON-RPC codes, the SDK's errors with a stable data.code
    assert d.error("nope", profile="alice")["code"] == -32601
    assert d.error("send", profile="alice", conversation_id=cid)["code"] == -32602  # no text
    assert d.error("send", conversation_id=cid, text="x")["code"] == -32602  # which profile?
    assert d.error("send", profile="carol", conversation_id=cid, text="x")["code"] == -32602
    assert d.error("send", profile="alice", conversation_id=cid, text="x", colour="red")["code"] == -32602
    unknown = d.error("edit", profile="alice", conversation_id=cid, message_ref="nope", text="x")
    assert unknown["code"] == -32000 and unknown["data"]["code"] == "usage", unknown
    assert d.error("subscribe")["code"] == -32601  # HTTP has GET /events instead
    url = f"http://127.0.0.1:{d.port}/rpc"
    status, text = d.curl(url, body="{not json")
    assert status == 200 and json.loads(text)["error"]["code"] == -32700
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "profiles"},
        {"jsonrpc": "2.0", "method": "profiles"},  # a notification: no answer
        {"jsonrpc": "1.0", "id": "c", "method": "profiles"},
    ]
    status, text = d.curl(url, body=batch)
    answers = json.loads(text)
    assert [a["id"] for a in answers] == ["a", "c"] and answers[1]["error"]["code"] == -32600
    assert d.curl(url, body={"jsonrpc": "2.0", "method": "profiles"})[0] == 204

    # HTTP's own refusals: no token, a wrong token, a body over --max-body, unknown paths
    assert d.curl(url, body={"jsonrpc": "2.0", "id": 1, "method": "profiles"}, token=False)[0] == 401
    assert d.curl(url, "-H", "Authorization: Bearer wrong", body="{}", token=False)[0] == 401
    assert d.curl(url, body="x" * 5000)[0] == 413
    assert d.curl(f"http://127.0.0.1:{d.port}/nowhere")[0] == 404
    assert d.curl(url)[0] == 405  # GET /rpc
    assert d.curl(f"http://127.0.0.1:{d.port}/events?profile=carol")[0] == 404


@needs_curl
def test_unix_socket_http_and_json_lines(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = _http_daemon(start_daemon, tmp_path)
    assert d.socket is not None
    assert stat.S_ISSOCK(d.socket.stat().st_mode) and stat.S_IMODE(d.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o700
    # curl on the socket: HTTP without a token (the socket's mode is the access check)
    assert {p["profile"] for p in d.rpc("profiles", via="unix")} == {"alice", "bob"}
    cid = d.rpc("create_conversation", via="unix", profile="bob", usernames=[d.alice])["conversation_id"]

    # JSON lines on the socket (socat, a non-Python client; a plain socket where it is missing)
    conn = _LineSocket(d.socket)
    try:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"profiles": ["alice"]}})
        subscribed = conn.receive()
        assert subscribed["id"] == 1, subscribed
        sub_id = subscribed["result"]["subscription"]
        conn.send_raw("this is not json")
        answer = conn.receive()
        while answer.get("method") == "event":  # the subscription may notify first (bob's new chat)
            answer = conn.receive()
        assert answer["error"]["code"] == -32700, answer
        sent = d.rpc("send", via="unix", profile="bob", conversation_id=cid, text="over the socket")
        while True:
            note = conn.receive()
            if note.get("method") == "event" and note["params"]["type"] == "MessageReceived":
                break
        assert note["params"]["subscription"] == sub_id and note["params"]["profile"] == "alice"
        assert note["params"]["event"]["text"] == "over the socket"
        assert note["params"]["event"]["envelope_id"] == sent["envelope_id"]
        conn.send({"jsonrpc": "2.0", "id": 2, "method": "unsubscribe", "params": {"subscription": sub_id}})
        while (answer := conn.receive()).get("id") != 2:
            pass
        assert answer["result"] == {"subscription": sub_id}
    finally:
        conn.close()


class _LineSocket:
    def __init__(self, path: Path) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.sock: socket.socket | None = None
        socat = shutil.which("socat")
        if socat is None and os.environ.get("CI"):
            pytest.fail("socat is required in CI (.ci/run installs it)")
        if socat is not None:
            self.proc = subprocess.Popen(
                [socat, "-", f"UNIX-CONNECT:{path}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert self.proc.stdout is not None
            self.lines = Lines(self.proc.stdout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(path))
            self.lines = Lines(self.sock.makefile("r", encoding="utf-8"))

    def send_raw(self, text: str) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        else:
            assert self.sock is not None
            self.sock.sendall((text + "\n").encode())

    def send(self, message: Any) -> None:
        self.send_raw(json.dumps(message))

    def receive(self) -> dict[str, Any]:
        line = self.lines.get()
        assert line, "the daemon closed the connection"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
        if self.sock is not None:
            self.sock.close()


def test_stdio(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon("--stdio", stdio=True)
    assert d.proc.stdin is not None and d.stdout is not None
    out = d.stdout

    def call(request: Any) -> Any:
        assert d.proc.stdin is not None
        d.proc.stdin.write(json.dumps(request) + "\n")
        d.proc.stdin.flush()
        while True:
            answer = json.loads(out.get())
            if isinstance(answer, list) or answer.get("id") is not None or "error" in answer:
                return answer

    sub = call({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"profiles": ["bob"]}})
    cid = call(
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "create_conversation",
            "params": {"profile": "alice", "usernames": [d.bob]},
        }
    )["result"]["conversation_id"]
    [sent, missing] = call(
        [
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "send",
                "params": {"profile": "alice", "conversation_id": cid, "text": "piped"},
            },
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "send",
                "params": {"profile": "alice", "text": "no conversation"},
            },
        ]
    )
    assert sent["result"]["envelope_id"] and missing["error"]["code"] == -32602
    while True:
        note = json.loads(out.get())
        if note.get("method") == "event" and note["params"]["type"] == "MessageReceived":
            break
    assert note["params"]["subscription"] == sub["result"]["subscription"]
    assert note["params"]["event"]["text"] == "piped" and note["params"]["profile"] == "bob"
    d.proc.stdin.close()  # the end of input stops the daemon
    assert d.proc.wait(WAIT_S) == 0


@needs_curl
def test_groups_files_replies_and_deletes_over_http(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = _http_daemon(start_daemon, tmp_path)
    bob_events, alice_events = _sse(d, "profile=bob"), _sse(d, "profile=alice")
    gid = d.rpc("create_conversation", profile="alice", usernames=[d.bob, d.carol])["conversation_id"]
    group = d.rpc("members", profile="alice", conversation_id=gid)
    assert group["kind"] == "group"
    assert {(m["username"], m["admin"]) for m in group["members"]} == {
        (d.alice, True),
        (d.bob, False),
        (d.carol, False),
    }

    d.rpc("send", profile="alice", conversation_id=gid, text="welcome")
    _event(bob_events, "MessageReceived", conversation_id=gid, text="welcome")
    assert d.rpc("typing", profile="alice", conversation_id=gid) == {"typing": True}
    _event(bob_events, "TypingChanged", conversation_id=gid, typing=True)
    d.rpc("title", profile="alice", conversation_id=gid, title="Plans")
    _event(bob_events, "SettingsChanged", conversation_id=gid, field="title", value="Plans")
    [welcome] = d.rpc("messages", profile="bob", conversation_id=gid)
    d.rpc("reply", profile="bob", conversation_id=gid, message_ref=welcome["message_ref"], text="thanks")
    _event(alice_events, "MessageReceived", conversation_id=gid, text="thanks")
    shown = d.rpc("messages", profile="alice", conversation_id=gid)
    assert [(m["text"], m["reply_to"]) for m in shown] == [
        ("welcome", None),
        ("thanks", welcome["message_ref"]),
    ]
    d.rpc("delete", profile="alice", conversation_id=gid, message_ref=welcome["message_ref"])
    _event(bob_events, "MessageDeleted", message_ref=welcome["message_ref"])
    deleted = d.rpc("messages", profile="bob", conversation_id=gid)[0]
    assert deleted["deleted"] and deleted["text"] is None

    # a file: sent from a path, received as an attachment object, downloaded with it
    report = tmp_path / "report.txt"
    report.write_bytes(os.urandom(5000))
    d.rpc("send_file", profile="alice", conversation_id=gid, path=str(report), caption="the report")
    got = _event(bob_events, "MessageReceived", conversation_id=gid, text="the report")
    attachment = got["event"]["attachment"]
    assert attachment["name"] == "report.txt" and attachment["size"] == 5000
    into = tmp_path / "downloads"
    into.mkdir()
    path = d.rpc("download", profile="bob", attachment=attachment, destination=str(into))["path"]
    assert Path(path).read_bytes() == report.read_bytes()

    d.rpc("read", profile="bob", conversation_id=gid)
    [listed] = d.rpc("conversations", profile="bob")
    assert listed["title"] == "Plans" and listed["unread"] == 0 and listed["kind"] == "group"
    d.rpc("mute", profile="bob", conversation_id=gid, muted=True)
    not_admin = d.error("remove_member", profile="bob", conversation_id=gid, username=d.carol)
    assert not_admin["code"] == -32000 and not_admin["data"]["code"] == "not_allowed", not_admin
    d.rpc("remove_member", profile="alice", conversation_id=gid, username=d.carol)
    changed = _event(bob_events, "MembershipChanged", conversation_id=gid)
    assert len(changed["event"]["members"]) == 2
    remaining = d.rpc("members", profile="bob", conversation_id=gid)["members"]
    assert {m["username"] for m in remaining} == {d.alice, d.bob}
    d.rpc("leave", profile="bob", conversation_id=gid)
    changed = _event(alice_events, "MembershipChanged", conversation_id=gid)
    while len(changed["event"]["members"]) != 1:  # carol's removal came first
        changed = _event(alice_events, "MembershipChanged", conversation_id=gid)
    left = d.rpc("members", profile="alice", conversation_id=gid)["members"]
    assert [m["username"] for m in left] == [d.alice]


@needs_curl
def test_review_hardening_end_to_end(
    start_daemon: Callable[..., Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile review's findings on the real CLI: ``--socket default`` in XDG_RUNTIME_DIR,
    the Host allowlist, 404s without hints, the ``messages`` cap, a lone surrogate refused as a
    UsageError, and the socket and this run's token removed at exit."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))  # the daemon's environment is ours
    port = free_port()
    token_file = tmp_path / "state" / "token"
    d = start_daemon("--http", f"127.0.0.1:{port}", "--token-file", str(token_file), "--socket", "default")
    d.port, d.token, d.socket = port, token_file.read_text().strip(), runtime / "saltline" / "daemon.sock"
    assert stat.S_ISSOCK(d.socket.lstat().st_mode) and stat.S_IMODE(d.socket.lstat().st_mode) == 0o600
    assert stat.S_IMODE(d.socket.parent.stat().st_mode) == 0o700
    profiles = {"jsonrpc": "2.0", "id": 1, "method": "profiles"}
    status, text = d.curl(f"http://127.0.0.1:{port}/rpc", "-H", "Host: rebound.example", body=profiles)
    assert status == 421, text
    status, _ = d.curl(f"http://127.0.0.1:{port}/rpc", "-H", f"Host: localhost:{port}", body=profiles)
    assert status == 200
    status, text = d.curl(f"http://127.0.0.1:{port}/admin", token=False)
    assert status == 404 and "/rpc" not in text and "/admin" not in text
    cid = d.rpc("create_conversation", profile="bob", usernames=[d.alice])["conversation_id"]
    too_many = d.error("messages", profile="bob", conversation_id=cid, limit=1001)
    assert too_many["code"] == -32602 and "before_server_seq" in too_many["message"]
    assert d.rpc("messages", profile="bob", conversation_id=cid, limit=1000, before_server_seq=1) == []
    surrogate = d.error("send", profile="bob", conversation_id=cid, text="boom \ud800")
    assert surrogate["code"] == -32000 and surrogate["data"]["code"] == "usage"
    assert d.rpc("send", via="unix", profile="bob", conversation_id=cid, text="fine")["status"] == "sent"
    d.proc.terminate()
    d.proc.wait(WAIT_S)
    assert not d.socket.exists() and not token_file.exists()
