import pytest

from saltline.crypto.errors import EncodingError, SignatureError
from saltline.crypto.keys import DeviceSigningKey, SigningContext
from saltline.crypto.login import LOGIN_NONCE_SIZE, login_challenge_message


def test_layout_binds_username_device_and_nonce() -> None:
    device_id = bytes(range(16))
    nonce = bytes(range(100, 100 + LOGIN_NONCE_SIZE))
    msg = login_challenge_message("Alice", device_id, nonce)
    assert msg == bytes([5]) + b"alice" + device_id + nonce


def test_signature_for_one_device_does_not_verify_for_another() -> None:
    key = DeviceSigningKey(bytes(32))
    nonce = bytes(LOGIN_NONCE_SIZE)
    sig = key.sign(SigningContext.LOGIN_CHALLENGE, login_challenge_message("alice", b"A" * 16, nonce))
    good = login_challenge_message("alice", b"A" * 16, nonce)
    key.public_key.verify(SigningContext.LOGIN_CHALLENGE, good, sig)
    with pytest.raises(SignatureError):
        key.public_key.verify(
            SigningContext.LOGIN_CHALLENGE, login_challenge_message("alice", b"B" * 16, nonce), sig
        )
    with pytest.raises(SignatureError):
        key.public_key.verify(
            SigningContext.LOGIN_CHALLENGE, login_challenge_message("mallory", b"A" * 16, nonce), sig
        )


@pytest.mark.parametrize(
    ("username", "device_id", "nonce"),
    [("alice", b"short", bytes(32)), ("alice", bytes(16), bytes(31)), ("Ωmega", bytes(16), bytes(32))],
)
def test_bad_inputs_are_encoding_errors(username: str, device_id: bytes, nonce: bytes) -> None:
    with pytest.raises(EncodingError):
        login_challenge_message(username, device_id, nonce)
