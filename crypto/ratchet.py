"""Double Ratchet (Signal specification) over XChaCha20-Poly1305 (IETF).

A :class:`Session` is one side of a pairwise session between two devices, started from the
output of :mod:`saltline.crypto.x3dh`. It gives forward secrecy (a state snapshot cannot decrypt
messages that were already read) and post-compromise security (once both sides have stepped
the DH ratchet, a stolen state no longer decrypts new messages).

Parameters
----------
* ``DH``: X25519 (:func:`saltline.crypto.primitives.x25519`; low-order keys and all-zero outputs refused).
* ``KDF_RK(rk, dh_out)``: ``HKDF-SHA256(ikm = dh_out, salt = rk, info = "Saltline ratchet v1",
  length = 64)``; bytes 0..31 are the new root key, bytes 32..63 the new chain key.
* ``KDF_CK(ck)``: ``mk = HMAC-SHA256(ck, 0x01)``, ``ck' = HMAC-SHA256(ck, 0x02)``.
* AEAD key: ``HKDF-SHA256(ikm = mk, salt = 0x00 * 32, info = "Saltline message key v2",
  length = 32)`` (:func:`message_key`).
* AEAD nonce: 24 bytes drawn from the session's ``rng`` for every message and sent in the
  header. The nonce does **not** depend on ``mk``: a session restored from an older snapshot
  (a crash before the state was persisted, a backup, a cloned phone) re-derives the same
  ``mk`` for the same slot, but encrypts under a fresh random nonce, so no (key, nonce) pair is
  ever used twice (XChaCha20's 192-bit nonces make random nonces safe). A deterministic ``rng``
  is for test vectors only: restoring a snapshot together with the same deterministic ``rng``
  repeats nonces.
* AEAD: XChaCha20-Poly1305 (IETF), 16-byte tag appended to the ciphertext.
* ``MAX_SKIP = 1000``: most message keys one message may make the receiver derive and store,
  counted over both chains when it starts a new chain (the rest of the current receiving chain
  up to ``PN`` plus ``N`` keys of the new chain).
* ``MAX_STORED_SKIPPED = 2000``: most skipped message keys held; beyond it, the oldest
  (in insertion order) are discarded.
* ``MAX_PREVIOUS_CHAINS = 5``: how many of the peer's former ratchet keys are remembered to
  report a replay from an older chain as :class:`~saltline.crypto.errors.DuplicateMessageError`.
* Counter ranges: the counters ``Ns``, ``Nr`` and ``PN`` are at most ``MAX_COUNTER = 2**32 - 2``
  and a message number ``N`` at most ``MAX_MESSAGE_NUMBER = 2**32 - 3`` (so that ``N + 1``
  is a valid counter); ``0xFFFFFFFF`` is never valid. A sending chain that reaches
  ``MAX_COUNTER`` messages refuses to encrypt until the next DH ratchet step.

Initialisation (``SK``, ``AD`` and ``SPK_B`` come from X3DH)
------------------------------------------------------------
* Initiator: ``DHs = EphemeralKey(rng(32))``; ``RK, CKs = KDF_RK(SK, DH(DHs, SPK_B))``;
  ``DHr = SPK_B``; ``CKr = none``; ``Ns = Nr = PN = 0``. Until it has decrypted one message from
  the responder, :attr:`Session.pending_initial_header` holds the X3DH initial header that the
  caller MUST send with every message.
* Responder: ``DHs = SPK_B`` key pair; ``RK = SK``; ``DHr = CKs = CKr = none``. It cannot
  encrypt before it has decrypted the first message (:func:`accept` does both at once).

Randomness: :meth:`Session.encrypt` draws exactly one ``rng(24)`` (the nonce);
:meth:`Session.decrypt` draws one ``rng(32)`` (the new ratchet key) when, and only when, a
message that starts a new peer chain decrypted; nothing else draws.

Message layout, version 2 (integers big endian)::

    message = header (65) || AEAD ciphertext (len(plaintext) + 16)
    header  = version (1, 0x02) || DHs public key (32, raw X25519) || PN (u32) || N (u32)
              || nonce (24)

    offset  size  field
         0     1  version = 0x02
         1    32  sender's current ratchet public key (raw X25519, not low-order)
        33     4  PN: number of messages in the sender's previous sending chain (<= 2**32 - 2)
        37     4  N: message number in the current sending chain (<= 2**32 - 3)
        41    24  XChaCha20-Poly1305 nonce (random)

Header decoding (:meth:`MessageHeader.decode`, the only header parser) is strict: wrong length,
another version, a low-order ratchet key or a counter out of range raise
:class:`~saltline.crypto.errors.EncodingError` (reported by :meth:`Session.decrypt` as
:class:`~saltline.crypto.errors.DecryptionError`).

AEAD associated data::

    aead_ad = AD (session AD from X3DH, 168 bytes) || header (65) || associated_data (caller's)

The caller passes the envelope header as ``associated_data`` so that any change the server
makes to routing data, clocks or counters fails authentication. ``AD`` and the header have
fixed sizes, so the concatenation is unambiguous; the header (nonce included) is authenticated.

Receiving (:meth:`Session.decrypt`) follows the specification's ``RatchetDecrypt``:
try a stored skipped key; else, for the current chain, skip to ``N``; else, for a new peer
ratchet key, skip the current chain to ``PN``, step the DH ratchet, skip to ``N``.
The skip bounds are checked from the header alone, before any key derivation or DH, so a
forged message costs at most one X25519 and ``MAX_SKIP + 1`` chain steps.
Everything is computed into local variables and **committed only after the AEAD tag
verifies**: a failed decryption (any exception) leaves the state byte-for-byte unchanged and
draws no randomness. The sending half of a DH ratchet step (a new ``DHs`` from ``rng(32)``,
then ``RK, CKs = KDF_RK(RK, DH(DHs, DHr))``) runs after the tag verifies, which yields
exactly the specification's outputs.

Errors (all leave the state unchanged): a malformed or altered message or associated data:
:class:`~saltline.crypto.errors.DecryptionError`; a message whose key is no longer held (already
decrypted, or evicted beyond ``MAX_STORED_SKIPPED``, as in libsignal) in the current chain or
one of the ``MAX_PREVIOUS_CHAINS`` former chains: :class:`~saltline.crypto.errors.DuplicateMessageError`
(a replay from an older chain fails as a plain :class:`~saltline.crypto.errors.DecryptionError`);
a gap larger than ``MAX_SKIP``: :class:`~saltline.crypto.errors.TooManySkippedError`.

Serialised state (:meth:`Session.to_bytes`), version 1, integers big endian::

    version      1   0x01 (other values: StateVersionError)
    flags        1   bit0 DHr present, bit1 CKs present (needs bit0), bit2 CKr present
                     (needs bit0), bit3 pending initial header present; other bits MUST be 0
    RK          32
    DHs private 32   (the public key is recomputed on load)
    base key    32   EK_A of the X3DH run
    Ns, Nr, PN  3 x u32, each <= MAX_COUNTER (2**32 - 2)
    DHr         32   if bit0 (not low-order)
    CKs         32   if bit1
    CKr         32   if bit2
    init header 128  if bit3 (saltline.crypto.x3dh.InitialHeader encoding)
    AD length   u16, MUST be 168, then AD = identity(initiator) || identity(responder), each
                half a valid saltline.crypto.x3dh.DeviceIdentity encoding
    previous    u8 count (<= MAX_PREVIOUS_CHAINS), then count x 32-byte peer ratchet keys
                (not low-order), oldest first
    skipped     u16 count (<= MAX_STORED_SKIPPED), then count x (ratchet key 32 (not
                low-order) || N u32 (<= MAX_MESSAGE_NUMBER) || mk 32), oldest first; no
                (ratchet key, N) twice
    nothing after; anything else raises EncodingError.

Python cannot erase memory: keys dropped from the state are left to the garbage collector.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from saltline.crypto import primitives as p
from saltline.crypto import ratchet_state as state
from saltline.crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    EncodingError,
    SessionSetupError,
    TooManySkippedError,
    UsageError,
)
from saltline.crypto.keys import EphemeralKey
from saltline.crypto.ratchet_state import (
    MAX_COUNTER,
    MAX_MESSAGE_NUMBER,
    MAX_PREVIOUS_CHAINS,
    MAX_STORED_SKIPPED,
    STATE_VERSION,
)
from saltline.crypto.x3dh import (
    DeviceIdentity,
    DeviceIdentityKeys,
    InitialHeader,
    InitiatorResult,
    PreKeyLookup,
    ResponderResult,
    TrustPolicy,
    respond,
)

__all__ = [
    "HEADER_SIZE",
    "HEADER_VERSION",
    "MAX_COUNTER",
    "MAX_MESSAGE_NUMBER",
    "MAX_PREVIOUS_CHAINS",
    "MAX_SKIP",
    "MAX_STORED_SKIPPED",
    "MESSAGE_KEY_INFO",
    "NONCE_SIZE",
    "RATCHET_INFO",
    "STATE_VERSION",
    "Accepted",
    "MessageHeader",
    "Session",
    "accept",
    "kdf_ck",
    "kdf_rk",
    "message_key",
]

MAX_SKIP = 1000
HEADER_VERSION = 2
RATCHET_INFO = b"Saltline ratchet v1"
MESSAGE_KEY_INFO = b"Saltline message key v2"
NONCE_SIZE = p.AEAD_NONCE_SIZE  # 24
_ZERO_SALT = bytes(32)
_HEADER = struct.Struct(">B32sII24s")
HEADER_SIZE = _HEADER.size  # 65
_MIN_MESSAGE = HEADER_SIZE + p.AEAD_TAG_SIZE


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """``KDF_RK``: (new root key, new chain key)."""
    out = p.hkdf_sha256(dh_out, salt=rk, info=RATCHET_INFO, length=64)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """``KDF_CK``: (message key, next chain key)."""
    return p.hmac_sha256(ck, b"\x01"), p.hmac_sha256(ck, b"\x02")


def message_key(mk: bytes) -> bytes:
    """The 32-byte AEAD key for a message key (the nonce is random and sent in the header)."""
    return p.hkdf_sha256(mk, salt=_ZERO_SALT, info=MESSAGE_KEY_INFO, length=p.AEAD_KEY_SIZE)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The 65-byte ratchet header (layout in the module docstring). Construction checks every
    field and raises :class:`~saltline.crypto.errors.EncodingError`; :meth:`decode` is the only parser
    of headers (used by :meth:`Session.decrypt`)."""

    ratchet_key: bytes
    previous_chain_length: int
    message_number: int
    nonce: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.ratchet_key, bytes) or len(self.ratchet_key) != p.X25519_KEY_SIZE:
            raise EncodingError("ratchet key must be 32 bytes")
        if p.is_low_order_x25519(self.ratchet_key):
            raise EncodingError("ratchet key is a low-order point")
        if not _is_int(self.previous_chain_length) or not 0 <= self.previous_chain_length <= MAX_COUNTER:
            raise EncodingError(f"previous chain length must be in 0..{MAX_COUNTER}")
        if not _is_int(self.message_number) or not 0 <= self.message_number <= MAX_MESSAGE_NUMBER:
            raise EncodingError(f"message number must be in 0..{MAX_MESSAGE_NUMBER}")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise EncodingError(f"nonce must be {NONCE_SIZE} bytes")

    def encode(self) -> bytes:
        return _HEADER.pack(
            HEADER_VERSION, self.ratchet_key, self.previous_chain_length, self.message_number, self.nonce
        )

    @classmethod
    def decode(cls, data: bytes) -> MessageHeader:
        data = bytes(data)
        if len(data) != HEADER_SIZE:
            raise EncodingError(f"ratchet header must be {HEADER_SIZE} bytes")
        version, key, pn, n, nonce = _HEADER.unpack(data)
        if version != HEADER_VERSION:
            raise EncodingError(f"unsupported ratchet header version {version}")
        return cls(key, pn, n, nonce)


