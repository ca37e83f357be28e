"""Link codes and the sealed linking payload (docs/protocol/messages.md § Linking).

Link code (text)::

    "saltline-link:" || base64url( 0x01 || channel_id (16) || u8 len(secret) || secret (ASCII)
                                   || link_pk (32, per-link X25519) || device_id (16) )

Payload, sealed to ``link_pk`` under context ``LINK_PAYLOAD`` (canonical JSON)::

    {"v":1, "secret": <channel secret from the code>, "account_id", "username",
     "account_key": b64(AK seed), "device_list": b64(current signed list),
     "contacts": [{"account_id","username","account_key","signed_list"}...],
     "conversations": [{"conversation_id","kind","members"}...],
     "history": {"blob_ids","key","digest"} (optional),
     "follow_up": {"channel_id","secret"} (a provisioning channel the approving device created)}

Follow-up, sealed the same way (same ``link_pk``, same context, the same ``secret`` from the
code) and put on the follow-up channel once the new device is in the device list::

    {"v":1, "secret", "kind": "history-follow-up", "history": {"blob_ids","key","digest"} | null}

A linking payload carries no ``kind``; the new device refuses one that does.

The secret proves the sender read the code on the new device's screen. The new device binds
itself to the account key from the payload, signs the successor list with it and publishes it
through ``PUT /v1/accounts/{account_id}/device-list/signed``, which needs no bearer token (the
account-key signature is the authority), so no device ever holds another device's token.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from client_sdk.core.wire import canonical_json
from client_sdk.errors import LinkError
from crypto import sealed
from crypto.errors import CryptoError
from crypto.keys import X25519PrivateKey, X25519PublicKey, b64decode, b64encode

PREFIX = "saltline-link:"
CODE_VERSION = 0x01
PAYLOAD_VERSION = 1


@dataclass(frozen=True, slots=True)
class LinkCode:
    channel_id: bytes
    secret: str
    link_public_key: bytes
    device_id: bytes

    def to_text(self) -> str:
        try:
            secret = self.secret.encode("ascii")
        except UnicodeEncodeError:
            raise LinkError("the link secret must be ASCII") from None
        if len(self.channel_id) != 16 or len(self.link_public_key) != 32 or len(self.device_id) != 16:
            raise LinkError("a link code holds a 16-byte channel id, a 32-byte key and a 16-byte device id")
        if len(secret) > 255:
            raise LinkError("the link secret is longer than 255 bytes")
        raw = (
            bytes([CODE_VERSION])
            + self.channel_id
            + struct.pack(">B", len(secret))
            + secret
            + self.link_public_key
            + self.device_id
        )
        return PREFIX + b64encode(raw)

    @classmethod
    def parse(cls, text: str) -> LinkCode:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise LinkError("not a Saltline link code (it must start with 'saltline-link:')")
        try:
            raw = b64decode(text[len(PREFIX) :])
        except CryptoError as exc:
            raise LinkError("the link code is damaged; show a new one") from exc
        if len(raw) < 2 or raw[0] != CODE_VERSION:
            raise LinkError("unsupported link code version; update the app")
        if len(raw) < 18 or len(raw) != 1 + 16 + 1 + raw[17] + 32 + 16:
            raise LinkError("the link code is damaged; show a new one")
        n = raw[17]
        try:
            secret = raw[18 : 18 + n].decode("ascii")
        except UnicodeDecodeError:
            raise LinkError("the link code is damaged; show a new one") from None
        rest = raw[18 + n :]
        return cls(raw[1:17], secret, rest[:32], rest[32:])


def seal_payload(code: LinkCode, payload: dict[str, Any]) -> bytes:
    doc = {"v": PAYLOAD_VERSION, "secret": code.secret, **payload}
    body = canonical_json(doc)
    try:
        return sealed.seal(X25519PublicKey(code.link_public_key), body, sealed.LINK_PAYLOAD)
    except CryptoError as exc:
        raise LinkError("the link code holds an unusable key; show a new one") from exc


def open_payload(link_key: X25519PrivateKey, secret: str, box: bytes) -> dict[str, Any]:
    try:
        body = sealed.open(link_key, box, sealed.LINK_PAYLOAD)
        doc = json.loads(body.decode())
    except (CryptoError, ValueError, UnicodeDecodeError) as exc:
        raise LinkError("the linking payload could not be opened; start linking again") from exc
    if not isinstance(doc, dict) or doc.get("v") != PAYLOAD_VERSION:
        raise LinkError("unsupported linking payload version; update the app")
    if doc.get("secret") != secret:
        raise LinkError("the linking payload does not prove knowledge of this link code")
    return doc
