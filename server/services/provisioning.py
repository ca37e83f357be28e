"""Provisioning channels for device linking. The server relays one sealed payload (ciphertext
the server cannot open) from an existing device to a new device and then forgets it.

1. The new device: ``create()`` -> channel id + channel secret (it shows both in its link code).
2. An existing, authenticated device, which read the channel id and secret from the link code:
   ``put(channel_id, secret, payload)`` once (the secret proves it saw the link code).
3. The new device: ``take(channel_id, secret)`` -> the payload (then deleted), or nothing yet.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from crypto.keys import b64encode
from server.clock import Clock
from server.errors import Problem, ProblemCode
from server.services.common import AuthedDevice, decode_b64_field, decode_id
from server.services.ratelimit import RateLimiter
from server.storage.provisioning_repo import ProvisioningRepo, PutOutcome, TakeOutcome

SECRET_SIZE = 32


@dataclass(frozen=True, slots=True)
class Channel:
    channel_id: str
    channel_secret: str
    expires_in: int


def _not_found() -> Problem:
    return Problem(
        404, ProblemCode.PROVISIONING_CHANNEL_NOT_FOUND, "no such provisioning channel (or it expired)"
    )


class ProvisioningService:
    def __init__(
        self,
        repo: ProvisioningRepo,
        limiter: RateLimiter,
        clock: Clock,
        *,
        ttl_s: int,
        max_payload_bytes: int,
        rate_limit_per_ip: str,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._limiter = limiter
        self._clock = clock
        self._ttl = ttl_s
        self._max = max_payload_bytes
        self._rate = rate_limit_per_ip
        self._random = random_bytes

    async def create(self, client_ip: str) -> Channel:
        await self._limiter.hit(self._rate, "provisioning-ip", client_ip)
        channel_id = self._random(16)
        secret = self._random(SECRET_SIZE)
        now = self._clock()
        await self._repo.create(channel_id, hashlib.sha256(secret).digest(), now, now + self._ttl * 1000)
        return Channel(b64encode(channel_id), b64encode(secret), self._ttl)

    async def put(
        self, caller: AuthedDevice, channel_id_b64: str, secret_b64: str | None, payload_b64: str
    ) -> None:
        """Store the payload, if ``secret_b64`` is the channel's secret (404 otherwise: a wrong
        secret is indistinguishable from an unknown channel)."""
        del caller  # any authenticated device that saw the link code may link
        channel_id = decode_id(channel_id_b64, "provisioning channel")
        if secret_b64 is None:
            raise _not_found()
        try:
            secret = decode_b64_field(secret_b64, "channel secret")
        except Problem:
            raise _not_found() from None
        payload = decode_b64_field(payload_b64, "payload")
        if len(payload) > self._max:
            raise Problem(413, ProblemCode.PAYLOAD_TOO_LARGE, f"payload is larger than {self._max} bytes")
        outcome = await self._repo.put(channel_id, hashlib.sha256(secret).digest(), payload, self._clock())
        if outcome is PutOutcome.NOT_FOUND:
            raise _not_found()
        if outcome is PutOutcome.ALREADY_SET:
            raise Problem(
                409, ProblemCode.PROVISIONING_PAYLOAD_EXISTS, "this channel already carries a payload"
            )

    async def take(self, channel_id_b64: str, secret_b64: str) -> bytes | None:
        """The payload (the channel is then deleted), ``None`` when not there yet."""
        channel_id = decode_id(channel_id_b64, "provisioning channel")
        try:
            secret = decode_b64_field(secret_b64, "channel secret")
        except Problem:
            raise _not_found() from None
        outcome, payload = await self._repo.take(channel_id, hashlib.sha256(secret).digest(), self._clock())
        if outcome is TakeOutcome.NOT_FOUND:
            raise _not_found()
        return payload
