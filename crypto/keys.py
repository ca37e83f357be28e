"""Typed key classes: tier two of the package, above :mod:`saltline.crypto.primitives`.

Every key has a role (its :class:`KeyKind`), a fixed ``SIZE``, ``__bytes__`` (the raw
key), constant-time equality, and a canonical, versioned encoding::

    public key  = version (1 byte, 0x01) || kind (1 byte) || raw key (32 bytes)      34 bytes
    prekey      = version || kind || key id (uint32, big endian) || X25519 key (32)
                  || Ed25519 signature by the device signing key (64)             102 bytes

Signatures are always over a domain-separated message (see :func:`signing_input`), so a
signature made for one purpose (a device list) can never be replayed as another (a prekey,
a login challenge). Private keys never appear in ``repr`` and are serialised only through
:mod:`saltline.crypto.private_state`.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
from enum import Enum, IntEnum
from typing import ClassVar, Self

from saltline.crypto import primitives as p
from saltline.crypto.errors import EncodingError, InvalidKeyError, UsageError

ENCODING_VERSION = 1
PUBLIC_KEY_ENCODED_SIZE = 34
PREKEY_ENCODED_SIZE = 1 + 1 + 4 + 32 + 64


class KeyKind(IntEnum):
    """The role of a key; the second byte of every encoded key."""

    ACCOUNT = 0x01  # Ed25519, one per account, signs device lists
    DEVICE_SIGNING = 0x02  # Ed25519, one per device, signs prekeys and login challenges
    DEVICE_DH = 0x03  # X25519, one per device, the identity key of X3DH
    SIGNED_PREKEY = 0x04  # X25519, rotated
    ONE_TIME_PREKEY = 0x05  # X25519, used at most once
    LAST_RESORT_PREKEY = 0x06  # X25519, reused only when one-time prekeys run out
    EPHEMERAL = 0x07  # X25519, X3DH ephemeral and ratchet keys


class SigningContext(Enum):
    """Purposes an Ed25519 signature can be made for; each gets its own prefix."""

    DEVICE_LIST = b"device-list"
    PREKEY = b"prekey"
    LOGIN_CHALLENGE = b"login-challenge"
    LINK = b"link"
    DEVICE_BINDING = b"device-binding"  # a device consents to belong to an account (device list)
    ACCOUNT_KEY_SUCCESSION = b"account-key-succession"  # an account key names its successor


def signing_input(context: SigningContext, message: bytes) -> bytes:
    """The bytes actually signed: ``"saltline/v1/" || context || 0x00 || message``."""
    return b"saltline/v1/" + context.value + b"\x00" + bytes(message)


def b64encode(data: bytes) -> str:
    """URL-safe base64 without padding: the text form of every binary field on the wire."""
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of :func:`b64encode`; strict (rejects padding, whitespace, other alphabets and
    non-canonical trailing bits). Short strings (ids and keys, which repeat on every message) are
    remembered: the result is a pure function of the text."""
    if not isinstance(text, str):
        raise EncodingError("expected an ASCII base64url string")
    if len(text) <= _SHORT:
        return _b64decode_short(text)
    return _b64decode(text)


_SHORT = 64
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@functools.lru_cache(maxsize=8192)
def _b64decode_short(text: str) -> bytes:
    return _b64decode(text)


def _b64decode(text: str) -> bytes:
    if _B64URL.fullmatch(text) is None:
        raise EncodingError("expected unpadded base64url (ASCII letters, digits, '-' and '_')")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise EncodingError("invalid base64url") from exc
    if b64encode(data) != text:
        raise EncodingError("non-canonical base64url")
    return data


class _Key:
    SIZE: ClassVar[int] = 32
    KIND: ClassVar[KeyKind]
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise InvalidKeyError(f"{type(self).__name__} needs bytes, got {type(raw).__name__}")
        if len(raw) != self.SIZE:
            raise InvalidKeyError(f"{type(self).__name__} must be {self.SIZE} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    def __bytes__(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Key)
        return p.constant_time_equal(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, p.sha256(self._raw)))


