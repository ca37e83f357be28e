"""Signed device lists: which devices belong to an account (docs/protocol/device-lists.md).

An account's Ed25519 account key signs the list of its devices. Versions only go up and
each list names the SHA-256 hash of its predecessor, so a server can neither add a device
nor roll the list back without every client noticing. Each device entry also carries a
*binding signature* made by the device's own signing key: the device consented to belong
to this account, so a holder of the account key cannot attach someone else's device keys.

Encodings (all integers big endian; ``||`` is concatenation; no field is optional)::

    device entry   = device_id (16) || signing_pk (32) || dh_pk (32) || added_at (u64)
                     || binding_sig (64)                                          152 bytes
    binding input  = signing_input(DEVICE_BINDING,
                         account_pk (32) || device_id (16) || signing_pk (32) || dh_pk (32)
                         || added_at (u64))                                       120 bytes
    device list    = format (u8, 0x01) || version (u64, >= 1) || previous_hash (32)
                     || account_pk (32) || username_len (u8, 3..32) || username (ASCII)
                     || device_count (u16, 1..MAX_DEVICES) || entries sorted by device_id
    signed list    = device list || signature (64)
                     signature = Ed25519(account key, signing_input(DEVICE_LIST, device list))
    list hash      = SHA-256(signed list)         (named as previous_hash by the next list)
    text form      = base64url, unpadded, of the signed list

Keys are raw 32-byte keys (their role is fixed by their position). ``previous_hash`` is 32
zero bytes exactly when ``version == 1``. Device ids are unique and strictly ascending;
the username is in :func:`normalize_username` form (3..32 characters of ``[a-z0-9_.-]``, the
server's rule). A parser rejects anything else, including trailing bytes, so every list has
exactly one encoding.

The binding signature covers ``added_at`` too, so a holder of the account key cannot change
when a device says it joined. A device list never changes its username: a successor naming
another username than its predecessor is refused (:class:`UsernameMismatchError`), and
:func:`verify` / :class:`DeviceListChainVerifier` can pin the username the caller looked up.

Verification needs only public keys: :func:`verify` and :class:`DeviceListChainVerifier`
are what a server uses. The builders (:func:`first`, :func:`successor`, ...) take an
:class:`~crypto.keys.AccountKey`, and :func:`bind_device` a device's signing key.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crypto import primitives as p
from crypto.errors import (
    ChainBreakError,
    DeviceListError,
    DeviceListSignatureError,
    EncodingError,
    ForkError,
    InvalidKeyError,
    RollbackError,
    SignatureError,
    UnboundDeviceError,
    UnknownSignerError,
    UsernameMismatchError,
)
from crypto.keys import (
    AccountKey,
    AccountPublicKey,
    DeviceDHPublicKey,
    DeviceSigningKey,
    DeviceSigningPublicKey,
    SigningContext,
    b64decode,
    b64encode,
)

__all__ = [
    "DEVICE_ENTRY_SIZE",
    "DEVICE_ID_SIZE",
    "FORMAT_VERSION",
    "MAX_DEVICES",
    "MAX_USERNAME_BYTES",
    "MIN_USERNAME_BYTES",
    "DeviceEntry",
    "DeviceList",
    "DeviceListChainVerifier",
    "SignedDeviceList",
    "bind_device",
    "binding_message",
    "check_successor",
    "first",
    "normalize_username",
    "sign",
    "successor",
    "verify",
    "with_device_added",
    "with_device_removed",
]

FORMAT_VERSION = 1
DEVICE_ID_SIZE = 16
HASH_SIZE = 32
MIN_USERNAME_BYTES = 3
MAX_USERNAME_BYTES = 32
MAX_DEVICES = 1000
MAX_U64 = 2**64 - 1
DEVICE_ENTRY_SIZE = DEVICE_ID_SIZE + 32 + 32 + 8 + p.ED25519_SIGNATURE_SIZE  # 152
ZERO_HASH = bytes(HASH_SIZE)

_HEADER = struct.Struct(">BQ32s32sB")  # format, version, previous_hash, account_pk, username_len
_COUNT = struct.Struct(">H")
_ENTRY = struct.Struct(">16s32s32sQ64s")


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
    account: AccountPublicKey,
    device_id: bytes,
    signing_key: DeviceSigningPublicKey,
    dh_key: DeviceDHPublicKey,
    added_at: int,
) -> bytes:
    """What a device signs (under ``SigningContext.DEVICE_BINDING``) to join ``account``:
    ``account_pk (32) || device_id (16) || signing_pk (32) || dh_pk (32) || added_at (u64 BE)``
    (120 bytes, raw keys)."""
    if not isinstance(account, AccountPublicKey):
        raise EncodingError("account must be an AccountPublicKey")
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_SIZE:
        raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
    if not isinstance(signing_key, DeviceSigningPublicKey):
        raise EncodingError("signing_key must be a DeviceSigningPublicKey")
    if not isinstance(dh_key, DeviceDHPublicKey):
        raise EncodingError("dh_key must be a DeviceDHPublicKey")
    if isinstance(added_at, bool) or not isinstance(added_at, int) or not 0 <= added_at <= MAX_U64:
        raise EncodingError("added_at must fit in 64 bits unsigned")
    return bytes(account) + device_id + bytes(signing_key) + bytes(dh_key) + struct.pack(">Q", added_at)


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One device of an account, with the device's own signature binding it to the account."""

    device_id: bytes
    signing_key: DeviceSigningPublicKey
    dh_key: DeviceDHPublicKey
    added_at: int
    binding_signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, bytes) or len(self.device_id) != DEVICE_ID_SIZE:
            raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
        if not isinstance(self.signing_key, DeviceSigningPublicKey):
            raise EncodingError("signing_key must be a DeviceSigningPublicKey")
        if not isinstance(self.dh_key, DeviceDHPublicKey):
            raise EncodingError("dh_key must be a DeviceDHPublicKey")
        if isinstance(self.added_at, bool) or not isinstance(self.added_at, int):
            raise EncodingError("added_at must be an int")
        if not 0 <= self.added_at <= MAX_U64:
            raise EncodingError("added_at must fit in 64 bits unsigned")
        if not isinstance(self.binding_signature, bytes) or len(self.binding_signature) != 64:
            raise EncodingError("binding signature must be 64 bytes")

    def encode(self) -> bytes:
        return _ENTRY.pack(
            self.device_id, bytes(self.signing_key), bytes(self.dh_key), self.added_at, self.binding_signature
        )

    @classmethod
    def decode(cls, data: bytes) -> DeviceEntry:
        data = bytes(data)
        if len(data) != DEVICE_ENTRY_SIZE:
            raise EncodingError(f"device entry must be {DEVICE_ENTRY_SIZE} bytes")
        device_id, signing, dh, added_at, signature = _ENTRY.unpack(data)
        try:
            return cls(device_id, DeviceSigningPublicKey(signing), DeviceDHPublicKey(dh), added_at, signature)
        except InvalidKeyError as exc:
            raise EncodingError("device entry holds an unusable key") from exc

    def verify_binding(self, account: AccountPublicKey) -> None:
        """Raise :class:`UnboundDeviceError` unless this device signed its membership of ``account``
        (with this ``added_at``)."""
        message = binding_message(account, self.device_id, self.signing_key, self.dh_key, self.added_at)
        try:
            self.signing_key.verify(SigningContext.DEVICE_BINDING, message, self.binding_signature)
        except SignatureError as exc:
            raise UnboundDeviceError(f"device {self.device_id.hex()} is not bound to this account") from exc

    def __repr__(self) -> str:
        return (
            f"DeviceEntry({self.device_id.hex()}, {self.signing_key!r}, {self.dh_key!r}, "
            f"added_at={self.added_at})"
        )


