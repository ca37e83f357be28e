"""X3DH-style session set-up between two devices (shape of the Signal X3DH specification).

Roles and keys
--------------
The *initiator* (A) fetches the *responder*'s (B) prekey bundle and derives a shared secret
``SK`` without B being online. Each device has a :class:`DeviceIdentity`: a 16-byte device id,
an Ed25519 device signing key (``IS``) and an X25519 device key (``IK``, the X3DH identity key).

* ``IK_A``: the initiator's device X25519 key (:class:`~saltline.crypto.keys.DeviceDHKey`)
* ``EK_A``: the initiator's ephemeral X25519 key, drawn from ``rng``
  (:class:`~saltline.crypto.keys.EphemeralKey`)
* ``IK_B``: the responder's device X25519 key
* ``SPK_B``: the responder's signed prekey (kind ``SIGNED_PREKEY``)
* ``OPK_B``: optional: a one-time prekey (kind ``ONE_TIME_PREKEY``) or the last-resort prekey
  (kind ``LAST_RESORT_PREKEY``); both are signed by ``IS_B``

Trust
-----
Both sides check the other device against a device list the caller verified
(:mod:`saltline.crypto.device_list`) before any Diffie-Hellman or randomness:

* :func:`initiate` takes the responder's :class:`~saltline.crypto.device_list.DeviceEntry` (required);
  a bundle whose device id, signing key or X25519 key differs from it raises
  :class:`~saltline.crypto.errors.UntrustedDeviceError`
  (a :class:`~saltline.crypto.errors.SessionSetupError`).
* :func:`respond` (and :func:`saltline.crypto.ratchet.accept`) take a required ``trusted`` policy
  (:data:`TrustPolicy`): the initiator's ``DeviceEntry``, or a callable that returns ``True``
  exactly for identities in verified lists (:func:`trust_device_lists`). An initiator it
  refuses raises :class:`~saltline.crypto.errors.UntrustedDeviceError`; nothing is looked up or computed.

Initiator (:func:`initiate`)
----------------------------
0. Check the bundle's identity against the trusted device entry (see Trust).
1. Verify the signature of ``SPK_B`` and of ``OPK_B`` (if present) under the bundle's device
   signing key ``IS_B`` (context ``"prekey"``, see :mod:`saltline.crypto.keys`). On failure raise
   :class:`~saltline.crypto.errors.PreKeySignatureError` (a :class:`~saltline.crypto.errors.SessionSetupError`
   *and* a :class:`~saltline.crypto.errors.SignatureError`) before any DH is computed or any randomness
   is drawn. A bundle whose device id or X25519 key equals the initiator's own is refused
   (:class:`~saltline.crypto.errors.SessionSetupError`).
2. ``EK_A = EphemeralKey(rng(32))`` (exactly one ``rng(32)`` call).
3. ``DH1 = X25519(IK_A, SPK_B)``, ``DH2 = X25519(EK_A, IK_B)``, ``DH3 = X25519(EK_A, SPK_B)``,
   ``DH4 = X25519(EK_A, OPK_B)`` if ``OPK_B`` is present.
4. ``SK = HKDF-SHA256(ikm = 0xFF * 32 || DH1 || DH2 || DH3 [|| DH4], salt = 0x00 * 32,
   info = "Saltline X3DH v1", length = 32)``.
5. ``AD = identity(A) || identity(B)`` (below), 168 bytes.
6. Send the :class:`InitialHeader` with the first message(s).

Responder (:func:`respond`)
---------------------------
Looks the prekeys named by the header up in a :class:`PreKeyLookup` (unknown signed prekey or
last-resort prekey: :class:`~saltline.crypto.errors.SessionSetupError`; unknown one-time prekey:
:class:`~saltline.crypto.errors.PreKeyConsumedError`), computes the same ``DH1..DH4`` with its private
keys, and the same ``SK`` and ``AD``. :func:`respond` is pure: it deletes nothing. Its result
names the one-time prekey id that was used (:attr:`ResponderResult.one_time_prekey_id`); the
caller MUST delete that one-time prekey when, and only when, the first message decrypted under
the new session (see :func:`saltline.crypto.ratchet.accept`), and persist the session in the same
transaction. A failed first-message decryption therefore consumes nothing. The last-resort
prekey is never consumed (``one_time_prekey_id`` is ``None`` for it).

The responder learns the initiator's claimed identity from the header and checks it with the
``trusted`` policy first. X3DH then authenticates ``IK_A`` (through ``DH1``) and binds the whole
identity into ``AD``, so a header that claims a trusted identity it does not hold fails the
first message.

Byte layouts (all integers big endian)
--------------------------------------
Identity encoding, 84 bytes::

    identity(X) = encode(IS_X) (34) || encode(IK_X) (34) || device_id_X (16)

where ``encode(key) = 0x01 || kind || raw key (32)`` (:meth:`saltline.crypto.keys.PublicKey.encode`;
kind 0x02 for a device signing key, 0x03 for a device X25519 key).

Associated data, 168 bytes::

    AD = identity(initiator) (84) || identity(responder) (84)

Initial header (:class:`InitialHeader`), version 1, 128 bytes::

    offset  size  field
         0     1  version = 0x01
         1    16  initiator device id
        17    34  encode(IS_A)   (version 0x01, kind 0x02, Ed25519 key)
        51    34  encode(IK_A)   (version 0x01, kind 0x03, X25519 key)
        85    34  encode(EK_A)   (version 0x01, kind 0x07, X25519 key)
       119     4  signed prekey id (u32)
       123     1  OPK kind: 0x00 none, 0x05 one-time prekey, 0x06 last-resort prekey
       124     4  OPK id (u32); MUST be 0 when the OPK kind is 0x00

Decoding is strict: wrong length, unknown version, wrong key kinds, an unknown OPK kind or a
non-zero id with kind 0x00 raise :class:`~saltline.crypto.errors.EncodingError`; a low-order X25519 key
raises :class:`~saltline.crypto.errors.InvalidKeyError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from saltline.crypto import primitives as p
from saltline.crypto.device_list import DeviceEntry, DeviceList
from saltline.crypto.errors import (
    EncodingError,
    PreKeyConsumedError,
    PreKeySignatureError,
    SessionSetupError,
    SignatureError,
    UntrustedDeviceError,
    UsageError,
)
from saltline.crypto.keys import (
    PUBLIC_KEY_ENCODED_SIZE,
    DeviceDHKey,
    DeviceDHPublicKey,
    DeviceSigningKey,
    DeviceSigningPublicKey,
    EphemeralKey,
    EphemeralPublicKey,
    KeyKind,
    LastResortPreKey,
    OneTimePreKey,
    PreKey,
    PreKeyPublic,
    SignedPreKey,
    SignedPreKeyPublicKey,
)

__all__ = [
    "AD_SIZE",
    "DEVICE_ID_SIZE",
    "IDENTITY_ENCODED_SIZE",
    "INITIAL_HEADER_SIZE",
    "INITIAL_HEADER_VERSION",
    "SHARED_KEY_SIZE",
    "X3DH_INFO",
    "DeviceIdentity",
    "DeviceIdentityKeys",
    "InMemoryPreKeys",
    "InitialHeader",
    "InitiatorResult",
    "PreKeyBundle",
    "PreKeyLookup",
    "ResponderResult",
    "TrustPolicy",
    "associated_data",
    "identity_matches",
    "initiate",
    "respond",
    "trust_device_lists",
]

DEVICE_ID_SIZE = 16
SHARED_KEY_SIZE = 32
X3DH_INFO = b"Saltline X3DH v1"
X3DH_SALT = bytes(32)
X3DH_PREFIX = b"\xff" * 32
IDENTITY_ENCODED_SIZE = PUBLIC_KEY_ENCODED_SIZE * 2 + DEVICE_ID_SIZE  # 84
AD_SIZE = 2 * IDENTITY_ENCODED_SIZE  # 168
INITIAL_HEADER_VERSION = 1
INITIAL_HEADER_SIZE = 1 + DEVICE_ID_SIZE + 3 * PUBLIC_KEY_ENCODED_SIZE + 4 + 1 + 4  # 128
NO_OPK = 0x00
_OPK_KINDS = (KeyKind.ONE_TIME_PREKEY, KeyKind.LAST_RESORT_PREKEY)
_U32 = struct.Struct(">I")


def _check_device_id(device_id: bytes) -> bytes:
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_SIZE:
        raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
    return device_id


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The public identity of a device: id, Ed25519 signing key, X25519 key."""

    device_id: bytes
    signing_key: DeviceSigningPublicKey
    dh_key: DeviceDHPublicKey

    def __post_init__(self) -> None:
        _check_device_id(self.device_id)
        if not isinstance(self.signing_key, DeviceSigningPublicKey):
            raise EncodingError("signing_key must be a DeviceSigningPublicKey")
        if not isinstance(self.dh_key, DeviceDHPublicKey):
            raise EncodingError("dh_key must be a DeviceDHPublicKey")

    def encode(self) -> bytes:
        """``encode(IS) || encode(IK) || device_id``: 84 bytes."""
        return self.signing_key.encode() + self.dh_key.encode() + self.device_id

    @classmethod
    def decode(cls, data: bytes) -> DeviceIdentity:
        data = bytes(data)
        if len(data) != IDENTITY_ENCODED_SIZE:
            raise EncodingError(f"encoded identity must be {IDENTITY_ENCODED_SIZE} bytes")
        return cls(
            device_id=data[68:84],
            signing_key=DeviceSigningPublicKey.decode(data[0:34]),
            dh_key=DeviceDHPublicKey.decode(data[34:68]),
        )