class PublicKey(_Key):
    """A public key with a role. Subclasses fix ``KIND``."""

    __slots__ = ()

    def encode(self) -> bytes:
        return bytes([ENCODING_VERSION, self.KIND]) + self._raw

    @classmethod
    def decode(cls, data: bytes) -> Self:
        data = bytes(data)
        if len(data) != PUBLIC_KEY_ENCODED_SIZE:
            raise EncodingError(
                f"encoded public key must be {PUBLIC_KEY_ENCODED_SIZE} bytes, got {len(data)}"
            )
        if data[0] != ENCODING_VERSION:
            raise EncodingError(f"unsupported key encoding version {data[0]}")
        if data[1] != cls.KIND:
            raise EncodingError(f"expected a {cls.KIND.name} key, got kind {data[1]:#04x}")
        return cls(data[2:])

    def to_b64(self) -> str:
        return b64encode(self.encode())

    @classmethod
    def from_b64(cls, text: str) -> Self:
        return cls.decode(b64decode(text))

    def fingerprint(self) -> str:
        """A short, non-secret label for logs and UIs (first 8 bytes of SHA-256, hex)."""
        return p.sha256(self.encode())[:8].hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint()})"


class Ed25519PublicKey(PublicKey):
    __slots__ = ()

    def verify(self, context: SigningContext, message: bytes, signature: bytes) -> None:
        """Raise :class:`~saltline.crypto.errors.SignatureError` unless ``signature`` signs
        ``message`` for ``context`` under this key."""
        p.ed25519_verify(self._raw, signing_input(context, message), signature)


class X25519PublicKey(PublicKey):
    """An X25519 public key; low-order points are refused at construction."""

    __slots__ = ()

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        p.check_x25519_public(self._raw)


class AccountPublicKey(Ed25519PublicKey):
    KIND = KeyKind.ACCOUNT
    __slots__ = ()


class DeviceSigningPublicKey(Ed25519PublicKey):
    KIND = KeyKind.DEVICE_SIGNING
    __slots__ = ()


class DeviceDHPublicKey(X25519PublicKey):
    KIND = KeyKind.DEVICE_DH
    __slots__ = ()


class EphemeralPublicKey(X25519PublicKey):
    KIND = KeyKind.EPHEMERAL
    __slots__ = ()


class PrivateKey(_Key):
    """A secret key. ``repr`` never shows it; equality is constant-time."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"


class Ed25519PrivateKey(PrivateKey):
    """An Ed25519 key held as its 32-byte RFC 8032 seed."""

    PUBLIC: ClassVar[type[Ed25519PublicKey]]
    __slots__ = ("_public",)

    def __init__(self, seed: bytes) -> None:
        super().__init__(seed)
        self._public = self.PUBLIC(p.ed25519_public(self._raw))

    @classmethod
    def generate(cls, rng: p.Rng = p.random_bytes) -> Self:
        return cls(rng(32))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, context: SigningContext, message: bytes) -> bytes:
        return p.ed25519_sign(self._raw, signing_input(context, message))


class X25519PrivateKey(PrivateKey):
    """An X25519 private scalar (clamped by X25519 itself when used)."""

    PUBLIC: ClassVar[type[X25519PublicKey]]
    __slots__ = ("_public",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._public = self.PUBLIC(p.x25519_public(self._raw))

    @classmethod
    def generate(cls, rng: p.Rng = p.random_bytes) -> Self:
        return cls(rng(32))

    @property
    def public_key(self) -> X25519PublicKey:
        return self._public

    def dh(self, peer: X25519PublicKey) -> bytes:
        """X25519 with ``peer``; raises :class:`InvalidKeyError` for an all-zero result."""
        return p.x25519(self._raw, bytes(peer))


class AccountKey(Ed25519PrivateKey):
    """The account's Ed25519 key: signs the device list. Held by every linked device."""

    KIND = KeyKind.ACCOUNT
    PUBLIC = AccountPublicKey
    __slots__ = ()

    @property
    def public_key(self) -> AccountPublicKey:
        assert isinstance(self._public, AccountPublicKey)
        return self._public