def bind_device(
    account: AccountPublicKey,
    device_id: bytes,
    signing_key: DeviceSigningKey,
    dh_key: DeviceDHPublicKey,
    added_at: int,
) -> DeviceEntry:
    """The entry a device creates for itself: its keys and its binding signature for ``account``.

    Run on the device that owns ``signing_key`` (for a new device, before it sends its link code).
    """
    if not isinstance(signing_key, DeviceSigningKey):
        raise EncodingError("signing_key must be a DeviceSigningKey")
    public = signing_key.public_key
    message = binding_message(account, device_id, public, dh_key, added_at)
    return DeviceEntry(
        bytes(device_id), public, dh_key, added_at, signing_key.sign(SigningContext.DEVICE_BINDING, message)
    )


# -- lists -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The content of a device list (what the account key signs). Devices are kept sorted by id.

    Constructing one checks the format invariants (sizes, ordering, uniqueness, version 1 iff
    zero previous hash) and raises :class:`EncodingError`; it does not check bindings.
    """

    version: int
    previous_hash: bytes
    account_key: AccountPublicKey
    username: str
    devices: tuple[DeviceEntry, ...]

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

    @classmethod
    def create(
        cls,
        version: int,
        previous_hash: bytes,
        account_key: AccountPublicKey,
        username: str,
        devices: Iterable[DeviceEntry],
    ) -> DeviceList:
        """Build a list, normalising the username and sorting the devices (duplicates still raise)."""
        name = normalize_username(username)
        ordered = tuple(sorted(devices, key=lambda d: d.device_id))
        return cls(version, bytes(previous_hash), account_key, name, ordered)

    def encode(self) -> bytes:
        name = self.username.encode("utf-8")
        out = [
            _HEADER.pack(
                FORMAT_VERSION, self.version, self.previous_hash, bytes(self.account_key), len(name)
            ),
            name,
            _COUNT.pack(len(self.devices)),
        ]
        out.extend(d.encode() for d in self.devices)
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> DeviceList:
        """Parse the canonical encoding; anything else (including trailing bytes) raises EncodingError."""
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise EncodingError("device list is too short")
        fmt, version, previous_hash, account, name_len = _HEADER.unpack_from(data, 0)
        if fmt != FORMAT_VERSION:
            raise EncodingError(f"unsupported device list format {fmt}")
        offset = _HEADER.size
        if len(data) < offset + name_len + _COUNT.size:
            raise EncodingError("device list is too short")
        username = _decode_username(data[offset : offset + name_len])
        offset += name_len
        (count,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        if len(data) != offset + count * DEVICE_ENTRY_SIZE:
            raise EncodingError(
                "device list length does not match its device count (truncated or trailing data)"
            )
        devices = tuple(
            DeviceEntry.decode(data[offset + i * DEVICE_ENTRY_SIZE : offset + (i + 1) * DEVICE_ENTRY_SIZE])
            for i in range(count)
        )
        return cls(version, previous_hash, AccountPublicKey(account), username, devices)

    def device(self, device_id: bytes) -> DeviceEntry | None:
        for entry in self.devices:
            if entry.device_id == device_id:
                return entry
        return None

    @property
    def device_ids(self) -> tuple[bytes, ...]:
        return tuple(d.device_id for d in self.devices)

    def verify_bindings(self) -> None:
        """Raise :class:`UnboundDeviceError` unless every device signed its binding to this account."""
        for entry in self.devices:
            entry.verify_binding(self.account_key)


@dataclass(frozen=True, slots=True)
class SignedDeviceList:
    """A device list with the account key's signature, as sent on the wire.

    Holding one proves nothing: :func:`verify` (or a :class:`DeviceListChainVerifier`) decides
    whether to trust it.
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