@dataclass(frozen=True, slots=True, repr=False)
class DeviceIdentityKeys:
    """A device's own identity with its private keys."""

    device_id: bytes
    signing_key: DeviceSigningKey
    dh_key: DeviceDHKey

    def __post_init__(self) -> None:
        _check_device_id(self.device_id)

    @property
    def public(self) -> DeviceIdentity:
        return DeviceIdentity(self.device_id, self.signing_key.public_key, self.dh_key.public_key)

    def __repr__(self) -> str:
        return f"DeviceIdentityKeys(device_id={self.device_id.hex()}, <secret>)"


def identity_matches(identity: DeviceIdentity, entry: DeviceEntry) -> bool:
    """True if ``identity`` has the device id, signing key and X25519 key of ``entry``."""
    return (
        identity.device_id == entry.device_id
        and identity.signing_key == entry.signing_key
        and identity.dh_key == entry.dh_key
    )


#: Who may start a session with this device: the initiator's verified
#: :class:`~saltline.crypto.device_list.DeviceEntry`, or a callable that returns ``True`` exactly for
#: identities that appear in a device list the caller verified.
TrustPolicy: TypeAlias = DeviceEntry | Callable[[DeviceIdentity], bool]


def trust_device_lists(*lists: DeviceList) -> Callable[[DeviceIdentity], bool]:
    """A :data:`TrustPolicy` accepting exactly the devices of ``lists``, which the caller MUST
    have verified (:func:`saltline.crypto.device_list.verify` or a
    :class:`~saltline.crypto.device_list.DeviceListChainVerifier`)."""
    frozen = tuple(lists)
    if not all(isinstance(item, DeviceList) for item in frozen):
        raise UsageError("trust_device_lists takes DeviceList objects")

    def trusted(identity: DeviceIdentity) -> bool:
        for device_list in frozen:
            entry = device_list.device(identity.device_id)
            if entry is not None and identity_matches(identity, entry):
                return True
        return False

    return trusted


