"""A device's private key state, and its versioned serialisation for the client's store.

The encoding is UTF-8 JSON (object keys sorted, no whitespace, so equal states encode to equal
bytes); every binary field is unpadded base64url of the raw 32-byte secret (16 bytes for the
device id)::

    {
      "format": "saltline-device-state",
      "v": 2,
      "device_id": b64(16),
      "account_key": b64(32 Ed25519 seed) | null,
      "device_signing_key": b64(32 Ed25519 seed),
      "device_dh_key": b64(32 X25519 scalar),
      "signed_prekey": {"id": u32, "key": b64(32)},
      "previous_signed_prekey": {"id": u32, "key": b64(32)} | null,
      "one_time_prekeys": [{"id": u32, "key": b64(32)}, ...],     (ids strictly ascending)
      "last_resort_prekey": {"id": u32, "key": b64(32)},
      "previous_last_resort_prekey": {"id": u32, "key": b64(32)} | null,
      "next_prekey_id": int in 0..2**32                           (> every id above)
    }

Version 2 added ``previous_last_resort_prekey`` (the replaced last-resort prekey, kept for a
grace period like the previous signed prekey); ``MIGRATIONS[1]`` upgrades a version-1 document
by setting it to ``null``.

All prekeys draw their ids from the one counter ``next_prekey_id``, so ids are unique across
kinds. Parsing is strict: the exact set of fields, exact JSON types (``true`` is not an
integer), canonical base64url, no duplicate keys, no NaN; anything else raises
:class:`EncodingError`. A "format"/"v" this code cannot read raises
:class:`StateVersionError`. Older versions are upgraded by the functions in
:data:`MIGRATIONS` (``MIGRATIONS[n]`` turns a version-``n`` document into a version-``n+1``
one) before parsing, so a v2 reader registers ``MIGRATIONS[1]`` and reads v1 states.

This is secret material: the client's store must keep it encrypted at rest. No pickle.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeVar

from saltline.crypto import primitives as p
from saltline.crypto.device_list import DEVICE_ID_SIZE, DeviceEntry, bind_device
from saltline.crypto.errors import (
    EncodingError,
    InvalidKeyError,
    PreKeyConsumedError,
    StateVersionError,
    UsageError,
)
from saltline.crypto.keys import (
    MAX_PREKEY_ID,
    AccountKey,
    AccountPublicKey,
    DeviceDHKey,
    DeviceSigningKey,
    LastResortPreKey,
    OneTimePreKey,
    PreKey,
    PreKeyPublic,
    SignedPreKey,
    b64decode,
    b64encode,
)

__all__ = [
    "CURRENT_VERSION",
    "FORMAT_NAME",
    "MIGRATIONS",
    "DeviceState",
    "StatePreKeyLookup",
    "decode",
    "encode",
    "generate_device",
]

FORMAT_NAME = "saltline-device-state"
CURRENT_VERSION = 2
FIRST_PREKEY_ID = 1
DEFAULT_ONE_TIME_PREKEYS = 100

Document = dict[str, Any]


def _v1_to_v2(doc: Document) -> Document:
    """Version 2 adds ``previous_last_resort_prekey`` (none held by a version-1 state)."""
    if "previous_last_resort_prekey" in doc:
        raise EncodingError("a version-1 device state has no previous_last_resort_prekey field")
    return {**doc, "v": 2, "previous_last_resort_prekey": None}


#: ``MIGRATIONS[n]`` upgrades a version-``n`` document to version ``n + 1``.
MIGRATIONS: dict[int, Callable[[Document], Document]] = {1: _v1_to_v2}

_FIELDS_V2 = frozenset(
    {
        "format",
        "v",
        "device_id",
        "account_key",
        "device_signing_key",
        "device_dh_key",
        "signed_prekey",
        "previous_signed_prekey",
        "one_time_prekeys",
        "last_resort_prekey",
        "previous_last_resort_prekey",
        "next_prekey_id",
    }
)

_P = TypeVar("_P", bound=PreKey)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything secret a device holds about its own keys. Immutable: the update methods
    return a new state, which the caller stores (and only then publishes)."""

    device_id: bytes
    account_key: AccountKey | None
    signing_key: DeviceSigningKey
    dh_key: DeviceDHKey
    signed_prekey: SignedPreKey
    previous_signed_prekey: SignedPreKey | None
    one_time_prekeys: Mapping[int, OneTimePreKey]
    last_resort_prekey: LastResortPreKey
    next_prekey_id: int
    #: The last-resort prekey that :meth:`replace_last_resort_prekey` replaced, kept (like
    #: ``previous_signed_prekey``) for initial messages started against it until the caller's
    #: grace period ends (:meth:`drop_previous_prekeys`).
    previous_last_resort_prekey: LastResortPreKey | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, bytes) or len(self.device_id) != DEVICE_ID_SIZE:
            raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes")
        checks: tuple[tuple[object, type | tuple[type, ...]], ...] = (
            (self.account_key, (AccountKey, type(None))),
            (self.signing_key, DeviceSigningKey),
            (self.dh_key, DeviceDHKey),
            (self.signed_prekey, SignedPreKey),
            (self.previous_signed_prekey, (SignedPreKey, type(None))),
            (self.last_resort_prekey, LastResortPreKey),
            (self.previous_last_resort_prekey, (LastResortPreKey, type(None))),
        )
        for value, kind in checks:
            if not isinstance(value, kind):
                raise EncodingError(f"unexpected key type {type(value).__name__}")
        otps = dict(self.one_time_prekeys)
        for key_id, otp in otps.items():
            if not isinstance(otp, OneTimePreKey) or otp.key_id != key_id:
                raise EncodingError("one-time prekeys must be OneTimePreKey objects keyed by their id")
        object.__setattr__(self, "one_time_prekeys", MappingProxyType(dict(sorted(otps.items()))))
        ids = [self.signed_prekey.key_id, self.last_resort_prekey.key_id, *otps]
        for previous in (self.previous_signed_prekey, self.previous_last_resort_prekey):
            if previous is not None:
                ids.append(previous.key_id)
        if len(set(ids)) != len(ids):
            raise EncodingError("prekey ids must be unique across all prekeys")
        n = self.next_prekey_id
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PREKEY_ID + 1:
            raise EncodingError("next_prekey_id must be in 0..2**32")
        if any(i >= n for i in ids):
            raise EncodingError("next_prekey_id must exceed every prekey id in use")

    # -- derived public data --------------------------------------------------------------

    @property
    def account_public_key(self) -> AccountPublicKey | None:
        return None if self.account_key is None else self.account_key.public_key

    def signed_prekey_public(self) -> PreKeyPublic:
        return self.signed_prekey.signed_public(self.signing_key)

    def last_resort_prekey_public(self) -> PreKeyPublic:
        return self.last_resort_prekey.signed_public(self.signing_key)

    def one_time_prekeys_public(self) -> list[PreKeyPublic]:
        return [k.signed_public(self.signing_key) for k in self.one_time_prekeys.values()]

    def device_entry(self, root: AccountPublicKey, added_at: int, joined_version: int = 1) -> DeviceEntry:
        """This device's entry, with its binding signature, for the device list of the account
        rooted at ``root``, joining at list version ``joined_version``."""
        return bind_device(
            root, self.device_id, self.signing_key, self.dh_key.public_key, added_at, joined_version
        )

    # -- updates (return a new state) -----------------------------------------------------

    def _allocate(self, cls: type[_P], rng: p.Rng, next_id: int) -> tuple[_P, int]:
        if next_id > MAX_PREKEY_ID:
            raise InvalidKeyError("prekey id space exhausted")
        return cls.generate_with_id(next_id, rng), next_id + 1

    def with_account_key(self, account_key: AccountKey | None) -> DeviceState:
        return replace(self, account_key=account_key)

    def add_one_time_prekeys(self, count: int, rng: p.Rng = p.random_bytes) -> DeviceState:
        """``count`` new one-time prekeys with the next ids."""
        if count < 0:
            raise UsageError("count must be non-negative")
        otps = dict(self.one_time_prekeys)
        next_id = self.next_prekey_id
        for _ in range(count):
            otp, next_id = self._allocate(OneTimePreKey, rng, next_id)
            otps[otp.key_id] = otp
        return replace(self, one_time_prekeys=otps, next_prekey_id=next_id)

    def remove_one_time_prekey(self, key_id: int) -> DeviceState:
        """The state without one-time prekey ``key_id`` (after its first successful use).
        Raises :class:`PreKeyConsumedError` if it is not held."""
        if key_id not in self.one_time_prekeys:
            raise PreKeyConsumedError(f"one-time prekey {key_id} is not held")
        otps = {k: v for k, v in self.one_time_prekeys.items() if k != key_id}
        return replace(self, one_time_prekeys=otps)

    def rotate_signed_prekey(self, rng: p.Rng = p.random_bytes) -> DeviceState:
        """A new signed prekey; the current one becomes the previous one (kept for sessions
        that were started against it) and the former previous one is deleted."""
        spk, next_id = self._allocate(SignedPreKey, rng, self.next_prekey_id)
        return replace(
            self, signed_prekey=spk, previous_signed_prekey=self.signed_prekey, next_prekey_id=next_id
        )

    def replace_last_resort_prekey(self, rng: p.Rng = p.random_bytes) -> DeviceState:
        """A new last-resort prekey; the current one becomes the previous one (kept for sessions
        that were started against it) and the former previous one is deleted."""
        last_resort, next_id = self._allocate(LastResortPreKey, rng, self.next_prekey_id)
        return replace(
            self,
            last_resort_prekey=last_resort,
            previous_last_resort_prekey=self.last_resort_prekey,
            next_prekey_id=next_id,
        )

    def drop_previous_prekeys(self) -> DeviceState:
        """The state without the previous signed and last-resort prekeys (their grace period is
        over): initial messages that name them are refused from now on."""
        return replace(self, previous_signed_prekey=None, previous_last_resort_prekey=None)

    @property
    def has_previous_prekeys(self) -> bool:
        return self.previous_signed_prekey is not None or self.previous_last_resort_prekey is not None

    def reusable_prekey_ids(self) -> frozenset[int]:
        """The ids of the prekeys that are not deleted on use (signed and last-resort, current and
        previous): the ones an initial message can name more than once."""
        keys = (
            self.signed_prekey,
            self.previous_signed_prekey,
            self.last_resort_prekey,
            self.previous_last_resort_prekey,
        )
        return frozenset(k.key_id for k in keys if k is not None)

    def find_signed_prekey(self, key_id: int) -> SignedPreKey | None:
        for spk in (self.signed_prekey, self.previous_signed_prekey):
            if spk is not None and spk.key_id == key_id:
                return spk
        return None

    def find_last_resort_prekey(self, key_id: int) -> LastResortPreKey | None:
        for lr in (self.last_resort_prekey, self.previous_last_resort_prekey):
            if lr is not None and lr.key_id == key_id:
                return lr
        return None

    def prekey_lookup(self) -> StatePreKeyLookup:
        """A read-only view with the ``signed_prekey(id)`` / ``one_time_prekey(id)`` /
        ``last_resort_prekey(id)`` methods that X3DH's responder uses
        (``saltline.crypto.x3dh.PreKeyLookup``)."""
        return StatePreKeyLookup(self)

    def encode(self) -> bytes:
        return encode(self)

    def __repr__(self) -> str:
        return (
            f"DeviceState(device={self.device_id.hex()}, account_key={'yes' if self.account_key else 'no'}, "
            f"spk={self.signed_prekey.key_id}, otps={len(self.one_time_prekeys)}, next={self.next_prekey_id})"
        )


