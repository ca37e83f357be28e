"""Authentication: password login, device-key login by challenge, access and refresh tokens.

Access tokens are HS256 JWTs: ``sub`` = device id, ``acc`` = account id, ``usr`` = username,
``jti``, ``iat``, ``exp`` (``access_token_ttl_s``), ``typ`` = ``"access"``. Every use also checks
that the device is still in its account's list, so a removed device is locked out at once.

Refresh tokens are 32 random bytes (base64url), stored only as SHA-256 hashes, and rotate on
every use. Each login starts a *family*; presenting a token that was already rotated revokes
the whole family (a stolen token and its legitimate twin both stop working).

Device login: ``POST /v1/auth/challenge`` returns a random 32-byte nonce (single use, short
expiry). The device signs, with its Ed25519 signing key under
``SigningContext.LOGIN_CHALLENGE``, the message::

    len(username) (u8) || username (lower-case ASCII) || device_id (16) || nonce (32)

Tokens and passwords are never logged.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jwt

from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import DeviceSigningPublicKey, SigningContext, b64decode, b64encode
from saltline.crypto.login import login_challenge_message
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.access_tokens import HS256Verifier, InvalidToken
from saltline.server.services.common import (
    AuthedDevice,
    decode_b64_field,
    decode_id,
    encode_id,
    normalize_username,
)
from saltline.server.services.passwords import Passwords
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.accounts_repo import AccountsRepo
from saltline.server.storage.auth_repo import AuthRepo, ChallengeRow, RefreshTokenRow, RotateOutcome

log = logging.getLogger(__name__)

#: Awaited with ``(account_id, device_id)`` (base64url) after a refresh-token family of that
#: device was revoked (reuse detected), once the revocation is committed.
TokensRevokedHook = Callable[[str, str], Awaitable[None]]

JWT_ALGORITHM = "HS256"
NONCE_SIZE = 32


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expires_in: int
    refresh_token: str
    refresh_expires_in: int
    account_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class RateLimits:
    #: Failed password logins per account, from any address (successful logins do not count);
    #: once reached, only addresses that have not failed for the account may try.
    login_per_account: str
    #: Password login attempts per client IP; challenges and device logins each have their own
    #: window of the same size.
    login_per_ip: str
    #: Failed password logins per (account, client IP).
    login_failures_per_account_ip: str = "5/minute"
    #: Refresh-token rotations per device (counted once the token is known, before rotating it).
    refresh_per_device: str = "60/hour"
    #: Refresh-token families (logins) kept per device; a newer login forgets the oldest.
    refresh_families_per_device: int = 10


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """A verified access token (signature, type, expiry): its device, refresh-token family
    (unpadded base64url) and expiry in Unix milliseconds."""

    device: AuthedDevice
    family: str
    exp_ms: int


def _family_revoked_problem() -> Problem:
    return Problem(
        401,
        ProblemCode.TOKEN_REVOKED,
        "the login of this access token was revoked (refresh-token reuse); log in again",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _unauthorized(detail: str = "invalid credentials") -> Problem:
    return Problem(401, ProblemCode.UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


class AuthService:
    def __init__(
        self,
        accounts: AccountsRepo,
        repo: AuthRepo,
        passwords: Passwords,
        limiter: RateLimiter,
        clock: Clock,
        *,
        jwt_secret: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        challenge_ttl_s: int,
        limits: RateLimits,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        on_tokens_revoked: list[TokensRevokedHook] | None = None,
    ) -> None:
        self._accounts = accounts
        self._repo = repo
        self._passwords = passwords
        self._limiter = limiter
        self._clock = clock
        self._secret = jwt_secret
        self._verifier = HS256Verifier(jwt_secret)
        self._access_ttl = access_ttl_s
        self._refresh_ttl = refresh_ttl_s
        self._challenge_ttl = challenge_ttl_s
        self._limits = limits
        self._random = random_bytes
        self._on_tokens_revoked = on_tokens_revoked if on_tokens_revoked is not None else []
        self._revoked_families: set[bytes] = set()

    # -- logins ------------------------------------------------------------------------------

    async def _rate_limit_password_login(self, username_lower: str, client_ip: str) -> None:
        """Before checking a password: count the attempt per IP, then refuse (without counting)

        1. when this (account, IP) pair has ``login_failures_per_account_ip`` recent failures;
        2. when the account has ``login_per_account`` recent failures (from any address) **and**
           this pair has failed at least once in its window.

        So an attacker's failures lock out only the addresses they came from: the owner's
        correct password from an address that has not failed always gets through, and once the
        global account limit is reached each address gets one guess per
        ``login_failures_per_account_ip`` window instead of its full allowance. Successful logins
        never count, and device-key login (:meth:`login_device`) neither counts nor checks
        password failures: a signature cannot be guessed, so nothing there needs a lockout."""
        pair = f"{username_lower}|{client_ip}"
        await self._limiter.hit(self._limits.login_per_ip, "login-ip", client_ip)
        await self._limiter.check(self._limits.login_failures_per_account_ip, "login-fail-account-ip", pair)
        if await self._limiter.used(
            self._limits.login_failures_per_account_ip, "login-fail-account-ip", pair
        ):
            await self._limiter.check(self._limits.login_per_account, "login-fail-account", username_lower)

    async def _record_login_failure(self, username_lower: str, client_ip: str) -> None:
        await self._limiter.record(self._limits.login_per_account, "login-fail-account", username_lower)
        await self._limiter.record(
            self._limits.login_failures_per_account_ip,
            "login-fail-account-ip",
            f"{username_lower}|{client_ip}",
        )

    async def login_password(
        self, username: str, password: str, device_id_b64: str, client_ip: str
    ) -> TokenPair:
        try:
            lower = normalize_username(username)
        except Problem:
            raise _unauthorized() from None
        await self._rate_limit_password_login(lower, client_ip)
        device_id = decode_id(device_id_b64, "device_id", status=422)
        account = await self._accounts.get_by_username(lower)
        ok = await self._passwords.verify(None if account is None else account.password_hash, password)
        if account is None or not ok:
            await self._record_login_failure(lower, client_ip)
            raise _unauthorized()
        device = await self._accounts.get_device(device_id)
        if device is None or device.account_id != account.id or not device.active:
            raise Problem(
                403, ProblemCode.DEVICE_NOT_ACTIVE, "this device is not in the account's device list"
            )
        return await self._issue(account.id, device_id, account.username, family=None)

    async def issue_for_new_account(
        self, account_id_b64: str, device_id_b64: str, username: str
    ) -> TokenPair:
        return await self._issue(b64decode(account_id_b64), b64decode(device_id_b64), username, family=None)

    async def create_challenge(self, username: str, device_id_b64: str, client_ip: str) -> Challenge:
        """A fresh nonce for ``(username, device)``. Issued whether or not they exist, so the
        answer reveals nothing; the check happens at :meth:`login_device`."""
        try:
            lower = normalize_username(username)
        except Problem:
            raise _unauthorized() from None
        await self._limiter.hit(self._limits.login_per_ip, "challenge-ip", client_ip)
        device_id = decode_id(device_id_b64, "device_id", status=422)
        nonce = self._random(NONCE_SIZE)
        now = self._clock()
        await self._repo.insert_challenge(
            ChallengeRow(nonce, lower, device_id, now + self._challenge_ttl * 1000), now
        )
        return Challenge(b64encode(nonce), self._challenge_ttl)

    async def login_device(
        self, username: str, device_id_b64: str, nonce_b64: str, signature_b64: str, client_ip: str
    ) -> TokenPair:
        try:
            lower = normalize_username(username)
        except Problem:
            raise _unauthorized() from None
        # Per IP only: never the password-failure windows (see _rate_limit_password_login).
        await self._limiter.hit(self._limits.login_per_ip, "device-login-ip", client_ip)
        device_id = decode_id(device_id_b64, "device_id", status=422)
        nonce = decode_b64_field(nonce_b64, "nonce")
        signature = decode_b64_field(signature_b64, "signature")
        challenge = await self._repo.consume_challenge(nonce)  # single use, whatever happens next
        if (
            challenge is None
            or challenge.expires_at_ms <= self._clock()
            or challenge.username_lower != lower
            or challenge.device_id != device_id
        ):
            raise Problem(401, ProblemCode.CHALLENGE_INVALID, "unknown, expired or already used challenge")
        account = await self._accounts.get_by_username(lower)
        device = await self._accounts.get_device(device_id)
        if account is None or device is None or device.account_id != account.id or not device.active:
            raise Problem(
                403, ProblemCode.DEVICE_NOT_ACTIVE, "this device is not in the account's device list"
            )
        try:
            DeviceSigningPublicKey.decode(device.signing_key).verify(
                SigningContext.LOGIN_CHALLENGE, login_challenge_message(lower, device_id, nonce), signature
            )
        except CryptoError as exc:
            raise Problem(
                401, ProblemCode.DEVICE_SIGNATURE_INVALID, "the challenge signature does not verify"
            ) from exc
        return await self._issue(account.id, device_id, account.username, family=None)

    # -- tokens ------------------------------------------------------------------------------

    async def _issue(
        self, account_id: bytes, device_id: bytes, username: str, family: bytes | None
    ) -> TokenPair:
        refresh = b64encode(self._random(32))
        now = self._clock()
        family_id = family or self._random(16)
        await self._repo.insert_refresh(
            RefreshTokenRow(
                token_hash=hash_refresh_token(refresh),
                family_id=family_id,
                device_id=device_id,
                account_id=account_id,
                issued_at_ms=now,
                expires_at_ms=now + self._refresh_ttl * 1000,
            ),
            max_families=self._limits.refresh_families_per_device,
        )
        return TokenPair(
            self._access_token(account_id, device_id, username, now, family_id),
            self._access_ttl,
            refresh,
            self._refresh_ttl,
            encode_id(account_id),
            encode_id(device_id),
        )

    def _access_token(
        self, account_id: bytes, device_id: bytes, username: str, now_ms: int, family_id: bytes
    ) -> str:
        now_s = now_ms // 1000
        claims = {
            "fam": b64encode(family_id),
            "sub": encode_id(device_id),
            "acc": encode_id(account_id),
            "usr": username,
            "jti": uuid.uuid4().hex,
            "iat": now_s,
            "exp": now_s + self._access_ttl,
            "typ": "access",
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    async def refresh(self, refresh_token: str) -> TokenPair:
        if not refresh_token.isascii():
            raise _unauthorized("unknown refresh token")
        now = self._clock()
        new_token = b64encode(self._random(32))

        def successor(old: RefreshTokenRow) -> RefreshTokenRow:
            return RefreshTokenRow(
                token_hash=hash_refresh_token(new_token),
                family_id=old.family_id,
                device_id=old.device_id,
                account_id=old.account_id,
                issued_at_ms=now,
                expires_at_ms=now + self._refresh_ttl * 1000,
            )

        token_hash = hash_refresh_token(refresh_token)
        owner = await self._repo.refresh_owner(token_hash)
        if owner is None:
            raise _unauthorized("unknown refresh token")
        # Counted per device once the token is known (a forged token cannot use up the owner's
        # allowance); refused before rotating, so the token presented stays usable.
        await self._limiter.hit(self._limits.refresh_per_device, "refresh-device", encode_id(owner))
        result = await self._repo.rotate_refresh(token_hash, successor, now)
        if result.outcome is RotateOutcome.UNKNOWN:
            raise _unauthorized("unknown refresh token")
        if result.outcome is RotateOutcome.EXPIRED:
            raise Problem(401, ProblemCode.TOKEN_EXPIRED, "the refresh token has expired; log in again")
        if result.outcome is RotateOutcome.REVOKED:
            raise Problem(401, ProblemCode.TOKEN_REVOKED, "the refresh token was revoked; log in again")
        if result.outcome is RotateOutcome.REUSED:
            assert result.old is not None
            self._revoked_families.add(result.old.family_id)
            await self._tokens_revoked(result.old.account_id, result.old.device_id)
            raise Problem(
                401,
                ProblemCode.REFRESH_TOKEN_REUSED,
                "this refresh token was already used; every token of its login was revoked",
            )
        assert result.old is not None
        account = await self._accounts.get(result.old.account_id)
        username = account.username if account is not None else ""
        return TokenPair(
            self._access_token(
                result.old.account_id, result.old.device_id, username, now, result.old.family_id
            ),
            self._access_ttl,
            new_token,
            self._refresh_ttl,
            encode_id(result.old.account_id),
            encode_id(result.old.device_id),
        )

    async def _tokens_revoked(self, account_id: bytes, device_id: bytes) -> None:
        account_b64, device_b64 = encode_id(account_id), encode_id(device_id)
        for hook in list(self._on_tokens_revoked):
            try:
                await hook(account_b64, device_b64)
            except Exception:
                log.exception("on_tokens_revoked hook failed")

    def decode_access_token(self, token: str) -> AccessClaims:
        """Verify an access token's signature, type and expiry (no I/O): the device, its
        refresh-token family (``fam`` claim) and the expiry. The device and the family are then
        checked in the database by :meth:`check_token_holder`."""
        try:
            # HS256 and this secret only, header exactly as issued (saltline.server.services.access_tokens)
            claims = self._verifier.claims(token)
        except InvalidToken as exc:
            raise _unauthorized("invalid access token") from exc
        if (
            claims.get("typ") != "access"
            or not all(isinstance(claims.get(k), str) for k in ("sub", "acc"))
            or "exp" not in claims
        ):
            raise _unauthorized("invalid access token")
        exp = claims["exp"]
        if not isinstance(exp, int) or isinstance(exp, bool) or exp * 1000 <= self._clock():
            raise Problem(
                401,
                ProblemCode.TOKEN_EXPIRED,
                "the access token has expired; refresh it",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        fam = claims.get("fam")
        if not isinstance(fam, str):
            raise _unauthorized("invalid access token")
        authed = AuthedDevice(
            account_id=claims["acc"], device_id=claims["sub"], username=str(claims.get("usr", ""))
        )
        return AccessClaims(authed, fam, exp * 1000)

    async def authenticate_access_token(self, token: str) -> AuthedDevice:
        """The device behind ``token``; 401 if the token is invalid, expired, or its device was
        removed, or its login revoked. Used by the HTTP dependency on every request; the
        WebSocket runs the same two steps (:meth:`decode_access_token`, then
        :meth:`check_token_holder` once it is subscribed to the removal events)."""
        claims = self.decode_access_token(token)
        await self.check_token_holder(claims)
        return claims.device

    async def check_token_holder(self, claims: AccessClaims) -> None:
        """401 ``token_revoked`` unless the token's device is active in its account and its
        token family was not revoked. One database read for both (never cached: a device removed
        or a family revoked on another instance must count at once; only revocations, which
        are permanent, are remembered)."""
        device_id, family = self.holder_key(claims)
        account_id, revoked = await self._repo.token_holder_state(device_id, family)
        self.check_holder_state(claims, account_id, revoked)

    def holder_key(self, claims: AccessClaims) -> tuple[bytes, bytes]:
        """The (device id, token family) to read for :meth:`check_holder_state`; 401 if they do
        not decode, or if the family is known to be revoked (no read needed)."""
        try:
            device_id, family = b64decode(claims.device.device_id), b64decode(claims.family)
        except (CryptoError, ValueError) as exc:
            raise _unauthorized("invalid access token") from exc
        if family in self._revoked_families:
            raise _family_revoked_problem()
        return device_id, family

    def check_holder_state(self, claims: AccessClaims, account_id: bytes | None, revoked: bool) -> None:
        """The verdict of :meth:`check_token_holder` on the stored state (read with
        :meth:`holder_key`'s ids, possibly together with other reads: the delivery socket's open)."""
        if account_id is None or encode_id(account_id) != claims.device.account_id:
            raise Problem(
                401,
                ProblemCode.TOKEN_REVOKED,
                "this device was removed from its account",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if revoked:
            self._revoked_families.add(b64decode(claims.family))
            raise _family_revoked_problem()
