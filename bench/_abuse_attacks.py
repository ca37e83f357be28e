"""Wire helpers for ``bench/abuse.py`` and its two memory attacks:

- ``ws_auth_ping``: one authenticated delivery socket (it reads the ``ready`` frame, then never
  reads again) writes 125-byte protocol PINGs as fast as the server takes them.
- ``history``: a sender stores many large envelopes in one conversation (before the RSS baseline);
  then readers page through the receiver's history with ``limit=500`` for the attack's duration,
  reading every response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench import _common as common
from bench._pairs_setup import CLOCK_BYTES, Identity, b64e, register

# -- WebSocket frames ---------------------------------------------------------------------------


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload < 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def long_text_frame(payload: bytes) -> bytes:
    """A masked text frame of any length below 64 KiB."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    else:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(length)


async def ws_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    return reader, writer


async def flood(
    writer: asyncio.StreamWriter, chunk: bytes, stop: asyncio.Event, sent: list[int]
) -> float | None:
    """Write ``chunk`` until ``stop`` (or the server closes); never read. Returns the
    ``time.monotonic()`` at which the server stopped taking bytes, None if it never did."""
    try:
        while not stop.is_set():
            writer.write(chunk)
            sent[0] += len(chunk)
            await asyncio.wait_for(writer.drain(), 1.0)
    except (TimeoutError, OSError, ConnectionError):
        return time.monotonic()  # the server stopped reading (a bounded buffer) or closed
    return None


async def authenticated_socket(
    port: int, *, wait_ready: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    """A new account's delivery socket with its ``auth`` frame sent; with ``wait_ready``, the
    server's ``ready`` frame read (the socket is authenticated), and nothing read after it."""
    ident = Identity.new(f"abuse{secrets.token_hex(4)}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        await register(http, ident, prekeys=False)
    reader, writer = await ws_open(port)
    writer.write(long_text_frame(b'{"type":"auth","token":"' + ident.access_token.encode() + b'"}'))
    await writer.drain()
    ready: dict[str, Any] = {}
    if wait_ready:
        opcode, payload = await asyncio.wait_for(read_frame(reader), 10.0)
        if opcode != 0x1 or orjson.loads(payload).get("type") != "ready":
            raise RuntimeError(f"no ready frame: opcode {opcode}, {payload[:200]!r}")
        ready = orjson.loads(payload)
    return reader, writer, ready


# -- history ------------------------------------------------------------------------------------


@dataclass
class History:
    """A conversation holding the stored envelopes, and the receiver who reads it."""

    conversation_id: str
    reader_token: str
    envelopes: int
    ciphertext_bytes: int
    setup_s: float
    stored_mib: float


async def store_history(port: int, count: int, ciphertext_bytes: int, concurrency: int = 4) -> History:
    """Register a sender and a receiver, create their conversation, and store ``count`` envelopes
    of ``ciphertext_bytes`` random ciphertext each (HTTP send route, ``concurrency`` at a time)."""
    t0 = time.monotonic()
    sender = Identity.new(f"hist_s{secrets.token_hex(4)}")
    receiver = Identity.new(f"hist_r{secrets.token_hex(4)}")
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        await register(http, sender, prekeys=True)
        await register(http, receiver, prekeys=True)
        r = await http.post(
            "/v1/conversations",
            headers=sender.headers,
            json={"kind": "direct", "members": [receiver.account_id]},
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(f"create conversation: HTTP {r.status_code}: {r.text[:300]}")
        conv = str(r.json()["conversation_id"])
        path = f"/v1/conversations/{conv}/envelopes"
        versions = {sender.account_id: sender.list_version, receiver.account_id: receiver.list_version}
        next_index = iter(range(count))
        stored = [0]

        async def worker() -> None:
            for _ in next_index:
                body = orjson.dumps(
                    {
                        "envelope_id": b64e(os.urandom(16)),
                        "clock": b64e(os.urandom(CLOCK_BYTES)),
                        "device_list_versions": versions,
                        "ephemeral": False,
                        "ciphertexts": [
                            {"device_id": receiver.id, "ciphertext": b64e(os.urandom(ciphertext_bytes))}
                        ],
                    }
                )
                resp = await http.post(
                    path,
                    content=body,
                    headers={**sender.headers, "Content-Type": "application/json"},
                )
                if resp.status_code != 201:
                    raise RuntimeError(f"send envelope: HTTP {resp.status_code}: {resp.text[:300]}")
                stored[0] += 1
                if stored[0] % 100 == 0:
                    common.log(f"history: {stored[0]}/{count} envelopes stored")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return History(
        conversation_id=conv,
        reader_token=receiver.access_token,
        envelopes=stored[0],
        ciphertext_bytes=ciphertext_bytes,
        setup_s=round(time.monotonic() - t0, 1),
        stored_mib=round(stored[0] * ciphertext_bytes / 2**20, 1),
    )


@dataclass
class ReadStats:
    responses: int = 0
    full_passes: int = 0
    body_bytes: int = 0
    largest_body: int = 0
    most_envelopes: int = 0
    slowest_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "full_passes": self.full_passes,
            "body_mib_read": round(self.body_bytes / 2**20, 1),
            "largest_body_bytes": self.largest_body,
            "largest_body_mib": round(self.largest_body / 2**20, 2),
            "most_envelopes_in_a_page": self.most_envelopes,
            "slowest_response_s": round(self.slowest_s, 2),
            "errors": self.errors,
        }


async def read_history(
    port: int, history: History, limit: int, stop: asyncio.Event, stats: ReadStats
) -> None:
    """Page through the history (``after`` from ``next_after``, back to 0 at the end) until
    ``stop``, reading every body; one client, one request at a time."""
    path = f"/v1/conversations/{history.conversation_id}/envelopes"
    headers = {"Authorization": f"Bearer {history.reader_token}"}
    after = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=headers) as http:
        while not stop.is_set():
            t = time.monotonic()
            try:
                r = await http.get(path, params={"after": after, "limit": limit})
                body = r.content
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                stats.errors[key] = stats.errors.get(key, 0) + 1
                after = 0
                with contextlib.suppress(TimeoutError):  # no busy loop against a dead server
                    await asyncio.wait_for(stop.wait(), 0.1)
                continue
            stats.slowest_s = max(stats.slowest_s, time.monotonic() - t)
            if r.status_code != 200:
                key = f"http_{r.status_code}"
                stats.errors[key] = stats.errors.get(key, 0) + 1
                after = 0
                continue
            stats.responses += 1
            stats.body_bytes += len(body)
            stats.largest_body = max(stats.largest_body, len(body))
            page = orjson.loads(body)
            stats.most_envelopes = max(stats.most_envelopes, len(page["envelopes"]))
            if page["next_after"] is None:
                stats.full_passes += 1
                after = 0
            else:
                after = int(page["next_after"])
