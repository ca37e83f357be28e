"""Debug logs carry no secrets (issue 13): ``saltline serve --log-level debug`` (a real process,
its whole output captured) through registration, password login, refresh, a send over HTTP, a
delivery socket and a socket send; then the log is searched for the password, its argon2 hash,
the tokens, the ciphertexts (base64url, hex and as Python bytes) and the device list. At debug
level SQLAlchemy, aiosqlite, asyncpg and websockets would print SQL parameters, results and
frames; server/api/log_filters.py keeps them at INFO or above."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from saltline.crypto.keys import b64encode
from tests.conftest import TEST_SETTINGS
from tests.server.delivery_support import WsClient, create_conversation, envelope_body, send
from tests.server.helpers import add_device, login, register
from tests.subprocess_server import SubprocessServer

pytestmark = pytest.mark.timeout(120)


def _needles(name: str, data: bytes) -> dict[str, str]:
    """Ways ``data`` could appear in a log line."""
    return {
        f"{name} (base64url)": b64encode(data)[:24],
        f"{name} (hex)": data[:16].hex(),
        f"{name} (bytes repr)": repr(data[4:20])[2:-1],
    }


def test_debug_logs_hold_no_hashes_tokens_or_ciphertexts(
    db_url: str, tmp_path: Path, make_settings: Callable[..., object]
) -> None:
    settings = {k: v for k, v in TEST_SETTINGS.items() if k != "log_level"}
    server = SubprocessServer(db_url, tmp_path / "srv", {**settings, "log_level": "debug"})
    server.start()
    try:
        needles: dict[str, str] = {}
        with server_client(server) as client:
            alice, bob = register(client), register(client)
            phone = add_device(client, alice)
            assert login(client, bob, bob.first).status_code == 200
            r = client.post("/v1/auth/refresh", json={"refresh_token": bob.first.refresh_token})
            assert r.status_code == 200, r.text
            bob.first.access_token = r.json()["access_token"]
            bob.first.refresh_token = r.json()["refresh_token"]
            cid = create_conversation(client, alice, bob)
            secret_http = os.urandom(64)
            body = envelope_body(alice.first, [alice, bob], secret_http)
            assert send(client, alice.first, cid, body).status_code == 201
            for c in body["ciphertexts"]:
                needles.update(_needles("HTTP ciphertext", _b64d(c["ciphertext"])))
            hash_row = server_password_hash(db_url, alice.username.lower())
            frames = asyncio.run(_socket_round(server, bob, alice, phone, cid))
            for name, value in frames.items():
                needles.update(_needles(name, value))
            needles.update(
                {
                    "password": alice.password,
                    "argon2 hash": hash_row,
                    "argon2 hash (salt and digest)": hash_row.rsplit("$", 2)[-1][:20],
                    "access token": bob.first.access_token.split(".")[-1][:24],
                    "access token (claims)": bob.first.access_token.split(".")[1][:24],
                    "refresh token": bob.first.refresh_token[:24],
                    "first refresh token": phone.refresh_token[:24],
                    "device list": alice.signed_list.to_b64()[40:80],
                }
            )
    finally:
        server.stop()
    log = server.log_text()
    assert "DEBUG" in log, log[-2000:]  # the server did log at debug level
    found = {name: needle for name, needle in needles.items() if needle and needle in log}
    assert not found, f"secrets in the debug log: {sorted(found)}"


def server_client(server: SubprocessServer) -> object:
    import httpx

    return httpx.Client(base_url=server.base_url, timeout=10.0)


def _b64d(text: str) -> bytes:
    from saltline.crypto.keys import b64decode

    return b64decode(text)


def server_password_hash(db_url: str, username_lower: str) -> str:
    """The stored argon2 hash, read straight from the database."""
    from sqlalchemy import create_engine, select

    from saltline.server.storage.schema import accounts

    sync_url = db_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    if "+psycopg" in sync_url:
        pytest.importorskip("psycopg")
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                select(accounts.c.password_hash).where(accounts.c.username_lower == username_lower)
            ).scalar_one()
    finally:
        engine.dispose()
    assert str(value).startswith("$argon2id$")
    return str(value)


async def _socket_round(
    server: SubprocessServer, bob: object, alice: object, phone: object, cid: str
) -> dict[str, bytes]:
    """Bob's socket receives the HTTP envelope; alice's phone sends one over its socket."""
    from tests.server.helpers import Account, Device

    assert isinstance(bob, Account) and isinstance(alice, Account) and isinstance(phone, Device)
    ws_bob = await WsClient.connect(server.ws_url, bob.first)
    ws_phone = await WsClient.connect(server.ws_url, phone)
    try:
        got = await ws_bob.envelopes_until_drained()
        assert len(got) == 1
        assert len(await ws_phone.envelopes_until_drained()) == 1  # alice's other device has it too
        secret_ws = os.urandom(64)
        body = envelope_body(phone, [alice, bob], secret_ws)
        await ws_phone.send({"type": "send", "request_id": "r1", "conversation_id": cid, "envelope": body})
        result = await ws_phone.expect("send_result")
        assert result.get("status") in (200, 201), result
        frame = await ws_bob.expect("envelope")
        return {
            "socket ciphertext": _b64d(body["ciphertexts"][0]["ciphertext"]),
            "delivered ciphertext": _b64d(frame["ciphertext"]),
        }
    finally:
        await ws_bob.conn.close()
        await ws_phone.conn.close()