class DeviceSigningKey(Ed25519PrivateKey):
    """A device's Ed25519 key: signs its prekeys and login challenges."""

    KIND = KeyKind.DEVICE_SIGNING
    PUBLIC = DeviceSigningPublicKey
    __slots__ = ()

    @property
    def public_key(self) -> DeviceSigningPublicKey:
        assert isinstance(self._public, DeviceSigningPublicKey)
        return self._public


class DeviceDHKey(X25519PrivateKey):
    """A device's long-term X25519 key: its identity in X3DH."""

    KIND = KeyKind.DEVICE_DH
    PUBLIC = DeviceDHPublicKey
    __slots__ = ()

    @property
    def public_key(self) -> DeviceDHPublicKey:
        assert isinstance(self._public, DeviceDHPublicKey)
        return self._public


class EphemeralKey(X25519PrivateKey):
    """A fresh X25519 key: the X3DH ephemeral key and every ratchet key."""

    KIND = KeyKind.EPHEMERAL
    PUBLIC = EphemeralPublicKey
    __slots__ = ()

    @property
    def public_key(self) -> EphemeralPublicKey:
        assert isinstance(self._public, EphemeralPublicKey)
        return self._public


PREKEY_KINDS = (KeyKind.SIGNED_PREKEY, KeyKind.ONE_TIME_PREKEY, KeyKind.LAST_RESORT_PREKEY)
MAX_PREKEY_ID = 2**32 - 1


class PreKeyPublic:
    """The public half of a prekey as published: kind, id, X25519 key, and the signature of
    the owning device's signing key over ``version || kind || id || key``."""

    __slots__ = ("key", "key_id", "kind", "signature")
    SIZE: ClassVar[int] = PREKEY_ENCODED_SIZE

    def __init__(self, kind: KeyKind, key_id: int, key: bytes, signature: bytes) -> None:
        if kind not in PREKEY_KINDS:
            raise EncodingError(f"{kind!r} is not a prekey kind")
        if not 0 <= key_id <= MAX_PREKEY_ID:
            raise EncodingError("prekey id must fit in 32 bits")
        if len(signature) != p.ED25519_SIGNATURE_SIZE:
            raise EncodingError("prekey signature must be 64 bytes")
        p.check_x25519_public(key)
        self.kind = KeyKind(kind)
        self.key_id = key_id
        self.key = bytes(key)
        self.signature = bytes(signature)

    @staticmethod
    def signed_part(kind: KeyKind, key_id: int, key: bytes) -> bytes:
        return bytes([ENCODING_VERSION, kind]) + struct.pack(">I", key_id) + bytes(key)

    def encode(self) -> bytes:
        return self.signed_part(self.kind, self.key_id, self.key) + self.signature

    @classmethod
    def decode(cls, data: bytes) -> PreKeyPublic:
        data = bytes(data)
        if len(data) != PREKEY_ENCODED_SIZE:
            raise EncodingError(f"encoded prekey must be {PREKEY_ENCODED_SIZE} bytes, got {len(data)}")
        if data[0] != ENCODING_VERSION:
            raise EncodingError(f"unsupported prekey encoding version {data[0]}")
        if data[1] not in PREKEY_KINDS:
            raise EncodingError(f"kind {data[1]:#04x} is not a prekey kind")
        (key_id,) = struct.unpack(">I", data[2:6])
        return cls(KeyKind(data[1]), key_id, data[6:38], data[38:])

    def to_b64(self) -> str:
        return b64encode(self.encode())

    @classmethod
    def from_b64(cls, text: str) -> PreKeyPublic:
        return cls.decode(b64decode(text))

    def verify(self, signer: DeviceSigningPublicKey) -> None:
        """Raise :class:`~saltline.crypto.errors.SignatureError` unless ``signer`` signed this prekey."""
        part = self.signed_part(self.kind, self.key_id, self.key)
        signer.verify(SigningContext.PREKEY, part, self.signature)

    @property
    def public_key(self) -> X25519PublicKey:
        return _PREKEY_PUBLIC[self.kind](self.key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PreKeyPublic):
            return NotImplemented
        return p.constant_time_equal(self.encode(), other.encode())

    def __hash__(self) -> int:
        return hash(self.encode())

    def __repr__(self) -> str:
        return f"PreKeyPublic({self.kind.name}, id={self.key_id})"


