"""Attachments: resumable uploads of padded ciphertext (the core of TUS 1.0: creation, ``HEAD``
for the offset, ``PATCH`` at the offset) and ranged downloads (docs/protocol/delivery.md § 7,
docs/protocol/sealed-and-attachments.md).

- An authenticated device creates an upload by announcing its length: a Padmé bucket
  (``crypto/padding.py``) no larger than ``max_bytes``; it gets a random 32-byte id. The
  creation counts against the account's stored-bytes quota (507) and its per-window byte rate
  and the device's upload rate (429).
- Devices of the uploader's account append with ``PATCH`` at the current offset (409 with the
  offset otherwise), up to the rest of the upload in one request. The body streams to the store;
  every ``commit_bytes`` (a store setting) and at the end of the body the bytes are made durable,
  then the offset moves, so an acknowledged offset is always stored. A request cut off midway
  keeps what arrived (TUS: the server should store as much as it received); the client asks
  ``HEAD`` and goes on from there.
- Any authenticated device that presents the id may read a completed attachment (the id is the
  capability: it only travels inside end-to-end encrypted messages), with ``Range``.
- After ``retention_s`` from creation: 410 ``attachment_expired``; the bytes are purged
  opportunistically and the row is kept as a tombstone for another ``retention_s``.

What the server learns: the uploader (account and device), the padded size, the times of
creation, of each piece and of each download, and which devices download (and how often).
Never the key, the name, the type or the real size.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from saltline.crypto.keys import b64decode, b64encode
from saltline.crypto.padding import is_padme, padme
from saltline.server.clock import Clock
from saltline.server.errors import Problem, ProblemCode
from saltline.server.services.common import AuthedDevice
from saltline.server.services.ratelimit import RateLimiter
from saltline.server.storage.attachment_store import AttachmentStore, WriterBusy
from saltline.server.storage.attachments_repo import AttachmentRow, AttachmentsRepo

ATTACHMENT_ID_SIZE = 32
#: Purge expired attachments at most this often (ms of the service's clock).
PURGE_INTERVAL_MS = 60_000
#: How long a PATCH waits for another PATCH of the same upload to end before 409.
WRITER_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    max_bytes: int
    retention_s: int
    quota_bytes_per_account: int
    bytes_per_account: str | None = None
    uploads_per_device: str | None = None


@dataclass(slots=True)
class AttachmentCounters:
    """Metric hooks (no-ops by default): ``created(length)``, ``written(n)``, ``completed()``,
    ``downloaded(n)``, ``refused(reason)``."""

    created: Callable[[int], None] = lambda _n: None
    written: Callable[[int], None] = lambda _n: None
    completed: Callable[[], None] = lambda: None
    downloaded: Callable[[int], None] = lambda _n: None
    refused: Callable[[str], None] = lambda _r: None


def decode_attachment_id(text: str) -> bytes:
    try:
        raw = b64decode(text)
    except ValueError:
        raw = b""
    if len(raw) != ATTACHMENT_ID_SIZE:
        raise Problem(404, ProblemCode.NOT_FOUND, "no such attachment")
    return raw


def _offset_mismatch(offset: int) -> Problem:
    return Problem(
        409,
        ProblemCode.ATTACHMENT_OFFSET_MISMATCH,
        f"the upload is at offset {offset}",
        headers={"Upload-Offset": str(offset)},
        offset=offset,
    )


def _too_long(bound: int) -> Problem:
    return Problem(
        413,
        ProblemCode.PAYLOAD_TOO_LARGE,
        f"this PATCH may carry at most {bound} bytes (the rest of Upload-Length)",
        limit=bound,
    )


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> ``[start, end)``; ``None`` without a header;
    416 ``range_not_satisfiable`` for anything else (one range only)."""
    if header is None:
        return None
    bad = Problem(
        416,
        ProblemCode.RANGE_NOT_SATISFIABLE,
        "one byte range within the attachment (bytes=start-[end])",
        headers={"Content-Range": f"bytes */{length}"},
        length=length,
    )
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or "," in spec:
        raise bad
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                raise bad
            return max(0, length - suffix), length
        start = int(first)
        end = length if last == "" else int(last) + 1
    except ValueError:
        raise bad from None
    if start < 0 or start >= length or end <= start:
        raise bad
    return start, min(end, length)


