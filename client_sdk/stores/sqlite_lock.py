"""Process-level locking of a :class:`~saltline.client_sdk.stores.sqlite.SqliteStore` file: an exclusive,
non-blocking ``fcntl.flock`` on ``<path>.lock`` (POSIX only), plus a registry of the paths this
process has open."""

from __future__ import annotations

import fcntl
import os
import threading

from saltline.client_sdk.errors import StoreLockedError

__all__ = ["lock", "unlock"]

_OPEN_PATHS: set[str] = set()
_OPEN_PATHS_GUARD = threading.Lock()


def lock(path: str) -> int:
    """Open ``<path>.lock`` and take an exclusive, non-blocking flock on it; return the fd."""
    lock_path = path + ".lock"
    with _OPEN_PATHS_GUARD:
        if path in _OPEN_PATHS:
            raise StoreLockedError(
                f"the store {path} is already open in this process; close the other SqliteStore "
                "(or client) on it first, or use a different store path per device profile"
            )
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                if text:
                    holder = f" (held by process {text})"
            except OSError:
                pass
            os.close(fd)
            raise StoreLockedError(
                f"the store {path} is in use by another process{holder}; two clients on one store "
                f"would corrupt its ratchet state. Stop the other Saltline client using this store "
                f"(or use a different profile/store path) and try again. Lock file: {lock_path}"
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass  # the pid is only for the error message
        _OPEN_PATHS.add(path)
        return fd


def unlock(path: str, fd: int) -> None:
    with _OPEN_PATHS_GUARD:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _OPEN_PATHS.discard(path)