def _open(mk: bytes, header: MessageHeader, ciphertext: bytes, ad: bytes) -> bytes:
    return p.aead_decrypt(message_key(mk), header.nonce, ciphertext, ad)


class Session:
    """One side of a Double Ratchet session. Not thread-safe; persist :meth:`to_bytes` after
    every successful :meth:`encrypt` or :meth:`decrypt`."""

    __slots__ = (
        "_ad",
        "_base_key",
        "_ckr",
        "_cks",
        "_dhr",
        "_dhs_priv",
        "_dhs_pub",
        "_initial_header",
        "_nr",
        "_ns",
        "_pn",
        "_previous",
        "_rk",
        "_rng",
        "_skipped",
    )

    def __init__(
        self,
        *,
        rk: bytes,
        dhs_priv: bytes,
        dhs_pub: bytes,
        dhr: bytes | None,
        cks: bytes | None,
        ckr: bytes | None,
        ns: int,
        nr: int,
        pn: int,
        ad: bytes,
        base_key: bytes,
        initial_header: bytes | None,
        previous: list[bytes],
        skipped: dict[tuple[bytes, int], bytes],
        rng: p.Rng,
    ) -> None:
        """Internal: use :meth:`initiate`, :meth:`respond`, :func:`accept` or :meth:`from_bytes`."""
        self._rk = rk
        self._dhs_priv = dhs_priv
        self._dhs_pub = dhs_pub
        self._dhr = dhr
        self._cks = cks
        self._ckr = ckr
        self._ns = ns
        self._nr = nr
        self._pn = pn
        self._ad = ad
        self._base_key = base_key
        self._initial_header = initial_header
        self._previous = previous
        self._skipped = skipped
        self._rng = rng

    # -- construction ---------------------------------------------------------------

    @classmethod
    def initiate(cls, x3dh: InitiatorResult, rng: p.Rng = p.random_bytes) -> Session:
        """The initiator's session (draws one ``rng(32)`` for its first ratchet key)."""
        dhs = EphemeralKey.generate(rng)
        spk = bytes(x3dh.remote_ratchet_key)
        rk, cks = kdf_rk(x3dh.shared_key, dhs.dh(x3dh.remote_ratchet_key))
        return cls(
            rk=rk,
            dhs_priv=bytes(dhs),
            dhs_pub=bytes(dhs.public_key),
            dhr=spk,
            cks=cks,
            ckr=None,
            ns=0,
            nr=0,
            pn=0,
            ad=x3dh.associated_data,
            base_key=x3dh.base_key,
            initial_header=x3dh.header.encode(),
            previous=[],
            skipped={},
            rng=rng,
        )

    @classmethod
    def respond(cls, x3dh: ResponderResult, rng: p.Rng = p.random_bytes) -> Session:
        """The responder's session; it must decrypt the first message before it can send.
        Prefer :func:`accept`, which also decrypts the first message."""
        spk = x3dh.signed_prekey
        return cls(
            rk=x3dh.shared_key,
            dhs_priv=bytes(spk),
            dhs_pub=bytes(spk.public_key),
            dhr=None,
            cks=None,
            ckr=None,
            ns=0,
            nr=0,
            pn=0,
            ad=x3dh.associated_data,
            base_key=x3dh.base_key,
            initial_header=None,
            previous=[],
            skipped={},
            rng=rng,
        )

    # -- properties -----------------------------------------------------------------

    @property
    def associated_data(self) -> bytes:
        """The session AD from X3DH: ``identity(initiator) || identity(responder)``."""
        return self._ad

    @property
    def base_key(self) -> bytes:
        """``EK_A`` of the X3DH run that started this session (to match repeated initial headers)."""
        return self._base_key

    @property
    def pending_initial_header(self) -> bytes | None:
        """Initiator only: the encoded X3DH initial header to send with every message until a
        message from the responder has decrypted; then ``None``."""
        return self._initial_header

    @property
    def can_send(self) -> bool:
        return self._cks is not None

    @property
    def stored_skipped_keys(self) -> int:
        return len(self._skipped)

    # -- messages -------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """Encrypt ``plaintext``; returns ``header || ciphertext``. ``associated_data`` (the
        envelope header) is authenticated, not sent. Draws one ``rng(24)``: the nonce."""
        cks = self._cks
        if cks is None:
            raise SessionSetupError("the responder cannot send before it has decrypted a message")
        if self._ns >= MAX_COUNTER:
            raise CryptoError("sending chain exhausted")
        nonce = self._rng(NONCE_SIZE)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise UsageError(f"rng must return {NONCE_SIZE} bytes")
        mk, next_ck = kdf_ck(cks)
        header = MessageHeader(self._dhs_pub, self._pn, self._ns, nonce).encode()
        ciphertext = p.aead_encrypt(message_key(mk), nonce, plaintext, self._ad + header + associated_data)
        self._cks = next_ck
        self._ns += 1
        return header + ciphertext

    def decrypt(self, message: bytes, associated_data: bytes = b"") -> bytes:
        """Decrypt a message from :meth:`encrypt` of the other side. On any failure the state is
        unchanged (see the module docstring for the errors)."""
        message = bytes(message)
        if len(message) < _MIN_MESSAGE:
            raise DecryptionError("message is too short")
        raw_header = message[:HEADER_SIZE]
        try:
            header = MessageHeader.decode(raw_header)
        except EncodingError as exc:
            raise DecryptionError(f"malformed message header: {exc}") from exc
        dh, n = header.ratchet_key, header.message_number
        ciphertext = message[HEADER_SIZE:]
        ad = self._ad + raw_header + bytes(associated_data)

        mk = self._skipped.get((dh, n))
        if mk is not None:
            plaintext = _open(mk, header, ciphertext, ad)
            del self._skipped[(dh, n)]
            self._initial_header = None
            return plaintext

        if dh == self._dhr:
            ck = self._ckr
            if ck is None:
                raise DecryptionError("no receiving chain for this ratchet key")
            nr = self._nr
            if n < nr:
                raise DuplicateMessageError("message key already used or discarded")
            if n - nr > MAX_SKIP:
                raise TooManySkippedError(f"message skips more than {MAX_SKIP} keys")
            new_skipped: list[tuple[bytes, int, bytes]] = []
            for i in range(nr, n):
                skipped_mk, ck = kdf_ck(ck)
                new_skipped.append((dh, i, skipped_mk))
            mk, ck = kdf_ck(ck)
            plaintext = _open(mk, header, ciphertext, ad)
            # -- commit --
            self._ckr = ck
            self._nr = n + 1
            if new_skipped:
                self._store_skipped(new_skipped)
            self._initial_header = None
            return plaintext

        if dh in self._previous:
            raise DuplicateMessageError("message key from a former chain already used or discarded")
        return self._decrypt_new_chain(header, ciphertext, ad)

    def _decrypt_new_chain(self, header: MessageHeader, ciphertext: bytes, ad: bytes) -> bytes:
        dh, pn, n = header.ratchet_key, header.previous_chain_length, header.message_number
        old_dhr = self._dhr
        ck = self._ckr
        # Bound the work before doing any: keys skipped in the current chain plus in the new one.
        old_skip = max(0, pn - self._nr) if ck is not None and old_dhr is not None else 0
        if old_skip + n > MAX_SKIP:
            raise TooManySkippedError(f"message skips more than {MAX_SKIP} keys")
        new_skipped: list[tuple[bytes, int, bytes]] = []
        if ck is not None and old_dhr is not None:
            for i in range(self._nr, self._nr + old_skip):
                skipped_mk, ck = kdf_ck(ck)
                new_skipped.append((old_dhr, i, skipped_mk))
        try:
            dh_out = p.x25519(self._dhs_priv, dh)
        except CryptoError as exc:
            raise DecryptionError("unusable ratchet key") from exc
        rk, ck = kdf_rk(self._rk, dh_out)
        for i in range(n):
            skipped_mk, ck = kdf_ck(ck)
            new_skipped.append((dh, i, skipped_mk))
        mk, ck = kdf_ck(ck)
        plaintext = _open(mk, header, ciphertext, ad)
        # -- the tag verified: the sending half of the DH ratchet step, then commit --
        dhs = EphemeralKey.generate(self._rng)
        rk, cks = kdf_rk(rk, p.x25519(bytes(dhs), dh))
        if old_dhr is not None:
            self._previous.append(old_dhr)
            if len(self._previous) > MAX_PREVIOUS_CHAINS:
                del self._previous[0]
        self._dhr = dh
        self._ckr = ck
        self._nr = n + 1
        self._pn = self._ns
        self._ns = 0
        self._cks = cks
        self._rk = rk
        self._dhs_priv = bytes(dhs)
        self._dhs_pub = bytes(dhs.public_key)
        if new_skipped:
            self._store_skipped(new_skipped)
        self._initial_header = None
        return plaintext

    def _store_skipped(self, entries: list[tuple[bytes, int, bytes]]) -> None:
        skipped = self._skipped
        for dh, i, mk in entries:
            skipped[(dh, i)] = mk
        excess = len(skipped) - MAX_STORED_SKIPPED
        if excess > 0:
            for key in list(skipped)[:excess]:  # insertion order: oldest first
                del skipped[key]

    # -- serialisation --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The whole private state (secret!), canonical and versioned (layout in the module
        docstring; encoding in :mod:`saltline.crypto.ratchet_state`). ``from_bytes(to_bytes())``
        round-trips exactly."""
        return state.encode(
            state.SessionFields(
                self._rk,
                self._dhs_priv,
                self._dhs_pub,
                self._dhr,
                self._cks,
                self._ckr,
                self._ns,
                self._nr,
                self._pn,
                self._ad,
                self._base_key,
                self._initial_header,
                self._previous,
                self._skipped,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes, rng: p.Rng = p.random_bytes) -> Session:
        """Inverse of :meth:`to_bytes`. Raises :class:`~saltline.crypto.errors.StateVersionError` for an
        unknown version and :class:`~saltline.crypto.errors.EncodingError` for anything malformed."""
        f = state.decode(data)
        return cls(
            rk=f.rk,
            dhs_priv=f.dhs_priv,
            dhs_pub=f.dhs_pub,
            dhr=f.dhr,
            cks=f.cks,
            ckr=f.ckr,
            ns=f.ns,
            nr=f.nr,
            pn=f.pn,
            ad=f.ad,
            base_key=f.base_key,
            initial_header=f.initial_header,
            previous=f.previous,
            skipped=f.skipped,
            rng=rng,
        )

    def copy(self) -> Session:
        """An independent copy (what ``from_bytes(to_bytes())`` gives, without re-parsing and
        re-checking the keys): encrypting or decrypting with one never changes the other."""
        return Session(
            rk=self._rk,
            dhs_priv=self._dhs_priv,
            dhs_pub=self._dhs_pub,
            dhr=self._dhr,
            cks=self._cks,
            ckr=self._ckr,
            ns=self._ns,
            nr=self._nr,
            pn=self._pn,
            ad=self._ad,
            base_key=self._base_key,
            initial_header=self._initial_header,
            previous=list(self._previous),
            skipped=dict(self._skipped),
            rng=self._rng,
        )

    def __repr__(self) -> str:
        return f"Session(base_key={self._base_key[:8].hex()}, ns={self._ns}, nr={self._nr}, <secret>)"


@dataclass(frozen=True, slots=True, repr=False)
class Accepted:
    """Outcome of :func:`accept`. The caller MUST, in one transaction, persist ``session`` and
    delete the one-time prekey ``one_time_prekey_id`` (if not ``None``). ``initiator`` was
    accepted by the caller's ``trusted`` policy before anything was decrypted."""

    session: Session
    plaintext: bytes
    initiator: DeviceIdentity
    one_time_prekey_id: int | None

    def __repr__(self) -> str:
        initiator = self.initiator.device_id.hex()
        return f"Accepted(initiator={initiator}, one_time_prekey_id={self.one_time_prekey_id})"


def accept(
    local: DeviceIdentityKeys,
    prekeys: PreKeyLookup,
    initial_header: bytes | InitialHeader,
    message: bytes,
    associated_data: bytes = b"",
    rng: p.Rng = p.random_bytes,
    *,
    trusted: TrustPolicy,
) -> Accepted:
    """Responder: check the initiator named by ``initial_header`` against ``trusted``, run
    X3DH and decrypt the first ``message``.

    ``trusted`` (required) is the :class:`~saltline.crypto.device_list.DeviceEntry` the initiator must
    match (device id, signing key and X25519 key), or a callable that returns ``True`` exactly
    for identities found in a device list the caller verified (see
    :func:`saltline.crypto.x3dh.trust_device_lists`). An initiator it refuses raises
    :class:`~saltline.crypto.errors.UntrustedDeviceError` before any DH, decryption or randomness.

    Has no side effect: on any error (:class:`~saltline.crypto.errors.EncodingError`,
    :class:`~saltline.crypto.errors.SessionSetupError` and its subclasses,
    :class:`~saltline.crypto.errors.DecryptionError`) nothing is consumed, no plaintext is returned and
    no session exists."""
    header = initial_header
    if not isinstance(header, InitialHeader):
        header = InitialHeader.decode(header)
    result = respond(local, prekeys, header, trusted=trusted)
    session = Session.respond(result, rng)
    plaintext = session.decrypt(message, associated_data)
    return Accepted(session, plaintext, result.initiator, result.one_time_prekey_id)