class AttachmentService:
    def __init__(
        self,
        repo: AttachmentsRepo,
        store: AttachmentStore,
        clock: Clock,
        limits: AttachmentLimits,
        *,
        limiter: RateLimiter | None = None,
        counters: AttachmentCounters | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repo
        self._store = store
        self._clock = clock
        self.limits = limits
        self._retention_ms = limits.retention_s * 1000
        self._limiter = limiter
        self._counters = counters or AttachmentCounters()
        self._random = random_bytes
        self._next_purge_ms = 0
        #: upload id -> [its writer lock, requests holding or awaiting it]
        self._writers: dict[bytes, list[Any]] = {}

    # -- upload --------------------------------------------------------------------------------

    async def create(self, caller: AuthedDevice, length: int) -> str:
        limits = self.limits
        if length > limits.max_bytes:
            self._counters.refused("too_large")
            raise Problem(
                413,
                ProblemCode.PAYLOAD_TOO_LARGE,
                f"an attachment is at most {limits.max_bytes} bytes (padded)",
                limit=limits.max_bytes,
            )
        if not is_padme(length):
            raise Problem(
                422,
                ProblemCode.ATTACHMENT_LENGTH_NOT_PADDED,
                "Upload-Length must be a Padmé bucket (pad the ciphertext; see crypto/padding.py)",
                padded=padme(length),
            )
        if self._limiter is not None:
            if limits.uploads_per_device is not None:
                await self._limiter.hit(limits.uploads_per_device, "attachment_upload", caller.device_id)
            if limits.bytes_per_account is not None:
                await self._limiter.hit_amount(
                    limits.bytes_per_account, "attachment-bytes-account", caller.account_id, length
                )
        now = self._clock()
        await self._maybe_purge(now)
        attachment_id = self._random(ATTACHMENT_ID_SIZE)
        stored = await self._repo.create(
            attachment_id,
            caller.account_id_bytes,
            caller.device_id_bytes,
            length,
            now,
            quota_bytes=limits.quota_bytes_per_account,
            created_after_ms=now - self._retention_ms,
        )
        if stored is not None:
            self._counters.refused("quota")
            raise Problem(
                507,
                ProblemCode.STORAGE_QUOTA_EXCEEDED,
                f"the account's attachments would pass {limits.quota_bytes_per_account} bytes;"
                f" they expire {limits.retention_s} s after upload",
                limit=limits.quota_bytes_per_account,
                stored=stored,
            )
        self._counters.created(length)
        return b64encode(attachment_id)

    async def _live(self, attachment_id_b64: str) -> AttachmentRow:
        row = await self._repo.get(decode_attachment_id(attachment_id_b64))
        if row is None:
            raise Problem(404, ProblemCode.NOT_FOUND, "no such attachment")
        if row.purged or self._clock() - row.created_at_ms >= self._retention_ms:
            raise Problem(
                410,
                ProblemCode.ATTACHMENT_EXPIRED,
                f"attachments are kept {self.limits.retention_s} s after their upload started",
            )
        return row

    async def status(self, attachment_id_b64: str) -> tuple[int, int]:
        """``(offset, length)`` for ``HEAD``."""
        row = await self._live(attachment_id_b64)
        return row.offset, row.length

    async def append(
        self,
        caller: AuthedDevice,
        attachment_id_b64: str,
        offset: int,
        body: AsyncIterator[bytes],
        declared: int | None = None,
    ) -> int:
        """Append the request body (``declared`` bytes if its length is known) at ``offset``;
        the new offset. The body streams to the store; every ``commit_bytes`` and at its end
        the bytes are made durable and then the offset moves. A body that ends early (the
        connection dropped) keeps and acknowledges what arrived."""
        row = await self._live(attachment_id_b64)
        if row.account_id != caller.account_id_bytes:
            raise Problem(403, ProblemCode.FORBIDDEN, "only the uploader's devices may append")
        async with self._writing(row):
            row = await self._live(attachment_id_b64)  # the offset as the last writer left it
            if row.offset != offset:
                raise _offset_mismatch(row.offset)
            if declared is not None and declared > row.length - offset:
                raise _too_long(row.length - offset)
            return await self._stream_in(row, body)

    async def _stream_in(self, row: AttachmentRow, body: AsyncIterator[bytes]) -> int:
        committed = position = row.offset

        async def advance(old: int, new: int, completed_at_ms: int | None) -> bool:
            return await self._repo.advance(row.id, old, new, completed_at_ms)

        async with self._store.writer(row.id, row.offset, advance) as writer:

            async def commit() -> None:
                nonlocal committed
                done = self._clock() if position == row.length else None
                if not await writer.commit(done):
                    raise Problem(409, ProblemCode.ATTACHMENT_OFFSET_MISMATCH, "the upload moved meanwhile")
                self._counters.written(position - committed)
                committed = position
                if done is not None:
                    self._counters.completed()

            async for piece in body:
                if position + len(piece) > row.length:
                    raise _too_long(row.length - row.offset)
                await writer.write(piece)
                position += len(piece)
                if position - committed >= writer.commit_bytes:
                    await commit()
            if position > committed:
                await commit()
        return committed

    @asynccontextmanager
    async def _writing(self, row: AttachmentRow) -> AsyncIterator[None]:
        """One writer per upload in this process; a second waits for the first (a retry that
        raced a request the server still reads) up to ``WRITER_WAIT_S``, then 409. Across
        processes (``serve --workers N``) the store's lock refuses a second writer at once (409
        naming the offset; the client resumes from there once the first is done)."""
        entry = self._writers.setdefault(row.id, [asyncio.Lock(), 0])
        lock: asyncio.Lock = entry[0]
        entry[1] += 1
        try:
            try:
                await asyncio.wait_for(lock.acquire(), WRITER_WAIT_S)
            except TimeoutError:
                current = await self._repo.get(row.id)
                raise _offset_mismatch(row.offset if current is None else current.offset) from None
            try:
                async with self._store.exclusive(row.id):
                    yield
            except WriterBusy:
                self._counters.refused("writer_busy")
                current = await self._repo.get(row.id)
                raise _offset_mismatch(row.offset if current is None else current.offset) from None
            finally:
                lock.release()
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._writers[row.id]

    # -- download ------------------------------------------------------------------------------

    async def open(
        self, attachment_id_b64: str, range_header: str | None
    ) -> tuple[AttachmentRow, int, int, bool]:
        """``(row, start, end, partial)`` of a completed attachment for a download."""
        row = await self._live(attachment_id_b64)
        if row.completed_at_ms is None:
            raise Problem(
                409,
                ProblemCode.ATTACHMENT_INCOMPLETE,
                "the upload is not complete yet",
                offset=row.offset,
                length=row.length,
            )
        if row.length == 0:
            return row, 0, 0, False
        span = parse_range(range_header, row.length)
        if span is None:
            return row, 0, row.length, False
        return row, span[0], span[1], True

    async def stream(self, row: AttachmentRow, start: int, end: int) -> AsyncIterator[bytes]:
        async for piece in self._store.read(row.id, start, end):
            self._counters.downloaded(len(piece))
            yield piece

    # -- retention -----------------------------------------------------------------------------

    async def _maybe_purge(self, now: int) -> None:
        if now < self._next_purge_ms:
            return
        self._next_purge_ms = now + PURGE_INTERVAL_MS
        await self.purge(now)

    async def purge(self, now: int) -> int:
        """Drop the bytes of expired attachments (their rows stay as tombstones for another
        retention period, then go); how many were purged."""
        ids = await self._repo.expired_ids(now - self._retention_ms)
        for attachment_id in ids:
            await self._store.delete(attachment_id)
        await self._repo.mark_purged(ids)
        await self._repo.delete_tombstones(now - 2 * self._retention_ms)
        return len(ids)
