"""Where attachment ciphertext lives, behind one interface (:class:`AttachmentStore`).

- :class:`FilesystemAttachmentStore` (the default): one file per attachment under
  ``<data_dir>/attachments/<2 hex>/<64 hex>``; one machine only. The service serialises the
  writers of one attachment with an in-process lock, and :meth:`~AttachmentStore.exclusive`
  across the processes of ``serve --workers N`` (``flock`` on the file): a writer opened at
  the offset truncates the file there, which must never happen under another process's writer
  (that one's next commit would acknowledge the cut bytes as zeros).
- :class:`DatabaseAttachmentStore`: one row per committed piece (``attachment_chunks``, at most
  :data:`DB_ROW_BYTES` each) in the shared database, so that several instances serve every
  attachment.

Both hold only what the client uploaded: padded secretstream ciphertext. A ``PATCH`` streams into
an :class:`AttachmentWriter`: :meth:`~AttachmentWriter.write` puts bytes after the ones before
(not yet durable), :meth:`~AttachmentWriter.commit` makes everything written durable *and then*
moves the upload's offset to it (compare-and-set): an offset the server acknowledges is always
on disk (``fsync``) or in a committed database transaction. A writer opened at offset ``o``
first drops anything stored at or after ``o`` (bytes written but never committed by an earlier,
interrupted request), so the stored bytes past the offset are never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert, select

from saltline.server.storage.attachments_repo import advance_offset
from saltline.server.storage.db import Database
from saltline.server.storage.schema import attachment_chunks

#: Pieces a download yields at a time from a file.
READ_PIECE = 1024 * 1024
#: Bytes gathered before one ``pwrite`` (one thread hand-off) of the filesystem store.
WRITE_PIECE = 1024 * 1024
#: The database store commits (a row and the offset, one transaction) every this many bytes.
DB_ROW_BYTES = 1024 * 1024

#: ``advance(old, new, completed_at_ms)``: compare-and-set of the upload's offset.
Advance = Callable[[int, int, int | None], Awaitable[bool]]


class AttachmentWriter(Protocol):
    #: Bytes this store gathers between commits at most (the service commits at least this often).
    commit_bytes: int

    async def write(self, data: bytes) -> None:
        """Store ``data`` after the bytes written before (not durable until :meth:`commit`)."""

    async def commit(self, completed_at_ms: int | None) -> bool:
        """Make everything written durable, then move the offset to its end; ``False`` (and
        nothing acknowledged) if the offset moved meanwhile."""


class WriterBusy(Exception):
    """Another process writes this attachment now (:meth:`AttachmentStore.exclusive`)."""


class AttachmentStore(Protocol):
    def exclusive(self, attachment_id: bytes) -> AbstractAsyncContextManager[None]:
        """Held around everything one request does to an upload (re-reading its offset, then
        writing): raises :class:`WriterBusy` at once if another process holds it."""

    def writer(
        self, attachment_id: bytes, offset: int, advance: Advance
    ) -> AbstractAsyncContextManager[AttachmentWriter]:
        """A writer appending at ``offset`` (the upload's current offset)."""

    def read(self, attachment_id: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield the bytes ``[start, end)`` in pieces (the caller knows they were written)."""

    async def delete(self, attachment_id: bytes) -> None:
        """Forget the attachment's bytes (idempotent)."""


class _FileWriter:
    def __init__(self, fd: int, offset: int, advance: Advance, commit_bytes: int) -> None:
        self.commit_bytes = commit_bytes
        self._fd = fd
        self._committed = offset
        self._position = offset  # written to the file
        self._buffer = bytearray()
        self._advance = advance

    async def _drain(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(os.pwrite, self._fd, data, self._position)
            self._position += len(data)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= WRITE_PIECE:
            await self._drain()

    async def commit(self, completed_at_ms: int | None) -> bool:
        await self._drain()
        await asyncio.to_thread(os.fsync, self._fd)
        if not await self._advance(self._committed, self._position, completed_at_ms):
            return False
        self._committed = self._position
        return True


class FilesystemAttachmentStore:
    def __init__(self, root: Path, *, commit_bytes: int = 8 * 1024 * 1024) -> None:
        self._root = root
        self._commit_bytes = commit_bytes

    def _path(self, attachment_id: bytes) -> Path:
        name = attachment_id.hex()
        return self._root / name[:2] / name

    @asynccontextmanager
    async def exclusive(self, attachment_id: bytes) -> AsyncIterator[None]:
        path = self._path(attachment_id)
        fd = await asyncio.to_thread(self._open_lock, path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriterBusy from None
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _open_lock(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def _open(self, path: Path, offset: int) -> int:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, offset)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @asynccontextmanager
    async def writer(self, attachment_id: bytes, offset: int, advance: Advance) -> AsyncIterator[_FileWriter]:
        fd = await asyncio.to_thread(self._open, self._path(attachment_id), offset)
        try:
            yield _FileWriter(fd, offset, advance, self._commit_bytes)
        finally:
            os.close(fd)

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


class _RowWriter:
    commit_bytes = DB_ROW_BYTES

    def __init__(self, db: Database, attachment_id: bytes, offset: int) -> None:
        self._db = db
        self._id = attachment_id
        self._committed = offset
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self._buffer += data

    async def commit(self, completed_at_ms: int | None) -> bool:
        data = bytes(self._buffer)
        new = self._committed + len(data)
        async with self._db.write() as conn:
            if not await advance_offset(conn, self._id, self._committed, new, completed_at_ms):
                return False
            await conn.execute(
                delete(attachment_chunks).where(
                    attachment_chunks.c.attachment_id == self._id,
                    attachment_chunks.c.start >= self._committed,
                )
            )
            if data:
                await conn.execute(
                    insert(attachment_chunks).values(attachment_id=self._id, start=self._committed, data=data)
                )
        self._buffer.clear()
        self._committed = new
        return True


class DatabaseAttachmentStore:
    """Each commit is one transaction: the row and the offset's compare-and-set together, so an
    acknowledged offset always has its rows, also with writers on several instances."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def exclusive(self, attachment_id: bytes) -> AbstractAsyncContextManager[None]:
        # Each commit deletes what lies past the offset and moves the offset in one transaction
        # (compare-and-set): writers on several processes need no lock.
        return contextlib.nullcontext()

    @asynccontextmanager
    async def writer(self, attachment_id: bytes, offset: int, advance: Advance) -> AsyncIterator[_RowWriter]:
        yield _RowWriter(self._db, attachment_id, offset)

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
