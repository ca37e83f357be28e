"""Safety numbers: stable, symmetric, sensitive to keys and usernames, constant-time compare."""

from __future__ import annotations

import hashlib
import struct

import pytest

from saltline.crypto import primitives as p
from saltline.crypto import safety
from saltline.crypto.errors import EncodingError
from saltline.crypto.keys import AccountKey

ALICE = AccountKey(hashlib.sha256(b"alice").digest()).public_key
BOB = AccountKey(hashlib.sha256(b"bob").digest()).public_key
EVE = AccountKey(hashlib.sha256(b"eve").digest()).public_key


def _reference_fingerprint(key: bytes, encoded_key: bytes, username: bytes) -> bytes:
    digest = (
        b"saltline/v1/safety-number\x00"
        + struct.pack(">H", 1)
        + encoded_key
        + bytes([len(username)])
        + username
    )
    for _ in range(5200):
        digest = hashlib.sha512(digest + key).digest()
    return digest


def test_fingerprint_matches_documented_construction() -> None:
    fp = safety.fingerprint(ALICE, "Alice")
    assert fp == _reference_fingerprint(bytes(ALICE), ALICE.encode(), b"alice")
    assert len(fp) == 64


def test_symmetric_and_well_formed() -> None:
    ours = safety.safety_number(ALICE, "alice", BOB, "bob")
    theirs = safety.safety_number(BOB, "bob", ALICE, "alice")
    assert ours == theirs
    assert len(ours.digits) == 60 and ours.digits.isascii() and ours.digits.isdigit()
    assert len(ours.groups()) == 12 and all(len(g) == 5 for g in ours.groups())
    assert ours.display().count("\n") == 2 and len(ours.display().split()) == 12
    assert len(ours.qr_payload) == safety.QR_PAYLOAD_SIZE == 65
    assert ours.qr_payload[0] == safety.SAFETY_NUMBER_VERSION


def test_digits_and_qr_derive_from_sorted_fingerprints() -> None:
    fa, fb = safety.fingerprint(ALICE, "alice"), safety.fingerprint(BOB, "bob")
    lo, hi = sorted((fa, fb))

    def digits(fp: bytes) -> str:
        return "".join(f"{int.from_bytes(fp[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))

    number = safety.safety_number(ALICE, "alice", BOB, "bob")
    assert number.digits == digits(lo) + digits(hi)
    assert number.qr_payload == b"\x01" + lo[:32] + hi[:32]


def test_username_normalised() -> None:
    assert safety.safety_number(ALICE, "ALICE", BOB, "Bob") == safety.safety_number(
        ALICE, "alice", BOB, "bob"
    )


@pytest.mark.parametrize(
    "changed",
    [
        (EVE, "alice", BOB, "bob"),
        (ALICE, "alice", EVE, "bob"),
        (ALICE, "alicia", BOB, "bob"),
        (ALICE, "alice", BOB, "rob"),
    ],
)
def test_any_change_changes_the_number(changed: tuple[object, str, object, str]) -> None:
    base = safety.safety_number(ALICE, "alice", BOB, "bob")
    other = safety.safety_number(*changed)  # type: ignore[arg-type]
    assert other.digits != base.digits
    assert other.qr_payload != base.qr_payload
    assert not base.matches_qr(other.qr_payload)
    assert not base.matches_digits(other.digits)


def test_matches_digits_ignores_whitespace_only() -> None:
    number = safety.safety_number(ALICE, "alice", BOB, "bob")
    assert number.matches_digits(number.display())
    assert number.matches_digits(" ".join(number.groups()))
    assert not number.matches_digits(number.digits[:-1])
    assert not number.matches_digits(number.digits[:-1] + str((int(number.digits[-1]) + 1) % 10))
    assert not number.matches_digits("٠" * 60)  # non-ASCII digits never match


def test_matches_qr() -> None:
    number = safety.safety_number(ALICE, "alice", BOB, "bob")
    scanned = safety.safety_number(BOB, "bob", ALICE, "alice").qr_payload
    assert number.matches_qr(scanned)
    tampered = bytearray(scanned)
    tampered[-1] ^= 1
    assert not number.matches_qr(bytes(tampered))
    with pytest.raises(EncodingError):
        number.matches_qr(b"\x02" + scanned[1:])
    with pytest.raises(EncodingError):
        number.matches_qr(scanned[:-1])


def test_compare_is_constant_time_equality(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = p.constant_time_equal

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(a)
        result: bool = real(a, b)
        return result

    monkeypatch.setattr(p, "constant_time_equal", spy)
    assert safety.compare("123", "123")
    assert safety.compare(b"\x01", b"\x01")
    assert not safety.compare("123", "124")
    assert not safety.compare("123", "é")
    assert len(calls) == 3


def test_same_user_on_both_sides_is_stable() -> None:
    number = safety.safety_number(ALICE, "alice", ALICE, "alice")
    assert number.digits[:30] == number.digits[30:]
