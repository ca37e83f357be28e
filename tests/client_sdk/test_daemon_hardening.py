"""The daemon's bounds and checks from the hostile review of issue 15, on real sockets: the socket
and token directories (StrictModes), HTTP heads (timeout, byte budget, Content-Length, Host),
the connection cap, JSON that nests too deep or holds lone surrogates and U+2028, answers too
large, batches in the in-flight budget, subscription caps and byte budgets, and writes to
closed connections."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from saltline.client_sdk.daemon.http import HttpHandler
from saltline.client_sdk.daemon.hub import Hub
from saltline.client_sdk.daemon.methods import build_methods
from saltline.client_sdk.daemon.rpc import Dispatcher
from saltline.client_sdk.daemon.server import Daemon, Options, prepare_socket_path, write_token
from saltline.client_sdk.daemon.stream import MAX_IN_FLIGHT, MAX_SUBSCRIPTIONS, StreamConnection
from saltline.client_sdk.errors import UsageError


class StubClient:
    """What the hub needs of a client: an event stream that never ends, and a connect."""

    device_id = "DEV"
    username = "bob"
    account_id = "ACC"

    async def connect(self) -> None:
        return None

    async def events(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None  # pragma: no cover


# -- the socket's and the token's directories ---------------------------------------------------------


def test_a_symlinked_socket_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        prepare_socket_path(tmp_path / "link" / "d.sock")
    with pytest.raises(UsageError, match="symbolic link"):
        write_token(tmp_path / "link" / "token")


def test_an_ancestor_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # not sticky: anyone may rename "alice" away and put theirs
    (shared / "alice").mkdir(mode=0o700)
    with pytest.raises(UsageError, match="writable by others"):
        prepare_socket_path(shared / "alice" / "d.sock")
    with pytest.raises(UsageError, match="writable by others"):
        write_token(shared / "alice" / "token")
    os.chmod(shared, 0o1777)  # sticky (as /tmp): others cannot rename what is not theirs
    assert prepare_socket_path(shared / "alice" / "d.sock") == (shared / "alice" / "d.sock").resolve()


def test_ancestors_are_checked_on_the_real_path(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "alice").mkdir(parents=True, mode=0o700)
    os.chmod(shared, 0o777)
    (tmp_path / "alias").symlink_to(shared)  # an ancestor that is a link: its target is checked
    with pytest.raises(UsageError, match="writable by others"):
        prepare_socket_path(tmp_path / "alias" / "alice" / "d.sock")


async def _running(options: Options) -> tuple[Daemon, asyncio.Task[None]]:
    daemon = Daemon(Hub({"bob": StubClient()}), options)  # type: ignore[dict-item]
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert daemon.ready.is_set()
    return daemon, task


async def _stopped(daemon: Daemon, task: asyncio.Task[None]) -> None:
    daemon.stop()
    await asyncio.wait_for(task, 10)


async def test_socket_0600_at_the_real_path_and_token_removed_at_exit(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    (tmp_path / "via").symlink_to(tmp_path)  # an ancestor link is fine (its target is checked)
    options = Options(
        socket_path=tmp_path / "via" / "dir" / "d.sock",
        http=("127.0.0.1", 0),
        token_file=tmp_path / "tok" / "token",
    )
    daemon, task = await _running(options)
    real = (tmp_path / "dir" / "d.sock").resolve()
    assert daemon.socket_path == real
    assert stat.S_IMODE(os.lstat(real).st_mode) == 0o600 and stat.S_ISSOCK(os.lstat(real).st_mode)
    assert stat.S_IMODE((tmp_path / "tok").stat().st_mode) == 0o700
    assert (tmp_path / "tok" / "token").exists()
    await _stopped(daemon, task)
    assert not real.exists() and not (tmp_path / "tok" / "token").exists()


async def test_a_token_file_rewritten_by_another_run_is_left(tmp_path: Path) -> None:
    options = Options(http=("127.0.0.1", 0), token_file=tmp_path / "tok" / "token")
    daemon, task = await _running(options)
    (tmp_path / "tok" / "token").write_text("another run's token\n")
    await _stopped(daemon, task)
    assert (tmp_path / "tok" / "token").read_text() == "another run's token\n"


# -- HTTP heads on a real socket ------------------------------------------------------------------------

AUTH = b"Authorization: Bearer s3cret\r\n"
HOST = b"Host: 127.0.0.1:8080\r\n"


async def _serve(handler: HttpHandler, *, limit: int = 8192) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler.handle, "127.0.0.1", 0, limit=limit)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(handler: HttpHandler, raw: bytes) -> bytes:
    server, port = await _serve(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data
    finally:
        server.close()


def _handler(**kw: Any) -> HttpHandler:
    hub = Hub({"a": StubClient()})  # type: ignore[dict-item]
    return HttpHandler(hub, Dispatcher(build_methods(hub, notifications=False)), token="s3cret", **kw)


async def test_a_head_that_does_not_arrive_in_time_is_cut_off() -> None:
    # half a head, then nothing: the daemon answers 408 and closes (we wait on that close)
    out = await _exchange(_handler(head_timeout=0.2), b"GET /events HTTP/1.1\r\nX-Slow: a")
    assert out.startswith(b"HTTP/1.1 408 "), out


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # each line under 8 KiB, together over the 16 KiB budget of a head
        (b"POST /rpc HTTP/1.1\r\n" + (b"X: " + b"a" * 7000 + b"\r\n") * 3 + b"\r\n", b"431"),
        (b"POST /rpc HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),  # a line over 8 KiB
        (b"POST /rpc HTTP/1.1\r\n" + HOST + AUTH + "Content-Length: ²\r\n\r\n".encode(), b"400"),
        (b"POST /rpc HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", b"400"),
        (b"POST /rpc HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: 12345678901\r\n\r\n", b"400"),
        (b"POST /rpc HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: -1\r\n\r\n", b"400"),
        (b"POST /rpc HTTP/1.1\r\nHost: evil.example\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"421"),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"421"),  # no Host
        (b"POST /rpc HTTP/1.1\r\nHost: localhost:8080\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"200"),
        (b"POST /rpc HTTP/1.1\r\nHost: [::1]:80\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"200"),
        (b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"200"),
    ],
)
async def test_head_bounds_content_length_and_host(raw: bytes, status: bytes) -> None:
    hosts = frozenset({"127.0.0.1", "localhost", "[::1]"})
    out = await _exchange(_handler(allowed_hosts=hosts), raw)
    assert out.startswith(b"HTTP/1.1 " + status + b" "), out[:200]


async def test_unauthenticated_404_names_no_path() -> None:
    out = await _exchange(_handler(), b"GET /admin/secret HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 ") and b"/rpc" not in out and b"/admin" not in out


async def test_a_bug_in_a_route_is_a_500_json_answer() -> None:
    handler = _handler()

    async def broken(*args: Any) -> None:
        raise RuntimeError("secret internals")

    handler._route = broken  # type: ignore[method-assign]
    out = await _exchange(handler, b"POST /rpc HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 ") and b"secret" not in out
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error"].startswith("internal error")


async def test_connections_over_the_cap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir(mode=0o700)
    options = Options(
        socket_path=tmp_path / "s" / "d.sock",
        http=("127.0.0.1", 0),
        token_file=tmp_path / "t" / "token",
        max_connections=2,
        head_timeout=30,
    )
    daemon, task = await _running(options)
    assert daemon.http_address is not None and daemon.socket_path is not None
    try:
        held = [await asyncio.open_connection(*daemon.http_address) for _ in range(2)]
        reader, writer = await asyncio.open_connection(*daemon.http_address)
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 503 ")
        reader, writer = await asyncio.open_unix_connection(str(daemon.socket_path))
        refused = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert refused["error"]["data"]["code"] == "busy"
        for _, w in held:  # the held ones close: room again
            w.close()
        await asyncio.wait_for(_until(lambda: daemon.connections == 0), 10)
        reader, writer = await asyncio.open_unix_connection(str(daemon.socket_path))
        writer.write(b'{"jsonrpc":"2.0","id":1,"method":"profiles"}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 1
        writer.close()
    finally:
        await _stopped(daemon, task)


async def _until(condition: Any) -> None:
    # state the daemon changes when a peer's close is processed (no event to wait on): yield to
    # the loop until it shows; the caller's wait_for bounds it, no sleep of a chosen length
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def test_the_socket_first_line_is_under_the_head_timeout(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir(mode=0o700)
    options = Options(socket_path=tmp_path / "s" / "d.sock", head_timeout=0.2)
    daemon, task = await _running(options)
    assert daemon.socket_path is not None
    try:
        reader, writer = await asyncio.open_unix_connection(str(daemon.socket_path))
        writer.write(b'{"jsonrpc":')  # no newline, ever
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the daemon
        writer.close()
    finally:
        await _stopped(daemon, task)


async def test_the_socket_holds_http_heads_small_and_json_lines_long(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir(mode=0o700)
    daemon, task = await _running(Options(socket_path=tmp_path / "s" / "d.sock", max_body=200_000))
    assert daemon.socket_path is not None
    path = str(daemon.socket_path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /rpc HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 431 ")
        writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")  # the first line too
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 431 ")
        writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
        pad = "p" * 100_000  # a JSON line far over the 8 KiB of a head line, under --max-body
        writer.write(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "profiles", "pad": pad}).encode() + b"\n"
        )
        assert json.loads(await asyncio.wait_for(reader.readline(), 10))["id"] == 1
        writer.write(b'{"jsonrpc":"2.0","id":2,"method":"profiles","x":"' + b"y" * 250_000 + b'"}\n')
        assert json.loads(await asyncio.wait_for(reader.readline(), 10))["error"]["code"] == -32600
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then the connection ends
        writer.close()
    finally:
        await _stopped(daemon, task)


# -- JSON: depth, surrogates, line separators, answer size ----------------------------------------------


async def _echo(params: dict[str, Any], peer: Any) -> Any:
    return params


async def test_deep_nesting_is_a_parse_error() -> None:
    dispatcher: Dispatcher[None] = Dispatcher({"echo": _echo})
    out = await dispatcher.handle_text("[" * 100_000 + "]" * 100_000, None)
    assert out is not None and json.loads(out)["error"]["code"] == -32700


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\ud800", "\udfff", "é"])
async def test_answers_are_one_ascii_line(char: str) -> None:
    dispatcher: Dispatcher[None] = Dispatcher({"echo": _echo})
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"t": f"a{char}b"}})
    out = await dispatcher.handle_text(text, None)
    assert out is not None and out.isascii() and len(out.splitlines()) == 1
    assert json.loads(out)["result"] == {"t": f"a{char}b"}


async def test_an_answer_over_the_cap_is_refused_with_a_stable_code() -> None:
    dispatcher: Dispatcher[None] = Dispatcher({"echo": _echo}, max_result=200)
    big = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "echo", "params": {"t": "x" * 300}})
    answer = json.loads(await dispatcher.handle_text(big, None) or "null")
    assert answer["id"] == 7 and answer["error"]["code"] == -32000
    assert answer["error"]["data"]["code"] == "result_too_large"
    small = {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"t": "x" * 60}}
    batch = json.dumps([dict(small, id=n) for n in range(5)])  # each fits, together they do not
    answers = json.loads(await dispatcher.handle_text(batch, None) or "null")
    assert [a["id"] for a in answers] == list(range(5))
    assert "result" in answers[0] and answers[-1]["error"]["data"]["code"] == "result_too_large"
    assert len(json.dumps(answers)) < 200 + 5 * 250


async def test_a_batch_counts_each_request_against_the_in_flight_budget() -> None:
    release = asyncio.Event()
    started: list[int] = []

    async def block(params: dict[str, Any], peer: Any) -> Any:
        started.append(params["n"])
        await release.wait()
        return params["n"]

    hub = Hub({"a": StubClient()})  # type: ignore[dict-item]
    written: list[Any] = []
    conn = StreamConnection(hub, Dispatcher({"block": block}), _collect(written))
    reader = asyncio.StreamReader()
    serving = asyncio.create_task(conn.serve(reader))
    batch = [{"jsonrpc": "2.0", "id": n, "method": "block", "params": {"n": n}} for n in range(MAX_IN_FLIGHT)]
    reader.feed_data(json.dumps(batch).encode() + b"\n")
    reader.feed_data(b'{"jsonrpc":"2.0","id":99,"method":"block","params":{"n":99}}\n')
    await asyncio.wait_for(_until(lambda: started == [0]), 10)
    for _ in range(50):  # however long we let it run, the single request waits for a slot
        await asyncio.sleep(0)
    assert 99 not in started
    release.set()
    reader.feed_eof()
    await asyncio.wait_for(serving, 10)
    assert 99 in started and any(isinstance(w, dict) and w.get("id") == 99 for w in written)


def _collect(into: list[Any]) -> Any:
    async def write(data: bytes) -> None:
        into.extend(json.loads(line) for line in data.splitlines())

    return write


# -- subscriptions -----------------------------------------------------------------------------------------


async def test_subscriptions_are_capped_per_connection_and_in_all() -> None:
    hub = Hub({"a": StubClient()}, max_subscribers=MAX_SUBSCRIPTIONS + 2)  # type: ignore[dict-item]
    written: list[Any] = []
    dispatcher = Dispatcher(build_methods(hub, notifications=True))
    conn = StreamConnection(hub, dispatcher, _collect(written))
    sub = {"jsonrpc": "2.0", "method": "subscribe"}
    for n in range(MAX_SUBSCRIPTIONS + 1):
        await conn._answer(_parsed(dict(sub, id=n)), 0)
    assert all("result" in w for w in written[:MAX_SUBSCRIPTIONS])
    assert written[-1]["error"]["data"]["code"] == "too_many_subscriptions"
    other = StreamConnection(hub, dispatcher, _collect(written))
    for n in range(3):
        await other._answer(_parsed(dict(sub, id=100 + n)), 0)
    assert [("result" in w) for w in written[-3:]] == [True, True, False]
    assert written[-1]["error"]["data"]["code"] == "too_many_subscriptions"
    assert len(hub.subscribers) == MAX_SUBSCRIPTIONS + 2
    await conn.close()
    await other.close()
    assert not hub.subscribers


def _parsed(message: Any) -> Any:
    from saltline.client_sdk.daemon.rpc import parse

    return parse(json.dumps(message))


def test_a_subscriber_over_its_byte_budget_is_dropped() -> None:
    hub = Hub({"a": StubClient()}, queue_limit=1000, queue_bytes=1000)  # type: ignore[dict-item]
    sub = hub.subscribe()
    hub.broadcast("a", {"t": "x" * 400})
    hub.broadcast("a", {"t": "x" * 400})
    assert not sub.dropped and sub.queued_bytes > 800
    hub.broadcast("a", {"t": "x" * 400})
    assert sub.dropped and sub.queue.qsize() == 1 and "bytes" in sub.queue.get_nowait()["reason"]


async def test_a_bad_event_is_skipped_and_writes_stop_at_a_closed_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "s").mkdir(mode=0o700)
    daemon, task = await _running(Options(socket_path=tmp_path / "s" / "d.sock"))
    hub = daemon.hub
    assert daemon.socket_path is not None
    try:
        reader, writer = await asyncio.open_unix_connection(str(daemon.socket_path))
        writer.write(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
        await asyncio.wait_for(reader.readline(), 10)
        hub.broadcast("bob", {"type": "X", "text": "evil \udc80 \u2028"})
        hub.broadcast("bob", {"type": "X", "bad": object()})  # JSON cannot hold it: skipped, logged
        hub.broadcast("bob", {"type": "X", "text": "fine"})
        first = await asyncio.wait_for(reader.readline(), 10)
        assert first.isascii() and json.loads(first)["params"]["text"] == "evil \udc80 \u2028"
        assert json.loads(await asyncio.wait_for(reader.readline(), 10))["params"]["text"] == "fine"
        for n in range(2, 12):  # more subscriptions: each would write to the lost connection
            writer.write(b'{"jsonrpc":"2.0","id":%d,"method":"subscribe"}\n' % n)
            await asyncio.wait_for(reader.readline(), 10)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            writer.transport.abort()  # gone while events keep coming
            for n in range(300):
                hub.broadcast("bob", {"type": "X", "n": n})
                await asyncio.sleep(0)
            await asyncio.wait_for(_until(lambda: not hub.subscribers), 10)
        assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]
    finally:
        await _stopped(daemon, task)


async def test_sse_escapes_surrogates_and_refuses_past_the_cap() -> None:
    hub = Hub({"a": StubClient()}, max_subscribers=1)  # type: ignore[dict-item]
    handler = HttpHandler(hub, Dispatcher({}), token="s3cret")
    server, port = await _serve(handler)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\n" + AUTH + b"\r\n")
        await asyncio.wait_for(reader.readuntil(b"event: subscribed\n"), 10)
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        hub.broadcast("a", {"type": "X", "text": "boom \ud800\u2029"})
        hub.broadcast("a", {"type": "X", "text": "next"})
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        assert first.isascii() and json.loads(first.removeprefix(b"data: "))["text"] == "boom \ud800\u2029"
        second = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        assert json.loads(second.removeprefix(b"data: "))["text"] == "next"
        out = await _exchange(handler, b"GET /events HTTP/1.1\r\n" + AUTH + b"\r\n")
        assert out.startswith(b"HTTP/1.1 503 ") and b"too many subscriptions" in out
        writer.close()
    finally:
        server.close()


# -- messages: a bounded page and a cursor -------------------------------------------------------------------


def _view_client(count: int) -> Any:
    messages = [
        SimpleNamespace(
            message_ref=f"AQEBAQEBAQEBAQEBAQEBAQ.{n}",
            seq=n,
            author="AgICAgICAgICAgICAgICAg",
            author_username="bob",
            text=f"m{n}",
            reply_to=None,
            sent_at_ms=n,
            edited=False,
            deleted=False,
            reactions=(),
            attachment=None,
        )
        for n in range(1, count + 1)
    ]

    async def conversation(cid: str) -> Any:
        return SimpleNamespace(messages=tuple(messages))

    store = SimpleNamespace(device_lists=SimpleNamespace(contacts=lambda: []))
    return SimpleNamespace(conversation=conversation, store=store, account_id="ACC", username="bob")


async def test_messages_is_paged_with_a_cap() -> None:
    from saltline.client_sdk.core import diff

    hub = Hub({"a": _view_client(1500)})
    dispatcher = Dispatcher(build_methods(hub, notifications=False))

    async def call(**params: Any) -> Any:
        text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "messages", "params": params})
        return json.loads(await dispatcher.handle_text(text, None) or "null")

    assert diff.message_ref is not None
    too_many = await call(conversation_id="C", limit=1001)
    assert too_many["error"]["code"] == -32602 and "1000" in too_many["error"]["message"]
    page = (await call(conversation_id="C", limit=1000))["result"]
    assert [m["server_seq"] for m in page] == list(range(501, 1501))
    older = (await call(conversation_id="C", limit=1000, before_server_seq=501))["result"]
    assert [m["server_seq"] for m in older] == list(range(1, 501))
    assert (await call(conversation_id="C"))["result"][0]["server_seq"] == 1401  # default: 100


def test_the_default_socket_is_in_the_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saltline.client_sdk.daemon.server import default_socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == tmp_path / "saltline" / "daemon.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_socket_path() == tmp_path / "home" / ".saltline" / "daemon.sock"
