"""The byte format of signed device lists (docs/protocol/device-lists.md § 2-3): usernames,
device entries and their binding signatures, account-key successions, lists and signed lists.
Verification and the builders are in :mod:`saltline.crypto.device_list`, which re-exports all of this."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from saltline.crypto import primitives as p
from saltline.crypto.errors import (
    EncodingError,
    InvalidKeyError,
    SignatureError,
    SuccessionError,
    UnboundDeviceError,
)
from saltline.crypto.keys import (
    AccountPublicKey,
    DeviceDHPublicKey,
    DeviceSigningKey,
    DeviceSigningPublicKey,
    SigningContext,
    b64decode,
    b64encode,
)

__all__ = [  # re-exported by saltline.crypto.device_list
    "DEVICE_ENTRY_SIZE",
    "DEVICE_ID_SIZE",
    "FORMAT_VERSION",
    "MAX_DEVICES",
    "MAX_USERNAME_BYTES",
    "MIN_USERNAME_BYTES",
    "DeviceEntry",
    "DeviceList",
    "SignedDeviceList",
    "Succession",
    "bind_device",
    "binding_message",
    "normalize_username",
    "succession_message",
]

FORMAT_VERSION = 2
DEVICE_ID_SIZE = 16
HASH_SIZE = 32
MIN_USERNAME_BYTES = 3
MAX_USERNAME_BYTES = 32
MAX_DEVICES = 1000
MAX_U64 = 2**64 - 1
DEVICE_ENTRY_SIZE = DEVICE_ID_SIZE + 32 + 32 + 8 + 8 + p.ED25519_SIGNATURE_SIZE  # 160
SUCCESSION_SIZE = 32 + p.ED25519_SIGNATURE_SIZE  # 96
ZERO_HASH = bytes(HASH_SIZE)

# format, version, previous_hash, root_pk, account_pk, username_len
_HEADER = struct.Struct(">BQ32s32s32sB")
_COUNT = struct.Struct(">H")
_ENTRY = struct.Struct(">16s32s32sQQ64s")
_SUCCESSION = struct.Struct(">32s64s")


# -- usernames ---------------------------------------------------------------------------


_USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")


def normalize_username(username: str) -> str:
    """The canonical form of a username (the server's rule): ASCII letters lower-cased; the
    result must be 3..32 characters of ``[a-z0-9_.-]``.

    Raises :class:`EncodingError` for anything else (including any non-ASCII character), so that
    clients and server never disagree because of Unicode tables.
    """
    if not isinstance(username, str):
        raise EncodingError("username must be a str")
    if not username.isascii():
        raise EncodingError("username must be ASCII: 3-32 characters of a-z, 0-9, '_', '.', '-'")
    name = username.lower()
    if not _USERNAME.fullmatch(name):
        raise EncodingError("username must be 3-32 characters of a-z, 0-9, '_', '.', '-'")
    return name


def _decode_username(raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EncodingError("username is not ASCII") from exc
    if normalize_username(name) != name:
        raise EncodingError("username is not in normal form")
    return name


# -- device entries ------------------------------------------------------------------------


def binding_message(
    root: AccountPublicKey,
    device_id: bytes,
    signing_key: DeviceSigningPublicKey,
    dh_key: DeviceDHPublicKey,
    added_at: int,
    joined_version: int = 1,
) -> bytes:
    """What a device signs (under ``SigningContext.DEVICE_BINDING``) to join the account whose
    chain starts with the account key ``root``, at list version ``joined_version``:
    ``root_pk (32) || device_id (16) || signing_pk (32) || dh_pk (32) || added_at (u64 BE)
    || joined_version (u64 BE)`` (128 bytes, raw keys)."""
    if not isinstance(root, AccountPublicKey):
        raise EncodingError("root must be an AccountPublicKey")
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_SIZE:
        raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
    if not isinstance(signing_key, DeviceSigningPublicKey):
        raise EncodingError("signing_key must be a DeviceSigningPublicKey")
    if not isinstance(dh_key, DeviceDHPublicKey):
        raise EncodingError("dh_key must be a DeviceDHPublicKey")
    _check_u64(added_at, "added_at")
    _check_u64(joined_version, "joined_version")
    if joined_version < 1:
        raise EncodingError("joined_version must be at least 1")
    return (
        bytes(root)
        + device_id
        + bytes(signing_key)
        + bytes(dh_key)
        + struct.pack(">QQ", added_at, joined_version)
    )


def _check_u64(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U64:
        raise EncodingError(f"{name} must fit in 64 bits unsigned")


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One device of an account, with the device's own signature binding it to the account
    (its chain's root key) at the list version it joined."""

    device_id: bytes
    signing_key: DeviceSigningPublicKey
    dh_key: DeviceDHPublicKey
    added_at: int
    binding_signature: bytes
    joined_version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, bytes) or len(self.device_id) != DEVICE_ID_SIZE:
            raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
        if not isinstance(self.signing_key, DeviceSigningPublicKey):
            raise EncodingError("signing_key must be a DeviceSigningPublicKey")
        if not isinstance(self.dh_key, DeviceDHPublicKey):
            raise EncodingError("dh_key must be a DeviceDHPublicKey")
        _check_u64(self.added_at, "added_at")
        _check_u64(self.joined_version, "joined_version")
        if self.joined_version < 1:
            raise EncodingError("joined_version must be at least 1")
        if not isinstance(self.binding_signature, bytes) or len(self.binding_signature) != 64:
            raise EncodingError("binding signature must be 64 bytes")

    def encode(self) -> bytes:
        return _ENTRY.pack(
            self.device_id,
            bytes(self.signing_key),
            bytes(self.dh_key),
            self.added_at,
            self.joined_version,
            self.binding_signature,
        )

    @classmethod
    def decode(cls, data: bytes) -> DeviceEntry:
        data = bytes(data)
        if len(data) != DEVICE_ENTRY_SIZE:
            raise EncodingError(f"device entry must be {DEVICE_ENTRY_SIZE} bytes")
        device_id, signing, dh, added_at, joined, signature = _ENTRY.unpack(data)
        try:
            return cls(
                device_id, DeviceSigningPublicKey(signing), DeviceDHPublicKey(dh), added_at, signature, joined
            )
        except InvalidKeyError as exc:
            raise EncodingError("device entry holds an unusable key") from exc

    def verify_binding(self, root: AccountPublicKey) -> None:
        """Raise :class:`UnboundDeviceError` unless this device signed its membership of the
        account rooted at ``root`` (with this ``added_at`` and ``joined_version``)."""
        message = binding_message(
            root, self.device_id, self.signing_key, self.dh_key, self.added_at, self.joined_version
        )
        try:
            self.signing_key.verify(SigningContext.DEVICE_BINDING, message, self.binding_signature)
        except SignatureError as exc:
            raise UnboundDeviceError(f"device {self.device_id.hex()} is not bound to this account") from exc

    def __repr__(self) -> str:
        return (
            f"DeviceEntry({self.device_id.hex()}, {self.signing_key!r}, {self.dh_key!r}, "
            f"added_at={self.added_at}, joined_version={self.joined_version})"
        )


