"""Safety numbers: a fingerprint over two users' account keys that people compare.

The construction follows Signal's ``NumericFingerprintGenerator`` (version 2), with Saltline's
account key and normalised username as the stable identifier::

    F(key, username) = H^N(x0) where
        x0       = "saltline/v1/safety-number" || 0x00 || version (u16 BE, 0x0001)
                   || account_pk_encoded (34 bytes: 0x01 || 0x01 || raw key)
                   || len(username) (u8) || username (UTF-8, normalize_username form)
        H(x)     = SHA-512(x || account_pk_raw (32 bytes))
        N        = ITERATIONS = 5200            (as Signal: slows down search for
                                                 a colliding key, ~5 ms here)
    digits(F)    = for i in 0..5: int.from_bytes(F[5i : 5i+5], "big") mod 100000,
                   each written as 5 decimal digits         -> 30 digits per user

Both users compute both fingerprints, sort them by their 64 raw bytes (the smaller first),
and show ``digits(first) || digits(second)``: 60 digits, 12 groups of 5, identical on both
sides. The QR payload is ``version (u8, 0x01) || first[:32] || second[:32]`` (65 bytes),
also identical on both sides, so comparing a scanned code is a constant-time equality.

Each half carries about 99.6 bits of the fingerprint (6 x log2(100000)), and the QR form 256
bits per user.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from saltline.crypto import primitives as p
from saltline.crypto.device_list import normalize_username
from saltline.crypto.errors import EncodingError, InvalidKeyError
from saltline.crypto.keys import AccountPublicKey

__all__ = [
    "ITERATIONS",
    "QR_PAYLOAD_SIZE",
    "SAFETY_NUMBER_VERSION",
    "SafetyNumber",
    "compare",
    "fingerprint",
    "fingerprint_digits",
    "safety_number",
]

SAFETY_NUMBER_VERSION = 1
ITERATIONS = 5200
DIGITS_PER_USER = 30
GROUP_SIZE = 5
QR_FINGERPRINT_BYTES = 32
QR_PAYLOAD_SIZE = 1 + 2 * QR_FINGERPRINT_BYTES  # 65
_PREFIX = b"saltline/v1/safety-number\x00"


def fingerprint(account_key: AccountPublicKey, username: str) -> bytes:
    """One user's 64-byte fingerprint (iterated SHA-512 over the key and the normalised name)."""
    if not isinstance(account_key, AccountPublicKey):
        raise InvalidKeyError("fingerprint needs an AccountPublicKey")
    name = normalize_username(username).encode("utf-8")
    raw = bytes(account_key)
    digest = (
        _PREFIX + struct.pack(">H", SAFETY_NUMBER_VERSION) + account_key.encode() + bytes([len(name)]) + name
    )
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + raw).digest()
    return digest


def _digits(fp: bytes) -> str:
    return "".join(
        f"{int.from_bytes(fp[i : i + 5], 'big') % 100000:05d}"
        for i in range(0, 5 * (DIGITS_PER_USER // 5), 5)
    )


def fingerprint_digits(account_key: AccountPublicKey, username: str) -> str:
    """One user's 30 digits (their half of every safety number), in six groups of five."""
    digits = _digits(fingerprint(account_key, username))
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


def _normalise_digits(text: str) -> str:
    return "".join(ch for ch in text if not ch.isspace())


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The safety number of a pair of users, identical on both sides."""

    digits: str  # 60 ASCII digits
    qr_payload: bytes  # 65 bytes

    def groups(self) -> tuple[str, ...]:
        """12 groups of 5 digits, in display order."""
        return tuple(self.digits[i : i + GROUP_SIZE] for i in range(0, len(self.digits), GROUP_SIZE))

    def display(self) -> str:
        """Three lines of four groups, as shown to people."""
        g = self.groups()
        return "\n".join(" ".join(g[i : i + 4]) for i in range(0, len(g), 4))

    def matches_digits(self, text: str) -> bool:
        """Compare digits typed or read out by a person (whitespace ignored), in constant time."""
        return compare(self.digits, _normalise_digits(text))

    def matches_qr(self, scanned: bytes) -> bool:
        """Compare a scanned QR payload in constant time.

        Raises :class:`EncodingError` if ``scanned`` is not a safety-number payload of this
        version (so the UI can say "update the other app" rather than "does not match").
        """
        scanned = bytes(scanned)
        if len(scanned) != QR_PAYLOAD_SIZE or scanned[0] != SAFETY_NUMBER_VERSION:
            raise EncodingError("not a version-1 safety-number QR payload")
        return compare(self.qr_payload, scanned)


def safety_number(
    local_key: AccountPublicKey,
    local_username: str,
    remote_key: AccountPublicKey,
    remote_username: str,
) -> SafetyNumber:
    """The safety number of two users; swapping local and remote gives the same result."""
    halves = sorted((fingerprint(local_key, local_username), fingerprint(remote_key, remote_username)))
    digits = _digits(halves[0]) + _digits(halves[1])
    qr = bytes([SAFETY_NUMBER_VERSION]) + halves[0][:QR_FINGERPRINT_BYTES] + halves[1][:QR_FINGERPRINT_BYTES]
    return SafetyNumber(digits, qr)


def compare(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality of two safety numbers (digit strings or QR payloads).

    Strings are compared as ASCII; a non-ASCII string never matches.
    """
    try:
        left = a.encode("ascii") if isinstance(a, str) else bytes(a)
        right = b.encode("ascii") if isinstance(b, str) else bytes(b)
    except UnicodeEncodeError:
        return False
    return p.constant_time_equal(left, right)
