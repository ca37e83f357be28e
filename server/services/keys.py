"""The key directory: devices publish prekeys, senders claim bundles.

Every uploaded prekey's signature is checked against the uploading device's signing key. A claim
hands out each one-time prekey at most once (see :mod:`server.storage.prekeys_repo`) and falls
back to the last-resort prekey when none is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crypto.errors import CryptoError, EncodingError
from crypto.keys import DeviceSigningPublicKey, KeyKind, PreKeyPublic, b64encode
from server.clock import Clock
from server.errors import Problem, ProblemCode
from server.services.common import AuthedDevice, decode_b64_field, decode_id, encode_id
from server.storage.accounts_repo import AccountsRepo
from server.storage.prekeys_repo import PreKeyRow, PreKeysRepo


@dataclass(frozen=True, slots=True)
class PreKeyCountsInfo:
    one_time: int
    signed_prekey_id: int | None
    last_resort_prekey_id: int | None


@dataclass(frozen=True, slots=True)
class Bundle:
    account_id: str
    device_id: str
    signing_key: str
    dh_key: str
    signed_prekey: str
    one_time_prekey: str | None
    last_resort_prekey: str | None  # given only when no one-time prekey was left
    one_time_remaining: int


class KeyDirectoryService:
    def __init__(self, accounts: AccountsRepo, repo: PreKeysRepo, clock: Clock, *, max_batch: int) -> None:
        self._accounts = accounts
        self._repo = repo
        self._clock = clock
        self._max_batch = max_batch

    def _parse(self, text: str, kind: KeyKind, field: str, signer: DeviceSigningPublicKey) -> PreKeyRow:
        raw = decode_b64_field(text, field)
        try:
            prekey = PreKeyPublic.decode(raw)
        except CryptoError as exc:
            raise Problem(
                422, ProblemCode.MALFORMED_KEY, f"{field} is not an encoded prekey", field=field
            ) from exc
        if prekey.kind is not kind:
            raise Problem(
                422, ProblemCode.PREKEY_KIND_MISMATCH, f"{field} must be a {kind.name} prekey", field=field
            )
        try:
            prekey.verify(signer)
        except CryptoError as exc:
            raise Problem(
                422,
                ProblemCode.PREKEY_SIGNATURE_INVALID,
                f"{field} is not signed by this device's signing key",
                field=field,
            ) from exc
        return PreKeyRow(int(kind), prekey.key_id, prekey.encode())

    async def upload(
        self,
        caller: AuthedDevice,
        signed_prekey: str | None,
        last_resort_prekey: str | None,
        one_time_prekeys: Sequence[str],
    ) -> PreKeyCountsInfo:
        if len(one_time_prekeys) > self._max_batch:
            raise Problem(
                413,
                ProblemCode.PREKEY_BATCH_TOO_LARGE,
                f"at most {self._max_batch} one-time prekeys per upload",
                limit=self._max_batch,
            )
        device = await self._accounts.get_device(caller.device_id_bytes)
        if device is None or not device.active:
            raise Problem(401, ProblemCode.TOKEN_REVOKED, "this device was removed from its account")
        signer = DeviceSigningPublicKey.decode(device.signing_key)
        signed = (
            None
            if signed_prekey is None
            else self._parse(signed_prekey, KeyKind.SIGNED_PREKEY, "signed_prekey", signer)
        )
        last = (
            None
            if last_resort_prekey is None
            else self._parse(last_resort_prekey, KeyKind.LAST_RESORT_PREKEY, "last_resort_prekey", signer)
        )
        one_time = [
            self._parse(t, KeyKind.ONE_TIME_PREKEY, f"one_time_prekeys[{i}]", signer)
            for i, t in enumerate(one_time_prekeys)
        ]
        if len({k.key_id for k in one_time}) != len(one_time):
            raise Problem(
                422, ProblemCode.VALIDATION_FAILED, "one-time prekey ids must be unique in an upload"
            )
        await self._repo.upload(device.device_id, signed, last, one_time, self._clock())
        return await self.counts(caller)

    async def counts(self, caller: AuthedDevice) -> PreKeyCountsInfo:
        c = await self._repo.counts(caller.device_id_bytes)
        return PreKeyCountsInfo(c.one_time, c.signed_key_id, c.last_resort_key_id)

    async def claim(self, account_id_b64: str, device_id_b64: str) -> Bundle:
        account_id = decode_id(account_id_b64, "account")
        device_id = decode_id(device_id_b64, "device")
        device = await self._accounts.get_device(device_id)
        if device is None or device.account_id != account_id or not device.active:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such device in this account's current list")
        claimed = await self._repo.claim(device_id)
        if claimed.signed is None:
            raise Problem(404, ProblemCode.NO_PREKEYS, "this device has not published a signed prekey yet")
        try:
            return Bundle(
                account_id=encode_id(account_id),
                device_id=encode_id(device_id),
                signing_key=b64encode(device.signing_key),
                dh_key=b64encode(device.dh_key),
                signed_prekey=b64encode(claimed.signed),
                one_time_prekey=None if claimed.one_time is None else b64encode(claimed.one_time),
                last_resort_prekey=(
                    b64encode(claimed.last_resort)
                    if claimed.one_time is None and claimed.last_resort is not None
                    else None
                ),
                one_time_remaining=claimed.one_time_remaining,
            )
        except EncodingError as exc:  # pragma: no cover - stored values were checked on upload
            raise Problem(500, ProblemCode.INTERNAL_ERROR, "stored key is corrupt") from exc

    async def claim_account(self, account_id_b64: str) -> list[Bundle]:
        """One bundle per active device of the account (devices without prekeys are skipped)."""
        account_id = decode_id(account_id_b64, "account")
        if await self._accounts.get(account_id) is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        bundles: list[Bundle] = []
        for device in await self._accounts.active_devices(account_id):
            try:
                bundles.append(await self.claim(account_id_b64, encode_id(device.device_id)))
            except Problem as problem:
                if problem.code is not ProblemCode.NO_PREKEYS:
                    raise
        return bundles
