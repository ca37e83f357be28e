"""Helpers for the delivery tests: conversations, envelopes sealed to real device keys, and a
small WebSocket client (the ``websockets`` library) that waits on frames, never on sleeps."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

import httpx
import orjson
from nacl.public import PrivateKey, PublicKey, SealedBox
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from saltline.crypto.keys import b64decode, b64encode
from tests.server.helpers import Account, Device

FRAME_TIMEOUT = 10.0


def create_conversation(client: httpx.Client, creator: Account, *others: Account, kind: str = "") -> str:
    kind = kind or ("direct" if len(others) == 1 else "group")
    r = client.post(
        "/v1/conversations",
        json={"kind": kind, "members": [o.account_id for o in others]},
        headers=creator.first.headers,
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["conversation_id"])


def seal(device: Device, plaintext: bytes) -> bytes:
    """Encrypt to a device's X25519 key (NaCl sealed box): a stand-in for the ratchet."""
    return bytes(SealedBox(PublicKey(bytes(device.dh.public_key))).encrypt(plaintext))


def open_sealed(device: Device, ciphertext: bytes) -> bytes:
    return bytes(SealedBox(PrivateKey(bytes(device.dh))).decrypt(ciphertext))


def recipients_of(sender: Device, accounts: Iterable[Account]) -> list[Device]:
    return [d for a in accounts for d in a.devices if d.device_id != sender.device_id]


def envelope_body(
    sender: Device,
    accounts: Iterable[Account],
    plaintext: bytes,
    *,
    envelope_id: str | None = None,
    recipients: list[Device] | None = None,
    versions: dict[str, int] | None = None,
    ephemeral: bool = False,
    clock: bytes = b"\x01\x02",
) -> dict[str, Any]:
    accounts = list(accounts)
    targets = recipients if recipients is not None else recipients_of(sender, accounts)
    return {
        "envelope_id": envelope_id or b64encode(os.urandom(16)),
        "clock": b64encode(clock),
        "device_list_versions": versions
        if versions is not None
        else {a.account_id: a.signed_list.version for a in accounts},
        "ephemeral": ephemeral,
        "ciphertexts": [{"device_id": d.id, "ciphertext": b64encode(seal(d, plaintext))} for d in targets],
    }


def send(client: httpx.Client, sender: Device, conversation_id: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/conversations/{conversation_id}/envelopes", json=body, headers=sender.headers)


class WsClient:
    """A device's delivery socket."""

    def __init__(self, conn: ClientConnection, device: Device) -> None:
        self.conn = conn
        self.device = device
        self.ready: dict[str, Any] = {}

    @classmethod
    async def connect(cls, ws_url: str, device: Device, *, auth: bool = True) -> WsClient:
        # Library-level keepalive pings off: the app-level heartbeat is what is under test.
        conn = await connect(ws_url + "/v1/ws", ping_interval=None, open_timeout=FRAME_TIMEOUT)
        client = cls(conn, device)
        if auth:
            await client.send({"type": "auth", "token": device.access_token})
            client.ready = await client.expect("ready")
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        await self.conn.send(orjson.dumps(frame).decode())

    async def recv(self, wait_s: float = FRAME_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), wait_s)
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    async def expect(
        self, kind: str, wait_s: float = FRAME_TIMEOUT, *, skip_pings: bool = True
    ) -> dict[str, Any]:
        """The next frame, which must be of type ``kind`` (pings are answered and skipped)."""
        while True:
            frame = await self.recv(wait_s)
            if skip_pings and frame["type"] == "ping" and kind != "ping":
                await self.send({"type": "pong"})
                continue
            assert frame["type"] == kind, frame
            return frame

    async def envelopes_until_drained(self, *, ack: bool = True) -> list[dict[str, Any]]:
        """Collect envelope frames, acking each (cumulatively), until a drained frame."""
        got: list[dict[str, Any]] = []
        while True:
            frame = await self.recv()
            if frame["type"] == "ping":
                await self.send({"type": "pong"})
            elif frame["type"] == "envelope":
                got.append(frame)
                if ack:
                    await self.ack(frame["queue_seq"])
            elif frame["type"] == "drained":
                return got
            else:
                raise AssertionError(f"unexpected frame {frame}")

    async def ack(self, queue_seq: int) -> None:
        await self.send({"type": "ack", "queue_seq": queue_seq})

    def plaintext(self, frame: dict[str, Any]) -> bytes:
        return open_sealed(self.device, b64decode(frame["ciphertext"]))

    async def closed_with(self, wait_s: float = FRAME_TIMEOUT) -> int | None:
        """Read until the server closes the socket; the close code."""
        try:
            while True:
                await asyncio.wait_for(self.conn.recv(), wait_s)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None

    async def close(self) -> None:
        await self.conn.close()
