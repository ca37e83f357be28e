"""Attachments: send a file (encrypt with a fresh key, pad to its Padmé bucket, upload
resumably, then send the message through the outbox) and download one (stream, verify the
digest, decrypt to a temporary file, then rename). Memory stays constant in the file size:
files move in pieces of at most ``PIECE`` bytes (docs/protocol/sealed-and-attachments.md).

Throughput: encryption, hashing and decryption run in worker threads
(:mod:`saltline.client_sdk.facets.attachment_files`) overlapping the network. A source of known length
(a path, bytes) is uploaded while it is encrypted: one ``PATCH`` streams the spool as it grows.

Resuming:

- an upload goes through a spool file (the bytes a resume sends again are identical); its state
  (server id, pointer fields, stream key and header, the source's path, offset known) is a store
  setting ``attachment-upload:<spool name>``, saved before the first byte goes. A dropped
  connection is resumed at once from the server's offset (``HEAD``: the server keeps what
  arrived of a cut ``PATCH``); after a restart :meth:`Attachments.resume_uploads` finishes it
  (encrypting the file again with the same key and header if the restart cut the spool short).
  The message is written to the outbox in the same transaction that settles the record, so it
  is sent exactly once.
- a download appends the raw ciphertext to ``<destination>.saltline-part`` and decrypts it as it
  arrives into a temporary file; a dropped connection or a new call resumes with ``Range`` from
  the part's length. Only a verified, decrypted file is renamed to the destination.
"""

# Local file I/O on the loop (reading the spool for a PATCH) is in pieces of at most PIECE bytes
# (a page-cache copy); the heavy work (crypto, hashing, writing) runs in worker threads.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.attachments import (
    DEFAULT_MIME,
    AttachmentPointer,
    safe_file_name,
    sendable_name,
    valid_mime,
)
from saltline.client_sdk.core.wire import canonical_json
from saltline.client_sdk.errors import (
    AttachmentError,
    AttachmentIntegrityError,
    AttachmentTooLargeError,
    AttachmentUnavailableError,
    NetworkError,
    ServerError,
    UsageError,
    server_error,
)
from saltline.client_sdk.facets.attachment_files import PIECE, DownloadSink, Spool, respool, spool_digest
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.outbound import Outbound

log = logging.getLogger("client_sdk.attachments")

Source = str | os.PathLike[str] | bytes | AsyncIterable[bytes]
#: ``progress(done, total)``: bytes of padded ciphertext moved so far and in all.
Progress = Callable[[int, int], None]

SETTING_UPLOAD = "attachment-upload:"
SETTING_UPLOADS = "attachment-uploads"  # the spool names of unfinished uploads (JSON list)
PART_SUFFIX = ".saltline-part"
#: Consecutive failed attempts (no progress) before an upload or download gives up for now.
MAX_ATTEMPTS = 5
TUS = {"Tus-Resumable": "1.0.0"}