def sign(account_key: AccountKey, content: DeviceList) -> SignedDeviceList:
    """Sign ``content`` with the account key after checking that it names this key and that
    every device is bound to it."""
    if content.account_key != account_key.public_key:
        raise UnknownSignerError("the list names another account key than the signing key")
    content.verify_bindings()
    return SignedDeviceList(content, account_key.sign(SigningContext.DEVICE_LIST, content.encode()))


# -- verification (public keys only) -----------------------------------------------------------


def verify(
    signed: SignedDeviceList | bytes,
    trusted_account_key: AccountPublicKey,
    expected_username: str | None = None,
) -> DeviceList:
    """Verify one signed list under the account key the caller trusts; return its content.

    With ``expected_username`` (normalised first), the list must name that username.

    Raises :class:`EncodingError` (bytes do not parse, or ``expected_username`` is not a valid
    username), :class:`UnknownSignerError` (the list names another account key),
    :class:`DeviceListSignatureError` (the signature does not verify),
    :class:`UnboundDeviceError` (a device did not sign its binding) or
    :class:`UsernameMismatchError` (the list names another username than ``expected_username``).
    """
    if not isinstance(trusted_account_key, AccountPublicKey):
        raise EncodingError("trusted_account_key must be an AccountPublicKey")
    expected = None if expected_username is None else normalize_username(expected_username)
    if not isinstance(signed, SignedDeviceList):
        signed = SignedDeviceList.decode(signed)
    content = signed.content
    if content.account_key != trusted_account_key:
        raise UnknownSignerError("device list is for another account key than the trusted one")
    try:
        trusted_account_key.verify(SigningContext.DEVICE_LIST, content.encode(), signed.signature)
    except SignatureError as exc:
        raise DeviceListSignatureError("device list signature does not verify") from exc
    content.verify_bindings()
    if expected is not None and content.username != expected:
        raise UsernameMismatchError("device list is for another username than the expected one")
    return content


def check_successor(known: SignedDeviceList | None, new: SignedDeviceList) -> bool:
    """The chain rule between the last verified list ``known`` and a signature-verified ``new``.

    Returns ``True`` if ``new`` advances the chain, ``False`` if it is ``known`` itself (same
    bytes: idempotent). Raises :class:`RollbackError` (older version), :class:`ForkError` (same
    version, other bytes), :class:`UsernameMismatchError` (``new`` names another username than
    ``known``) or :class:`ChainBreakError` (a version skipped, or the wrong predecessor hash).
    With no ``known`` list any version is accepted (first contact).
    """
    if known is None:
        return True
    if new.version < known.version:
        raise RollbackError(f"device list version {new.version} is older than known version {known.version}")
    if new.version == known.version:
        if p.constant_time_equal(new.encode(), known.encode()):
            return False
        raise ForkError(f"two different device lists claim version {new.version}")
    if new.content.username != known.content.username:
        raise UsernameMismatchError("a device list cannot change the account's username")
    if new.version != known.version + 1:
        raise ChainBreakError(f"device list skips from version {known.version} to {new.version}")
    if not p.constant_time_equal(new.content.previous_hash, known.hash()):
        raise ChainBreakError(f"device list version {new.version} does not name its predecessor's hash")
    return True