def _check_trusted(identity: DeviceIdentity, trusted: TrustPolicy) -> None:
    if isinstance(trusted, DeviceEntry):
        ok = identity_matches(identity, trusted)
    elif callable(trusted):
        ok = trusted(identity) is True
    else:
        raise UsageError("trusted must be a DeviceEntry or a callable")
    if not ok:
        raise UntrustedDeviceError(f"device {identity.device_id.hex()} is not in a verified device list")


def associated_data(initiator: DeviceIdentity, responder: DeviceIdentity) -> bytes:
    """The 168-byte session AD: ``identity(initiator) || identity(responder)``."""
    return initiator.encode() + responder.encode()


@dataclass(frozen=True, slots=True)
class PreKeyBundle:
    """What the server hands out for a device: its identity, a signed prekey and, if one was
    left, a one-time prekey (or the last-resort prekey when none was left).

    Construction checks shapes and kinds (:class:`~saltline.crypto.errors.EncodingError`); it does not
    verify signatures: :meth:`verify` does, and :func:`initiate` calls it first."""

    device_id: bytes
    signing_key: DeviceSigningPublicKey
    dh_key: DeviceDHPublicKey
    signed_prekey: PreKeyPublic
    one_time_prekey: PreKeyPublic | None = None

    def __post_init__(self) -> None:
        _check_device_id(self.device_id)
        if not isinstance(self.signing_key, DeviceSigningPublicKey):
            raise EncodingError("signing_key must be a DeviceSigningPublicKey")
        if not isinstance(self.dh_key, DeviceDHPublicKey):
            raise EncodingError("dh_key must be a DeviceDHPublicKey")
        spk = self.signed_prekey
        if not isinstance(spk, PreKeyPublic) or spk.kind != KeyKind.SIGNED_PREKEY:
            raise EncodingError("signed_prekey must be a PreKeyPublic of kind SIGNED_PREKEY")
        if self.one_time_prekey is not None and (
            not isinstance(self.one_time_prekey, PreKeyPublic) or self.one_time_prekey.kind not in _OPK_KINDS
        ):
            raise EncodingError("one_time_prekey must be a ONE_TIME_PREKEY or LAST_RESORT_PREKEY")

    @property
    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(self.device_id, self.signing_key, self.dh_key)

    def verify(self) -> None:
        """Raise :class:`~saltline.crypto.errors.PreKeySignatureError` unless every prekey in the bundle is
        signed by the bundle's device signing key."""
        prekeys = [self.signed_prekey]
        if self.one_time_prekey is not None:
            prekeys.append(self.one_time_prekey)
        for prekey in prekeys:
            try:
                prekey.verify(self.signing_key)
            except SignatureError as exc:
                what = f"{prekey.kind.name} {prekey.key_id}"
                raise PreKeySignatureError(f"{what}: signature does not verify") from exc


