"""The one error hierarchy of :mod:`crypto`.

Every failure raised by this package is a :class:`CryptoError`. Callers that only
need "did the cryptography accept this?" catch :class:`CryptoError`; callers that
react differently (ask the server for a fresh device list, drop a duplicate,
re-establish a session) catch the specific class. Each class says when it is raised.
Messages never contain key material or plaintext.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Root of every error raised by :mod:`crypto`."""


# -- encodings and keys ----------------------------------------------------------


class EncodingError(CryptoError):
    """Bytes do not parse: wrong length, unknown version or key kind, trailing data."""


class InvalidKeyError(CryptoError):
    """A key is unusable: wrong size, a low-order X25519 point, or an all-zero DH output."""


class SignatureError(CryptoError):
    """An Ed25519 signature does not verify under the expected key and context."""


class UsageError(CryptoError):
    """The API was called in a way that can never succeed: an out-of-range length or count, an
    operation after ``finalize``, an ``rng`` that returned the wrong number of bytes, or an
    argument of the wrong type. A programming error, not an attack."""


class StateVersionError(EncodingError):
    """Serialised private state has a version this code cannot read (newer, or withdrawn)."""


# -- device lists -------------------------------------------------------------------


class DeviceListError(CryptoError):
    """A signed device list, or a chain of them, must not be trusted."""


class DeviceListSignatureError(DeviceListError, SignatureError):
    """The list's signature does not verify under the account key it names."""


class UnknownSignerError(DeviceListError):
    """The list is signed by an account key other than the one the verifier trusts."""


class RollbackError(DeviceListError):
    """The list's version is not newer than one already verified (an old list replayed)."""


class ForkError(DeviceListError):
    """Two different lists claim the same version: the server showed different histories."""


class ChainBreakError(DeviceListError):
    """A list does not name its predecessor's hash, or skips a version."""


class UnboundDeviceError(DeviceListError):
    """A device's keys are not bound to the list (missing, mismatched or unsigned binding)."""


class BindingReplayError(DeviceListError):
    """A device entry new to a list does not join at that list's version (an old binding replayed),
    an entry carried over from the predecessor changed, or a device id removed earlier returns."""


class SuccessionError(DeviceListError):
    """An account-key succession does not verify: not signed by the predecessor's account key, or
    the account key changed without one."""


class UsernameMismatchError(DeviceListError):
    """The list names another username than the one expected: the caller's
    ``expected_username``, or the username of the last verified list of the chain (a device
    list never changes its username)."""


# -- sessions -------------------------------------------------------------------------


class SessionSetupError(CryptoError):
    """X3DH set-up failed: bad prekey signature, unknown or consumed prekey, bad header."""


class PreKeySignatureError(SessionSetupError, SignatureError):
    """A prekey in a bundle is not signed by the bundle's device signing key. Raised by the
    initiator before any Diffie-Hellman is computed or any randomness is drawn."""


class UntrustedDeviceError(SessionSetupError):
    """The other device of a session set-up is not the one the caller trusts: the prekey
    bundle's device id, signing key or X25519 key differs from the entry of the verified device
    list passed to :func:`saltline.crypto.x3dh.initiate`, or the initiator named by an initial header is
    refused by the ``trusted`` policy of :func:`saltline.crypto.x3dh.respond` /
    :func:`saltline.crypto.ratchet.accept`. Raised before any Diffie-Hellman or randomness."""


class PreKeyConsumedError(SessionSetupError):
    """The initiator used a one-time prekey that this device no longer holds (used or never issued)."""


class DecryptionError(CryptoError):
    """Authenticated decryption failed: the ciphertext, header or associated data was altered,
    or the message was not encrypted for this session. State is left unchanged."""


class DuplicateMessageError(DecryptionError):
    """The message was already decrypted once (a replay). State is left unchanged."""


class TooManySkippedError(DecryptionError):
    """Accepting the message would store more skipped message keys than the documented bound."""


class StreamError(DecryptionError):
    """An attachment stream was truncated, reordered, extended after its final chunk or altered."""
