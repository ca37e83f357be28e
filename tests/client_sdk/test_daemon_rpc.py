"""The daemon without a Saltline server: JSON-RPC 2.0 handling (table and property tests), the
parameter checks, the JSON codec, the bounded subscriber queues, HTTP's limits and SSE drops on
a real socket, and the socket/token file permissions."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.core.attachments import AttachmentPointer, padded_size
from saltline.client_sdk.core.events import MessageReceived
from saltline.client_sdk.daemon.codec import event_json, pointer_from_json, to_json
from saltline.client_sdk.daemon.http import HttpHandler
from saltline.client_sdk.daemon.hub import Hub
from saltline.client_sdk.daemon.params import Params
from saltline.client_sdk.daemon.rpc import Dispatcher, RpcError
from saltline.client_sdk.daemon.server import parse_http, prepare_socket_path, write_token
from saltline.client_sdk.errors import MessageTooLargeError, NotAllowedError, NotFoundError, UsageError
from saltline.crypto.errors import EncodingError
from saltline.crypto.keys import b64encode


async def _echo(params: dict[str, Any], peer: None) -> Any:
    return params


async def _raise(exc: BaseException) -> Any:
    raise exc


METHODS = {
    "echo": _echo,
    "usage": lambda p, peer: _raise(UsageError("call register first")),
    "not_allowed": lambda p, peer: _raise(NotAllowedError("not a member")),
    "too_large": lambda p, peer: _raise(MessageTooLargeError(70000, 65536, 2, 30000)),
    "server": lambda p, peer: _raise(NotFoundError(404, "conversation_not_found", "no such conversation")),
    "encoding": lambda p, peer: _raise(EncodingError("bad username")),
    "timeout": lambda p, peer: _raise(TimeoutError()),
    "bug": lambda p, peer: _raise(RuntimeError("secret internals")),
    "invalid": lambda p, peer: _raise(RpcError(-32602, "missing parameter: text")),
}
DISPATCH: Dispatcher[None] = Dispatcher(METHODS)


def answer(text: str) -> Any:
    out = asyncio.run(DISPATCH.handle_text(text, None))
    return None if out is None else json.loads(out)


def req(method: str, rid: Any = 1, **extra: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": method, "id": rid, **extra})


@pytest.mark.parametrize(
    ("text", "rid", "code"),
    [
        ("{not json", None, -32700),
        ("", None, -32700),
        ("[]", None, -32600),
        ("42", None, -32600),
        ('{"method": "echo", "id": 1}', 1, -32600),  # no "jsonrpc": "2.0"
        ('{"jsonrpc": "1.0", "method": "echo", "id": 2}', 2, -32600),
        ('{"jsonrpc": "2.0", "id": 3}', 3, -32600),  # no method
        ('{"jsonrpc": "2.0", "method": 5, "id": 4}', 4, -32600),
        ('{"jsonrpc": "2.0", "method": "echo", "id": true}', None, -32600),
        ('{"jsonrpc": "2.0", "method": "echo", "id": {"a": 1}}', None, -32600),
        ('{"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 5}', 5, -32600),
        (req("nope", 6), 6, -32601),
        (req("echo", 7, params=[1, 2]), 7, -32602),  # positional params are not taken
        (req("invalid", "s"), "s", -32602),
        (req("usage", 8), 8, -32000),
        (req("bug", 9), 9, -32603),
    ],
)
def test_error_codes(text: str, rid: Any, code: int) -> None:
    out = answer(text)
    assert out["jsonrpc"] == "2.0" and out["id"] == rid and "result" not in out
    assert out["error"]["code"] == code and isinstance(out["error"]["message"], str)


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("usage", {"code": "usage", "type": "UsageError"}),
        ("not_allowed", {"code": "not_allowed", "type": "NotAllowedError"}),
        ("too_large", {"code": "message_too_large", "type": "MessageTooLargeError"}),
        (
            "server",
            {
                "code": "not_found",
                "type": "NotFoundError",
                "status": 404,
                "server_code": "conversation_not_found",
            },
        ),
        ("encoding", {"code": "encoding", "type": "EncodingError"}),
        ("timeout", {"code": "timeout", "type": "TimeoutError"}),
    ],
)
def test_saltline_errors_carry_a_stable_code(method: str, data: dict[str, Any]) -> None:
    error = answer(req(method))["error"]
    assert error["code"] == -32000 and error["data"] == data and error["message"]


def test_internal_errors_do_not_leak() -> None:
    error = answer(req("bug"))["error"]
    assert "secret" not in json.dumps(error)


def test_results_notifications_and_batches() -> None:
    assert answer(req("echo", 1, params={"a": [1]})) == {"jsonrpc": "2.0", "result": {"a": [1]}, "id": 1}
    assert answer(req("echo", None)) == {"jsonrpc": "2.0", "result": {}, "id": None}  # null id: answered
    assert answer(req("echo", 1, params=[])) == {"jsonrpc": "2.0", "result": {}, "id": 1}
    notification = json.dumps({"jsonrpc": "2.0", "method": "usage"})
    assert answer(notification) is None  # errors of notifications are not answered either
    assert answer(f"[{notification}, {notification}]") is None
    batch = answer(f"[{req('echo', 'a')}, {notification}, 1, {req('nope', 'b')}]")
    assert [(a.get("id"), "error" in a) for a in batch] == [("a", False), (None, True), ("b", True)]
    assert batch[1]["error"]["code"] == -32600 and batch[2]["error"]["code"] == -32601
    too_long = answer(json.dumps([json.loads(req("echo", i)) for i in range(101)]))
    assert too_long["error"]["code"] == -32600


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
REQUEST = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0"]), "method": st.sampled_from([*list(METHODS), "nope"])},
    optional={"id": JSON, "params": JSON},
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(JSON, REQUEST, st.lists(REQUEST, max_size=4)))
def test_every_message_gets_a_well_formed_answer_or_none(message: Any) -> None:
    """Whatever arrives, the answer is JSON-RPC 2.0: one object (or a list of them), each with
    exactly one of result and error and the request's id when it was a valid one; only
    notifications go unanswered."""
    out = answer(json.dumps(message))
    if out is None:
        items = message if isinstance(message, list) else [message]
        assert all(isinstance(m, dict) and "id" not in m for m in items)
        return
    for a in out if isinstance(out, list) else [out]:
        assert a["jsonrpc"] == "2.0" and ("result" in a) != ("error" in a) and "id" in a
        if "error" in a:
            assert isinstance(a["error"]["code"], int) and isinstance(a["error"]["message"], str)


# -- params ----------------------------------------------------------------------------------------


def test_params_check_types_and_unknown_names() -> None:
    p = Params({"text": "hi", "n": 3, "flag": True, "names": ["a"], "extra": 1})
    assert (p.string("text"), p.integer("n"), p.flag("flag"), p.strings("names")) == ("hi", 3, True, ["a"])
    assert p.opt_string("absent") is None and p.opt_integer("absent") is None
    with pytest.raises(RpcError, match="unknown parameter"):
        p.done()
    for params, read in [
        ({}, lambda p: p.string("text")),
        ({"text": ""}, lambda p: p.string("text")),
        ({"text": 5}, lambda p: p.string("text")),
        ({"n": True}, lambda p: p.integer("n")),
        ({"n": -1}, lambda p: p.integer("n")),
        ({"n": 1.5}, lambda p: p.integer("n")),
        ({"flag": "yes"}, lambda p: p.flag("flag")),
        ({"names": []}, lambda p: p.strings("names")),
        ({"names": ["a", 1]}, lambda p: p.strings("names")),
        ({"o": []}, lambda p: p.obj("o")),
    ]:
        with pytest.raises(RpcError) as info:
            read(Params(params))
        assert info.value.code == -32602


# -- codec -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inner:
    raw: bytes
    pairs: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class _Outer:
    inner: _Inner
    keyed: dict[bytes, int]
    members: frozenset[bytes]
    maybe: str | None


def _pointer() -> AttachmentPointer:
    size = 1234
    return AttachmentPointer(
        b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, padded_size(size), size, "a b.txt", "text/plain"
    )


def test_codec_is_generic() -> None:
    value = _Outer(_Inner(b"\xff\x00", (("a", 1),)), {b"\x00": 1}, frozenset({b"\x01", b"\x00"}), None)
    assert to_json(value) == {
        "inner": {"raw": "_wA", "pairs": [["a", 1]]},
        "keyed": {"AA": 1},
        "members": ["AA", "AQ"],
        "maybe": None,
    }
    event = MessageReceived("c", "dev.1", "acc", "dev", "alice", "hi", "env", 3, 99, False, _pointer())
    shown = event_json(event, "desk")
    assert shown["profile"] == "desk" and shown["type"] == "MessageReceived"
    assert shown["event"]["text"] == "hi" and shown["event"]["attachment"]["id"] == b64encode(b"\x01" * 32)
    assert json.loads(json.dumps(shown)) == shown


def test_attachment_pointers_round_trip() -> None:
    pointer = _pointer()
    assert pointer_from_json(to_json(pointer)) == pointer
    for broken in [
        {},
        {**to_json(pointer), "id": "!"},
        {**to_json(pointer), "size": 5},
        {**to_json(pointer), "x": 1},
    ]:
        with pytest.raises(RpcError) as info:
            pointer_from_json(broken)
        assert info.value.code == -32602


# -- subscribers -------------------------------------------------------------------------------------


def _hub(limit: int = 3) -> Hub:
    return Hub(cast(Any, {"a": object(), "b": object()}), queue_limit=limit)


async def test_a_slow_subscriber_is_dropped_with_bounded_memory() -> None:
    hub = _hub(limit=3)
    slow, only_b = hub.subscribe(), hub.subscribe(frozenset({"b"}))
    for n in range(10):
        hub.broadcast("a", {"n": n})
    assert slow.dropped and slow.queue.qsize() == 1 and slow not in hub.subscribers
    last = slow.queue.get_nowait()
    assert last["dropped"] is True and last["subscription"] == slow.id and "fast enough" in last["reason"]
    assert only_b.queue.empty() and not only_b.dropped and only_b in hub.subscribers
    hub.broadcast("b", {"n": 1})
    assert only_b.queue.get_nowait() == {"n": 1}
    hub.broadcast("a", {"n": 11})
    assert slow.queue.empty()  # nothing more after the drop notice


def test_profiles_are_checked() -> None:
    hub = _hub()
    with pytest.raises(RpcError, match="several profiles"):
        hub.client(None)
    with pytest.raises(RpcError, match="not served"):
        hub.client("c")
    with pytest.raises(RpcError, match="not served"):
        hub.check_profiles(["a", "c"])
    assert hub.check_profiles(None) is None and hub.check_profiles(["a"]) == frozenset({"a"})
    single = Hub(cast(Any, {"only": object()}))
    assert single.client(None)[0] == "only"


# -- HTTP on a real socket ---------------------------------------------------------------------------


async def _http(hub: Hub, raw: bytes, *, max_body: int = 100, read_until: bytes | None = None) -> bytes:
    handler = HttpHandler(hub, Dispatcher({"echo": _echo}), token="s3cret", max_body=max_body)
    server = await asyncio.start_server(handler.handle, "127.0.0.1", 0, limit=1024)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        if read_until is None:
            data = await asyncio.wait_for(reader.read(), 10)
        else:
            data = await asyncio.wait_for(reader.readuntil(read_until), 10)
        writer.close()
        return data
    finally:
        server.close()


AUTH = b"Authorization: Bearer s3cret\r\n"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /rpc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"401"),
        (b"POST /rpc HTTP/1.1\r\nAuthorization: Bearer s3cre\r\nContent-Length: 2\r\n\r\n{}", b"401"),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"\r\n", b"411"),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"411",
        ),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: 101\r\n\r\n", b"413"),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"X: y\r\n" * 70 + b"\r\n", b"431"),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"X: " + b"y" * 2000 + b"\r\n\r\n", b"431"),
        (b"GET /rpc HTTP/1.1\r\n" + AUTH + b"\r\n", b"405"),
        (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
        (b"hello\r\n\r\n", b"400"),
        (b"POST /rpc HTTP/1.1\r\n" + AUTH + b"Content-Length: 2\r\n\r\n{}", b"200"),
        (
            b"POST /rpc HTTP/1.1\r\n" + AUTH + b'Content-Length: 33\r\n\r\n{"jsonrpc":"2.0","method":"echo"}',
            b"204",
        ),
    ],
)
async def test_http_refusals(raw: bytes, status: bytes) -> None:
    out = await _http(_hub(), raw)
    assert out.startswith(b"HTTP/1.1 " + status + b" "), out[:200]


async def test_sse_reader_that_falls_behind_is_dropped() -> None:
    hub = _hub(limit=3)
    handler = HttpHandler(hub, Dispatcher({}), token="s3cret")
    server = await asyncio.start_server(handler.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events?profile=a HTTP/1.1\r\n" + AUTH + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"event: subscribed\n"), 10)
        assert b"200 OK" in head and b"text/event-stream" in head
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        hub.broadcast("a", {"type": "X", "n": 0})
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
        assert json.loads(first.removeprefix(b"data: "))["n"] == 0
        for n in range(1, 10):  # faster than the stream is written: the queue overflows
            hub.broadcast("a", {"type": "X", "n": n})
        rest = await asyncio.wait_for(reader.read(), 10)  # the daemon closes the stream
        assert b"event: dropped" in rest and b"fast enough" in rest
        assert not hub.subscribers
        writer.close()
    finally:
        server.close()


# -- addresses and files -----------------------------------------------------------------------------


def test_parse_http() -> None:
    assert parse_http("8080") == ("127.0.0.1", 8080)
    assert parse_http(":0") == ("127.0.0.1", 0)
    assert parse_http("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_http("[::1]:9") == ("::1", 9)
    for bad in ("host:", "host:x", "1:99999"):
        with pytest.raises(UsageError):
            parse_http(bad)


def test_socket_directory_and_token_file_permissions(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(UsageError, match="0700"):
        prepare_socket_path(open_dir / "s.sock")
    prepare_socket_path(tmp_path / "new" / "s.sock")
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    (tmp_path / "new" / "file").write_text("x")
    with pytest.raises(UsageError, match="not a socket"):
        prepare_socket_path(tmp_path / "new" / "file")
    written, token = write_token(tmp_path / "t" / "token")
    assert written == (tmp_path / "t" / "token").resolve()
    assert written.read_text().strip() == token and len(token) >= 40
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert write_token(tmp_path / "t" / "token")[1] != token  # a new token every start


# -- JSON lines (stdio, socket) ---------------------------------------------------------------------


async def test_json_lines_subscriptions_drops_and_long_lines() -> None:
    from saltline.client_sdk.daemon.methods import build_methods
    from saltline.client_sdk.daemon.stream import StreamConnection

    hub = _hub(limit=3)
    written: list[dict[str, Any]] = []
    wrote = asyncio.Event()

    async def write(data: bytes) -> None:
        written.extend(json.loads(line) for line in data.splitlines())
        wrote.set()

    async def next_written() -> dict[str, Any]:
        while not written:
            wrote.clear()
            await asyncio.wait_for(wrote.wait(), 10)
        return written.pop(0)

    conn = StreamConnection(hub, Dispatcher(build_methods(hub, notifications=True)), write)
    reader = asyncio.StreamReader(limit=200)
    serving = asyncio.create_task(conn.serve(reader))
    reader.feed_data(b'{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"profiles":["a"]}}\n')
    assert await next_written() == {"jsonrpc": "2.0", "result": {"subscription": 1}, "id": 1}
    reader.feed_data(b'{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"profiles":["z"]}}\n')
    assert (await next_written())["error"]["code"] == -32602
    hub.broadcast("a", {"type": "X"})
    assert await next_written() == {
        "jsonrpc": "2.0",
        "method": "event",
        "params": {"subscription": 1, "type": "X"},
    }
    for n in range(10):  # faster than the connection forwards them
        hub.broadcast("a", {"type": "X", "n": n})
    dropped = await next_written()
    assert dropped["method"] == "subscription_dropped" and dropped["params"]["subscription"] == 1
    reader.feed_data(b'{"jsonrpc":"2.0","id":3,"method":"unsubscribe","params":{"subscription":1}}\n')
    assert (await next_written())["error"]["code"] == -32602  # already gone
    reader.feed_data(b"[" + b" " * 300 + b"]\n")  # over the reader's limit: answered, then closed
    assert (await next_written())["error"]["code"] == -32600
    await asyncio.wait_for(serving, 10)
    assert conn.closed and not hub.subscribers
