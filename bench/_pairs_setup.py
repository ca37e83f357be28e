"""bench/pairs.py's set-up, untimed: accounts of one device each with real signed device lists
(``saltline.crypto.device_list``), registered through the real HTTP API with their prekeys, and the
sender/receiver pairs of workload pairs-v1 (one direct conversation per pair, the receiver's prekey
bundle claimed: the server-side cost of the session set-up). bench/reconnect.py and
bench/_abuse_attacks.py register their accounts with it too."""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from typing import Any

import httpx

from saltline.crypto import device_list as dl
from saltline.crypto.keys import (
    AccountKey,
    DeviceDHKey,
    DeviceSigningKey,
    LastResortPreKey,
    OneTimePreKey,
    SignedPreKey,
)

#: An opaque vector clock for a 1:1 conversation of two single-device accounts:
#: 2 x (16-byte device id + 8-byte counter).
CLOCK_BYTES = 48
PLAINTEXT_BYTES = 200
SETUP_CONCURRENCY = 16
PASSWORD = "bench password, not a secret"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Identity:
    """One account with one device."""

    username: str
    account_key: AccountKey
    device_id: bytes
    signing: DeviceSigningKey
    dh: DeviceDHKey
    signed_list: dl.SignedDeviceList
    account_id: str = ""
    access_token: str = ""
    list_version: int = 1

    @classmethod
    def new(cls, username: str) -> Identity:
        key = AccountKey.generate()
        device_id = os.urandom(16)
        signing = DeviceSigningKey.generate()
        dh = DeviceDHKey.generate()
        entry = dl.bind_device(key.public_key, device_id, signing, dh.public_key, 0)
        return cls(username, key, device_id, signing, dh, dl.first(key, username.lower(), [entry]))

    @property
    def id(self) -> str:
        return b64e(self.device_id)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class SetupError(RuntimeError):
    pass


def check_status(r: httpx.Response, what: str, *ok: int) -> dict[str, Any]:
    if r.status_code not in ok:
        raise SetupError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r.json() if r.content else {}


async def register(http: httpx.AsyncClient, ident: Identity, prekeys: bool) -> None:
    body = check_status(
        await http.post(
            "/v1/accounts",
            json={
                "username": ident.username,
                "password": PASSWORD,
                "account_key": ident.account_key.public_key.to_b64(),
                "device_list": ident.signed_list.to_b64(),
                "device_id": ident.id,
            },
        ),
        "register",
        201,
    )
    ident.account_id = body["account_id"]
    ident.access_token = body["tokens"]["access_token"]
    ident.list_version = int(body["device_list_version"])
    if prekeys:
        check_status(
            await http.put(
                "/v1/keys",
                headers=ident.headers,
                json={
                    "signed_prekey": SignedPreKey.generate_with_id(1).signed_public(ident.signing).to_b64(),
                    "last_resort_prekey": LastResortPreKey.generate_with_id(1)
                    .signed_public(ident.signing)
                    .to_b64(),
                    "one_time_prekeys": [
                        OneTimePreKey.generate_with_id(i).signed_public(ident.signing).to_b64()
                        for i in range(1, 3)
                    ],
                },
            ),
            "upload prekeys",
            200,
        )


@dataclass
class Pair:
    index: int
    sender: Identity
    receiver: Identity
    conversation_id: str = ""


async def bounded(limit: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def run(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


async def setup_pairs(http: httpx.AsyncClient, count: int, tag: str) -> list[Pair]:
    pairs = [
        Pair(i, Identity.new(f"bench_{tag}_s{i}"), Identity.new(f"bench_{tag}_r{i}")) for i in range(count)
    ]

    async def one(pair: Pair) -> None:
        await register(http, pair.sender, prekeys=True)
        await register(http, pair.receiver, prekeys=True)
        body = check_status(
            await http.post(
                "/v1/conversations",
                headers=pair.sender.headers,
                json={"kind": "direct", "members": [pair.receiver.account_id]},
            ),
            "create conversation",
            200,
            201,
        )
        pair.conversation_id = body["conversation_id"]
        # Session set-up of the workload: claim the receiver's prekey bundle (server mode does not
        # encrypt with it; the claim is the server-side cost of establishing the session).
        check_status(
            await http.get(
                f"/v1/keys/{pair.receiver.account_id}/{pair.receiver.id}", headers=pair.sender.headers
            ),
            "claim prekey bundle",
            200,
        )

    await bounded(SETUP_CONCURRENCY, [one(p) for p in pairs])
    return pairs