@dataclass(frozen=True, slots=True)
class InitialHeader:
    """Sent by the initiator with every message until the responder has answered, so that the
    responder can run :func:`respond`. Layout in the module docstring (128 bytes)."""

    initiator: DeviceIdentity
    ephemeral_key: EphemeralPublicKey
    signed_prekey_id: int
    one_time_prekey_kind: KeyKind | None = None
    one_time_prekey_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ephemeral_key, EphemeralPublicKey):
            raise EncodingError("ephemeral_key must be an EphemeralPublicKey")
        if not 0 <= self.signed_prekey_id < 2**32:
            raise EncodingError("signed prekey id must fit in 32 bits")
        if self.one_time_prekey_kind is None:
            if self.one_time_prekey_id is not None:
                raise EncodingError("one-time prekey id given without a kind")
        else:
            if self.one_time_prekey_kind not in _OPK_KINDS:
                raise EncodingError("one-time prekey kind must be ONE_TIME_PREKEY or LAST_RESORT_PREKEY")
            if self.one_time_prekey_id is None or not 0 <= self.one_time_prekey_id < 2**32:
                raise EncodingError("one-time prekey id must fit in 32 bits")

    def encode(self) -> bytes:
        kind = NO_OPK if self.one_time_prekey_kind is None else int(self.one_time_prekey_kind)
        return b"".join(
            (
                bytes([INITIAL_HEADER_VERSION]),
                self.initiator.device_id,
                self.initiator.signing_key.encode(),
                self.initiator.dh_key.encode(),
                self.ephemeral_key.encode(),
                _U32.pack(self.signed_prekey_id),
                bytes([kind]),
                _U32.pack(self.one_time_prekey_id or 0),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> InitialHeader:
        data = bytes(data)
        if len(data) != INITIAL_HEADER_SIZE:
            raise EncodingError(f"initial header must be {INITIAL_HEADER_SIZE} bytes, got {len(data)}")
        if data[0] != INITIAL_HEADER_VERSION:
            raise EncodingError(f"unsupported initial header version {data[0]}")
        initiator = DeviceIdentity(
            device_id=data[1:17],
            signing_key=DeviceSigningPublicKey.decode(data[17:51]),
            dh_key=DeviceDHPublicKey.decode(data[51:85]),
        )
        ephemeral = EphemeralPublicKey.decode(data[85:119])
        (spk_id,) = _U32.unpack_from(data, 119)
        kind_byte = data[123]
        (opk_id,) = _U32.unpack_from(data, 124)
        if kind_byte == NO_OPK:
            if opk_id != 0:
                raise EncodingError("one-time prekey id must be 0 when no one-time prekey is used")
            return cls(initiator, ephemeral, spk_id)
        if kind_byte not in _OPK_KINDS:
            raise EncodingError(f"unknown one-time prekey kind {kind_byte:#04x}")
        return cls(initiator, ephemeral, spk_id, KeyKind(kind_byte), opk_id)


@dataclass(frozen=True, slots=True, repr=False)
class InitiatorResult:
    """The initiator's outcome: feed it to :meth:`saltline.crypto.ratchet.Session.initiate`.

    ``remote_ratchet_key`` is ``SPK_B``: the responder's first ratchet public key."""

    shared_key: bytes
    associated_data: bytes
    header: InitialHeader
    responder: DeviceIdentity
    remote_ratchet_key: SignedPreKeyPublicKey

    @property
    def base_key(self) -> bytes:
        """``EK_A`` (raw, 32 bytes): names this X3DH run on both sides."""
        return bytes(self.header.ephemeral_key)

    def __repr__(self) -> str:
        return f"InitiatorResult(responder={self.responder.device_id.hex()}, <secret>)"


@dataclass(frozen=True, slots=True, repr=False)
class ResponderResult:
    """The responder's outcome: feed it to :meth:`saltline.crypto.ratchet.Session.respond`.

    ``one_time_prekey_id`` is the id of the one-time prekey that was used (``None`` if none, or
    if the last-resort prekey was used). The caller MUST delete that prekey once the first
    message has decrypted, and MUST NOT delete it if it did not."""

    shared_key: bytes
    associated_data: bytes
    initiator: DeviceIdentity
    signed_prekey: SignedPreKey
    base_key: bytes
    one_time_prekey_id: int | None = field(default=None)

    def __repr__(self) -> str:
        return (
            f"ResponderResult(initiator={self.initiator.device_id.hex()}, "
            f"one_time_prekey_id={self.one_time_prekey_id}, <secret>)"
        )


class PreKeyLookup(Protocol):
    """The responder's view of its own private prekeys. Each method returns ``None`` for an
    id it does not hold. Lookups must not delete anything."""

    def signed_prekey(self, key_id: int) -> SignedPreKey | None: ...

    def one_time_prekey(self, key_id: int) -> OneTimePreKey | None: ...

    def last_resort_prekey(self, key_id: int) -> LastResortPreKey | None: ...


class InMemoryPreKeys:
    """A dict-backed :class:`PreKeyLookup` (tests, examples)."""

    def __init__(
        self,
        signed: list[SignedPreKey] | None = None,
        one_time: list[OneTimePreKey] | None = None,
        last_resort: list[LastResortPreKey] | None = None,
    ) -> None:
        self.signed = {k.key_id: k for k in signed or []}
        self.one_time = {k.key_id: k for k in one_time or []}
        self.last_resort = {k.key_id: k for k in last_resort or []}

    def signed_prekey(self, key_id: int) -> SignedPreKey | None:
        return self.signed.get(key_id)

    def one_time_prekey(self, key_id: int) -> OneTimePreKey | None:
        return self.one_time.get(key_id)

    def last_resort_prekey(self, key_id: int) -> LastResortPreKey | None:
        return self.last_resort.get(key_id)

    def remove_one_time_prekey(self, key_id: int) -> None:
        del self.one_time[key_id]


def _kdf(dh_outputs: list[bytes]) -> bytes:
    return p.hkdf_sha256(
        X3DH_PREFIX + b"".join(dh_outputs), salt=X3DH_SALT, info=X3DH_INFO, length=SHARED_KEY_SIZE
    )


def initiate(
    local: DeviceIdentityKeys,
    bundle: PreKeyBundle,
    trusted: DeviceEntry,
    rng: p.Rng = p.random_bytes,
) -> InitiatorResult:
    """Run X3DH as the initiator against ``bundle``, which must be the device ``trusted``: the
    responder's entry in a device list the caller verified.

    Raises :class:`~saltline.crypto.errors.UntrustedDeviceError` if the bundle's device id, signing key
    or X25519 key differs from ``trusted``, then
    :class:`~saltline.crypto.errors.PreKeySignatureError` if a prekey signature does not verify (both
    before any DH or ``rng`` call), :class:`~saltline.crypto.errors.SessionSetupError` if the bundle is
    the initiator's own device, :class:`~saltline.crypto.errors.InvalidKeyError` if a DH output is zero."""
    if not isinstance(trusted, DeviceEntry):
        raise UsageError("trusted must be the responder's DeviceEntry from a verified device list")
    if not isinstance(bundle, PreKeyBundle):
        raise UsageError("bundle must be a PreKeyBundle")
    _check_trusted(bundle.identity, trusted)
    bundle.verify()
    me = local.public
    if bundle.device_id == me.device_id or bundle.dh_key == me.dh_key:
        raise SessionSetupError("refusing to set up a session with this device itself")
    spk = bundle.signed_prekey.public_key
    ek = EphemeralKey.generate(rng)
    dhs = [local.dh_key.dh(spk), ek.dh(bundle.dh_key), ek.dh(spk)]
    opk_kind: KeyKind | None = None
    opk_id: int | None = None
    if bundle.one_time_prekey is not None:
        dhs.append(ek.dh(bundle.one_time_prekey.public_key))
        opk_kind, opk_id = bundle.one_time_prekey.kind, bundle.one_time_prekey.key_id
    responder = bundle.identity
    header = InitialHeader(me, ek.public_key, bundle.signed_prekey.key_id, opk_kind, opk_id)
    return InitiatorResult(
        shared_key=_kdf(dhs),
        associated_data=associated_data(me, responder),
        header=header,
        responder=responder,
        remote_ratchet_key=SignedPreKeyPublicKey(bundle.signed_prekey.key),
    )


def respond(
    local: DeviceIdentityKeys, prekeys: PreKeyLookup, header: InitialHeader, *, trusted: TrustPolicy
) -> ResponderResult:
    """Run X3DH as the responder for an initial header. Pure: deletes nothing (see the module
    docstring for when the caller deletes the one-time prekey).

    Raises :class:`~saltline.crypto.errors.UntrustedDeviceError` if ``trusted`` refuses the initiator
    (checked first), :class:`~saltline.crypto.errors.SessionSetupError` for an unknown signed or last-resort
    prekey or a header naming this device as the initiator,
    :class:`~saltline.crypto.errors.PreKeyConsumedError` for an unknown (used or never issued) one-time
    prekey, :class:`~saltline.crypto.errors.InvalidKeyError` if a DH output is zero."""
    if not isinstance(header, InitialHeader):
        raise UsageError("header must be an InitialHeader")
    _check_trusted(header.initiator, trusted)
    me = local.public
    if header.initiator.device_id == me.device_id or header.initiator.dh_key == me.dh_key:
        raise SessionSetupError("initial header names this device as the initiator")
    spk = prekeys.signed_prekey(header.signed_prekey_id)
    if spk is None or not isinstance(spk, SignedPreKey) or spk.key_id != header.signed_prekey_id:
        raise SessionSetupError(f"unknown signed prekey {header.signed_prekey_id}")
    opk: PreKey | None = None
    consumed: int | None = None
    if header.one_time_prekey_kind == KeyKind.ONE_TIME_PREKEY:
        assert header.one_time_prekey_id is not None
        opk = prekeys.one_time_prekey(header.one_time_prekey_id)
        if opk is None or not isinstance(opk, OneTimePreKey) or opk.key_id != header.one_time_prekey_id:
            raise PreKeyConsumedError(f"one-time prekey {header.one_time_prekey_id} is not held")
        consumed = opk.key_id
    elif header.one_time_prekey_kind == KeyKind.LAST_RESORT_PREKEY:
        assert header.one_time_prekey_id is not None
        opk = prekeys.last_resort_prekey(header.one_time_prekey_id)
        if opk is None or not isinstance(opk, LastResortPreKey) or opk.key_id != header.one_time_prekey_id:
            raise SessionSetupError(f"unknown last-resort prekey {header.one_time_prekey_id}")
    ek = header.ephemeral_key
    dhs = [spk.dh(header.initiator.dh_key), local.dh_key.dh(ek), spk.dh(ek)]
    if opk is not None:
        dhs.append(opk.dh(ek))
    return ResponderResult(
        shared_key=_kdf(dhs),
        associated_data=associated_data(header.initiator, me),
        initiator=header.initiator,
        signed_prekey=spk,
        base_key=bytes(ek),
        one_time_prekey_id=consumed,
    )
