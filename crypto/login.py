"""The message a linked device signs to log in without a password.

The server issues a single-use 32-byte nonce; the device signs, under
:attr:`saltline.crypto.keys.SigningContext.LOGIN_CHALLENGE`::

    u8 len(username) || username (normalised ASCII) || device_id (16) || nonce (32)

Binding the username and device id stops a signature for one account or device from
being replayed for another; the nonce makes it single-use. Public-key code only: the
server imports :func:`login_challenge_message` to verify, the client to sign.
"""

from __future__ import annotations

from saltline.crypto.device_list import DEVICE_ID_SIZE, normalize_username
from saltline.crypto.errors import EncodingError

LOGIN_NONCE_SIZE = 32


def login_challenge_message(username: str, device_id: bytes, nonce: bytes) -> bytes:
    """The bytes signed for a device-key login; raises :class:`EncodingError` on bad input."""
    name = normalize_username(username).encode("ascii")
    if len(device_id) != DEVICE_ID_SIZE:
        raise EncodingError(f"device id must be {DEVICE_ID_SIZE} bytes, got {len(device_id)}")
    if len(nonce) != LOGIN_NONCE_SIZE:
        raise EncodingError(f"login nonce must be {LOGIN_NONCE_SIZE} bytes, got {len(nonce)}")
    return bytes([len(name)]) + name + bytes(device_id) + bytes(nonce)
