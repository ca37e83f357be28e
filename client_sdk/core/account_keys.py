"""Account-key handoffs and encrypted device names (docs/protocol/messages.md § Account-key
handoff, § Device names). Pure: bytes in, bytes out.

**Handoff.** A device that rotates the account key (removing a device, device-lists.md § 3.4)
seals the new key to every other device of the new list, with the device's DH key ``IK``::

    handoff   = sealed.seal(IK_pub, plaintext, "saltline/v1/account-key-handoff")
    plaintext = 0x01 || account_id (16) || uint64(version) || new account key seed (32)   57 bytes

The receiving device accepts it only if it names its account and the version of a verified list
whose ``account_pk`` is the public key of the seed, so a server (which relays handoffs) can
neither substitute a key nor move a handoff to another version or account.

**Device names.** Chosen by the user, readable by the account's own devices only::

    K_names    = HKDF-SHA256(ikm = account key seed, salt = "", info = "saltline/v1/device-names", 32)
    sealed     = nonce (24) || XChaCha20-Poly1305(K_names, nonce, utf8(name),
                                                  ad = "saltline/v1/device-name" || device_id (16))

A name is 1..64 characters with no control characters; the AD binds it to its device, so the
server cannot show one device's name for another. After a rotation each device seals its own
name again under the new key; a name that does not open shows as unknown.
"""

from __future__ import annotations

import struct
import unicodedata

from saltline.client_sdk.errors import UsageError
from saltline.crypto import primitives as p
from saltline.crypto import sealed
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import AccountKey, AccountPublicKey, X25519PrivateKey, X25519PublicKey

HANDOFF_CONTEXT = b"saltline/v1/account-key-handoff"
HANDOFF_VERSION = 0x01
NAMES_INFO = b"saltline/v1/device-names"
NAME_AD = b"saltline/v1/device-name"
MAX_NAME_CHARS = 64
UNKNOWN_NAME = "(unnamed device)"


class HandoffError(Exception):
    """A handoff that does not open, or names another account, version or key."""


def seal_handoff(
    recipient: X25519PublicKey, account_id: bytes, version: int, new_key: AccountKey, rng: p.Rng | None = None
) -> bytes:
    if len(account_id) != 16:
        raise UsageError("an account id is 16 bytes")
    plaintext = bytes([HANDOFF_VERSION]) + account_id + struct.pack(">Q", version) + bytes(new_key)
    return sealed.seal(recipient, plaintext, HANDOFF_CONTEXT, rng)


def open_handoff(
    private: X25519PrivateKey,
    box: bytes,
    account_id: bytes,
    version: int,
    expected: AccountPublicKey,
) -> AccountKey:
    """The new account key, if ``box`` opens with this device's DH key and names ``account_id``,
    ``version`` and a seed whose public key is ``expected`` (the verified list's account key)."""
    try:
        plain = sealed.open(private, box, HANDOFF_CONTEXT)
    except CryptoError as exc:
        raise HandoffError("the account-key handoff does not open with this device's key") from exc
    if len(plain) != 57 or plain[0] != HANDOFF_VERSION:
        raise HandoffError("the account-key handoff is malformed")
    if plain[1:17] != account_id or struct.unpack(">Q", plain[17:25])[0] != version:
        raise HandoffError("the account-key handoff names another account or list version")
    try:
        key = AccountKey(plain[25:])
    except CryptoError as exc:
        raise HandoffError("the account-key handoff holds an unusable key") from exc
    if key.public_key != expected:
        raise HandoffError("the account-key handoff holds another key than the verified list names")
    return key


def check_name(name: str) -> str:
    """A device name as stored: stripped, 1..64 characters, no control characters."""
    if not isinstance(name, str):
        raise UsageError("a device name is text")
    name = unicodedata.normalize("NFC", name.strip())
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise UsageError(f"a device name is 1 to {MAX_NAME_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise UsageError("a device name cannot contain control characters")
    return name


def _names_key(account_key: AccountKey) -> bytes:
    return p.hkdf_sha256(bytes(account_key), salt=b"", info=NAMES_INFO, length=p.AEAD_KEY_SIZE)


def seal_name(account_key: AccountKey, device_id: bytes, name: str, rng: p.Rng = p.random_bytes) -> bytes:
    nonce = rng(p.AEAD_NONCE_SIZE)
    body = check_name(name).encode("utf-8")
    return nonce + p.aead_encrypt(_names_key(account_key), nonce, body, NAME_AD + device_id)


def open_name(account_key: AccountKey, device_id: bytes, box: bytes) -> str | None:
    """The name, or ``None`` when it does not open (sealed under another key, moved, tampered)."""
    if len(box) < p.AEAD_NONCE_SIZE + p.AEAD_TAG_SIZE:
        return None
    nonce, ciphertext = box[: p.AEAD_NONCE_SIZE], box[p.AEAD_NONCE_SIZE :]
    try:
        text = p.aead_decrypt(_names_key(account_key), nonce, ciphertext, NAME_AD + device_id).decode("utf-8")
        return check_name(text)
    except (CryptoError, UnicodeDecodeError, UsageError):
        return None
