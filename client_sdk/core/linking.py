"""Link codes, the confirmation handshake and the sealed linking payload (docs/protocol/messages.md
§ Linking).

Link code (text; shown by the new device, e.g. as a QR code)::

    "saltline-link:" || base64url( 0x02 || channel_id (16) || u8 len(put_secret) || put_secret (ASCII)
                                   || link_pk (32, per-link X25519) || device_id (16) )

The code carries the channel's **put** secret only: its take secret stays on the new device, so
whoever photographs the code can put a message (which the new device then shows: another account
and another confirmation code) but never take one.

1. **Hello** (approving device -> new device, on the code's channel, sealed to ``link_pk`` under
   ``LINK_PAYLOAD``): ``{"v":1, "secret", "kind":"link-hello", "approver_key": b64(A_pub, a fresh
   X25519 key), "reply": {"channel_id", "secret": put secret of a channel the approver created},
   "account_id", "username", "account_key": b64(AK public, 34-byte kind-tagged form)}``.
2. **Reply** (new device -> approving device, on the reply channel), authenticated by the link key::

       k     = HKDF-SHA256(X25519(link_sk, A_pub), salt = link_pk || A_pub,
                           info = "saltline/v1/link-reply", length 32)
       reply = nonce (24) || XChaCha20-Poly1305(k, nonce, canonical_json(doc), ad = "saltline/v1/link-reply")
       doc   = {"v":1, "kind":"link-reply", "device_id", "name", "signing_key", "dh_key"} (raw keys, b64)

   Only the holder of ``link_sk`` (whose public key the approver read from the screen) can make it.
3. Both devices show the **confirmation code** (:func:`confirmation_code`) over ``link_pk``,
   ``A_pub``, the device id and the account key; the person compares them and confirms on the
   approving device. Nothing is sealed before that.
4. **Payload** (approving device -> new device, on the code's channel again), sealed to
   ``link_pk``::

    {"v":1, "secret", "account_id", "username", "account_key": b64(AK seed), "device_list",
     "contacts", "conversations", "history" (optional), "follow_up": {"channel_id", "secret": take
     secret, "key": 32-byte follow-up key}, "grant": the one-time device grant}

Follow-up, put on the follow-up channel once the new device is in the device list, encrypted under
the fresh key the payload's ``follow_up.key`` carried (:func:`seal_follow_up`)::

    {"v":1, "kind": "history-follow-up", "history": {"blob_ids","key","digest"} | null}

A linking payload carries no ``kind``; the new device refuses one that does, and a hello that
does not say ``link-hello``. The new device checks that the payload names the account, username
and account key its hello named (the ones it showed the person).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from saltline.client_sdk.core.wire import canonical_json
from saltline.client_sdk.errors import LinkError
from saltline.crypto import primitives as p
from saltline.crypto import sealed
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountPublicKey, X25519PrivateKey, X25519PublicKey, b64decode, b64encode

PREFIX = "saltline-link:"
CODE_VERSION = 0x02
PAYLOAD_VERSION = 1
HELLO_KIND = "link-hello"
REPLY_KIND = "link-reply"
REPLY_INFO = b"saltline/v1/link-reply"
CONFIRMATION_LABEL = b"saltline/v1/link-confirmation"
MAX_REPLY_BYTES = 4096


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


# -- the confirmation handshake -------------------------------------------------------------------------


def confirmation_code(
    link_pk: bytes, approver_pk: bytes, device_id: bytes, account_key: AccountPublicKey
) -> str:
    """Six digits both devices show: ``SHA-256("saltline/v1/link-confirmation" || 0x00 || link_pk
    || approver_pk || device_id || account_pk (raw 32))``, first 8 bytes big-endian mod 10^6,
    zero-padded, as "123 456". A device that talks to someone else than the person's other
    device (a photographed code, a substituted hello) shows another code."""
    digest = p.sha256(CONFIRMATION_LABEL + b"\x00" + link_pk + approver_pk + device_id + bytes(account_key))
    n = int.from_bytes(digest[:8], "big") % 1_000_000
    text = f"{n:06d}"
    return f"{text[:3]} {text[3:]}"


@dataclass(frozen=True, slots=True)
class Hello:
    approver_key: bytes  # X25519 public, 32
    reply_channel: str
    reply_secret: str
    account_id: str
    username: str
    account_key: AccountPublicKey


def encode_hello(h: Hello) -> dict[str, Any]:
    return {
        "kind": HELLO_KIND,
        "approver_key": b64encode(h.approver_key),
        "reply": {"channel_id": h.reply_channel, "secret": h.reply_secret},
        "account_id": h.account_id,
        "username": h.username,
        "account_key": h.account_key.to_b64(),
    }


def parse_hello(doc: dict[str, Any]) -> Hello:
    try:
        if doc.get("kind") != HELLO_KIND:
            raise ValueError("not a link hello")
        reply = doc["reply"]
        key = b64decode(doc["approver_key"])
        if len(key) != 32 or not isinstance(reply, dict):
            raise ValueError("malformed hello")
        fields = (reply["channel_id"], reply["secret"], doc["account_id"], doc["username"])
        if not all(isinstance(f, str) for f in fields):
            raise ValueError("malformed hello")
        return Hello(
            key,
            reply["channel_id"],
            reply["secret"],
            doc["account_id"],
            doc["username"],
            AccountPublicKey.from_b64(doc["account_key"]),
        )
    except (KeyError, TypeError, ValueError, CryptoError) as exc:
        raise LinkError(f"the approving device's hello is not valid ({exc}); show a new code") from exc


@dataclass(frozen=True, slots=True)
class Reply:
    device_id: bytes
    name: str
    signing_key: bytes
    dh_key: bytes


def _reply_key(private: X25519PrivateKey, public: bytes, link_pk: bytes, approver_pk: bytes) -> bytes:
    shared = p.x25519(bytes(private), public)
    return p.hkdf_sha256(shared, salt=link_pk + approver_pk, info=REPLY_INFO, length=p.AEAD_KEY_SIZE)


def seal_reply(
    link_key: X25519PrivateKey, approver_pk: bytes, reply: Reply, rng: p.Rng = p.random_bytes
) -> bytes:
    link_pk = bytes(link_key.public_key)
    key = _reply_key(link_key, approver_pk, link_pk, approver_pk)
    doc = {
        "v": PAYLOAD_VERSION,
        "kind": REPLY_KIND,
        "device_id": b64encode(reply.device_id),
        "name": reply.name,
        "signing_key": b64encode(reply.signing_key),
        "dh_key": b64encode(reply.dh_key),
    }
    nonce = rng(p.AEAD_NONCE_SIZE)
    return nonce + p.aead_encrypt(key, nonce, canonical_json(doc), REPLY_INFO)


def open_reply(approver_key: X25519PrivateKey, link_pk: bytes, box: bytes) -> Reply:
    """The new device's reply, if it was made with the link key of the code (LinkError otherwise)."""
    approver_pk = bytes(approver_key.public_key)
    try:
        if not p.AEAD_NONCE_SIZE + p.AEAD_TAG_SIZE <= len(box) <= MAX_REPLY_BYTES:
            raise ValueError("reply size")
        key = _reply_key(approver_key, link_pk, link_pk, approver_pk)
        body = p.aead_decrypt(key, box[: p.AEAD_NONCE_SIZE], box[p.AEAD_NONCE_SIZE :], REPLY_INFO)
        doc = json.loads(body.decode())
        if not isinstance(doc, dict) or doc.get("v") != PAYLOAD_VERSION or doc.get("kind") != REPLY_KIND:
            raise ValueError("not a link reply")
        reply = Reply(
            b64decode(doc["device_id"]), doc["name"], b64decode(doc["signing_key"]), b64decode(doc["dh_key"])
        )
        if len(reply.device_id) != 16 or len(reply.signing_key) != 32 or len(reply.dh_key) != 32:
            raise ValueError("malformed reply")
        if not isinstance(reply.name, str):
            raise ValueError("malformed reply")
        return reply
    except (CryptoError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise LinkError(
            "the new device's answer does not come from the device that showed the code; show a new code"
        ) from exc


# -- the follow-up ----------------------------------------------------------------------------------------

FOLLOW_UP_AD = b"saltline/v1/link-follow-up"


def seal_follow_up(key: bytes, doc: dict[str, Any], rng: p.Rng = p.random_bytes) -> bytes:
    """The follow-up, encrypted under the fresh key the (confirmed, sealed) payload carried:
    ``nonce (24) || XChaCha20-Poly1305(key, nonce, canonical_json({"v":1, **doc}), ad =
    "saltline/v1/link-follow-up")``. Whoever saw the link code (or relays the channels) cannot
    make one."""
    if len(key) != p.AEAD_KEY_SIZE:
        raise LinkError("the follow-up key is not 32 bytes")
    nonce = rng(p.AEAD_NONCE_SIZE)
    return nonce + p.aead_encrypt(key, nonce, canonical_json({"v": PAYLOAD_VERSION, **doc}), FOLLOW_UP_AD)


def open_follow_up(key: bytes, box: bytes) -> dict[str, Any]:
    try:
        if len(key) != p.AEAD_KEY_SIZE or len(box) < p.AEAD_NONCE_SIZE + p.AEAD_TAG_SIZE:
            raise ValueError("size")
        body = p.aead_decrypt(key, box[: p.AEAD_NONCE_SIZE], box[p.AEAD_NONCE_SIZE :], FOLLOW_UP_AD)
        doc = json.loads(body.decode())
    except (CryptoError, ValueError, UnicodeDecodeError) as exc:
        raise LinkError("the follow-up of the link does not come from the approving device") from exc
    if not isinstance(doc, dict) or doc.get("v") != PAYLOAD_VERSION:
        raise LinkError("unsupported follow-up version; update the app")
    return doc
