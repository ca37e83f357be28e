"""Delivery-side fixes from the security review: WebSocket memory bounds, token expiry on open
sockets, bounded integers, ephemeral sizes, the idempotency lookup's index, queue-state creation
races, envelopes with no recipients and history limited to what the asking device received."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from saltline.crypto.keys import b64decode, b64encode
from saltline.server.api import ws as ws_module
from saltline.server.api import ws_open
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.delivery import MAX_EPHEMERAL_BYTES
from saltline.server.storage import driver_sql, migrate
from saltline.server.storage import schema as s
from saltline.server.storage.db import Database, create_engine
from saltline.server.storage.delivery_schema import conversation_members, conversations, device_queue_state
from saltline.server.storage.driver_sql import _idempotency_lookup, _placeholders
from saltline.server.storage.envelopes_repo import (
    Accepted,
    AckRequest,
    EnvelopesRepo,
    NewEnvelope,
    RoutingRejected,
    create_queue_states,
)
from tests.live import LiveServer, ManualClock
from tests.server.delivery_support import WsClient, create_conversation, envelope_body, open_sealed, send
from tests.server.helpers import add_device, register

# -- 1. WebSocket message size and stuck closes ------------------------------------------------


async def test_oversized_ws_message_refused_by_the_server(live_server: LiveServer) -> None:
    """uvicorn refuses a 100 KiB message itself (1009, not buffered up to 16 MiB for the app)."""
    async with connect(live_server.ws_url + "/v1/ws", ping_interval=None, max_size=None) as conn:
        await conn.send("x" * (100 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_cli_serve_passes_ws_max_size(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    import uvicorn

    from saltline.server import cli
    from saltline.server.storage import migrate as migrate_module

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(migrate_module, "is_up_to_date", lambda url: True)
    result = CliRunner().invoke(cli.app, ["serve", "--database-url", sqlite_url, "--port", "1"])
    assert result.exit_code == 0, result.output
    assert seen["ws_max_size"] == cli.WS_MAX_SIZE == ws_module.WS_MAX_MESSAGE_BYTES == 64 * 1024


class _StuckSocket:
    """A socket whose peer never sends and never reads: receive and close block forever."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await asyncio.Event().wait()


async def test_auth_timeout_gives_up_on_a_stuck_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_open, "AUTH_TIMEOUT_S", 0.01)
    monkeypatch.setattr(ws_open, "CLOSE_TIMEOUT_S", 0.05)
    result = await asyncio.wait_for(ws_open.authenticate(_StuckSocket(), None), 5)  # type: ignore[arg-type]
    assert result is None


# -- 2. the idempotency lookup uses the unique index -------------------------------------------


def test_idempotency_lookup_uses_the_unique_index(db_url: str) -> None:
    migrate.upgrade(db_url)
    keys = {(os.urandom(8).hex().encode(), os.urandom(8).hex().encode()) for _ in range(3)}  # printable

    async def plan() -> list[str]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                statement, params = _idempotency_lookup(keys)
                sql = _placeholders(statement, conn.dialect.paramstyle)
                if conn.dialect.name == "sqlite":
                    rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, tuple(params))
                    return [str(r[-1]) for r in rows]
                await conn.exec_driver_sql("SET enable_seqscan = off")
                return [str(r[0]) for r in await conn.exec_driver_sql("EXPLAIN " + sql, tuple(params))]
        finally:
            await engine.dispose()

    lines = asyncio.run(plan())
    if db_url.startswith("sqlite"):
        assert not any(line.startswith("SCAN envelopes") for line in lines), lines
        assert any("SEARCH envelopes USING INDEX" in line for line in lines), lines
    else:
        conds = [line for line in lines if "Index Cond" in line]
        assert conds and all("sender_device_id" in c and "envelope_id" in c for c in conds), lines


# -- 3. bounded integers -----------------------------------------------------------------------


