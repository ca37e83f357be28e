"""Provisioning channels for device linking: a one-slot mailbox the server relays sealed
messages through (ciphertext the server cannot open), in both directions, until it expires.

1. The new device: ``create()`` -> channel id, put secret and take secret. It keeps the take
   secret and shows the channel id and put secret in its link code.
2. Whoever holds the put secret (the approving device, which read the link code; or the new
   device answering it) ``put``s one message; another put waits until the slot is taken.
3. The holder of the take secret ``take``s the waiting message (the slot empties) and may
   ``delete`` the channel when done.

The two secrets are split so that reading the link code (the put secret) never lets anyone
read what is put on the channel. No bearer token is needed: the put secret is the authority,
and puts are bounded per channel and rate-limited per client address.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from saltline.crypto.keys import b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import decode_b64_field, decode_id
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.provisioning_repo import ProvisioningRepo, PutOutcome, TakeOutcome

SECRET_SIZE = 32


@dataclass(frozen=True, slots=True)
class Channel:
    channel_id: str
    put_secret: str
    take_secret: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class ProvisioningLimits:
    create_per_ip: str
    puts_per_ip: str
    max_puts_per_channel: int


def _not_found() -> Problem:
    return Problem(
        404, ProblemCode.PROVISIONING_CHANNEL_NOT_FOUND, "no such provisioning channel (or it expired)"
    )


def _secret_hash(secret_b64: str | None) -> bytes:
    """SHA-256 of a presented secret; a missing or malformed one is 404 like a wrong one."""
    if secret_b64 is None:
        raise _not_found()
    try:
        secret = decode_b64_field(secret_b64, "channel secret")
    except Problem:
        raise _not_found() from None
    if len(secret) != SECRET_SIZE:
        raise _not_found()
    return hashlib.sha256(secret).digest()


class ProvisioningService:
    def __init__(
        self,
        repo: ProvisioningRepo,
        limiter: RateLimiter,
        clock: Clock,
        *,
        ttl_s: int,
        max_payload_bytes: int,
        limits: ProvisioningLimits,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._limiter = limiter
        self._clock = clock
        self._ttl = ttl_s
        self._max = max_payload_bytes
        self._limits = limits
        self._random = random_bytes

    async def create(self, client_ip: str) -> Channel:
        await self._limiter.hit(self._limits.create_per_ip, "provisioning-ip", client_ip)
        channel_id = self._random(16)
        put_secret = self._random(SECRET_SIZE)
        take_secret = self._random(SECRET_SIZE)
        now = self._clock()
        await self._repo.create(
            channel_id,
            hashlib.sha256(put_secret).digest(),
            hashlib.sha256(take_secret).digest(),
            now,
            now + self._ttl * 1000,
        )
        return Channel(b64encode(channel_id), b64encode(put_secret), b64encode(take_secret), self._ttl)

    async def put(
        self, client_ip: str, channel_id_b64: str, secret_b64: str | None, payload_b64: str
    ) -> None:
        """Fill the channel's slot, if ``secret_b64`` is its put secret (404 otherwise: a wrong
        secret, or the take secret, is indistinguishable from an unknown channel)."""
        await self._limiter.hit(self._limits.puts_per_ip, "provisioning-put-ip", client_ip)
        channel_id = decode_id(channel_id_b64, "provisioning channel")
        put_hash = _secret_hash(secret_b64)
        payload = decode_b64_field(payload_b64, "payload")
        if len(payload) > self._max:
            raise Problem(413, ProblemCode.PAYLOAD_TOO_LARGE, f"payload is larger than {self._max} bytes")
        outcome = await self._repo.put(
            channel_id, put_hash, payload, self._clock(), self._limits.max_puts_per_channel
        )
        if outcome is PutOutcome.NOT_FOUND:
            raise _not_found()
        if outcome is PutOutcome.SLOT_FULL:
            raise Problem(
                409,
                ProblemCode.PROVISIONING_PAYLOAD_EXISTS,
                "a message is waiting on this channel; put again once it was taken",
            )
        if outcome is PutOutcome.TOO_MANY_PUTS:
            raise Problem(
                429,
                ProblemCode.RATE_LIMITED,
                f"a provisioning channel carries at most {self._limits.max_puts_per_channel} messages",
                limit=self._limits.max_puts_per_channel,
                headers={"Retry-After": str(self._ttl)},  # the channel is gone by then
            )

    async def take(self, channel_id_b64: str, secret_b64: str | None) -> bytes | None:
        """The waiting message (the slot is emptied), ``None`` when the slot is empty."""
        channel_id = decode_id(channel_id_b64, "provisioning channel")
        outcome, payload = await self._repo.take(channel_id, _secret_hash(secret_b64), self._clock())
        if outcome is TakeOutcome.NOT_FOUND:
            raise _not_found()
        return payload

    async def delete(self, channel_id_b64: str, secret_b64: str | None) -> None:
        channel_id = decode_id(channel_id_b64, "provisioning channel")
        if not await self._repo.delete(channel_id, _secret_hash(secret_b64), self._clock()):
            raise _not_found()
