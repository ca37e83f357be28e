"""Blobs: an authenticated device uploads ciphertext (size-limited) and gets a random blob id;
any device of the same account may download it (others get 404, as for an unknown id). The
server never sees a key: the uploader sends it to the other device end-to-end encrypted."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from crypto.keys import b64encode
from server.clock import Clock
from server.errors import Problem, ProblemCode
from server.services.common import AuthedDevice, decode_b64_field, decode_id
from server.storage.blobs_repo import BlobsRepo


class BlobService:
    def __init__(
        self,
        repo: BlobsRepo,
        clock: Clock,
        *,
        max_bytes: int,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._clock = clock
        self._max = max_bytes
        self._random = random_bytes

    async def upload(self, caller: AuthedDevice, data_b64: str) -> tuple[str, int]:
        data = decode_b64_field(data_b64, "data")
        if len(data) > self._max:
            raise Problem(413, ProblemCode.PAYLOAD_TOO_LARGE, f"blob is larger than {self._max} bytes")
        blob_id = self._random(16)
        await self._repo.put(blob_id, caller.account_id_bytes, data, self._clock())
        return b64encode(blob_id), len(data)

    async def download(self, caller: AuthedDevice, blob_id_b64: str) -> bytes:
        found = await self._repo.get(decode_id(blob_id_b64, "blob"))
        if found is None or found[0] != caller.account_id_bytes:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such blob")
        return found[1]