def test_huge_device_list_version_is_422(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    for version in (2**63, 2**64 + 5, 2**62 + 1, 2**53, 1.5):
        body = envelope_body(alice.first, [alice, bob], b"x", versions={alice.account_id: version})
        r = send(client, alice.first, cid, body)
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "validation_failed"


# -- 4. the socket does not outlive its token --------------------------------------------------


async def test_socket_closed_when_the_token_expires(
    make_server: Callable[..., LiveServer], clock: ManualClock
) -> None:
    server = await asyncio.to_thread(make_server, heartbeat_interval_s=0.1, heartbeat_missed_limit=1000)
    with server.client() as client:
        alice = register(client)
    ws = await WsClient.connect(server.ws_url, alice.first)
    assert await ws.envelopes_until_drained() == []
    clock.advance(server.settings.access_token_ttl_s - 5)
    for _ in range(3):  # still valid: the socket stays open over several heartbeat ticks
        assert (await ws.expect("ping", wait_s=5))["type"] == "ping"
        await ws.send({"type": "pong"})
    clock.advance(6)
    assert await ws.closed_with() == 4003


async def test_device_removed_while_subscribing_closes(live_server: LiveServer, client: httpx.Client) -> None:
    """The device's holder check runs after the bus subscription (a removal before it is seen by
    the check, one after it reaches the socket): refused there, the socket is closed with 4003
    and leaves no registry entry nor subscription behind."""
    alice = register(client)
    auth = live_server.ctx.auth

    def removed(*_args: Any) -> None:  # the verdict on the state read after subscribing
        assert live_server.ctx.bus.subscriber_count() == 1  # subscribed before the check
        raise Problem(401, ProblemCode.TOKEN_REVOKED, "this device was removed from its account")

    auth.check_holder_state = removed  # type: ignore[method-assign]
    try:
        ws = await WsClient.connect(live_server.ws_url, alice.first, auth=False)
        await ws.send({"type": "auth", "token": alice.first.access_token})
        assert await ws.closed_with() == 4003
    finally:
        del auth.check_holder_state
    assert alice.first.device_id not in live_server.ctx.connections
    assert live_server.ctx.bus.subscriber_count() == 0


async def test_refresh_token_reuse_closes_the_devices_socket(
    live_server: LiveServer, client: httpx.Client
) -> None:
    """Reusing a rotated refresh token revokes the device's token family; the ``on_tokens_revoked``
    hook closes that device's open socket with 4003 (the holder may be the thief). Other devices
    of the account keep theirs."""
    alice = register(client)
    laptop = add_device(client, alice)
    ws = await WsClient.connect(live_server.ws_url, alice.first)
    other = await WsClient.connect(live_server.ws_url, laptop)
    assert await ws.envelopes_until_drained() == []
    assert await other.envelopes_until_drained() == []
    stolen = alice.first.refresh_token
    r = await asyncio.to_thread(client.post, "/v1/auth/refresh", json={"refresh_token": stolen})
    assert r.status_code == 200, r.text
    r = await asyncio.to_thread(client.post, "/v1/auth/refresh", json={"refresh_token": stolen})
    assert (r.status_code, r.json()["code"]) == (401, "refresh_token_reused")
    assert await ws.closed_with() == 4003
    for _ in range(100):
        if alice.first.device_id not in live_server.ctx.connections:
            break
        await asyncio.sleep(0.02)
    assert alice.first.device_id not in live_server.ctx.connections
    await other.send({"type": "ping"})
    assert (await other.expect("pong"))["type"] == "pong"
    assert laptop.device_id in live_server.ctx.connections
    await other.close()


# -- 5. ephemeral envelopes are small and buffered by bytes ------------------------------------


def test_ephemeral_envelope_size_limit(live_server: LiveServer, client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    big = os.urandom(MAX_EPHEMERAL_BYTES)
    body = envelope_body(alice.first, [alice, bob], b"t", ephemeral=True)
    body["ciphertexts"][0]["ciphertext"] = b64encode(big)
    r = send(client, alice.first, cid, body)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "ephemeral_too_large" and r.json()["limit"] == MAX_EPHEMERAL_BYTES
    body = envelope_body(alice.first, [alice, bob], b"t")  # the same size stored is fine
    body["ciphertexts"][0]["ciphertext"] = b64encode(big)
    assert send(client, alice.first, cid, body).status_code == 201


async def test_ephemeral_buffer_is_bounded_by_bytes() -> None:
    conn = ws_module.DeviceConnection(
        None,  # type: ignore[arg-type]
        SimpleNamespace(device_id_bytes=b"d" * 16, account_id_bytes=b"a" * 16),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        window=64,
        heartbeat_interval_s=1.0,
        heartbeat_missed_limit=2,
    )
    frames = [b"%04d" % i + b"x" * (20 * 1024) for i in range(64)]
    for frame in frames:
        conn.on_ephemeral(frame)
    buffered = list(conn._ephemeral)
    assert conn.ephemeral_buffered_bytes == sum(map(len, buffered)) <= ws_module.EPHEMERAL_BUFFER_BYTES
    assert buffered == frames[-len(buffered) :]  # the oldest were dropped
    conn.on_ephemeral(b"x" * (ws_module.EPHEMERAL_BUFFER_BYTES + 1))  # never kept
    assert list(conn._ephemeral) == buffered


# -- 6. queue-state rows are created race-free -------------------------------------------------


def test_queue_state_creation_tolerates_an_existing_row(db_url: str) -> None:
    migrate.upgrade(db_url)
    a, b = os.urandom(16), os.urandom(16)

    async def go() -> dict[bytes, int]:
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await create_queue_states(conn, [a])
                await conn.execute(
                    device_queue_state.update()
                    .where(device_queue_state.c.device_id == a)
                    .values(last_queue_seq=7)
                )
            async with engine.begin() as conn:  # another instance created `a` meanwhile
                await create_queue_states(conn, [b, a])
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(device_queue_state.c.device_id, device_queue_state.c.last_queue_seq)
                )
                return {bytes(d): int(n) for d, n in rows}
        finally:
            await engine.dispose()

    assert asyncio.run(go()) == {a: 7, b: 0}


# -- 7. a stored envelope must reach somebody --------------------------------------------------


def test_stored_envelope_without_recipients_is_refused(live_server: LiveServer, client: httpx.Client) -> None:
    alice = register(client)
    cid = create_conversation(client, alice, kind="group")
    r = send(client, alice.first, cid, envelope_body(alice.first, [alice], b"note to self"))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "no_recipients"
    # Ephemeral: nothing is stored, nothing to refuse.
    r = send(client, alice.first, cid, envelope_body(alice.first, [alice], b"t", ephemeral=True))
    assert r.status_code == 202, r.text
    # With a second device of the sender's own, the copy goes there.
    alice2 = add_device(client, alice)
    r = send(client, alice.first, cid, envelope_body(alice.first, [alice], b"sync"))
    assert r.status_code == 201, r.text
    r = client.get(f"/v1/conversations/{cid}/envelopes", headers=alice2.headers)
    assert [e["server_seq"] for e in r.json()["envelopes"]] == [1]


# -- 8. history shows only what the asking device received -------------------------------------


def test_history_hides_envelopes_from_before_the_device_joined(
    live_server: LiveServer, client: httpx.Client
) -> None:
    alice, bob = register(client), register(client)
    cid = create_conversation(client, alice, bob)
    for i in range(2):
        assert (
            send(client, alice.first, cid, envelope_body(alice.first, [alice, bob], b"old%d" % i)).status_code
            == 201
        )
    bob2 = add_device(client, bob)
    assert send(client, alice.first, cid, envelope_body(alice.first, [alice, bob], b"new")).status_code == 201

    def seqs(device: Any, **params: int) -> tuple[list[int], int | None]:
        r = client.get(f"/v1/conversations/{cid}/envelopes", params=params, headers=device.headers)
        assert r.status_code == 200, r.text
        return [e["server_seq"] for e in r.json()["envelopes"]], r.json()["next_after"]

    assert seqs(bob2) == ([3], None)
    assert seqs(bob2, limit=1) == ([3], None)
    assert seqs(bob.first) == ([1, 2, 3], None)
    assert seqs(bob.first, limit=2) == ([1, 2], 2)
    assert seqs(alice.first) == ([1, 2, 3], None)  # the sender's own envelopes (no copy) stay listed


def test_history_pages_are_cut_by_bytes(make_server: Callable[..., LiveServer]) -> None:
    """With ``history_page_max_bytes`` small, pages of large envelopes end before the item that
    would pass the bound (an item larger than the bound comes alone), ``next_after`` continues,
    and following it sees every envelope exactly once, in order."""
    bound = 100_000
    server = make_server(history_page_max_bytes=bound)
    with server.client() as client:
        alice, bob = register(client), register(client)
        cid = create_conversation(client, alice, bob)
        payloads = [b"a" * 150_000, b"b" * 40_000, b"c" * 40_000, b"d" * 40_000, b"e", b"f" * 90_000]
        payloads += [b"%d" % i * 20_000 for i in range(3)]
        for p in payloads:
            r = send(client, alice.first, cid, envelope_body(alice.first, [alice, bob], p))
            assert r.status_code == 201, r.text

        def size(e: dict[str, Any]) -> int:
            return len(b64decode(e["clock"])) + len(b64decode(e["ciphertext"]))

        pages: list[list[dict[str, Any]]] = []
        after: int | None = 0
        while after is not None:
            r = client.get(
                f"/v1/conversations/{cid}/envelopes",
                params={"after": after, "limit": 500},
                headers=bob.first.headers,
            )
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["envelopes"], page
            pages.append(page["envelopes"])
            after = page["next_after"]
            if after is not None:
                assert after == page["envelopes"][-1]["server_seq"]
            assert len(pages) <= len(payloads)
        seen = [e["server_seq"] for page in pages for e in page]
        assert seen == list(range(1, len(payloads) + 1))  # each exactly once, in order
        opened = [open_sealed(bob.first, b64decode(e["ciphertext"])) for page in pages for e in page]
        assert opened == payloads
        for n, page in enumerate(pages):
            total = sum(size(e) for e in page)
            assert len(page) == 1 or total <= bound, [size(e) for e in page]
            if n + 1 < len(pages):  # cut only where the next item would pass the bound
                assert total + size(pages[n + 1][0]) > bound
        assert [len(p) for p in pages] == [1, 2, 2, 1, 3]


def _member_rows(conn: Any, conversation_id: bytes, accounts: list[tuple[bytes, list[bytes]]]) -> None:
    """A group conversation whose members are ``(account id, [device ids])``, each device with a
    queue-state row (as after its first delivery)."""
    conn.execute(
        conversations.insert().values(
            id=conversation_id, kind="group", created_by=accounts[0][0], created_at_ms=1, last_server_seq=0
        )
    )
    for n, (account_id, device_ids) in enumerate(accounts):
        name = f"m{n}{os.urandom(4).hex()}"
        conn.execute(
            s.accounts.insert().values(
                id=account_id,
                username=name,
                username_lower=name,
                password_hash="x",
                account_key=b"\x00" * 34,
                device_list_version=1,
                created_at_ms=1,
            )
        )
        conn.execute(
            conversation_members.insert().values(
                conversation_id=conversation_id, account_id=account_id, added_at_ms=1
            )
        )
        for device_id in device_ids:
            conn.execute(
                s.devices.insert().values(
                    device_id=device_id,
                    account_id=account_id,
                    signing_key=b"\x00" * 34,
                    dh_key=b"\x00" * 34,
                    added_at_ms=1,
                )
            )
            conn.execute(
                device_queue_state.insert().values(
                    device_id=device_id, last_queue_seq=0, acked_through=0, purged_through=0
                )
            )


def test_batch_locks_all_queue_states_in_one_sorted_statement(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends and acks of one batch lock their devices' queue-state rows together, sorted, before
    writing any of them: two instances' batches can then never wait on each other in a cycle.
    The rows locked are those of the conversations' active member devices and of the acks,
    never the device ids a send merely names."""
    migrate.upgrade(db_url)
    conversation_id = os.urandom(16)
    sender_account, recipient_account = os.urandom(16), os.urandom(16)
    sender, recipient = b"\x00" * 15 + b"\x02", b"\xff" * 15 + b"\xfe"
    acked = b"\x00" * 15 + b"\x01"  # another device's ack in the same batch; sorts first

    async def go() -> tuple[list[tuple[str, list[bytes]]], list[bytes]]:
        db = Database.open(db_url)
        statements: list[tuple[str, list[bytes]]] = []
        # The writer's statements are driver SQL on the transaction's cursor: record them there.
        original = driver_sql._DriverSql.submit

        def capture(self: Any, statement: str, params: Any) -> Any:
            if "FROM device_queue_state" in statement and statement.lstrip().upper().startswith("SELECT"):
                statements.append(
                    (statement, [bytes(v) for v in params if isinstance(v, bytes | memoryview)])
                )
            return original(self, statement, params)

        try:
            await db.run_write(
                lambda conn: _member_rows(
                    conn,
                    conversation_id,
                    [(sender_account, [sender]), (recipient_account, [recipient, acked])],
                )
            )
            monkeypatch.setattr(driver_sql._DriverSql, "submit", capture)
            repo = EnvelopesRepo(db)
            env = NewEnvelope(
                conversation_id=conversation_id,
                envelope_id=os.urandom(16),
                sender_account_id=sender_account,
                sender_device_id=sender,
                clock=b"c",
                request_hash=os.urandom(32),
                copies=((recipient, b"ciphertext"), (acked, b"ciphertext")),
                device_list_versions={sender_account: 1, recipient_account: 1},
            )
            outcomes = await repo.write_batch([env], [AckRequest(acked, 0)], 1000)
            assert isinstance(outcomes[0], Accepted), outcomes
            locked = await db.run_read(
                lambda conn: [
                    bytes(d)
                    for (d,) in conn.execute(
                        select(device_queue_state.c.device_id).order_by(device_queue_state.c.device_id)
                    )
                ]
            )
        finally:
            await db.dispose()
        return statements, locked

    statements, rows = asyncio.run(go())
    assert len(statements) == 1, statements  # one lock statement: every row existed
    statement, params = statements[0]
    assert "ORDER BY device_id" in statement
    assert ("FOR UPDATE" in statement) == db_url.startswith("postgresql")
    assert params == [conversation_id, acked]  # the conversation's devices and the ack's
    assert sorted([sender, recipient, acked]) == rows


def test_named_devices_are_not_locked_or_created(db_url: str) -> None:
    """Sends that name many made-up device ids are refused one by one, and the batch they share
    with a valid send still commits in one transaction: the queue-state lock covers real
    member devices only (no statement grows with the ids a client names; on PostgreSQL a lock
    list of 70,000 ids once exceeded the 65,535 bind parameters and failed whole batches)."""
    migrate.upgrade(db_url)
    conversation_id = os.urandom(16)
    sender_account, recipient_account = os.urandom(16), os.urandom(16)
    sender, recipient = os.urandom(16), os.urandom(16)

    async def go() -> tuple[list[Any], int]:
        db = Database.open(db_url)
        try:
            await db.run_write(
                lambda conn: _member_rows(
                    conn, conversation_id, [(sender_account, [sender]), (recipient_account, [recipient])]
                )
            )
            repo = EnvelopesRepo(db)
            versions = {sender_account: 1, recipient_account: 1}

            def envelope(copies: tuple[tuple[bytes, bytes], ...]) -> NewEnvelope:
                return NewEnvelope(
                    conversation_id=conversation_id,
                    envelope_id=os.urandom(16),
                    sender_account_id=sender_account,
                    sender_device_id=sender,
                    clock=b"c",
                    request_hash=os.urandom(32),
                    copies=copies,
                    device_list_versions=versions,
                )

            junk = [envelope(tuple((os.urandom(16), b"x") for _ in range(1000))) for _ in range(70)]
            valid = envelope(((recipient, b"ciphertext"),))
            outcomes = await repo.write_batch([*junk, valid], [], 1000)
            states = await db.run_read(
                lambda conn: conn.execute(select(func.count()).select_from(device_queue_state)).scalar_one()
            )
            return outcomes, int(states)
        finally:
            await db.dispose()

    outcomes, states = asyncio.run(go())
    assert all(isinstance(o, RoutingRejected) for o in outcomes[:-1])
    assert isinstance(outcomes[-1], Accepted) and outcomes[-1].envelope.server_seq == 1
    assert states == 2  # the two member devices' rows; none for the 70,000 named ids
