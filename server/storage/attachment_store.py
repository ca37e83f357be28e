"""Where attachment ciphertext lives, behind one interface (:class:`AttachmentStore`).

- :class:`FilesystemAttachmentStore` (the default): one file per attachment under
  ``<data_dir>/attachments/<2 hex>/<64 hex>``; one instance only (its writes are serialised by an
  in-process lock per attachment).
- :class:`DatabaseAttachmentStore`: one row per written piece (``attachment_chunks``, at most one
  ``PATCH`` each) in the shared database, so that several instances serve every attachment.

Both hold only what the client uploaded: padded secretstream ciphertext. Offsets are kept by
:class:`~saltline.server.storage.attachments_repo.AttachmentsRepo`; a store writes at the offset it is
given (a write at offset ``o`` first drops anything stored at or after ``o``, so a piece whose
offset update was lost is simply written again).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert, select

from saltline.server.storage.db import Database
from saltline.server.storage.schema import attachment_chunks

#: Pieces a download yields at a time from a file.
READ_PIECE = 256 * 1024


class AttachmentStore(Protocol):
    async def write(self, attachment_id: bytes, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset`` (dropping anything stored at or after ``offset``)."""

    def read(self, attachment_id: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` in pieces (the caller knows they were written)."""

    async def delete(self, attachment_id: bytes) -> None:
        """Forget the attachment's bytes (idempotent)."""


class FilesystemAttachmentStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        #: Striped locks (a fixed number, whatever the number of attachments).
        self._locks = [asyncio.Lock() for _ in range(64)]

    def _path(self, attachment_id: bytes) -> Path:
        name = attachment_id.hex()
        return self._root / name[:2] / name

    def _write_sync(self, path: Path, offset: int, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def write(self, attachment_id: bytes, offset: int, data: bytes) -> None:
        async with self._locks[attachment_id[0] % len(self._locks)]:
            await asyncio.to_thread(self._write_sync, self._path(attachment_id), offset, data)

    async def read(self, attachment_id: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        path = self._path(attachment_id)
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            position = start
            while position < end:
                piece = await asyncio.to_thread(os.pread, fd, min(READ_PIECE, end - position), position)
                if not piece:
                    raise OSError(f"attachment file shorter than {end}")
                position += len(piece)
                yield piece
        finally:
            os.close(fd)

    async def delete(self, attachment_id: bytes) -> None:
        await asyncio.to_thread(self._path(attachment_id).unlink, True)


class DatabaseAttachmentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(self, attachment_id: bytes, offset: int, data: bytes) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                delete(attachment_chunks).where(
                    attachment_chunks.c.attachment_id == attachment_id, attachment_chunks.c.start >= offset
                )
            )
            if data:
                await conn.execute(
                    insert(attachment_chunks).values(attachment_id=attachment_id, start=offset, data=data)
                )

    async def read(self, attachment_id: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        # One row per query: memory stays at one piece whatever the attachment's size.
        async with self._db.read() as conn:
            first = (
                await conn.execute(
                    select(attachment_chunks.c.start)
                    .where(
                        attachment_chunks.c.attachment_id == attachment_id, attachment_chunks.c.start <= start
                    )
                    .order_by(attachment_chunks.c.start.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        row_start = 0 if first is None else int(first)
        position = start
        while position < end:
            async with self._db.read() as conn:
                data = (
                    await conn.execute(
                        select(attachment_chunks.c.data).where(
                            attachment_chunks.c.attachment_id == attachment_id,
                            attachment_chunks.c.start == row_start,
                        )
                    )
                ).scalar_one_or_none()
            if data is None:
                raise OSError(f"attachment piece at {row_start} missing")
            data = bytes(data)
            piece = data[position - row_start : end - row_start]
            if not piece:
                raise OSError("attachment piece empty")
            position += len(piece)
            row_start += len(data)
            yield piece

    async def delete(self, attachment_id: bytes) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                delete(attachment_chunks).where(attachment_chunks.c.attachment_id == attachment_id)
            )
