"""Building accounts, devices, device lists and prekeys with ``crypto`` for server tests.
(The delivery tests reuse these.)"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
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
    SigningContext,
    b64decode,
    b64encode,
)

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


def unique_username(prefix: str = "user") -> str:
    return f"{prefix}{next(_counter)}_{os.urandom(3).hex()}"


@dataclass
class Device:
    device_id: bytes
    signing: DeviceSigningKey
    dh: DeviceDHKey
    entry: dl.DeviceEntry
    access_token: str = ""
    refresh_token: str = ""

    @property
    def id(self) -> str:
        return b64encode(self.device_id)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Account:
    username: str
    account_key: AccountKey
    devices: list[Device]
    signed_list: dl.SignedDeviceList
    account_id: str = ""
    password: str = PASSWORD
    removed: list[Device] = field(default_factory=list)

    @property
    def first(self) -> Device:
        return self.devices[0]


def new_device(account_key: AccountKey, added_at: int = 0) -> Device:
    device_id = os.urandom(16)
    signing = DeviceSigningKey.generate()
    dh = DeviceDHKey.generate()
    entry = dl.bind_device(account_key.public_key, device_id, signing, dh.public_key, added_at)
    return Device(device_id, signing, dh, entry)


def with_added(previous: dl.SignedDeviceList, account_key: AccountKey, device: Device) -> dl.SignedDeviceList:
    """``previous`` plus ``device``, which binds itself at the version it joins (previous + 1)."""
    device.entry = dl.bind_device(
        previous.content.root,
        device.device_id,
        device.signing,
        device.dh.public_key,
        device.entry.added_at,
        previous.version + 1,
    )
    return dl.with_device_added(previous, account_key, device.entry)


def new_account(username: str | None = None) -> Account:
    username = username or unique_username()
    key = AccountKey.generate()
    device = new_device(key)
    signed = dl.first(key, username.lower(), [device.entry])
    return Account(username, key, [device], signed)


def register_body(account: Account) -> dict[str, Any]:
    return {
        "username": account.username,
        "password": account.password,
        "account_key": account.account_key.public_key.to_b64(),
        "device_list": account.signed_list.to_b64(),
        "device_id": account.first.id,
    }


def register(client: httpx.Client, username: str | None = None) -> Account:
    """Register a new account (one device) and keep the first device's tokens."""
    account = new_account(username)
    r = client.post("/v1/accounts", json=register_body(account))
    assert r.status_code == 201, r.text
    body = r.json()
    account.account_id = body["account_id"]
    account.first.access_token = body["tokens"]["access_token"]
    account.first.refresh_token = body["tokens"]["refresh_token"]
    return account


def login(client: httpx.Client, account: Account, device: Device) -> httpx.Response:
    r = client.post(
        "/v1/auth/login",
        json={"username": account.username, "password": account.password, "device_id": device.id},
    )
    if r.status_code == 200:
        device.access_token = r.json()["access_token"]
        device.refresh_token = r.json()["refresh_token"]
    return r


def put_list(client: httpx.Client, acting: Device, signed: dl.SignedDeviceList) -> httpx.Response:
    return client.put(
        "/v1/accounts/me/device-list", json={"device_list": signed.to_b64()}, headers=acting.headers
    )


def add_device(client: httpx.Client, account: Account, acting: Device | None = None) -> Device:
    """Link a new device: the acting device signs the successor list; the new one logs in."""
    device = new_device(account.account_key)
    signed = with_added(account.signed_list, account.account_key, device)
    r = put_list(client, acting or account.first, signed)
    assert r.status_code == 200, r.text
    account.signed_list = signed
    account.devices.append(device)
    assert login(client, account, device).status_code == 200
    return device


def remove_device(
    client: httpx.Client, account: Account, device: Device, acting: Device | None = None
) -> None:
    signed = dl.with_device_removed(account.signed_list, account.account_key, device.device_id)
    r = put_list(client, acting or account.first, signed)
    assert r.status_code == 200, r.text
    account.signed_list = signed
    account.devices.remove(device)
    account.removed.append(device)


def prekeys_body(device: Device, one_time: int = 0, start_id: int = 1) -> dict[str, Any]:
    return {
        "signed_prekey": SignedPreKey.generate_with_id(1).signed_public(device.signing).to_b64(),
        "last_resort_prekey": LastResortPreKey.generate_with_id(1).signed_public(device.signing).to_b64(),
        "one_time_prekeys": [
            OneTimePreKey.generate_with_id(i).signed_public(device.signing).to_b64()
            for i in range(start_id, start_id + one_time)
        ],
    }


def sign_challenge(device: Device, username: str, nonce_b64: str) -> str:
    from saltline.crypto.login import login_challenge_message

    message = login_challenge_message(username.lower(), device.device_id, b64decode(nonce_b64))
    return b64encode(device.signing.sign(SigningContext.LOGIN_CHALLENGE, message))


def grant_for(client: httpx.Client, account: Account, device: Device, acting: Device | None = None) -> str:
    """A one-time device grant, issued by ``acting`` (the first device), for linking ``device``."""
    r = client.post(
        "/v1/accounts/me/device-grants",
        json={"device_id": device.id, "signing_key": b64encode(bytes(device.entry.signing_key))},
        headers=(acting or account.first).headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["grant"])


def put_signed(
    client: httpx.Client, account_id: str, signed: dl.SignedDeviceList, grant: str | None, **extra: Any
) -> httpx.Response:
    """``PUT /v1/accounts/{id}/device-list/signed`` (linking) with ``grant`` in X-Device-Grant."""
    headers = {} if grant is None else {"X-Device-Grant": grant}
    return client.put(
        f"/v1/accounts/{account_id}/device-list/signed",
        json={"device_list": signed.to_b64(), **extra},
        headers=headers,
    )
