"""Our wrappers reproduce the published RFC vectors, and refuse low-order X25519 points.

Provenance: RFC 7748 §6.1 (X25519 Diffie-Hellman), RFC 8032 §7.1 (Ed25519 TEST 1, 2, 3),
RFC 5869 Appendix A.1-A.3 (HKDF-SHA256 test cases 1, 2, 3).
"""

from __future__ import annotations

import pytest

from saltline.crypto import primitives as p
from saltline.crypto.errors import CryptoError, InvalidKeyError, SignatureError, UsageError
from saltline.crypto.keys import (
    AccountKey,
    DeviceDHKey,
    DeviceDHPublicKey,
    EphemeralPublicKey,
    SigningContext,
    X25519PublicKey,
)

# RFC 7748 §6.1
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 8032 §7.1: (secret key, public key, message, signature)
ED25519_VECTORS = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="TEST1",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="TEST2",
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        id="TEST3",
    ),
]


def test_rfc7748_x25519_public_keys() -> None:
    assert p.x25519_public(ALICE_PRIVATE) == ALICE_PUBLIC
    assert p.x25519_public(BOB_PRIVATE) == BOB_PUBLIC
    assert bytes(DeviceDHKey(ALICE_PRIVATE).public_key) == ALICE_PUBLIC


def test_rfc7748_x25519_shared_secret() -> None:
    assert p.x25519(ALICE_PRIVATE, BOB_PUBLIC) == SHARED
    assert p.x25519(BOB_PRIVATE, ALICE_PUBLIC) == SHARED
    assert DeviceDHKey(BOB_PRIVATE).dh(DeviceDHPublicKey(ALICE_PUBLIC)) == SHARED


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), ED25519_VECTORS)
def test_rfc8032_ed25519(sk: str, pk: str, msg: str, sig: str) -> None:
    seed, public, message, signature = (bytes.fromhex(x) for x in (sk, pk, msg, sig))
    assert p.ed25519_public(seed) == public
    assert p.ed25519_sign(seed, message) == signature
    p.ed25519_verify(public, message, signature)
    with pytest.raises(SignatureError):
        p.ed25519_verify(public, message + b"x", signature)
    with pytest.raises(SignatureError):
        p.ed25519_verify(public, message, bytes([signature[0] ^ 1]) + signature[1:])


@pytest.mark.parametrize(("sk", "pk", "msg", "sig"), ED25519_VECTORS[:1])
def test_typed_key_signs_with_domain_separation(sk: str, pk: str, msg: str, sig: str) -> None:
    key = AccountKey(bytes.fromhex(sk))
    assert bytes(key.public_key) == bytes.fromhex(pk)
    # The typed key never signs the raw message: it signs "saltline/v1/<context>\0" || message.
    assert key.sign(SigningContext.DEVICE_LIST, b"") != bytes.fromhex(sig)
    assert key.sign(SigningContext.DEVICE_LIST, b"") == p.ed25519_sign(
        bytes.fromhex(sk), b"saltline/v1/device-list\x00"
    )


def _low_order_variants() -> list[bytes]:
    out: set[bytes] = set()
    for point in p._LOW_ORDER_POINTS:
        out.add(point)
        out.add(point[:31] + bytes([point[31] | 0x80]))
    return sorted(out)


LOW_ORDER = _low_order_variants()


def test_low_order_variant_count() -> None:
    # 7 listed encodings; "ec..7f", "ed..7f", "ee..7f" already carry bit 254 so setting the
    # top bit gives 7 new encodings: 14 in all.
    assert len(LOW_ORDER) == 2 * len(p._LOW_ORDER_POINTS)


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda b: b.hex()[:8] + ".." + b.hex()[-4:])
def test_low_order_points_rejected(point: bytes) -> None:
    assert p.is_low_order_x25519(point)
    with pytest.raises(InvalidKeyError):
        X25519PublicKey(point)
    with pytest.raises(InvalidKeyError):
        DeviceDHPublicKey(point)
    with pytest.raises(InvalidKeyError):
        EphemeralPublicKey(point)
    with pytest.raises(InvalidKeyError):
        p.check_x25519_public(point)
    with pytest.raises(InvalidKeyError):
        p.x25519(ALICE_PRIVATE, point)
    with pytest.raises(InvalidKeyError):
        DeviceDHKey(ALICE_PRIVATE).dh(point)  # type: ignore[arg-type]


def test_ordinary_points_accepted() -> None:
    assert not p.is_low_order_x25519(ALICE_PUBLIC)
    assert not p.is_low_order_x25519(ALICE_PUBLIC[:31] + bytes([ALICE_PUBLIC[31] | 0x80]))


# RFC 5869 Appendix A: (IKM, salt, info, L, PRK, OKM), HKDF with SHA-256
HKDF_VECTORS = [
    pytest.param(
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="A.1",
    ),
    pytest.param(
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="A.2",
    ),
    pytest.param(
        "0b" * 22,
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="A.3",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), HKDF_VECTORS)
def test_hkdf_sha256_rfc5869(ikm: str, salt: str, info: str, length: int, prk: str, okm: str) -> None:
    h = bytes.fromhex
    out = p.hkdf_sha256(h(ikm), salt=h(salt), info=h(info), length=length)
    assert out.hex() == okm
    # the extract step (an empty salt means HashLen zero bytes, RFC 5869 §2.2)
    assert p.hmac_sha256(h(salt) or bytes(32), h(ikm)).hex() == prk


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_length_out_of_range_is_a_crypto_error(length: int) -> None:
    with pytest.raises(UsageError) as info:
        p.hkdf_sha256(b"ikm", salt=b"", info=b"", length=length)
    assert isinstance(info.value, CryptoError)
    assert len(p.hkdf_sha256(b"ikm", salt=b"", info=b"", length=255 * 32)) == 255 * 32