def bind_device(
    root: AccountPublicKey,
    device_id: bytes,
    signing_key: DeviceSigningKey,
    dh_key: DeviceDHPublicKey,
    added_at: int,
    joined_version: int = 1,
) -> DeviceEntry:
    """The entry a device creates for itself: its keys and its binding signature for the account
    rooted at ``root``, joining at list version ``joined_version``.

    Run on the device that owns ``signing_key`` (for a new device, once it knows the version it
    joins: the current version + 1).
    """
    if not isinstance(signing_key, DeviceSigningKey):
        raise EncodingError("signing_key must be a DeviceSigningKey")
    public = signing_key.public_key
    message = binding_message(root, device_id, public, dh_key, added_at, joined_version)
    return DeviceEntry(
        bytes(device_id),
        public,
        dh_key,
        added_at,
        signing_key.sign(SigningContext.DEVICE_BINDING, message),
        joined_version,
    )


def succession_message(
    previous_key: AccountPublicKey,
    new_key: AccountPublicKey,
    root: AccountPublicKey,
    version: int,
    previous_hash: bytes,
) -> bytes:
    """What the outgoing account key signs (under ``SigningContext.ACCOUNT_KEY_SUCCESSION``) to
    name its successor in list ``version``: ``previous_pk (32) || new_pk (32) || root_pk (32)
    || version (u64 BE) || previous_hash (32)`` (136 bytes)."""
    for key in (previous_key, new_key, root):
        if not isinstance(key, AccountPublicKey):
            raise EncodingError("succession keys must be AccountPublicKey")
    _check_u64(version, "version")
    if not isinstance(previous_hash, bytes) or len(previous_hash) != HASH_SIZE:
        raise EncodingError("previous hash must be 32 bytes")
    return bytes(previous_key) + bytes(new_key) + bytes(root) + struct.pack(">Q", version) + previous_hash


