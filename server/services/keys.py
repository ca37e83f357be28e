"""The key directory: devices publish prekeys, senders claim bundles.

Every uploaded prekey's signature is checked against the uploading device's signing key. A claim
hands out each one-time prekey at most once (see :mod:`saltline.server.storage.prekeys_repo`) and falls
back to the last-resort prekey when none is left.

Claims are the only way to consume one-time prekeys: :meth:`KeyDirectoryService.claim_many`
de-duplicates its targets, caps them (``max_claim_targets``), takes every bundle in one write
transaction and counts each bundle against the caller's per-device claim rate limit, and each
one-time prekey against its target device's limit (beyond which the bundle carries the last-resort
prekey instead, so no caller, or set of callers, can drain a device's one-time prekeys). Peeks
(:meth:`KeyDirectoryService.peek`, for the GET routes) never consume anything: they give the
signed and last-resort prekeys only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from saltline.crypto.errors import CryptoError, EncodingError
from saltline.crypto.keys import DeviceSigningPublicKey, KeyKind, PreKeyPublic, b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import AuthedDevice, decode_b64_field, decode_id, encode_id
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.accounts_repo import AccountsRepo, DeviceRow
from saltline.server.storage.prekeys_repo import ClaimedPreKeys, PreKeyRow, PreKeysRepo, StoreFullError


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
    def __init__(
        self,
        accounts: AccountsRepo,
        repo: PreKeysRepo,
        clock: Clock,
        *,
        max_batch: int,
        max_stored_one_time: int = 1000,
        max_claim_targets: int = 100,
        limiter: RateLimiter | None = None,
        claim_rate_per_device: str = "600/minute",
        claim_rate_per_target_device: str = "100/hour",
    ) -> None:
        self._accounts = accounts
        self._repo = repo
        self._clock = clock
        self._max_batch = max_batch
        self._max_stored = max_stored_one_time
        self._max_targets = max_claim_targets
        self._limiter = limiter
        self._claim_rate = claim_rate_per_device
        self._target_rate = claim_rate_per_target_device

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
        try:
            await self._repo.upload(
                device.device_id, signed, last, one_time, self._clock(), max_one_time=self._max_stored
            )
        except StoreFullError as exc:
            raise Problem(
                422,
                ProblemCode.PREKEY_STORE_FULL,
                f"a device may store at most {self._max_stored} one-time prekeys"
                f" ({exc.stored} stored); upload fewer",
                limit=self._max_stored,
                stored=exc.stored,
            ) from exc
        return await self.counts(caller)

    async def counts(self, caller: AuthedDevice) -> PreKeyCountsInfo:
        c = await self._repo.counts(caller.device_id_bytes)
        return PreKeyCountsInfo(c.one_time, c.signed_key_id, c.last_resort_key_id)

    async def _rate_limit(self, caller: AuthedDevice, bundles: int) -> None:
        if self._limiter is not None and bundles > 0:
            await self._limiter.hit(self._claim_rate, "prekey-claims-device", caller.device_id, cost=bundles)

    async def _target(self, account_id_b64: str, device_id_b64: str) -> DeviceRow:
        account_id = decode_id(account_id_b64, "account")
        device_id = decode_id(device_id_b64, "device")
        device = await self._accounts.get_device(device_id)
        if device is None or device.account_id != account_id or not device.active:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such device in this account's current list")
        return device

    async def claim_many(self, caller: AuthedDevice, targets: Sequence[tuple[str, str]]) -> list[Bundle]:
        """One bundle per distinct ``(account_id, device_id)``, in first-seen order, all taken in
        one write transaction (404 for any unknown or inactive device, or one without a signed
        prekey; then nothing is consumed)."""
        distinct = list(dict.fromkeys(targets))
        if len(distinct) > self._max_targets:
            raise Problem(
                413,
                ProblemCode.TOO_MANY_CLAIM_TARGETS,
                f"at most {self._max_targets} distinct devices per claim",
                limit=self._max_targets,
            )
        devices = [await self._target(a, d) for a, d in distinct]
        await self._rate_limit(caller, len(devices))
        # Per target device, whoever claims: beyond the limit the claim still succeeds, with the
        # last-resort prekey instead of a one-time prekey, so nobody can drain a device's supply.
        without_one_time = set()
        if self._limiter is not None:
            for d in devices:
                if not await self._limiter.allow(
                    self._target_rate, "prekey-claims-target", encode_id(d.device_id)
                ):
                    without_one_time.add(d.device_id)
        claimed = await self._repo.claim_many(
            [d.device_id for d in devices], without_one_time=without_one_time
        )
        return [self._bundle(d, claimed[d.device_id]) for d in devices]

    async def claim(self, caller: AuthedDevice, account_id_b64: str, device_id_b64: str) -> Bundle:
        return (await self.claim_many(caller, [(account_id_b64, device_id_b64)]))[0]

    async def peek(self, caller: AuthedDevice, account_id_b64: str, device_id_b64: str) -> Bundle:
        """A bundle without a one-time prekey (signed + last-resort), consuming nothing."""
        device = await self._target(account_id_b64, device_id_b64)
        await self._rate_limit(caller, 1)
        return self._bundle(device, await self._repo.peek(device.device_id))

    async def peek_account(self, caller: AuthedDevice, account_id_b64: str) -> list[Bundle]:
        """:meth:`peek` for every active device of the account (devices without prekeys are
        skipped)."""
        account_id = decode_id(account_id_b64, "account")
        if await self._accounts.get(account_id) is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such account")
        devices = list(await self._accounts.active_devices(account_id))
        await self._rate_limit(caller, len(devices))
        bundles: list[Bundle] = []
        for device in devices:
            peeked = await self._repo.peek(device.device_id)
            if peeked.signed is not None:
                bundles.append(self._bundle(device, peeked))
        return bundles

    @staticmethod
    def _bundle(device: DeviceRow, claimed: ClaimedPreKeys) -> Bundle:
        if claimed.signed is None:
            raise Problem(404, ProblemCode.NO_PREKEYS, "this device has not published a signed prekey yet")
        try:
            return Bundle(
                account_id=encode_id(device.account_id),
                device_id=encode_id(device.device_id),
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
