"""Attachments: send a file (encrypt with a fresh key, pad to its Padmé bucket, upload
resumably, then send the message through the outbox) and download one (stream, verify the
digest, decrypt to a temporary file, then rename). Memory stays constant in the file size:
files move in pieces of at most ``PIECE`` bytes (docs/protocol/sealed-and-attachments.md).

Resuming:

- an upload is first encrypted to a spool file; its state (server id, pointer fields, offset
  known) is a store setting ``attachment-upload:<spool name>``. A dropped connection is resumed
  at once from the server's offset (``HEAD``); after a restart :meth:`Attachments.resume_uploads`
  finishes it. The message is written to the outbox in the same transaction that settles the
  record, so it is sent exactly once.
- a download writes the raw ciphertext to ``<destination>.saltline-part``; a dropped connection
  or a new call resumes with ``Range`` from the part's length. Only a verified, decrypted file is
  renamed to the destination.
"""

# Local file I/O here is in pieces of at most PIECE bytes (a page-cache copy, far shorter than
# the network round trip it alternates with), so it runs on the loop rather than in threads.
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import sync
from saltline.client_sdk.core.attachments import (
    DEFAULT_MIME,
    AttachmentPointer,
    padded_size,
    safe_file_name,
    valid_mime,
    valid_name,
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
from saltline.crypto.attachments import CIPHER_CHUNK_SIZE, AttachmentDecryptor, AttachmentEncryptor
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import b64decode, b64encode

if TYPE_CHECKING:
    from saltline.client_sdk.facets.outbound import Outbound

log = logging.getLogger("client_sdk.attachments")

Source = str | os.PathLike[str] | bytes | AsyncIterable[bytes]
#: ``progress(done, total)``: bytes of padded ciphertext moved so far and in all.
Progress = Callable[[int, int], None]

PIECE = 1024 * 1024  # one PATCH (the server's default chunk limit) and one read
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
        if not valid_name(name):
            raise UsageError("a file name is 1-255 characters without '/', '\\\\' or control characters")
        if not valid_mime(mime):
            raise UsageError("a MIME type is type/subtype in lower case")
        record = await self._spool(source)
        record.update(conversation_id=conversation_id, name=name, mime=mime, caption=caption or "")
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
        return await self._finish(record, progress)

    async def _spool(self, source: Source) -> dict[str, Any]:
        """Encrypt ``source`` into a spool file: padded ciphertext, its digest and sizes."""
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spool = self.spool_dir / f"{b64encode(self.ctx.rng(16))}.up"
        encryptor = AttachmentEncryptor(rng=self.ctx.rng)
        digest = hashlib.sha256()
        written = 0
        with open(spool, "wb") as out:
            os.chmod(spool, 0o600)

            def put(data: bytes) -> None:
                nonlocal written
                if data:
                    out.write(data)
                    digest.update(data)
                    written += len(data)

            try:
                async for piece in _pieces(source):
                    put(encryptor.update(piece))
                tail, key = encryptor.finalize()
                put(tail)
                padded = padded_size(key.size)
                zeros = bytes(min(PIECE, padded - written))
                while written < padded:
                    put(zeros[: padded - written])
            except BaseException:
                out.close()
                spool.unlink(missing_ok=True)
                raise
        return {
            "spool": str(spool),
            "key": b64encode(key.key),
            "digest": b64encode(digest.digest()),
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

    async def _upload(self, record: dict[str, Any], progress: Progress | None) -> None:
        path = f"/v1/attachments/{record['id']}"
        total = record["padded_size"]
        offset = record.get("offset", 0)
        failures = 0
        with open(record["spool"], "rb") as spool:
            while offset < total:
                spool.seek(offset)
                piece = spool.read(min(PIECE, total - offset))
                try:
                    response = await self._request(
                        "PATCH",
                        path,
                        {
                            **TUS,
                            "Upload-Offset": str(offset),
                            "Content-Type": "application/offset+octet-stream",
                        },
                        piece,
                    )
                    offset = int(response.headers["upload-offset"])
                    failures = 0
                except (NetworkError, ServerError) as exc:
                    if isinstance(exc, ServerError) and exc.status not in (409, 429, 500, 502, 503, 504):
                        raise
                    failures += 1
                    if failures >= MAX_ATTEMPTS:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures) if isinstance(exc, NetworkError) else 0)
                    offset = await self._server_offset(path)
                if progress is not None:
                    progress(offset, total)

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
        digest = hashlib.sha256()
        have = 0
        failures = 0
        with _open_part(part) as out:
            while piece := out.read(PIECE):
                digest.update(piece)
                have += len(piece)
            if have > pointer.padded_size:
                out.truncate(0)
                out.seek(0)
                digest, have = hashlib.sha256(), 0
            while have < pointer.padded_size:
                try:
                    have = await self._fetch(pointer, out, digest, have, progress)
                    failures = 0
                except (AttachmentIntegrityError, ServerError):
                    # refused or gone: a part of it is of no use for a later try
                    out.close()
                    part.unlink(missing_ok=True)
                    raise
                except NetworkError:
                    out.flush()
                    have = out.tell()  # what arrived before the break (digested as written)
                    failures += 1
                    if failures >= MAX_ATTEMPTS:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
            if digest.digest() != pointer.digest:
                part.unlink(missing_ok=True)
                raise AttachmentIntegrityError(
                    "the attachment does not match its digest (tampered or swapped)"
                )
            try:
                out.seek(0)
                target = self._decrypt(pointer, out, target, keep_existing=into_directory)
            finally:
                part.unlink(missing_ok=True)
        return target

    async def _fetch(
        self, pointer: AttachmentPointer, out: BinaryIO, digest: Any, have: int, progress: Progress | None
    ) -> int:
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
            async for piece in response.aiter_bytes(PIECE):
                if have + len(piece) > pointer.padded_size:
                    raise AttachmentIntegrityError("the server sent more than the attachment's size")
                out.write(piece)
                digest.update(piece)
                have += len(piece)
                if progress is not None:
                    progress(have, pointer.padded_size)
            out.flush()
        if have < pointer.padded_size:
            raise NetworkError("the download ended early")
        return have

    def _decrypt(
        self, pointer: AttachmentPointer, src: BinaryIO, target: Path, *, keep_existing: bool
    ) -> Path:
        """Decrypt ``src`` (the verified part) to ``target``; with ``keep_existing`` (a directory
        destination) an existing file is never replaced: the first free ``name (n).ext`` is taken."""
        fd, tmp_name = tempfile.mkstemp(prefix=".saltline-", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            decryptor = AttachmentDecryptor(pointer.key)
            remaining = pointer.ciphertext_size
            with os.fdopen(fd, "wb") as out:
                while remaining:
                    piece = src.read(min(CIPHER_CHUNK_SIZE * 16, remaining))
                    if not piece:
                        raise AttachmentIntegrityError("the attachment is truncated")
                    remaining -= len(piece)
                    out.write(decryptor.update(piece))
                out.write(decryptor.finalize())
                out.flush()
                os.fsync(out.fileno())
            if keep_existing:
                target = _reserve_free_name(target)
            os.replace(tmp, target)
            return target
        except CryptoError as exc:
            tmp.unlink(missing_ok=True)
            raise AttachmentIntegrityError(f"the attachment does not decrypt: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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


def _open_part(part: Path) -> BinaryIO:
    """The part file, opened to read and append without following a symbolic link; refused
    (:class:`UsageError`) unless it is a regular file of ours with one link (a planted link
    would let someone else choose what is written or chmod-ed)."""
    try:
        fd = os.open(part, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot open {part}: {exc.strerror} (remove it if it is not yours)") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise UsageError(f"{part} is not a plain file of yours: remove it and try again")
    os.fchmod(fd, 0o600)
    part_file = os.fdopen(fd, "a+b")
    part_file.seek(0)  # "a+" starts at the end: what is there is read (resumed) first
    return part_file


def _reserve_free_name(target: Path) -> Path:
    """``target``, or ``stem (n)suffix`` for the first n free, created empty (O_EXCL) so that
    nothing else takes it before the decrypted file replaces it."""
    for n in range(10_000):
        candidate = target if n == 0 else target.with_name(f"{target.stem} ({n}){target.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            continue
        return candidate
    raise UsageError(f"no free name for {target.name} in {target.parent}")