@dataclass(frozen=True, slots=True)
class Succession:
    """The outgoing account key's statement, carried in the first list signed by the new key."""

    previous_key: AccountPublicKey
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.previous_key, AccountPublicKey):
            raise EncodingError("previous_key must be an AccountPublicKey")
        if not isinstance(self.signature, bytes) or len(self.signature) != p.ED25519_SIGNATURE_SIZE:
            raise EncodingError("succession signature must be 64 bytes")

    def encode(self) -> bytes:
        return _SUCCESSION.pack(bytes(self.previous_key), self.signature)


# -- lists -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The content of a device list (what the account key signs). Devices are kept sorted by id.

    ``root_key`` is the account key of version 1 (devices bind to it, so bindings survive a key
    rotation); ``account_key`` is the key that signs this version; ``succession`` is present
    exactly in a list whose account key differs from its predecessor's.

    Constructing one checks the format invariants (sizes, ordering, uniqueness, version 1 iff
    zero previous hash, entries joined no later than this version) and raises
    :class:`EncodingError`; it does not check signatures.
    """

    version: int
    previous_hash: bytes
    account_key: AccountPublicKey
    username: str
    devices: tuple[DeviceEntry, ...]
    root_key: AccountPublicKey | None = None  # None: the account key (set on construction)
    succession: Succession | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= MAX_U64
        ):
            raise EncodingError("device list version must be in 1..2**64-1")
        if not isinstance(self.previous_hash, bytes) or len(self.previous_hash) != HASH_SIZE:
            raise EncodingError("previous hash must be 32 bytes")
        if (self.version == 1) != (self.previous_hash == ZERO_HASH):
            raise EncodingError("previous hash must be all zero exactly for version 1")
        if not isinstance(self.account_key, AccountPublicKey):
            raise EncodingError("account_key must be an AccountPublicKey")
        if self.root_key is None:
            object.__setattr__(self, "root_key", self.account_key)
        if not isinstance(self.root_key, AccountPublicKey):
            raise EncodingError("root_key must be an AccountPublicKey")
        if self.version == 1 and self.root_key != self.account_key:
            raise EncodingError("version 1 is signed by the root key")
        if self.succession is not None:
            if not isinstance(self.succession, Succession):
                raise EncodingError("succession must be a Succession")
            if self.version == 1:
                raise EncodingError("version 1 cannot carry a succession")
            if self.succession.previous_key == self.account_key:
                raise EncodingError("a succession names a new account key")
        if normalize_username(self.username) != self.username:
            raise EncodingError("username is not in normal form (use normalize_username)")
        if not isinstance(self.devices, tuple) or not all(isinstance(d, DeviceEntry) for d in self.devices):
            raise EncodingError("devices must be a tuple of DeviceEntry")
        if not 1 <= len(self.devices) <= MAX_DEVICES:
            raise EncodingError(f"a device list holds 1..{MAX_DEVICES} devices")
        for before, after in zip(self.devices, self.devices[1:], strict=False):
            if before.device_id == after.device_id:
                raise EncodingError(f"duplicate device id {after.device_id.hex()}")
            if before.device_id > after.device_id:
                raise EncodingError("devices are not sorted by device id")
        for entry in self.devices:
            if entry.joined_version > self.version:
                raise EncodingError(f"device {entry.device_id.hex()} joins after this version")

    @property
    def root(self) -> AccountPublicKey:
        assert self.root_key is not None  # set in __post_init__
        return self.root_key

    @classmethod
    def create(
        cls,
        version: int,
        previous_hash: bytes,
        account_key: AccountPublicKey,
        username: str,
        devices: Iterable[DeviceEntry],
        root_key: AccountPublicKey | None = None,
        succession: Succession | None = None,
    ) -> DeviceList:
        """Build a list, normalising the username and sorting the devices (duplicates still raise)."""
        name = normalize_username(username)
        ordered = tuple(sorted(devices, key=lambda d: d.device_id))
        return cls(version, bytes(previous_hash), account_key, name, ordered, root_key, succession)

    def encode(self) -> bytes:
        name = self.username.encode("utf-8")
        out = [
            _HEADER.pack(
                FORMAT_VERSION,
                self.version,
                self.previous_hash,
                bytes(self.root),
                bytes(self.account_key),
                len(name),
            ),
            name,
            _COUNT.pack(len(self.devices)),
        ]
        out.extend(d.encode() for d in self.devices)
        if self.succession is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01" + self.succession.encode())
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> DeviceList:
        """Parse the canonical encoding; anything else (including trailing bytes) raises EncodingError."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise EncodingError("device list is too short")
        fmt, version, previous_hash, root, account, name_len = _HEADER.unpack_from(data, 0)
        if fmt != FORMAT_VERSION:
            raise EncodingError(f"unsupported device list format {fmt}")
        offset = _HEADER.size
        if len(data) < offset + name_len + _COUNT.size:
            raise EncodingError("device list is too short")
        username = _decode_username(data[offset : offset + name_len])
        offset += name_len
        (count,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        end = offset + count * DEVICE_ENTRY_SIZE
        if len(data) not in (end + 1, end + 1 + SUCCESSION_SIZE) or data[end] not in (0, 1):
            raise EncodingError(
                "device list length does not match its device count (truncated or trailing data)"
            )
        if (data[end] == 1) != (len(data) == end + 1 + SUCCESSION_SIZE):
            raise EncodingError("device list succession flag does not match its length")
        devices = tuple(
            DeviceEntry.decode(data[offset + i * DEVICE_ENTRY_SIZE : offset + (i + 1) * DEVICE_ENTRY_SIZE])
            for i in range(count)
        )
        succession = None
        try:
            if data[end] == 1:
                previous, signature = _SUCCESSION.unpack_from(data, end + 1)
                succession = Succession(AccountPublicKey(previous), signature)
            return cls(
                version,
                previous_hash,
                AccountPublicKey(account),
                username,
                devices,
                AccountPublicKey(root),
                succession,
            )
        except InvalidKeyError as exc:
            raise EncodingError("device list holds an unusable account key") from exc

    def device(self, device_id: bytes) -> DeviceEntry | None:
        for entry in self.devices:
            if entry.device_id == device_id:
                return entry
        return None

    @property
    def device_ids(self) -> tuple[bytes, ...]:
        return tuple(d.device_id for d in self.devices)

    def verify_bindings(self) -> None:
        """Raise :class:`UnboundDeviceError` unless every device signed its binding to this
        account (its root key)."""
        for entry in self.devices:
            entry.verify_binding(self.root)

    def verify_succession(self) -> None:
        """Raise :class:`SuccessionError` unless the succession (if any) is signed by the
        previous account key over this list's new key, root, version and predecessor hash."""
        if self.succession is None:
            return
        message = succession_message(
            self.succession.previous_key, self.account_key, self.root, self.version, self.previous_hash
        )
        try:
            self.succession.previous_key.verify(
                SigningContext.ACCOUNT_KEY_SUCCESSION, message, self.succession.signature
            )
        except SignatureError as exc:
            raise SuccessionError("the account-key succession is not signed by the previous key") from exc


@dataclass(frozen=True, slots=True)
class SignedDeviceList:
    """A device list with the account key's signature, as sent on the wire.

    Holding one proves nothing: :func:`~saltline.crypto.device_list.verify` (or a
    :class:`~saltline.crypto.device_list.DeviceListChainVerifier`) decides whether to trust it.
    """

    content: DeviceList
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.content, DeviceList):
            raise EncodingError("content must be a DeviceList")
        if not isinstance(self.signature, bytes) or len(self.signature) != p.ED25519_SIGNATURE_SIZE:
            raise EncodingError("device list signature must be 64 bytes")

    @property
    def version(self) -> int:
        return self.content.version

    def encode(self) -> bytes:
        return self.content.encode() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> SignedDeviceList:
        data = bytes(data)
        if len(data) < p.ED25519_SIGNATURE_SIZE:
            raise EncodingError("signed device list is too short")
        split = len(data) - p.ED25519_SIGNATURE_SIZE
        return cls(DeviceList.decode(data[:split]), data[split:])

    def to_b64(self) -> str:
        return b64encode(self.encode())

    @classmethod
    def from_b64(cls, text: str) -> SignedDeviceList:
        return cls.decode(b64decode(text))

    def hash(self) -> bytes:
        """SHA-256 of the signed encoding: what the next list names as ``previous_hash``."""
        return p.sha256(self.encode())

    def __repr__(self) -> str:
        return (
            f"SignedDeviceList(v{self.content.version}, {self.content.username!r}, "
            f"{len(self.content.devices)} devices, hash={self.hash()[:8].hex()})"
        )
