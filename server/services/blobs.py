"""Blobs: an authenticated device uploads ciphertext (size-limited, rate-limited per device) and
gets a random blob id (quotas per account: bytes stored at once, 507 beyond; bytes uploaded per
window, 429 beyond); any device of the same account may download it (others get 404, as for an
unknown id) until it expires after ``retention_s`` (404 too). Expired rows are purged
opportunistically on upload. The server never sees a key: the uploader sends it to the other
device end-to-end encrypted. A history bundle larger than one blob is uploaded in parts
(docs/protocol/sync.md § 8)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from saltline.crypto.keys import b64encode
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import AuthedDevice, decode_b64_field, decode_id
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.blobs_repo import BlobsRepo

#: Purge expired blobs at most this often (ms of the service's clock).
PURGE_INTERVAL_MS = 60_000


class BlobService:
    def __init__(
        self,
        repo: BlobsRepo,
        clock: Clock,
        *,
        max_bytes: int,
        retention_s: int = 7 * 24 * 3600,
        limiter: RateLimiter | None = None,
        upload_rate_per_device: str = "1000/hour",
        quota_bytes_per_account: int | None = None,
        upload_bytes_per_account: str | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._clock = clock
        self._max = max_bytes
        self._retention_ms = retention_s * 1000
        self._limiter = limiter
        self._rate = upload_rate_per_device
        self._quota = quota_bytes_per_account
        self._byte_rate = upload_bytes_per_account
        self._random = random_bytes
        self._next_purge_ms = 0
        #: Called once per upload refused for the stored-bytes quota (a metrics counter).
        self.on_quota_refused: Callable[[], None] | None = None

    @property
    def max_bytes(self) -> int:
        return self._max

    async def upload(self, caller: AuthedDevice, data_b64: str) -> tuple[str, int]:
        if self._limiter is not None:
            await self._limiter.hit(self._rate, "blob_upload", caller.device_id)
        data = decode_b64_field(data_b64, "data")
        if len(data) > self._max:
            raise Problem(
                413,
                ProblemCode.PAYLOAD_TOO_LARGE,
                f"blob is larger than {self._max} bytes; upload it in parts",
                limit=self._max,
            )
        if self._limiter is not None and self._byte_rate is not None:
            await self._limiter.hit_amount(
                self._byte_rate, "blob-bytes-account", caller.account_id, len(data)
            )
        now = self._clock()
        if now >= self._next_purge_ms:
            self._next_purge_ms = now + PURGE_INTERVAL_MS
            await self._repo.purge_created_before(now - self._retention_ms)
        blob_id = self._random(16)
        stored = await self._repo.put(
            blob_id,
            caller.account_id_bytes,
            data,
            now,
            quota_bytes=self._quota,
            created_after_ms=now - self._retention_ms,
        )
        if stored is not None:
            assert self._quota is not None
            if self.on_quota_refused is not None:
                self.on_quota_refused()
            raise Problem(
                507,
                ProblemCode.STORAGE_QUOTA_EXCEEDED,
                f"the account's blobs would pass {self._quota} bytes stored; they expire"
                f" {self._retention_ms // 1000} s after upload",
                limit=self._quota,
                stored=stored,
            )
        return b64encode(blob_id), len(data)

    async def download(self, caller: AuthedDevice, blob_id_b64: str) -> bytes:
        found = await self._repo.get(
            decode_id(blob_id_b64, "blob"), created_after_ms=self._clock() - self._retention_ms
        )
        if found is None or found[0] != caller.account_id_bytes:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such blob (or it expired)")
        return found[1]