class DeviceListChainVerifier:
    """Tracks the last verified device list of one account and verifies what comes next.

    ``trusted_account_key`` is the key the caller already trusts for the account (from
    safety-number verification or first contact). ``last`` is the last list verified before
    (for example, from the client's store); it is re-verified here. ``expected_username``
    (optional) pins the username every list must name (the one the caller looked up); once a
    list is known, its successors must keep its username in any case
    (:class:`UsernameMismatchError`).
    """

    __slots__ = ("_expected_username", "_last", "_trusted")

    def __init__(
        self,
        trusted_account_key: AccountPublicKey,
        last: SignedDeviceList | None = None,
        expected_username: str | None = None,
    ) -> None:
        if not isinstance(trusted_account_key, AccountPublicKey):
            raise EncodingError("trusted_account_key must be an AccountPublicKey")
        self._trusted = trusted_account_key
        self._expected_username = None if expected_username is None else normalize_username(expected_username)
        self._last: SignedDeviceList | None = None
        if last is not None:
            verify(last, trusted_account_key, self._expected_username)
            self._last = last

    @property
    def trusted_account_key(self) -> AccountPublicKey:
        return self._trusted

    @property
    def latest(self) -> SignedDeviceList | None:
        """The last verified signed list, or ``None`` before the first one."""
        return self._last

    @property
    def current(self) -> DeviceList | None:
        return None if self._last is None else self._last.content

    def verify_next(self, new: SignedDeviceList | bytes) -> DeviceList:
        """Verify ``new`` as the successor of the latest list (or as the first one) and adopt it.

        A list identical to the latest one is accepted again (idempotent). On any error the
        verifier's state is unchanged.
        """
        return self.verify_chain([new])

    def verify_chain(self, lists: Sequence[SignedDeviceList | bytes]) -> DeviceList:
        """Verify consecutive lists, oldest first, each the successor of the one before (the
        first one of the latest known list). All or nothing: the state changes only if every
        list verifies. Returns the content of the newest list."""
        if not lists:
            raise DeviceListError("no device list to verify")
        last = self._last
        for item in lists:
            signed = item if isinstance(item, SignedDeviceList) else SignedDeviceList.decode(item)
            verify(signed, self._trusted, self._expected_username)
            if check_successor(last, signed):
                last = signed
        assert last is not None
        self._last = last
        return last.content


# -- builders (need the account key) ---------------------------------------------------------------


def first(account_key: AccountKey, username: str, devices: Iterable[DeviceEntry]) -> SignedDeviceList:
    """Version 1 of an account's device list (previous hash all zero).

    Ed25519 signing is deterministic, so no randomness is needed.
    """
    content = DeviceList.create(1, ZERO_HASH, account_key.public_key, username, devices)
    return sign(account_key, content)


def successor(
    previous: SignedDeviceList, account_key: AccountKey, devices: Iterable[DeviceEntry]
) -> SignedDeviceList:
    """The next version after ``previous`` (which is verified first), with ``devices`` and the
    same username."""
    verify(previous, account_key.public_key)
    if previous.version >= MAX_U64:
        raise EncodingError("device list version space exhausted")
    content = DeviceList.create(
        previous.version + 1, previous.hash(), account_key.public_key, previous.content.username, devices
    )
    return sign(account_key, content)


def with_device_added(
    previous: SignedDeviceList, account_key: AccountKey, entry: DeviceEntry
) -> SignedDeviceList:
    """``previous`` plus ``entry``; raises :class:`EncodingError` if the device id is already listed."""
    if previous.content.device(entry.device_id) is not None:
        raise EncodingError(f"device {entry.device_id.hex()} is already in the list")
    return successor(previous, account_key, (*previous.content.devices, entry))


def with_device_removed(
    previous: SignedDeviceList, account_key: AccountKey, device_id: bytes
) -> SignedDeviceList:
    """``previous`` without ``device_id``; raises :class:`EncodingError` if it is not listed, or if
    it is the last device."""
    if previous.content.device(device_id) is None:
        raise EncodingError(f"device {bytes(device_id).hex()} is not in the list")
    remaining = tuple(d for d in previous.content.devices if d.device_id != device_id)
    return successor(previous, account_key, remaining)
