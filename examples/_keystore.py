"""What the examples share: an encrypted store whose key sits beside it (as the ``saltline`` CLI
keeps it), the store's write counter to detect a rollback of the whole file, and a password read
from ``SALTLINE_PASSWORD`` or a prompt, never from the command line (``ps`` shows arguments)."""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
from pathlib import Path

from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.stores.sqlite import SqliteStore

KEY_SIZE = 32
PASSWORD_ENV = "SALTLINE_PASSWORD"  # noqa: S105 - the name of a variable, not a password


def _key(path: Path) -> bytes:
    """The 32-byte store key in ``path`` (0600), created the first time, never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_SIZE:
            raise UsageError(f"{path} is not a {KEY_SIZE}-byte store key") from None
        return key
    key = secrets.token_bytes(KEY_SIZE)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def open_store(profile: Path) -> SqliteStore:
    """The profile's encrypted store (``store.db``, key ``store.key``, counter ``store.counter``)."""
    profile.mkdir(mode=0o700, parents=True, exist_ok=True)
    counter = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        counter = int((profile / "store.counter").read_text(encoding="ascii"))
    return SqliteStore.open(profile / "store.db", key=_key(profile / "store.key"), min_write_counter=counter)


def close_store(store: SqliteStore, profile: Path) -> None:
    """Close the store and keep its write counter (a later open refuses an older file)."""
    counter = store.write_counter
    store.close()
    tmp = profile / "store.counter.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(str(counter))
    tmp.replace(profile / "store.counter")


def password() -> str:
    """From ``SALTLINE_PASSWORD``, else asked on the terminal."""
    return os.environ.get(PASSWORD_ENV) or getpass.getpass("password: ")
