"""What linking and device lists need besides the signed list: one-time device grants, sealed
account-key handoffs and encrypted device names.

- A **device grant** is issued by an active device of an account for one new device (its device
  id and raw Ed25519 signing key) and lets that device publish, without a bearer token, the
  current list plus exactly itself (``PUT /v1/accounts/{id}/device-list/signed``). The server
  stores only the grant's SHA-256; the grant is consumed with the list update.
- **Key handoffs** are sealed (ciphertext) account-key material an active device publishes
  with a list version for the other devices; each device fetches its own.
- **Device names** are encrypted by the clients; the server stores them opaquely.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from saltline.crypto.keys import b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import (
    AuthedDevice,
    decode_b64_field,
    decode_id,
    decode_sealed,
    encode_id,
)
from saltline.server.services.devices import DeviceService, grant_invalid
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.accounts_repo import AccountsRepo
from saltline.server.storage.linking_repo import GrantRow, LinkingRepo, TooManyGrants

GRANT_SIZE = 32
SIGNING_KEY_SIZE = 32
MAX_HANDOFF_PAGE = 100


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    grant: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class LinkingLimits:
    grant_ttl_s: int
    max_grants_per_account: int
    grants_per_account: str  # a rate limit
    handoff_retention_s: int


class LinkingService:
    def __init__(
        self,
        repo: LinkingRepo,
        accounts: AccountsRepo,
        devices: DeviceService,
        limiter: RateLimiter,
        clock: Clock,
        limits: LinkingLimits,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._accounts = accounts
        self._devices = devices
        self._limiter = limiter
        self._clock = clock
        self._limits = limits
        self._random = random_bytes

    async def _require_active(self, caller: AuthedDevice) -> None:
        if not await self._devices.is_active(caller.device_id_bytes, caller.account_id_bytes):
            raise Problem(
                403, ProblemCode.DEVICE_NOT_ACTIVE, "this device is not in the account's device list"
            )

    # -- grants ------------------------------------------------------------------------------

    async def issue_grant(
        self, caller: AuthedDevice, device_id_b64: str, signing_key_b64: str
    ) -> IssuedGrant:
        """A one-time grant for linking ``device_id`` with ``signing_key`` to the caller's account.
        409 ``device_id_taken`` if the id was ever used; 429 past the unexpired-grant bound."""
        await self._require_active(caller)
        device_id = decode_id(device_id_b64, "device_id", status=422)
        signing_key = decode_b64_field(signing_key_b64, "signing_key")
        if len(signing_key) != SIGNING_KEY_SIZE:
            raise Problem(
                422,
                ProblemCode.MALFORMED_KEY,
                "signing_key must be a raw 32-byte Ed25519 key",
                field="signing_key",
            )
        if await self._accounts.existing_device_ids([device_id]):
            raise Problem(
                409,
                ProblemCode.DEVICE_ID_TAKEN,
                "this device id was used before (device ids are never reused)",
                device_ids=[encode_id(device_id)],
            )
        await self._limiter.hit(self._limits.grants_per_account, "device-grants-account", caller.account_id)
        grant = self._random(GRANT_SIZE)
        now = self._clock()
        row = GrantRow(
            hashlib.sha256(grant).digest(),
            caller.account_id_bytes,
            device_id,
            signing_key,
            now,
            now + self._limits.grant_ttl_s * 1000,
        )
        try:
            await self._repo.add_grant(row, self._limits.max_grants_per_account)
        except TooManyGrants:
            raise Problem(
                429,
                ProblemCode.RATE_LIMITED,
                f"an account holds at most {self._limits.max_grants_per_account} unexpired device grants",
                limit=self._limits.max_grants_per_account,
                headers={"Retry-After": str(self._limits.grant_ttl_s)},
            ) from None
        return IssuedGrant(b64encode(grant), self._limits.grant_ttl_s)

    async def check_grant(self, account_id: bytes, grant_b64: str | None) -> GrantRow:
        """The valid (unexpired, unused) grant of ``account_id``; 403 device_grant_invalid if not."""
        if grant_b64 is None:
            raise grant_invalid("linking needs a device grant (X-Device-Grant)")
        try:
            grant = decode_b64_field(grant_b64, "grant")
        except Problem:
            raise grant_invalid("the device grant is not base64url") from None
        row = None
        if len(grant) == GRANT_SIZE:
            row = await self._repo.get_grant(hashlib.sha256(grant).digest(), self._clock())
        if row is None or row.account_id != account_id:
            raise grant_invalid("no such device grant for this account (or it expired, or was used)")
        return row

    # -- key handoffs ------------------------------------------------------------------------

    async def handoffs(self, caller: AuthedDevice, since: int, limit: int) -> list[tuple[int, str]]:
        """``(version, sealed)`` for the caller with ``version > since``, ascending."""
        await self._require_active(caller)
        cutoff = self._clock() - self._limits.handoff_retention_s * 1000
        rows = await self._repo.handoffs_for(
            caller.account_id_bytes, caller.device_id_bytes, since, min(limit, MAX_HANDOFF_PAGE), cutoff
        )
        return [(version, b64encode(sealed)) for version, sealed in rows]

    # -- device names ------------------------------------------------------------------------

    async def set_name(self, caller: AuthedDevice, sealed_b64: str) -> None:
        await self._require_active(caller)
        await self._repo.set_name(
            caller.device_id_bytes, decode_sealed(sealed_b64, "sealed_name"), self._clock()
        )

    async def names(self, caller: AuthedDevice) -> dict[str, str]:
        await self._require_active(caller)
        return {encode_id(d): b64encode(s) for d, s in await self._repo.active_names(caller.account_id_bytes)}