class Attachments:
    def __init__(self, ctx: DeviceContext, outbound: Outbound, spool_dir: Path | None = None) -> None:
        self.ctx = ctx
        self.outbound = outbound
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / "saltline-attachments"
        #: Attachments up to this size (plaintext bytes) are downloaded by the client itself
        #: into ``download_dir`` (0: none).
        self.auto_download_bytes = 0
        self.download_dir: Path | None = None

    # -- HTTP ------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> Any:
        ctx = self.ctx
        response = await ctx.http.send_bytes(method, path, headers, body, await ctx.token())
        if response.status == 401:
            ctx.drop_access_token()
            response = await ctx.http.send_bytes(method, path, headers, body, await ctx.token())
        if not 200 <= response.status < 300:
            raise server_error(response.status, response.body if isinstance(response.body, dict) else None)
        return response

    # -- sending -----------------------------------------------------------------------------------

    async def send_file(
        self,
        conversation_id: str,
        source: Source,
        *,
        name: str | None = None,
        mime: str | None = None,
        caption: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Encrypt, upload and send ``source``; returns the message's envelope id."""
        if name is None:
            name = Path(os.fspath(source)).name if isinstance(source, str | os.PathLike) else "attachment"
        mime = mime or DEFAULT_MIME
        if not sendable_name(name):
            raise UsageError(
                "a file name is 1-255 characters without '/', '\\\\', control or bidirectional characters"
            )
        if not valid_mime(mime):
            raise UsageError("a MIME type is type/subtype in lower case")
        meta = {"conversation_id": conversation_id, "name": name, "mime": mime, "caption": caption or ""}
        size = _known_size(source)
        if size is None:  # a stream of unknown length: the whole spool first, then its upload
            record = {**await self._spool(source), **meta}
            await self._create(record)
            return await self._finish(record, progress)
        if isinstance(source, bytearray | memoryview):
            source = bytes(source)
        assert isinstance(source, bytes | str | os.PathLike)
        return await self._send_known(source, size, meta, progress)

    async def _create(self, record: dict[str, Any]) -> None:
        """Create the upload on the server and save the record (the spool is dropped on failure)."""
        try:
            response = await self._request(
                "POST", "/v1/attachments", {**TUS, "Upload-Length": str(record["padded_size"])}, None
            )
        except ServerError as exc:
            Path(record["spool"]).unlink(missing_ok=True)
            if exc.status == 413:
                limit = exc.body.get("limit")
                raise AttachmentTooLargeError(
                    f"the file is larger than this server accepts ({limit} bytes padded)",
                    limit if isinstance(limit, int) else None,
                ) from exc
            raise
        except BaseException:
            Path(record["spool"]).unlink(missing_ok=True)
            raise
        record["id"] = response.headers.get("location", "").rsplit("/", 1)[-1]
        self._save(record)

    async def _send_known(
        self,
        source: str | os.PathLike[str] | bytes,
        size: int,
        meta: dict[str, Any],
        progress: Progress | None,
    ) -> str:
        """A source of known length: the upload is created first, then a worker thread encrypts
        into the spool while one ``PATCH`` streams the spool as it grows. The record is saved
        before the first byte (its digest once the spool is complete), so a restart resumes it
        from the spool (:meth:`resume_uploads` hashes a complete spool whose digest is missing)."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        growing = _Growing(asyncio.get_running_loop())
        spool = Spool(
            self.spool_dir / f"{b64encode(self.ctx.rng(16))}.up",
            self.ctx.rng,
            size=size,
            on_written=growing.report,
        )
        record = {
            "spool": str(spool.path),
            "key": b64encode(spool.key),
            "digest": "",
            "header": b64encode(spool.header),
            "source": str(Path(source).resolve()) if isinstance(source, str | os.PathLike) else "",
            "size": size,
            "padded_size": spool.padded,
            **meta,
        }
        try:
            await self._create(record)
        except BaseException:
            spool.discard()
            raise

        def encrypt() -> bytes:
            try:
                spool.put_source(source)
                return spool.finish()[1]
            finally:
                growing.close()

        encrypting = asyncio.ensure_future(asyncio.to_thread(encrypt))
        try:
            await self._upload(record, progress, growing)
        except (NetworkError, ServerError):
            await self._spooled(record, encrypting, spool)  # a later resume_uploads finishes it
            raise
        except BaseException:
            await asyncio.wait([encrypting])
            if not encrypting.cancelled() and encrypting.exception() is not None:
                await self._spooled(record, encrypting, spool)  # drops the upload; raises why
            raise
        await self._spooled(record, encrypting, spool)
        return await self._finish(record, None)

    async def _spooled(self, record: dict[str, Any], encrypting: asyncio.Future[bytes], spool: Spool) -> None:
        """Wait for the spool to be complete and save its digest; on failure drop the upload."""
        try:
            record["digest"] = b64encode(await encrypting)
        except BaseException:
            spool.discard()
            with self.ctx.transaction():
                self._settle(record)
            raise
        self._save(record)

    async def _spool(self, source: Source) -> dict[str, Any]:
        """Encrypt ``source`` into a spool file (in a worker thread): padded ciphertext, its
        digest and sizes."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool = Spool(self.spool_dir / f"{b64encode(self.ctx.rng(16))}.up", self.ctx.rng)
        try:
            if isinstance(source, str | os.PathLike):
                await asyncio.to_thread(spool.put_source, source)
            else:
                async for piece in _pieces(source):
                    await asyncio.to_thread(spool.put, piece)
            key, digest, padded = await asyncio.to_thread(spool.finish)
        except BaseException:
            spool.discard()
            raise
        return {
            "spool": str(spool.path),
            "key": b64encode(key.key),
            "digest": b64encode(digest),
            "size": key.size,
            "padded_size": padded,
        }

    def _save(self, record: dict[str, Any]) -> None:
        sync_store = self.ctx.store.sync
        name = Path(record["spool"]).name
        with self.ctx.transaction():
            sync_store.put_setting(SETTING_UPLOAD + name, canonical_json(record).decode())
            pending = self._pending()
            if name not in pending:
                sync_store.put_setting(SETTING_UPLOADS, json.dumps([*pending, name]))

    def _pending(self) -> list[str]:
        raw = self.ctx.store.sync.get_setting(SETTING_UPLOADS)
        names = json.loads(raw) if raw else []
        return [n for n in names if isinstance(n, str)]

    def _settle(self, record: dict[str, Any]) -> None:
        """Forget the upload record (inside the transaction that writes the outbox item)."""
        name = Path(record["spool"]).name
        self.ctx.store.sync.put_setting(SETTING_UPLOAD + name, "")
        self.ctx.store.sync.put_setting(
            SETTING_UPLOADS, json.dumps([n for n in self._pending() if n != name])
        )

    async def _finish(self, record: dict[str, Any], progress: Progress | None) -> str:
        if record.get("offset") != record["padded_size"]:
            await self._upload(record, progress)
        pointer = AttachmentPointer(
            b64decode(record["id"]),
            b64decode(record["key"]),
            b64decode(record["digest"]),
            record["padded_size"],
            record["size"],
            record["name"],
            record["mime"],
        )
        body = sync.Message(record["caption"], None, self.ctx.clock(), pointer)
        envelope_id = await self.outbound.send_op(
            record["conversation_id"], body, also=lambda: self._settle(record)
        )
        Path(record["spool"]).unlink(missing_ok=True)
        return envelope_id

    async def _upload(
        self, record: dict[str, Any], progress: Progress | None, growing: _Growing | None = None
    ) -> None:
        """One ``PATCH`` carries the rest of the spool; after a failure, ``HEAD`` says what the
        server kept (it keeps what arrived of a request cut off) and the rest goes again."""
        path = f"/v1/attachments/{record['id']}"
        total = record["padded_size"]
        offset = record.get("offset", 0)
        failures = 0
        with open(record["spool"], "rb") as spool:
            while offset < total:
                try:
                    offset = await self._patch(path, spool, offset, total, progress, growing)
                    failures = 0
                except (NetworkError, ServerError) as exc:
                    if isinstance(exc, ServerError) and exc.status not in (401, 409, 429, 500, 502, 503, 504):
                        raise
                    if isinstance(exc, ServerError) and exc.status == 401:
                        self.ctx.drop_access_token()
                    failures += 1
                    if failures >= MAX_ATTEMPTS:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures) if isinstance(exc, NetworkError) else 0)
                    before, offset = offset, await self._server_offset(path)
                    if offset > before:
                        failures = 0  # it moved on: not a failed attempt in a row
                if progress is not None:
                    progress(offset, total)
        record["offset"] = offset

    async def _patch(
        self,
        path: str,
        spool: BinaryIO,
        offset: int,
        total: int,
        progress: Progress | None,
        growing: _Growing | None,
    ) -> int:
        """``PATCH`` the spool's bytes from ``offset`` to its end (as they are written, with
        ``growing``); the server's new offset."""

        async def body() -> AsyncIterator[bytes]:
            position = offset
            spool.seek(offset)
            while position < total:
                available = total if growing is None else await growing.beyond(position)
                if available <= position:
                    raise AttachmentError("the spool ended early (its encryption failed)")
                piece = spool.read(min(PIECE, total - position, available - position))
                if not piece:
                    raise AttachmentError("the spool file is shorter than its upload")
                yield piece
                position += len(piece)
                if progress is not None:
                    progress(position, total)  # handed to the connection (not yet acknowledged)

        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        response = await self.ctx.http.send_stream(
            "PATCH", path, headers, body(), total - offset, await self.ctx.token()
        )
        if not 200 <= response.status < 300:
            raise server_error(response.status, response.body if isinstance(response.body, dict) else None)
        return int(response.headers["upload-offset"])

    async def _server_offset(self, path: str) -> int:
        response = await self._request("HEAD", path, TUS, None)
        return int(response.headers["upload-offset"])

    async def resume_uploads(self) -> list[str]:
        """Finish the uploads a restart interrupted and send their messages; their envelope ids."""
        sent = []
        for name in self._pending():
            raw = self.ctx.store.sync.get_setting(SETTING_UPLOAD + name)
            if not raw:
                continue
            record = json.loads(raw)
            if not Path(record["spool"]).exists():
                log.warning("an unfinished attachment upload lost its spool file: dropped")
                with self.ctx.transaction():
                    self._settle(record)
                continue
            if not record.get("digest"):  # the restart came while the spool was being written
                digest = await asyncio.to_thread(spool_digest, Path(record["spool"]), record["padded_size"])
                if digest is None and record.get("source"):  # encrypt the file again, same key and header
                    digest = await asyncio.to_thread(
                        respool,
                        Path(record["spool"]),
                        Path(record["source"]),
                        b64decode(record["key"]),
                        b64decode(record["header"]),
                        record["size"],
                    )
                if digest is None:
                    log.warning(
                        "an upload cut off while it was encrypted cannot be redone (source gone): dropped"
                    )
                    with self.ctx.transaction():
                        self._settle(record)
                    Path(record["spool"]).unlink(missing_ok=True)
                    continue
                record["digest"] = b64encode(digest)
            try:
                record["offset"] = await self._server_offset(f"/v1/attachments/{record['id']}")
            except ServerError as exc:
                if exc.status not in (404, 410):
                    raise
                # expired or forgotten on the server: the upload cannot finish; drop it
                log.warning("an unfinished attachment upload is gone from the server (%s): dropped", exc.code)
                with self.ctx.transaction():
                    self._settle(record)
                Path(record["spool"]).unlink(missing_ok=True)
                continue
            sent.append(await self._finish(record, None))
        return sent

    # -- receiving ---------------------------------------------------------------------------------

    async def download(
        self,
        pointer: AttachmentPointer,
        destination: str | os.PathLike[str],
        progress: Progress | None = None,
    ) -> Path:
        """Fetch, verify and decrypt the attachment to ``destination`` (a directory: the file
        keeps its name there); returns the file's path. Resumes a part left by an earlier call."""
        target = Path(destination)
        into_directory = target.is_dir()
        if into_directory:
            target = target / safe_file_name(pointer.name)
        part = target.with_name(target.name + PART_SUFFIX)
        try:
            sink = await asyncio.to_thread(DownloadSink, pointer, part, target)
        except CryptoError as exc:  # the part an earlier call left does not decrypt
            part.unlink(missing_ok=True)
            raise AttachmentIntegrityError(f"the attachment does not decrypt: {exc}") from exc
        keep_part = True
        try:
            failures = 0
            while sink.have < pointer.padded_size:
                try:
                    await self._fetch(pointer, sink, progress)
                    failures = 0
                except NetworkError:
                    failures += 1
                    if failures >= MAX_ATTEMPTS:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            target = await asyncio.to_thread(sink.finish, target, keep_existing=into_directory)
        except CryptoError as exc:
            keep_part = False
            raise AttachmentIntegrityError(f"the attachment does not decrypt: {exc}") from exc
        except (AttachmentIntegrityError, ServerError):
            keep_part = False  # refused or gone: a part of it is of no use for a later try
            raise
        else:
            keep_part = False
        finally:
            await asyncio.to_thread(sink.close, keep_part=keep_part)
        return target

    async def _fetch(self, pointer: AttachmentPointer, sink: DownloadSink, progress: Progress | None) -> None:
        """One ranged ``GET`` from what ``sink`` holds; pieces go to ``sink`` in a worker thread
        while the next ones arrive (one piece in flight)."""
        have = sink.have
        headers = {"Range": f"bytes={have}-"} if have else {}
        path = f"/v1/attachments/{pointer.ref}"
        async with self.ctx.http.stream_get(path, headers, await self.ctx.token()) as response:
            if response.status_code not in (200, 206):
                await response.aread()
                try:
                    body = response.json()
                except ValueError:
                    body = None
                error = server_error(response.status_code, body if isinstance(body, dict) else None)
                if response.status_code == 404:
                    raise AttachmentUnavailableError(error.status, error.code, error.detail, error.body)
                raise error
            if have and response.status_code != 206:
                raise AttachmentIntegrityError("the server ignored the range of a resumed download")
            announced = response.headers.get("content-length")
            if announced is not None and announced != str(pointer.padded_size - have):
                # a complete answer of the wrong length: truncated or swapped, not a broken line
                raise AttachmentIntegrityError("the server's answer is not the attachment's length")
            in_flight: asyncio.Future[None] | None = None
            batch = bytearray()

            async def hand_over() -> None:
                nonlocal in_flight
                if in_flight is not None:
                    await in_flight
                data = bytes(batch)
                batch.clear()
                in_flight = asyncio.ensure_future(asyncio.to_thread(sink.absorb, data)) if data else None

            try:
                async for piece in response.aiter_raw():
                    if have + len(piece) > pointer.padded_size:
                        raise AttachmentIntegrityError("the server sent more than the attachment's size")
                    batch += piece
                    have += len(piece)
                    if len(batch) >= PIECE:
                        await hand_over()
                        if progress is not None:
                            progress(have, pointer.padded_size)
            finally:
                await hand_over()  # what arrived before a break is kept (the part resumes)
                await hand_over()
                await asyncio.to_thread(sink.flush)
        if progress is not None:
            progress(sink.have, pointer.padded_size)
        if sink.have < pointer.padded_size:
            raise NetworkError("the download ended early")

    async def auto_download(
        self, conversation_id: str, envelope_id: str, pointer: AttachmentPointer
    ) -> Path | None:
        """Download ``pointer`` if it is within ``auto_download_bytes``; its path, else ``None``."""
        if self.download_dir is None or pointer.size > self.auto_download_bytes:
            return None
        self.download_dir.mkdir(parents=True, exist_ok=True)
        return await self.download(
            pointer, self.download_dir / f"{envelope_id[:8]}-{safe_file_name(pointer.name)}"
        )


