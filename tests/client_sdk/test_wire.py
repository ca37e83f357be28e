"""client_sdk/core/wire.py names the values the server uses and the spec documents: close codes and
frame types (server/api/ws.py, server/api/connections.py, docs/protocol/delivery.md § 5.12), and the
problem codes the client acts on (server/errors.py, docs/protocol/delivery.md § 3.9). A value that
drifts on one side fails here."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from saltline.client_sdk.core import wire
from saltline.server.api import connections
from saltline.server.api import ws as server_ws
from saltline.server.errors import ProblemCode

DELIVERY_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "delivery.md"


def _section(heading: str) -> str:
    text = DELIVERY_MD.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.index("\n#", start + len(heading))
    return text[start:end]


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|--"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def _wire(prefix: str) -> dict[str, object]:
    return {name: value for name, value in vars(wire).items() if name.startswith(prefix)}


def test_close_codes_match_the_server() -> None:
    assert wire.CLOSE_REPLACED == connections.CLOSE_REPLACED
    for name in (
        "CLOSE_DEVICE_REMOVED",
        "CLOSE_AUTH_FAILED",
        "CLOSE_HEARTBEAT_TIMEOUT",
        "CLOSE_PROTOCOL_ERROR",
        "CLOSE_INTERNAL_ERROR",
        "CLOSE_SERVICE_RESTART",
    ):
        assert getattr(wire, name) == getattr(server_ws.protocol, name), name
    assert wire.FATAL_CLOSE_CODES == {wire.CLOSE_DEVICE_REMOVED}


def test_frame_types_match_the_server() -> None:
    modules = (server_ws, server_ws.frames, server_ws.protocol)
    code = [inspect.getsource(module).split('"""', 2)[2] for module in modules]
    sent = set(re.findall(r'"type":\s*"([a-z_]+)"', "".join(code)))  # the frames the server builds
    assert sent == wire.SERVER_FRAME_TYPES
    reader = inspect.getsource(server_ws.DeviceConnection._reader)
    accepted = set(re.findall(r'kind == "([a-z_]+)"', reader)) | {wire.FRAME_AUTH}
    assert accepted == wire.CLIENT_FRAME_TYPES


def test_problem_codes_exist_on_the_server() -> None:
    server_codes = {code.value for code in ProblemCode}
    for name, value in _wire("PROBLEM_").items():
        assert value in server_codes, f"wire.{name} = {value!r} is not a server ProblemCode"


def test_spec_table_of_close_codes_and_frame_types_matches_wire() -> None:
    rows = _table_rows(_section("### 5.12 Close codes and frame types"))
    documented = {row[2].strip("`"): row[1].strip("`") for row in rows}
    expected = {name: str(value) for name, value in {**_wire("CLOSE_"), **_wire("FRAME_")}.items()}
    assert documented == expected


def test_spec_list_of_problem_codes_matches_wire() -> None:
    rows = _table_rows(_section("### 3.9 Problem codes the client acts on"))
    documented = {row[0].strip("`") for row in rows}
    assert documented == set(_wire("PROBLEM_").values())
    statuses = {row[0].strip("`"): int(row[1]) for row in rows}
    errors_source = inspect.getsource(ProblemCode)
    for code, status in statuses.items():
        member = ProblemCode(code)
        doc = errors_source.split(f'= "{member.value}"', 1)[1].split('"""', 2)[1]
        assert doc.startswith(str(status)), (code, status, doc[:20])


@pytest.mark.parametrize(
    "doc",
    [
        {"b": 1, "a": [1, 2.5, None, True], "t": 'héllo 👋 \u2028 "q" \\'},
        {"v": 2, "lamport": 7, "type": "message", "text": "x", "sent_at_ms": 1},
        {},
    ],
)
def test_canonical_json_bytes(doc: dict[str, object]) -> None:
    """Sorted keys, no whitespace, UTF-8 with non-ASCII kept: the bytes operation plaintexts were
    always written with (``ensure_ascii=False``)."""
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert wire.canonical_json(doc) == expected
    with pytest.raises(ValueError):
        wire.canonical_json({"x": float("nan")})