class StatePreKeyLookup:
    """The private prekeys of a :class:`DeviceState`, looked up by id; ``None`` when not held.
    Looking up deletes nothing."""

    __slots__ = ("_state",)

    def __init__(self, state: DeviceState) -> None:
        self._state = state

    def signed_prekey(self, key_id: int) -> SignedPreKey | None:
        return self._state.find_signed_prekey(key_id)

    def one_time_prekey(self, key_id: int) -> OneTimePreKey | None:
        return self._state.one_time_prekeys.get(key_id)

    def last_resort_prekey(self, key_id: int) -> LastResortPreKey | None:
        return self._state.find_last_resort_prekey(key_id)


# -- generation ------------------------------------------------------------------------------------


def generate_device(
    *,
    account_key: AccountKey | None = None,
    one_time_prekeys: int = DEFAULT_ONE_TIME_PREKEYS,
    rng: p.Rng = p.random_bytes,
) -> DeviceState:
    """A fresh device. ``rng`` is drawn in this order (for test vectors): device id (16),
    signing key seed (32), DH key (32), signed prekey (32, id 1), last-resort prekey (32, id 2),
    then each one-time prekey (32, ids 3, 4, ...)."""
    device_id = rng(DEVICE_ID_SIZE)
    if len(device_id) != DEVICE_ID_SIZE:
        raise UsageError("rng returned a device id of the wrong size")
    signing = DeviceSigningKey.generate(rng)
    dh = DeviceDHKey.generate(rng)
    spk = SignedPreKey.generate_with_id(FIRST_PREKEY_ID, rng)
    last_resort = LastResortPreKey.generate_with_id(FIRST_PREKEY_ID + 1, rng)
    state = DeviceState(
        device_id=device_id,
        account_key=account_key,
        signing_key=signing,
        dh_key=dh,
        signed_prekey=spk,
        previous_signed_prekey=None,
        one_time_prekeys={},
        last_resort_prekey=last_resort,
        next_prekey_id=FIRST_PREKEY_ID + 2,
    )
    return state.add_one_time_prekeys(one_time_prekeys, rng)