class _Growing:
    """How much of a spool being written (by a worker thread) can be read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._written = 0
        self._closed = False
        self._changed = asyncio.Event()

    def report(self, written: int) -> None:
        """From the encrypting thread: ``written`` bytes are in the spool."""
        self._loop.call_soon_threadsafe(self._set, written, False)

    def close(self) -> None:
        """From the encrypting thread: nothing more comes (done or failed)."""
        self._loop.call_soon_threadsafe(self._set, self._written, True)

    def _set(self, written: int, closed: bool) -> None:
        self._written = max(self._written, written)
        self._closed = self._closed or closed
        self._changed.set()

    async def beyond(self, position: int) -> int:
        """Bytes written once there are more than ``position`` (or the spool is closed)."""
        while self._written <= position and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        return self._written


def _known_size(source: Source) -> int | None:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    if isinstance(source, str | os.PathLike):
        try:
            return os.stat(source).st_size
        except OSError:
            return None  # refused where it is read, as before
    return None


async def _pieces(source: Source) -> AsyncIterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        for start in range(0, len(data), PIECE):
            yield data[start : start + PIECE]
    elif isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            while piece := f.read(PIECE):
                yield piece
    elif isinstance(source, AsyncIterable):
        async for piece in source:
            if not isinstance(piece, bytes | bytearray | memoryview):
                raise UsageError("an attachment stream yields bytes")
            yield bytes(piece)
    else:
        raise UsageError("an attachment source is a path, bytes or an async iterator of bytes")


__all__ = ["AttachmentError", "Attachments"]
