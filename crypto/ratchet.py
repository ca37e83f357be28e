"""Double Ratchet (Signal specification) over XChaCha20-Poly1305 (IETF).

A :class:`Session` is one side of a pairwise session between two devices, started from the
output of :mod:`saltline.crypto.x3dh`. It gives forward secrecy (a state snapshot cannot decrypt
messages that were already read) and post-compromise security (once both sides have stepped
the DH ratchet, a stolen state no longer decrypts new messages).

Parameters
----------
* ``DH``: X25519 (:func:`saltline.crypto.primitives.x25519`; low-order keys and all-zero outputs refused).
* Key derivation (``KDF_RK``, ``KDF_CK``, the AEAD key), random 24-byte nonces and the AEAD
  (XChaCha20-Poly1305, IETF): :mod:`saltline.crypto.ratchet_message`.
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

Messages: ``header (65) || AEAD ciphertext``; the header layout, its strict decoding
(:meth:`MessageHeader.decode`) and the AEAD associated data
(``AD || header || associated_data``) are in :mod:`saltline.crypto.ratchet_message`.

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

Serialised state (:meth:`Session.to_bytes`, :meth:`Session.from_bytes`): version 1, layout and
checks in :mod:`saltline.crypto.ratchet_state`.

Python cannot erase memory: keys dropped from the state are left to the garbage collector.
"""

from __future__ import annotations

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
from saltline.crypto.ratchet_message import (
    HEADER_SIZE,
    HEADER_VERSION,
    MESSAGE_KEY_INFO,
    NONCE_SIZE,
    RATCHET_INFO,
    MessageHeader,
    kdf_ck,
    kdf_rk,
    message_key,
)
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
_MIN_MESSAGE = HEADER_SIZE + p.AEAD_TAG_SIZE


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
