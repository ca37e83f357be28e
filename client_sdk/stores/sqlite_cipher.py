"""Encryption at rest of :class:`~saltline.client_sdk.stores.sqlite.SqliteStore` (the format is described
in the module docstring of :mod:`saltline.client_sdk.stores.sqlite`): the row key, sealing and opening the
SECRET columns, lookup tags, and the key check value in the ``meta`` table.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence

from saltline.client_sdk.errors import StoreCorruptError, StoreKeyError, StoreVersionError
from saltline.crypto import primitives as p
from saltline.crypto.errors import DecryptionError

__all__ = ["KEY_SIZE", "Cipher", "KeyCheck", "derive_row_key", "setup_key", "write_key_check"]

KEY_SIZE = p.AEAD_KEY_SIZE  # 32
_SALT_SIZE = 16
_SEALED_VERSION = 1
_AD_PREFIX = b"saltline-store-v1"
_ROW_KEY_INFO = b"saltline store v1 row key"
_TAG_KEY_INFO = b"saltline store v1 lookup tag key"
_KEY_CHECK_PLAINTEXT = b"saltline store key check v1"
#: The key check of a store whose rows are integrity-protected (saltline.client_sdk.stores.integrity): once
#: written, a missing integrity state is tampering, never "an old store to migrate".
_KEY_CHECK_V2 = b"saltline store key check v2 integrity"
ENC_NONE = b"none"
ENC_XCHACHA = b"xchacha20poly1305-v1"


def _lp(part: str | bytes) -> bytes:
    raw = part.encode("utf-8") if isinstance(part, str) else bytes(part)
    return struct.pack(">H", len(raw)) + raw


def _ad(table: str, column: str, row: Sequence[str | bytes]) -> bytes:
    return _AD_PREFIX + _lp(table) + _lp(column) + b"".join(_lp(part) for part in row)


class Cipher:
    """Seals the SECRET columns (or passes them through when the store has no key)."""

    def __init__(self, row_key: bytes | None) -> None:
        self._key = row_key
        self._tag_key = (
            None if row_key is None else p.hkdf_sha256(row_key, salt=b"", info=_TAG_KEY_INFO, length=KEY_SIZE)
        )

    def tag(self, value: bytes, table: str, column: str) -> bytes:
        """A deterministic stand-in for ``value`` in a column the store looks rows up by: in an
        encrypted store ``HMAC-SHA256(tag_key, AD(table, column) || value)`` (``tag_key`` derived
        from the row key), so the file does not reveal it; in a plain store ``value`` itself."""
        if self._tag_key is None:
            return bytes(value)
        return p.hmac_sha256(self._tag_key, _ad(table, column, ()) + bytes(value))

    @property
    def encrypted(self) -> bool:
        return self._key is not None

    def seal(self, plaintext: bytes, table: str, column: str, *row: str | bytes) -> bytes:
        if self._key is None:
            return plaintext
        nonce = p.random_bytes(p.AEAD_NONCE_SIZE)
        return (
            bytes([_SEALED_VERSION])
            + nonce
            + p.aead_encrypt(self._key, nonce, plaintext, _ad(table, column, row))
        )

    def open(self, sealed: bytes, table: str, column: str, *row: str | bytes) -> bytes:
        sealed = bytes(sealed)
        if self._key is None:
            return sealed
        header = 1 + p.AEAD_NONCE_SIZE
        if len(sealed) < header + p.AEAD_TAG_SIZE or sealed[0] != _SEALED_VERSION:
            raise StoreCorruptError(f"{table}.{column}: malformed encrypted value; the store file is damaged")
        try:
            return p.aead_decrypt(self._key, sealed[1:header], sealed[header:], _ad(table, column, row))
        except DecryptionError as exc:
            raise StoreCorruptError(
                f"{table}.{column}: an encrypted value failed authentication; the store file was "
                "modified or damaged (restore it from a backup, or link this device again)"
            ) from exc

    def seal_opt(self, plaintext: bytes | None, table: str, column: str, *row: str | bytes) -> bytes | None:
        return None if plaintext is None else self.seal(plaintext, table, column, *row)

    def open_opt(self, sealed: bytes | None, table: str, column: str, *row: str | bytes) -> bytes | None:
        return None if sealed is None else self.open(sealed, table, column, *row)


def derive_row_key(key: bytes, salt: bytes) -> bytes:
    return p.hkdf_sha256(key, salt=salt, info=_ROW_KEY_INFO, length=KEY_SIZE)


def _meta(conn: sqlite3.Connection, name: str) -> bytes | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])


class KeyCheck:
    """What :func:`setup_key` found: the row key (``None``: a plain store), whether the store was
    created by this open, and whether its key check is the version-1 one (a store from before
    integrity protection)."""

    __slots__ = ("created", "legacy", "row_key")

    def __init__(self, row_key: bytes | None, *, created: bool, legacy: bool) -> None:
        self.row_key = row_key
        self.created = created
        self.legacy = legacy


def _key_check_value(row_key: bytes, plaintext: bytes) -> bytes:
    nonce = p.random_bytes(p.AEAD_NONCE_SIZE)
    return nonce + p.aead_encrypt(row_key, nonce, plaintext, _ad("meta", "key_check", ()))


def write_key_check(conn: sqlite3.Connection, row_key: bytes) -> None:
    """Replace the key check by the version-2 one (inside the caller's transaction)."""
    conn.execute(
        "UPDATE meta SET value = ? WHERE name = 'key_check'", (_key_check_value(row_key, _KEY_CHECK_V2),)
    )


def setup_key(conn: sqlite3.Connection, path: str, key: bytes | None, *, integrity: bool = True) -> KeyCheck:
    """Check ``key`` against the store (or set the store's encryption up on first open, with the
    version-2 key check if ``integrity``); return the row key and what was found."""
    check_ad = _ad("meta", "key_check", ())
    created = False
    encryption = _meta(conn, "encryption")
    if encryption is None:  # a new store: its mode is decided now, once
        conn.execute("BEGIN IMMEDIATE")
        try:
            if key is None:
                conn.execute("INSERT INTO meta (name, value) VALUES ('encryption', ?)", (ENC_NONE,))
            else:
                new_salt = p.random_bytes(_SALT_SIZE)
                new_check = _key_check_value(
                    derive_row_key(key, new_salt), _KEY_CHECK_V2 if integrity else _KEY_CHECK_PLAINTEXT
                )
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("encryption", ENC_XCHACHA), ("salt", new_salt), ("key_check", new_check)],
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        encryption = ENC_NONE if key is None else ENC_XCHACHA
        created = True
    if encryption == ENC_NONE:
        if key is not None:
            raise StoreKeyError(
                f"the store {path} is not encrypted but a key was given; open it without a key "
                "(an existing plain store cannot be encrypted in place)"
            )
        return KeyCheck(None, created=created, legacy=False)
    if encryption != ENC_XCHACHA:
        raise StoreVersionError(
            f"the store {path} uses an unknown encryption {encryption!r}; upgrade the SDK"
        )
    if key is None:
        raise StoreKeyError(f"the store {path} is encrypted; open it with its key")
    salt, check = _meta(conn, "salt"), _meta(conn, "key_check")
    if salt is None or check is None or len(check) < p.AEAD_NONCE_SIZE + p.AEAD_TAG_SIZE:
        raise StoreCorruptError(f"the store {path} lacks its key check value; the file is damaged")
    row_key = derive_row_key(key, salt)
    plain: bytes | None
    try:
        plain = p.aead_decrypt(row_key, check[: p.AEAD_NONCE_SIZE], check[p.AEAD_NONCE_SIZE :], check_ad)
    except DecryptionError:
        plain = None
    if plain is None or not (
        p.constant_time_equal(plain, _KEY_CHECK_PLAINTEXT) or p.constant_time_equal(plain, _KEY_CHECK_V2)
    ):
        raise StoreKeyError(
            f"wrong key for the store {path}: the key does not match the one it was created with"
        )
    return KeyCheck(row_key, created=created, legacy=p.constant_time_equal(plain, _KEY_CHECK_PLAINTEXT))
