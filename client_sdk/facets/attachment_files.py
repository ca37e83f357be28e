"""The blocking file work of attachments, run in worker threads by
:mod:`saltline.client_sdk.facets.attachments` so that it overlaps the network (libsodium and hashlib
release the GIL on large buffers):

- :class:`Spool`: encrypt plaintext into the spool file (padded ciphertext) with its SHA-256.
- :class:`DownloadSink`: what a download receives is appended to the part file (the raw padded
  ciphertext, from which a later call resumes), hashed, and decrypted as it arrives into a
  temporary file beside the destination. :meth:`DownloadSink.finish` checks the digest and the
  stream's end, then renames the temporary file to the destination: nothing unverified ever
  carries the destination's name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from saltline.client_sdk.core.attachments import AttachmentPointer, padded_size
from saltline.client_sdk.errors import AttachmentError, AttachmentIntegrityError, UsageError
from saltline.crypto.attachments import (
    HEADER_SIZE,
    KEY_SIZE,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentKey,
)
from saltline.crypto.primitives import Rng

#: File reads and writes of attachments, and the pieces handed to a worker thread at a time.
PIECE = 1024 * 1024


class Spool:
    """Encrypt into ``path`` (created 0600): ``put`` plaintext, then ``finish``.

    With ``size`` (the plaintext's length, known in advance) the padded length is known before
    the first byte, so the upload can start at once and read the spool as it grows: writes are
    unbuffered and ``on_written(n)`` reports each (from the thread that encrypts). A source that
    turns out longer or shorter than ``size`` is refused."""

    def __init__(
        self,
        path: Path,
        rng: Rng,
        *,
        size: int | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._out: BinaryIO = open(path, "wb", buffering=0)
        os.chmod(path, 0o600)
        self.key = rng(KEY_SIZE)
        self.header = rng(HEADER_SIZE)
        self._encryptor = AttachmentEncryptor(self.key, rng=lambda _n: self.header)
        self.size = size
        self.padded = None if size is None else padded_size(size)
        self._on_written = on_written
        self._plaintext = 0
        self.written = 0

    def _put_ciphertext(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.written += len(data)
            if self._on_written is not None:
                self._on_written(self.written)

    def put(self, plaintext: bytes) -> None:
        self._plaintext += len(plaintext)
        if self.size is not None and self._plaintext > self.size:
            raise AttachmentError("the file grew while it was being sent")
        self._put_ciphertext(self._encryptor.update(plaintext))

    def put_source(self, source: str | os.PathLike[str] | bytes) -> None:
        if isinstance(source, bytes):
            for start in range(0, len(source), PIECE):
                self.put(source[start : start + PIECE])
            return
        with open(source, "rb") as f:
            while piece := f.read(PIECE):
                self.put(piece)

    def finish(self) -> tuple[AttachmentKey, bytes, int]:
        """``(key, digest of the padded ciphertext, padded size)``; the spool is complete."""
        tail, key = self._encryptor.finalize()
        if self.size is not None and key.size != self.size:
            raise AttachmentError("the file shrank while it was being sent")
        self._put_ciphertext(tail)
        digest = self._encryptor.ciphertext_hash()  # the ciphertext's, extended over the padding
        padded = padded_size(key.size)
        zeros = bytes(min(PIECE, padded - self.written))
        while self.written < padded:
            padding = zeros[: padded - self.written]
            self._put_ciphertext(padding)
            digest.update(padding)
        self._out.close()
        return key, digest.digest(), padded

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)


def respool(path: Path, source: Path, key: bytes, header: bytes, size: int) -> bytes | None:
    """Encrypt ``source`` again with the same key and header into ``path``, a spool a restart
    cut short (secretstream is deterministic given both): the digest of the complete spool, or
    ``None`` if ``source`` changed (its size, or the bytes already spooled, and so perhaps
    uploaded, differ)."""
    if not source.is_file() or source.stat().st_size != size:
        return None
    fresh = path.with_suffix(".respool")
    spool = Spool(fresh, lambda n: key if n == KEY_SIZE else header, size=size)
    try:
        spool.put_source(source)
        digest = spool.finish()[1]
        with open(path, "rb") as old, open(fresh, "rb") as new:
            while before := old.read(PIECE):
                if new.read(len(before)) != before:
                    fresh.unlink()
                    return None
    except (AttachmentError, OSError):
        spool.discard()
        return None
    os.replace(fresh, path)
    return digest


def spool_digest(path: Path, padded: int) -> bytes | None:
    """The SHA-256 of a complete spool (``padded`` bytes long), else ``None``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
            size += len(piece)
    return digest.digest() if size == padded else None


class DownloadSink:
    """Receives a download (see the module's docstring). ``have``: bytes of padded ciphertext
    held (in the part file, hashed, and decrypted up to the ciphertext's end)."""

    def __init__(self, pointer: AttachmentPointer, part: Path, target: Path) -> None:
        self._pointer = pointer
        self.part = part
        self.have = 0
        self._digest = hashlib.sha256()
        self._decryptor = AttachmentDecryptor(pointer.key)
        self._ciphertext_left = pointer.ciphertext_size
        fd, tmp_name = tempfile.mkstemp(prefix=".saltline-", suffix=".tmp", dir=target.parent)
        self.tmp = Path(tmp_name)
        self._plain: BinaryIO = os.fdopen(fd, "wb")
        try:
            self._part: BinaryIO = _open_part(part)
            if os.fstat(self._part.fileno()).st_size > pointer.padded_size:
                self._part.truncate(0)  # not a part of this attachment: start again
            while piece := self._part.read(PIECE):  # a part left by an earlier call: take it in again
                self._take(piece)
        except BaseException:
            self.close(keep_part=True)
            raise

    def _take(self, data: bytes) -> None:
        self._digest.update(data)
        self.have += len(data)
        if self._ciphertext_left:
            ciphertext = data[: self._ciphertext_left]
            self._ciphertext_left -= len(ciphertext)
            self._plain.write(self._decryptor.update(ciphertext))

    def absorb(self, data: bytes) -> None:
        """Append downloaded bytes (the caller checked they stay within the padded size)."""
        self._part.write(data)
        self._take(data)

    def flush(self) -> None:
        self._part.flush()

    def finish(self, target: Path, *, keep_existing: bool = False) -> Path:
        """Verify the whole blob and the stream's end, then rename the plaintext to ``target``
        (with ``keep_existing``, a directory destination: an existing file is never replaced, the
        first free ``name (n).ext`` is taken); returns the path."""
        if self.have != self._pointer.padded_size or self._digest.digest() != self._pointer.digest:
            raise AttachmentIntegrityError("the attachment does not match its digest (tampered or swapped)")
        self._plain.write(self._decryptor.finalize())
        self._plain.flush()
        os.fsync(self._plain.fileno())
        self._plain.close()
        if keep_existing:
            target = _reserve_free_name(target)
        os.replace(self.tmp, target)
        return target

    def close(self, *, keep_part: bool) -> None:
        """Close the files; drop the temporary plaintext (unless renamed) and, unless
        ``keep_part`` (a later call resumes from it), the part."""
        self._plain.close()
        if hasattr(self, "_part"):
            self._part.close()
        self.tmp.unlink(missing_ok=True)
        if not keep_part:
            self.part.unlink(missing_ok=True)


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