class SignedPreKeyPublicKey(X25519PublicKey):
    KIND = KeyKind.SIGNED_PREKEY
    __slots__ = ()


class OneTimePreKeyPublicKey(X25519PublicKey):
    KIND = KeyKind.ONE_TIME_PREKEY
    __slots__ = ()


class LastResortPreKeyPublicKey(X25519PublicKey):
    KIND = KeyKind.LAST_RESORT_PREKEY
    __slots__ = ()


_PREKEY_PUBLIC: dict[KeyKind, type[X25519PublicKey]] = {
    KeyKind.SIGNED_PREKEY: SignedPreKeyPublicKey,
    KeyKind.ONE_TIME_PREKEY: OneTimePreKeyPublicKey,
    KeyKind.LAST_RESORT_PREKEY: LastResortPreKeyPublicKey,
}


class PreKey(X25519PrivateKey):
    """A prekey's private half with its id. Subclasses fix the kind."""

    __slots__ = ("key_id",)

    def __init__(self, key_id: int, raw: bytes) -> None:
        if not 0 <= key_id <= MAX_PREKEY_ID:
            raise EncodingError("prekey id must fit in 32 bits")
        super().__init__(raw)
        self.key_id = key_id

    @classmethod
    def generate_with_id(cls, key_id: int, rng: p.Rng = p.random_bytes) -> Self:
        return cls(key_id, rng(32))

    @classmethod
    def generate(cls, rng: p.Rng = p.random_bytes) -> Self:
        raise UsageError("prekeys need an id: use generate_with_id")

    def __eq__(self, other: object) -> bool:
        """Equal when of the same kind (class) with the same id and the same key (the key is
        compared in constant time)."""
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, PreKey)
        same_key = p.constant_time_equal(self._raw, other._raw)
        return same_key and self.key_id == other.key_id

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key_id, p.sha256(self._raw)))

    def signed_public(self, signer: DeviceSigningKey) -> PreKeyPublic:
        """The publishable half, signed by the owning device's signing key."""
        part = PreKeyPublic.signed_part(self.KIND, self.key_id, bytes(self._public))
        signature = signer.sign(SigningContext.PREKEY, part)
        return PreKeyPublic(self.KIND, self.key_id, bytes(self._public), signature)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.key_id}, <secret>)"


class SignedPreKey(PreKey):
    """Medium-term prekey, rotated by the device (see the spec for the period)."""

    KIND = KeyKind.SIGNED_PREKEY
    PUBLIC = SignedPreKeyPublicKey
    __slots__ = ()


class OneTimePreKey(PreKey):
    """Single-use prekey: the responder deletes it after its first successful use."""

    KIND = KeyKind.ONE_TIME_PREKEY
    PUBLIC = OneTimePreKeyPublicKey
    __slots__ = ()


class LastResortPreKey(PreKey):
    """Handed out when no one-time prekey is left, so a device is never unreachable."""

    KIND = KeyKind.LAST_RESORT_PREKEY
    PUBLIC = LastResortPreKeyPublicKey
    __slots__ = ()
