"""Encryption at rest of :class:`~client_sdk.stores.sqlite.SqliteStore` (the format is described
in the module docstring of :mod:`client_sdk.stores.sqlite`): the row key, sealing and opening the
SECRET columns, lookup tags, and the key check value in the ``meta`` table.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Sequence

from client_sdk.errors import StoreCorruptError, StoreKeyError, StoreVersionError
from crypto import primitives as p
from crypto.errors import DecryptionError

__all__ = ["KEY_SIZE", "Cipher", "derive_row_key", "setup_key"]

KEY_SIZE = p.AEAD_KEY_SIZE  # 32
_SALT_SIZE = 16
_SEALED_VERSION = 1
_AD_PREFIX = b"saltline-store-v1"
_ROW_KEY_INFO = b"saltline store v1 row key"
_TAG_KEY_INFO = b"saltline store v1 lookup tag key"
_KEY_CHECK_PLAINTEXT = b"saltline store key check v1"
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


def setup_key(conn: sqlite3.Connection, path: str, key: bytes | None) -> bytes | None:
    """Check ``key`` against the store (or set the store's encryption up on first open); return
    the row key, or ``None`` for a plain store."""
    check_ad = _ad("meta", "key_check", ())
    encryption = _meta(conn, "encryption")
    if encryption is None:  # a new store: its mode is decided now, once
        conn.execute("BEGIN IMMEDIATE")
        try:
            if key is None:
                conn.execute("INSERT INTO meta (name, value) VALUES ('encryption', ?)", (ENC_NONE,))
            else:
                new_salt = p.random_bytes(_SALT_SIZE)
                nonce = p.random_bytes(p.AEAD_NONCE_SIZE)
                new_check = nonce + p.aead_encrypt(
                    derive_row_key(key, new_salt), nonce, _KEY_CHECK_PLAINTEXT, check_ad
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
    if encryption == ENC_NONE:
        if key is not None:
            raise StoreKeyError(
                f"the store {path} is not encrypted but a key was given; open it without a key "
                "(an existing plain store cannot be encrypted in place)"
            )
        return None
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
    if plain is None or not p.constant_time_equal(plain, _KEY_CHECK_PLAINTEXT):
        raise StoreKeyError(
            f"wrong key for the store {path}: the key does not match the one it was created with"
        )
    return row_key
