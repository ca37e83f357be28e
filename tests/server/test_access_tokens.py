"""The server's own HS256 access-token check (saltline.server.services.access_tokens) and the batched
small reads (saltline.server.storage.read_batch): the reconnect-storm fast paths refuse what PyJWT did."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.server.services.access_tokens import HS256Verifier, InvalidToken
from saltline.server.storage.read_batch import ReadBatcher

SECRET = "s" * 48
CLAIMS = {"sub": "d", "acc": "a", "exp": 2_000_000_000, "typ": "access", "fam": "f"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_issued_with_pyjwt_verifies() -> None:
    token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
    assert HS256Verifier(SECRET).claims(token) == CLAIMS


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(CLAIMS, "another secret of the same length......", algorithm="HS256"),
        jwt.encode(CLAIMS, SECRET, algorithm="HS384"),
        b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(orjson.dumps(CLAIMS)) + ".",
        jwt.encode(CLAIMS, SECRET, algorithm="HS256", headers={"kid": "1"}),  # header not as issued
        jwt.encode(CLAIMS, SECRET, algorithm="HS256") + "x",
        jwt.encode(CLAIMS, SECRET, algorithm="HS256").replace(".", "..", 1),
        "a.b",
        "",
        "é.é.é",
    ],
)
def test_forged_or_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        HS256Verifier(SECRET).claims(token)


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_any_changed_byte_is_refused(at: int, value: int) -> None:
    token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
    i = at % len(token)
    changed = token[:i] + chr(value) + token[i + 1 :]
    if changed == token:
        return
    try:
        claims = HS256Verifier(SECRET).claims(changed)
    except InvalidToken:
        return
    # base64url's last character may carry unused bits: the same bytes, the same claims
    assert claims == CLAIMS


async def test_batched_reads_each_get_their_own_result_or_error() -> None:
    hand_offs: list[int] = []
    gate = asyncio.Event()

    async def run(fn: Any) -> Any:
        hand_offs.append(1)
        await gate.wait()
        return fn("conn")

    batcher = ReadBatcher(run)

    def ok(n: int) -> Any:
        return lambda conn: (conn, n)

    def boom(conn: Any) -> Any:
        raise LookupError("bad read")

    first = asyncio.ensure_future(batcher.read(ok(0)))
    await asyncio.sleep(0)  # the first read is on its way alone
    rest = [asyncio.ensure_future(batcher.read(f)) for f in (ok(1), boom, ok(2))]
    gate.set()
    assert await first == ("conn", 0)
    assert await rest[0] == ("conn", 1)
    with pytest.raises(LookupError):
        await rest[1]
    assert await rest[2] == ("conn", 2)
    # one hand-off for the first read, one for the batch of three, then one each to find the error
    assert len(hand_offs) == 2 + 3
