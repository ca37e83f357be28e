"""Per-device message format (docs/protocol/messages.md): padding, the envelope associated data,
and encrypting/decrypting one per-device ciphertext with the pairwise ratchet sessions. (Clocks
and operations are in :mod:`saltline.client_sdk.core.sync`.)

Pure: randomness is passed in (``rng``), nothing is read from a clock or the network.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saltline.client_sdk.errors import DecryptError, ReplayedPreKeyMessageError
from saltline.crypto import primitives as p
from saltline.crypto.device_list import DeviceEntry
from saltline.crypto.errors import CryptoError, DuplicateMessageError
from saltline.crypto.keys import KeyKind
from saltline.crypto.private_state import DeviceState
from saltline.crypto.ratchet import Session, accept
from saltline.crypto.x3dh import (
    IDENTITY_ENCODED_SIZE,
    INITIAL_HEADER_SIZE,
    DeviceIdentityKeys,
    InitialHeader,
    PreKeyBundle,
    TrustPolicy,
    initiate,
)

FORMAT_VERSION = 0x01
KIND_PREKEY = 0x01
KIND_RATCHET = 0x02
AD_LABEL = b"saltline/v1/envelope-ad"
SEEN_BASE_KEY_LABEL = b"saltline/v1/seen-base-key"
MIN_BUCKET = 256
_U32 = struct.Struct(">I")


# -- padding ---------------------------------------------------------------------------------------


def pad(body: bytes) -> bytes:
    """ISO/IEC 7816-4 padding (``0x80`` then zeros) to the next power-of-two bucket >= 256 bytes."""
    size = MIN_BUCKET
    while size < len(body) + 1:
        size *= 2
    return body + b"\x80" + bytes(size - len(body) - 1)


def unpad(padded: bytes) -> bytes:
    end = padded.rstrip(b"\x00")
    if not end or end[-1] != 0x80:
        raise DecryptError("bad message padding")
    return end[:-1]


# -- envelope associated data ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The routing data every per-device ciphertext authenticates (raw bytes)."""

    conversation_id: bytes
    envelope_id: bytes
    sender_account_id: bytes
    sender_device_id: bytes
    clock: bytes
    ephemeral: bool = False  # the envelope's "ephemeral" flag (typing): bound, so not flippable

    def associated_data(self, recipient_device_id: bytes) -> bytes:
        fields = (
            self.conversation_id,
            self.envelope_id,
            self.sender_account_id,
            self.sender_device_id,
            recipient_device_id,
            self.clock,
            b"\x01" if self.ephemeral else b"\x00",
        )
        return AD_LABEL + b"".join(_U32.pack(len(f)) + f for f in fields)


# -- per-device ciphertexts -----------------------------------------------------------------------


def identity_keys(state: DeviceState) -> DeviceIdentityKeys:
    return DeviceIdentityKeys(state.device_id, state.signing_key, state.dh_key)


@dataclass(frozen=True, slots=True)
class Encrypted:
    ciphertext: bytes
    session: Session


def encrypt_to_device(
    local: DeviceIdentityKeys | None,
    session: Session | None,
    bundle: PreKeyBundle | None,
    trusted: DeviceEntry,
    padded: bytes,
    associated_data: bytes,
    rng: p.Rng,
) -> Encrypted:
    """Encrypt for one device: with its existing ``session``, or a new one from ``bundle`` (which
    must match ``trusted``, the device's entry in a verified list). Returns the ciphertext and the
    advanced session (the caller persists it before sending)."""
    if session is None:
        if bundle is None or local is None:
            raise ValueError("a new session needs a bundle and this device's keys")
        session = Session.initiate(initiate(local, bundle, trusted, rng), rng)
    initial = session.pending_initial_header
    prefix = bytes([FORMAT_VERSION, KIND_PREKEY if initial is not None else KIND_RATCHET])
    # the wrapper's version and kind bytes are bound too (messages.md § 2)
    message = session.encrypt(padded, associated_data + prefix)
    if initial is not None:
        return Encrypted(prefix + initial + message, session)
    return Encrypted(prefix + message, session)


def session_binds(session: Session, own: DeviceIdentityKeys | bytes, peer: DeviceEntry) -> bool:
    """Whether ``session`` was set up between this device and exactly the device ``peer`` names
    (its id and both identity keys, from a verified device list). A session is used to encrypt or
    decrypt only for the account and device entry it binds: a device id that another account's
    list also names (a server that registers a victim's device id under its own account), or an
    entry whose keys changed, never reaches an existing session (docs/protocol/messages.md § 4.4).
    The session's associated data is the two X3DH identities (initiator || responder). ``own``: this
    device's keys, or the encoding of its public identity (``DeviceIdentity.encode``)."""
    ad = session.associated_data
    first, second = ad[:IDENTITY_ENCODED_SIZE], ad[IDENTITY_ENCODED_SIZE:]
    mine = own if isinstance(own, bytes) else own.public.encode()
    # DeviceIdentity.encode's layout: encode(IS) || encode(IK) || device_id
    theirs = peer.signing_key.encode() + peer.dh_key.encode() + peer.device_id
    return (first, second) in ((mine, theirs), (theirs, mine))