# -- encoding -------------------------------------------------------------------------------------


def _prekey_doc(key: PreKey) -> dict[str, Any]:
    return {"id": key.key_id, "key": b64encode(bytes(key))}


def encode(state: DeviceState) -> bytes:
    """The canonical JSON encoding (UTF-8) of ``state`` in the current version."""
    doc: Document = {
        "format": FORMAT_NAME,
        "v": CURRENT_VERSION,
        "device_id": b64encode(state.device_id),
        "account_key": None if state.account_key is None else b64encode(bytes(state.account_key)),
        "device_signing_key": b64encode(bytes(state.signing_key)),
        "device_dh_key": b64encode(bytes(state.dh_key)),
        "signed_prekey": _prekey_doc(state.signed_prekey),
        "previous_signed_prekey": (
            None if state.previous_signed_prekey is None else _prekey_doc(state.previous_signed_prekey)
        ),
        "one_time_prekeys": [_prekey_doc(k) for k in state.one_time_prekeys.values()],
        "last_resort_prekey": _prekey_doc(state.last_resort_prekey),
        "previous_last_resort_prekey": (
            None
            if state.previous_last_resort_prekey is None
            else _prekey_doc(state.previous_last_resort_prekey)
        ),
        "next_prekey_id": state.next_prekey_id,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "utf-8"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EncodingError(f"duplicate field {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise EncodingError(f"invalid JSON constant {name}")


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EncodingError(f"{name} must be an integer in {low}..{high}")
    return value


def _bytes(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise EncodingError(f"{name} must be a base64url string")
    raw = b64decode(value)
    if len(raw) != size:
        raise EncodingError(f"{name} must decode to {size} bytes")
    return raw


def _prekey(value: Any, name: str, cls: type[_P]) -> _P:
    if not isinstance(value, dict) or set(value) != {"id", "key"}:
        raise EncodingError(f"{name} must be an object with exactly 'id' and 'key'")
    return cls(_int(value["id"], f"{name}.id", 0, MAX_PREKEY_ID), _bytes(value["key"], f"{name}.key", 32))


def _load(data: bytes | str) -> Document:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray | memoryview) else data
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, EncodingError):
            raise
        raise EncodingError("device state is not valid UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise EncodingError("device state must be a JSON object")
    return doc


def _migrate(doc: Document) -> Document:
    if doc.get("format") != FORMAT_NAME:
        raise EncodingError("not a saltline device state (wrong or missing 'format')")
    version = doc.get("v")
    if isinstance(version, bool) or not isinstance(version, int):
        raise EncodingError("device state version must be an integer")
    if version > CURRENT_VERSION or version < 1:
        raise StateVersionError(f"device state version {version} is not readable by this code")
    while version < CURRENT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StateVersionError(f"no migration from device state version {version}")
        doc = step(doc)
        if doc.get("v") != version + 1:
            raise StateVersionError(f"migration from version {version} did not produce version {version + 1}")
        version += 1
    return doc


def decode(data: bytes | str) -> DeviceState:
    """Parse a serialised state (any readable version; older ones are migrated)."""
    doc = _migrate(_load(data))
    if set(doc) != _FIELDS_V2:
        raise EncodingError("device state has missing or unknown fields")
    try:
        account_raw = doc["account_key"]
        otp_list = doc["one_time_prekeys"]
        if not isinstance(otp_list, list):
            raise EncodingError("one_time_prekeys must be a list")
        otps = [_prekey(item, "one_time_prekeys[]", OneTimePreKey) for item in otp_list]
        if any(a.key_id >= b.key_id for a, b in itertools.pairwise(otps)):
            raise EncodingError("one-time prekeys must be in strictly ascending id order")
        previous = doc["previous_signed_prekey"]
        previous_lr = doc["previous_last_resort_prekey"]
        return DeviceState(
            device_id=_bytes(doc["device_id"], "device_id", DEVICE_ID_SIZE),
            account_key=None if account_raw is None else AccountKey(_bytes(account_raw, "account_key", 32)),
            signing_key=DeviceSigningKey(_bytes(doc["device_signing_key"], "device_signing_key", 32)),
            dh_key=DeviceDHKey(_bytes(doc["device_dh_key"], "device_dh_key", 32)),
            signed_prekey=_prekey(doc["signed_prekey"], "signed_prekey", SignedPreKey),
            previous_signed_prekey=(
                None if previous is None else _prekey(previous, "previous_signed_prekey", SignedPreKey)
            ),
            one_time_prekeys={k.key_id: k for k in otps},
            last_resort_prekey=_prekey(doc["last_resort_prekey"], "last_resort_prekey", LastResortPreKey),
            next_prekey_id=_int(doc["next_prekey_id"], "next_prekey_id", 0, MAX_PREKEY_ID + 1),
            previous_last_resort_prekey=(
                None
                if previous_lr is None
                else _prekey(previous_lr, "previous_last_resort_prekey", LastResortPreKey)
            ),
        )
    except InvalidKeyError as exc:
        raise EncodingError("device state holds an unusable key") from exc
