"""Account registration and public account/device-list lookups."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from saltline.crypto import device_list as dl
from saltline.crypto.errors import CryptoError, EncodingError
from saltline.crypto.keys import AccountPublicKey, b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import decode_b64_field, decode_id, encode_id, normalize_username
from saltline.server.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, Passwords
from saltline.server.storage.accounts_repo import (
    AccountRow,
    AccountsRepo,
    DeviceListRow,
    DeviceRow,
    StorageConflict,
)

MAX_CHAIN_PAGE = 100


@dataclass(frozen=True, slots=True)
class RegisteredAccount:
    account_id: str
    username: str
    device_id: str
    device_list_version: int


@dataclass(frozen=True, slots=True)
class AccountInfo:
    account_id: str
    username: str
    account_key: str
    device_list_version: int


@dataclass(frozen=True, slots=True)
class SignedListInfo:
    account_id: str
    version: int
    hash: str
    signed_list: str
    created_at_ms: int


def check_password_rules(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise Problem(
            422,
            ProblemCode.PASSWORD_WEAK,
            f"passwords are {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long",
        )


def parse_account_key(text: str) -> AccountPublicKey:
    try:
        return AccountPublicKey.from_b64(text)
    except CryptoError as exc:
        raise Problem(
            422,
            ProblemCode.MALFORMED_KEY,
            "account_key is not an encoded account public key",
            field="account_key",
        ) from exc


def verify_signed_list(
    text: str, account_key: AccountPublicKey, username_lower: str, max_bytes: int, max_devices: int
) -> dl.SignedDeviceList:
    """Parse and verify a signed device list under ``account_key``; 422 device_list_invalid if not."""
    raw = decode_b64_field(text, "device_list")
    if len(raw) > max_bytes:
        raise Problem(413, ProblemCode.PAYLOAD_TOO_LARGE, f"device list is larger than {max_bytes} bytes")
    try:
        signed = dl.SignedDeviceList.decode(raw)
        dl.verify(signed, account_key)
    except EncodingError as exc:
        raise Problem(422, ProblemCode.DEVICE_LIST_INVALID, f"device list does not parse: {exc}") from exc
    except CryptoError as exc:
        raise Problem(422, ProblemCode.DEVICE_LIST_INVALID, f"device list does not verify: {exc}") from exc
    if signed.content.username != username_lower:
        raise Problem(422, ProblemCode.DEVICE_LIST_INVALID, "device list names another username")
    if len(signed.content.devices) > max_devices:
        raise Problem(
            422,
            ProblemCode.TOO_MANY_DEVICES,
            f"an account has at most {max_devices} devices",
            limit=max_devices,
        )
    return signed


def device_rows(account_id: bytes, entries: tuple[dl.DeviceEntry, ...], now_ms: int) -> list[DeviceRow]:
    return [
        DeviceRow(
            device_id=e.device_id,
            account_id=account_id,
            signing_key=e.signing_key.encode(),
            dh_key=e.dh_key.encode(),
            added_at_ms=now_ms,
        )
        for e in entries
    ]


class AccountService:
    def __init__(
        self,
        repo: AccountsRepo,
        passwords: Passwords,
        clock: Clock,
        *,
        max_devices: int,
        max_list_bytes: int,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._passwords = passwords
        self._clock = clock
        self._max_devices = max_devices
        self._max_list_bytes = max_list_bytes
        self._random = random_bytes

    async def register(
        self, username: str, password: str, account_key_b64: str, device_list_b64: str, device_id_b64: str
    ) -> RegisteredAccount:
        lower = normalize_username(username)
        check_password_rules(password)
        account_key = parse_account_key(account_key_b64)
        device_id = decode_id(device_id_b64, "device_id", status=422)
        signed = verify_signed_list(
            device_list_b64, account_key, lower, self._max_list_bytes, self._max_devices
        )
        if signed.version != 1:
            raise Problem(
                422, ProblemCode.DEVICE_LIST_INVALID, "a new account's first device list must have version 1"
            )
        if signed.content.device(device_id) is None:
            raise Problem(
                422, ProblemCode.DEVICE_NOT_IN_LIST, "the registering device is not in the device list"
            )
        if await self._repo.get_by_username(lower) is not None:
            raise Problem(409, ProblemCode.USERNAME_TAKEN, "this username is taken")
        password_hash = await self._passwords.hash(password)
        now = self._clock()
        account_id = self._random(16)
        account = AccountRow(
            id=account_id,
            username=lower,
            username_lower=lower,
            password_hash=password_hash,
            account_key=account_key.encode(),
            device_list_version=1,
            created_at_ms=now,
        )
        first = DeviceListRow(account_id, 1, signed.hash(), signed.encode(), now)
        try:
            await self._repo.create(account, device_rows(account_id, signed.content.devices, now), first)
        except StorageConflict as exc:
            if exc.what == "username":
                raise Problem(409, ProblemCode.USERNAME_TAKEN, "this username is taken") from exc
            raise Problem(
                409, ProblemCode.DEVICE_ID_TAKEN, "a device id in the list is already in use"
            ) from exc
        return RegisteredAccount(encode_id(account_id), lower, encode_id(device_id), 1)

    async def get(self, account_id_b64: str) -> AccountInfo:
        row = await self._repo.get(decode_id(account_id_b64, "account"))
        if row is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        return _info(row)

    async def by_username(self, username: str) -> AccountInfo:
        try:
            lower = normalize_username(username)
        except Problem:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account") from None
        row = await self._repo.get_by_username(lower)
        if row is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        return _info(row)

    async def current_list(self, account_id_b64: str) -> SignedListInfo:
        account_id = decode_id(account_id_b64, "account")
        row = await self._repo.current_list(account_id)
        if row is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        return _list_info(row)

    async def list_chain(
        self, account_id_b64: str, since: int, limit: int = MAX_CHAIN_PAGE
    ) -> list[SignedListInfo]:
        account_id = decode_id(account_id_b64, "account")
        if await self._repo.get(account_id) is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        rows = await self._repo.list_chain(account_id, since, min(limit, MAX_CHAIN_PAGE))
        return [_list_info(r) for r in rows]


def _info(row: AccountRow) -> AccountInfo:
    return AccountInfo(
        encode_id(row.id),
        row.username,
        AccountPublicKey.decode(row.account_key).to_b64(),
        row.device_list_version,
    )


def _list_info(row: DeviceListRow) -> SignedListInfo:
    return SignedListInfo(
        encode_id(row.account_id),
        row.version,
        b64encode(row.list_hash),
        b64encode(row.signed),
        row.created_at_ms,
    )
