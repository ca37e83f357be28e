"""Encoders for the server -> device WebSocket frames (JSON text, compact, via orjson).

Frames are built here rather than in ``saltline.server.api`` because ephemeral frames cross the bus
already encoded (another server instance may hold the recipient's socket). The formats are listed
in :mod:`saltline.server.api.ws`.
"""

from __future__ import annotations

from typing import Any

import orjson

from saltline.crypto.keys import b64encode


def encode(frame: dict[str, Any]) -> bytes:
    return orjson.dumps(frame)


def sender(account_id: bytes, device_id: bytes) -> dict[str, str]:
    return {"account_id": b64encode(account_id), "device_id": b64encode(device_id)}


def envelope_frame(
    *,
    queue_seq: int,
    conversation_id: bytes,
    server_seq: int,
    server_ts: int,
    sender_account_id: bytes,
    sender_device_id: bytes,
    envelope_id: bytes,
    clock: bytes,
    ciphertext: bytes,
) -> bytes:
    return encode(
        {
            "type": "envelope",
            "queue_seq": queue_seq,
            "conversation_id": b64encode(conversation_id),
            "server_seq": server_seq,
            "server_ts": server_ts,
            "sender": sender(sender_account_id, sender_device_id),
            "envelope_id": b64encode(envelope_id),
            "clock": b64encode(clock),
            "ciphertext": b64encode(ciphertext),
        }
    )


def ephemeral_frame(
    *,
    conversation_id: bytes,
    server_ts: int,
    sender_account_id: bytes,
    sender_device_id: bytes,
    envelope_id: bytes,
    clock: bytes,
    ciphertext: bytes,
) -> bytes:
    return encode(
        {
            "type": "ephemeral",
            "conversation_id": b64encode(conversation_id),
            "server_ts": server_ts,
            "sender": sender(sender_account_id, sender_device_id),
            "envelope_id": b64encode(envelope_id),
            "clock": b64encode(clock),
            "ciphertext": b64encode(ciphertext),
        }
    )


def device_list_frame(account_id_b64: str, version: int) -> bytes:
    """A hint to an account's online devices that its device list changed (they fetch and verify
    the chain themselves); sent like an ephemeral frame: online devices only, never stored."""
    return encode({"type": "device_list", "account_id": account_id_b64, "version": version})