#: Whether this device already accepted an initial message with this (reusable prekey id, base
#: key digest); see :func:`reusable_prekey_use`.
SeenBaseKeys = Callable[[int, bytes], bool]


def seen_base_key_digest(prekey_id: int, base_key: bytes) -> bytes:
    """``SHA-256("saltline/v1/seen-base-key" || u32(prekey_id) || base_key)``: what the store keeps
    of an accepted initial message that named a reusable prekey (docs/protocol/session-setup.md
    § 6.2)."""
    return p.sha256(SEEN_BASE_KEY_LABEL + _U32.pack(prekey_id) + bytes(base_key))


def reusable_prekey_use(header: InitialHeader) -> tuple[int, bytes] | None:
    """``(prekey id, digest)`` for an initial header that used no one-time prekey: the
    last-resort prekey's id, or the signed prekey's id when the header names no other prekey.
    ``None`` for a header that used a one-time prekey (deleted on use, so it cannot be replayed)."""
    kind = header.one_time_prekey_kind
    if kind == KeyKind.ONE_TIME_PREKEY:
        return None
    if kind == KeyKind.LAST_RESORT_PREKEY:
        assert header.one_time_prekey_id is not None
        prekey_id = header.one_time_prekey_id
    else:
        prekey_id = header.signed_prekey_id
    return prekey_id, seen_base_key_digest(prekey_id, bytes(header.ephemeral_key))


@dataclass(frozen=True, slots=True)
class Decrypted:
    padded: bytes
    session: Session
    base_key: bytes
    one_time_prekey_id: int | None
    #: ``(prekey id, digest)`` when this message set up a new session without a one-time prekey:
    #: the caller records it (store ``add_seen_base_key``) in the transaction that stores the session.
    reusable_prekey_use: tuple[int, bytes] | None = None


def decrypt_from_device(
    state: DeviceState,
    sessions: Sequence[Session],
    ciphertext: bytes,
    associated_data: bytes,
    trusted: TrustPolicy,
    rng: p.Rng,
    seen: SeenBaseKeys | None = None,
) -> Decrypted:
    """Decrypt one per-device ciphertext with the sessions held for the sending device (or a new
    session from a prekey message, accepted only from a device ``trusted`` names). ``sessions`` are
    never modified: the advanced session returned is a copy. Raises
    :class:`DecryptError` (duplicates included: ``DecryptError`` whose cause is
    ``DuplicateMessageError``).

    ``seen(prekey_id, digest)`` says whether an initial message with this reusable prekey and base
    key was already accepted (:func:`reusable_prekey_use`); such a message that matches no held
    session is a replay and raises :class:`ReplayedPreKeyMessageError` (a ``DecryptError``)
    before any key agreement. ``None`` checks nothing (the caller keeps no seen set)."""
    if len(ciphertext) < 2 or ciphertext[0] != FORMAT_VERSION:
        raise DecryptError("unsupported per-device message version")
    kind, body = ciphertext[1], ciphertext[2:]
    associated_data = bytes(associated_data) + bytes(ciphertext[:2])  # version and kind are bound
    last: CryptoError | None = None
    if kind == KIND_PREKEY:
        if len(body) < INITIAL_HEADER_SIZE:
            raise DecryptError("prekey message too short")
        raw_header, message = body[:INITIAL_HEADER_SIZE], body[INITIAL_HEADER_SIZE:]
        try:
            header = InitialHeader.decode(raw_header)
        except CryptoError as exc:
            raise DecryptError(f"malformed initial header: {exc}") from exc
        base_key = bytes(header.ephemeral_key)
        for session in sessions:
            if session.base_key == base_key:
                return _decrypt_existing(session, message, associated_data, rng)
        use = reusable_prekey_use(header)
        if use is not None and seen is not None and seen(*use):
            raise ReplayedPreKeyMessageError(
                f"replayed initial message: base key already accepted with prekey {use[0]}; refused"
            )
        try:
            accepted = accept(
                identity_keys(state),
                state.prekey_lookup(),
                header,
                message,
                associated_data,
                rng,
                trusted=trusted,
            )
        except CryptoError as exc:
            raise DecryptError(f"could not start a session: {exc}") from exc
        return Decrypted(accepted.plaintext, accepted.session, base_key, accepted.one_time_prekey_id, use)
    if kind != KIND_RATCHET:
        raise DecryptError(f"unknown per-device message kind {kind}")
    for session in sessions:
        try:
            return _decrypt_existing(session, body, associated_data, rng)
        except DecryptError as exc:
            if isinstance(exc.__cause__, DuplicateMessageError):
                raise
            last = exc.__cause__ if isinstance(exc.__cause__, CryptoError) else None
    raise DecryptError(f"no session with the sending device decrypts this message ({last})")


def _decrypt_existing(session: Session, message: bytes, ad: bytes, rng: p.Rng) -> Decrypted:
    copy = session.copy()
    try:
        plaintext = copy.decrypt(message, ad)
    except CryptoError as exc:
        raise DecryptError(f"decryption failed: {exc}") from exc
    return Decrypted(plaintext, copy, copy.base_key, None)
