"""Signed device lists: encoding, signatures, bindings and the chain rules."""

from __future__ import annotations

import hashlib
import itertools
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.crypto import device_list as dl
from saltline.crypto import primitives as p
from saltline.crypto.errors import (
    BindingReplayError,
    ChainBreakError,
    CryptoError,
    DeviceListError,
    DeviceListSignatureError,
    EncodingError,
    ForkError,
    RollbackError,
    SignatureError,
    SuccessionError,
    UnboundDeviceError,
    UnknownSignerError,
    UsernameMismatchError,
)
from saltline.crypto.keys import AccountKey, DeviceDHKey, DeviceSigningKey, SigningContext


def seeded(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Device:
    def __init__(self, name: str) -> None:
        self.device_id = seeded("id" + name)[:16]
        self.signing = DeviceSigningKey(seeded("sign" + name))
        self.dh = DeviceDHKey(seeded("dh" + name))

    def entry(self, account: AccountKey, added_at: int = 1_700_000_000, joined: int = 1) -> dl.DeviceEntry:
        return dl.bind_device(
            account.public_key, self.device_id, self.signing, self.dh.public_key, added_at, joined
        )


ACCOUNT = AccountKey(seeded("account"))
MALLORY = AccountKey(seeded("mallory"))
PHONE, LAPTOP, TABLET = Device("phone"), Device("laptop"), Device("tablet")


@pytest.fixture
def v1() -> dl.SignedDeviceList:
    return dl.first(ACCOUNT, "Alice", [PHONE.entry(ACCOUNT)])


@pytest.fixture
def chain(v1: dl.SignedDeviceList) -> list[dl.SignedDeviceList]:
    v2 = dl.with_device_added(v1, ACCOUNT, LAPTOP.entry(ACCOUNT, 1_700_000_100, 2))
    v3 = dl.with_device_added(v2, ACCOUNT, TABLET.entry(ACCOUNT, 1_700_000_200, 3))
    v4 = dl.with_device_removed(v3, ACCOUNT, PHONE.device_id)
    return [v1, v2, v3, v4]


# -- encoding -----------------------------------------------------------------------------------


def test_layout(v1: dl.SignedDeviceList) -> None:
    enc = v1.encode()
    content = v1.content
    assert content.username == "alice"
    assert enc[0] == dl.FORMAT_VERSION == 2
    assert struct.unpack(">Q", enc[1:9]) == (1,)
    assert enc[9:41] == bytes(32)
    assert enc[41:73] == bytes(ACCOUNT.public_key)  # root key
    assert enc[73:105] == bytes(ACCOUNT.public_key)  # account key
    assert enc[105] == 5 and enc[106:111] == b"alice"
    assert struct.unpack(">H", enc[111:113]) == (1,)
    entry = enc[113 : 113 + dl.DEVICE_ENTRY_SIZE]
    assert dl.DEVICE_ENTRY_SIZE == 160
    assert entry[:16] == PHONE.device_id
    assert entry[16:48] == bytes(PHONE.signing.public_key)
    assert entry[48:80] == bytes(PHONE.dh.public_key)
    assert struct.unpack(">QQ", entry[80:96]) == (1_700_000_000, 1)
    assert enc[113 + 160] == 0  # no succession
    assert len(enc) == 113 + dl.DEVICE_ENTRY_SIZE + 1 + 64
    assert v1.signature == enc[-64:]
    ACCOUNT.public_key.verify(SigningContext.DEVICE_LIST, enc[:-64], v1.signature)
    assert v1.hash() == hashlib.sha256(enc).digest()
    # Binding input: root_pk || device_id || signing_pk || dh_pk || added_at (u64) || joined (u64)
    # under "device-binding": 128 bytes.
    binding_input = bytes(ACCOUNT.public_key) + PHONE.device_id + entry[16:48] + entry[48:80] + entry[80:96]
    assert len(binding_input) == 128
    assert dl.binding_message(
        ACCOUNT.public_key, PHONE.device_id, PHONE.signing.public_key, PHONE.dh.public_key, 1_700_000_000, 1
    ) == (binding_input)
    assert entry[96:160] == p.ed25519_sign(
        seeded("signphone"), b"saltline/v1/device-binding\x00" + binding_input
    )


def test_round_trips(chain: list[dl.SignedDeviceList]) -> None:
    for signed in chain:
        assert dl.SignedDeviceList.decode(signed.encode()) == signed
        assert dl.SignedDeviceList.from_b64(signed.to_b64()) == signed
        assert dl.DeviceList.decode(signed.content.encode()) == signed.content
        assert dl.verify(signed.encode(), ACCOUNT.public_key) == signed.content
    assert [s.version for s in chain] == [1, 2, 3, 4]
    assert chain[3].content.device(PHONE.device_id) is None
    assert set(chain[2].content.device_ids) == {PHONE.device_id, LAPTOP.device_id, TABLET.device_id}
    assert list(chain[2].content.device_ids) == sorted(chain[2].content.device_ids)
    for prev, nxt in itertools.pairwise(chain):
        assert nxt.content.previous_hash == prev.hash()


def test_trailing_bytes_rejected(v1: dl.SignedDeviceList) -> None:
    with pytest.raises(EncodingError):
        dl.SignedDeviceList.decode(v1.encode() + b"\x00")
    with pytest.raises(EncodingError):
        dl.DeviceList.decode(v1.content.encode() + b"\x00")
    with pytest.raises(EncodingError):
        dl.verify(v1.encode() + b"\x00", ACCOUNT.public_key)


def test_truncation_rejected(v1: dl.SignedDeviceList) -> None:
    enc = v1.encode()
    for cut in (0, 1, 10, 80, 81, len(enc) - 65, len(enc) - 1):
        with pytest.raises(EncodingError):
            dl.SignedDeviceList.decode(enc[:cut])


def test_unknown_format_rejected(v1: dl.SignedDeviceList) -> None:
    enc = v1.encode()
    with pytest.raises(EncodingError):
        dl.SignedDeviceList.decode(b"\x01" + enc[1:])
    with pytest.raises(EncodingError):
        dl.SignedDeviceList.decode(b"\x03" + enc[1:])


def test_duplicate_device_rejected(v1: dl.SignedDeviceList) -> None:
    entry = PHONE.entry(ACCOUNT)
    with pytest.raises(EncodingError, match="duplicate"):
        dl.first(ACCOUNT, "alice", [entry, entry])
    with pytest.raises(EncodingError, match="duplicate"):
        dl.first(ACCOUNT, "alice", [entry, PHONE.entry(ACCOUNT, added_at=5)])
    with pytest.raises(EncodingError):
        dl.with_device_added(v1, ACCOUNT, entry)
    # Hand-made encoding with the same entry twice (re-signed, so only the format is at fault).
    body = v1.content.encode()
    entries = body[113:-1]
    raw = body[:111] + struct.pack(">H", 2) + entries + entries + b"\x00"
    with pytest.raises(EncodingError, match="duplicate"):
        dl.DeviceList.decode(raw)
    with pytest.raises(EncodingError, match="duplicate"):
        dl.SignedDeviceList.decode(raw + ACCOUNT.sign(SigningContext.DEVICE_LIST, raw))


def test_unsorted_devices_rejected() -> None:
    a, b = sorted([PHONE.entry(ACCOUNT), LAPTOP.entry(ACCOUNT)], key=lambda e: e.device_id)
    good = dl.DeviceList.create(1, bytes(32), ACCOUNT.public_key, "alice", [b, a])
    assert good.devices == (a, b)
    with pytest.raises(EncodingError, match="sorted"):
        dl.DeviceList(1, bytes(32), ACCOUNT.public_key, "alice", (b, a))


def test_format_invariants() -> None:
    entry = PHONE.entry(ACCOUNT)
    pk = ACCOUNT.public_key
    with pytest.raises(EncodingError):
        dl.DeviceList(0, bytes(32), pk, "alice", (entry,))
    with pytest.raises(EncodingError):
        dl.DeviceList(1, b"\x01" * 32, pk, "alice", (entry,))  # v1 names no predecessor
    with pytest.raises(EncodingError):
        dl.DeviceList(2, bytes(32), pk, "alice", (entry,))  # v2 must name one
    with pytest.raises(EncodingError):
        dl.DeviceList(1, bytes(32), pk, "Alice", (entry,))  # not normalised
    with pytest.raises(EncodingError):
        dl.DeviceList(1, bytes(32), pk, "alice", ())  # no device
    with pytest.raises(EncodingError):
        dl.DeviceEntry(b"short", entry.signing_key, entry.dh_key, 0, entry.binding_signature)
    with pytest.raises(EncodingError):
        dl.DeviceEntry(entry.device_id, entry.signing_key, entry.dh_key, -1, entry.binding_signature)
    with pytest.raises(EncodingError):
        dl.DeviceEntry(entry.device_id, entry.signing_key, entry.dh_key, 2**64, entry.binding_signature)


def test_low_order_dh_key_in_entry_rejected(v1: dl.SignedDeviceList) -> None:
    body = bytearray(v1.content.encode())
    body[113 + 48 : 113 + 80] = bytes(32)
    with pytest.raises(EncodingError):
        dl.DeviceList.decode(bytes(body))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("Alice", "alice"), ("ALICE_99", "alice_99"), ("a.b-c", "a.b-c"), ("abc", "abc"), ("x" * 32, "x" * 32)],
)
def test_username_normalisation(raw: str, normal: str) -> None:
    assert dl.normalize_username(raw) == normal


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ab",  # too short
        "x" * 33,  # too long
        "a b",
        "a\tb",
        "abc\n",
        "a\u200bb",
        "a\x00bc",
        "a+b",
        "a@b.c",
        "ＡＬＩＣＥ",  # full-width: no Unicode folding, refused
        "Émile",
        "e\u0301mile",
        "straße",
        "\u0430lice",  # Cyrillic a
        "\u212aelvin",  # Kelvin sign: lower() would give ASCII "k"
    ],
)
def test_bad_usernames(bad: str) -> None:
    with pytest.raises(EncodingError):
        dl.normalize_username(bad)
    with pytest.raises(EncodingError):
        dl.first(ACCOUNT, bad, [PHONE.entry(ACCOUNT)])


def test_non_normal_username_bytes_rejected(v1: dl.SignedDeviceList) -> None:
    body = v1.content.encode()
    raw = body[:74] + b"Alice" + body[79:]
    with pytest.raises(EncodingError):
        dl.DeviceList.decode(raw)
    raw = body[:74] + b"\xff" + body[75:]
    with pytest.raises(EncodingError):
        dl.DeviceList.decode(raw)


# -- single-list verification ----------------------------------------------------------------------


def test_bad_signature(v1: dl.SignedDeviceList) -> None:
    enc = bytearray(v1.encode())
    enc[-1] ^= 0x01
    with pytest.raises(DeviceListSignatureError):
        dl.verify(bytes(enc), ACCOUNT.public_key)
    # An altered body (the added_at of a device) no longer matches the signature.
    enc = bytearray(v1.encode())
    enc[81 + 87] ^= 0x01
    with pytest.raises(DeviceListSignatureError):
        dl.verify(bytes(enc), ACCOUNT.public_key)
    # The error is both a device-list error and a signature error.
    assert issubclass(DeviceListSignatureError, DeviceListError)
    assert issubclass(DeviceListSignatureError, SignatureError)


def test_signature_for_another_context_rejected(v1: dl.SignedDeviceList) -> None:
    body = v1.content.encode()
    forged = dl.SignedDeviceList(v1.content, ACCOUNT.sign(SigningContext.PREKEY, body))
    with pytest.raises(DeviceListSignatureError):
        dl.verify(forged, ACCOUNT.public_key)


def test_unknown_signer() -> None:
    mallory_list = dl.first(MALLORY, "alice", [PHONE.entry(MALLORY)])
    with pytest.raises(UnknownSignerError):
        dl.verify(mallory_list, ACCOUNT.public_key)
    # A list naming the trusted key but signed by another key: a bad signature.
    content = dl.DeviceList.create(1, bytes(32), ACCOUNT.public_key, "alice", [PHONE.entry(ACCOUNT)])
    forged = dl.SignedDeviceList(content, MALLORY.sign(SigningContext.DEVICE_LIST, content.encode()))
    with pytest.raises(DeviceListSignatureError):
        dl.verify(forged, ACCOUNT.public_key)
    # The builder refuses to sign a list naming another account key.
    with pytest.raises(UnknownSignerError):
        dl.sign(MALLORY, content)


def test_unbound_device() -> None:
    # The device bound itself to another account; the account key signs it into its list anyway.
    stolen = PHONE.entry(MALLORY)
    content = dl.DeviceList.create(1, bytes(32), ACCOUNT.public_key, "alice", [LAPTOP.entry(ACCOUNT), stolen])
    signed = dl.SignedDeviceList(content, ACCOUNT.sign(SigningContext.DEVICE_LIST, content.encode()))
    with pytest.raises(UnboundDeviceError):
        dl.verify(signed, ACCOUNT.public_key)
    with pytest.raises(UnboundDeviceError):
        dl.sign(ACCOUNT, content)


@pytest.mark.parametrize("field", ["device_id", "dh_key", "signature", "signing_key"])
def test_mismatched_binding(field: str) -> None:
    good = PHONE.entry(ACCOUNT)
    if field == "device_id":
        bad = dl.DeviceEntry(LAPTOP.device_id, good.signing_key, good.dh_key, 0, good.binding_signature)
    elif field == "dh_key":
        bad = dl.DeviceEntry(
            good.device_id, good.signing_key, LAPTOP.dh.public_key, 0, good.binding_signature
        )
    elif field == "signing_key":
        bad = dl.DeviceEntry(
            good.device_id, LAPTOP.signing.public_key, good.dh_key, 0, good.binding_signature
        )
    else:
        bad = dl.DeviceEntry(good.device_id, good.signing_key, good.dh_key, 0, bytes(64))
    with pytest.raises(UnboundDeviceError):
        bad.verify_binding(ACCOUNT.public_key)
    content = dl.DeviceList.create(1, bytes(32), ACCOUNT.public_key, "alice", [bad])
    signed = dl.SignedDeviceList(content, ACCOUNT.sign(SigningContext.DEVICE_LIST, content.encode()))
    with pytest.raises(UnboundDeviceError):
        dl.verify(signed, ACCOUNT.public_key)


def test_added_at_is_bound_by_device() -> None:
    # The binding covers added_at: the account key alone cannot rewrite it.
    entry = PHONE.entry(ACCOUNT, added_at=1)
    entry.verify_binding(ACCOUNT.public_key)
    for when in (0, 2, 2**64 - 1):
        moved = dl.DeviceEntry(
            entry.device_id, entry.signing_key, entry.dh_key, when, entry.binding_signature
        )
        with pytest.raises(UnboundDeviceError):
            moved.verify_binding(ACCOUNT.public_key)
    v1 = dl.first(ACCOUNT, "alice", [entry])
    moved = dl.DeviceEntry(entry.device_id, entry.signing_key, entry.dh_key, 2, entry.binding_signature)
    with pytest.raises(UnboundDeviceError):
        dl.successor(v1, ACCOUNT, [moved])  # sign() refuses it too
    content = dl.DeviceList.create(2, v1.hash(), ACCOUNT.public_key, "alice", [moved])
    forged = dl.SignedDeviceList(content, ACCOUNT.sign(SigningContext.DEVICE_LIST, content.encode()))
    with pytest.raises(UnboundDeviceError):
        dl.verify(forged, ACCOUNT.public_key)
    with pytest.raises(EncodingError):
        dl.binding_message(
            ACCOUNT.public_key, PHONE.device_id, PHONE.signing.public_key, PHONE.dh.public_key, -1
        )
    with pytest.raises(UnboundDeviceError):  # the joined version is bound too
        dl.DeviceEntry(
            entry.device_id, entry.signing_key, entry.dh_key, 1, entry.binding_signature, 2
        ).verify_binding(ACCOUNT.public_key)


# -- chains ----------------------------------------------------------------------------------------------


def test_chain_accepts_sequence(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key)
    assert verifier.latest is None and verifier.current is None
    for signed in chain:
        assert verifier.verify_next(signed) == signed.content
    assert verifier.latest == chain[-1]
    other = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[0])
    assert other.verify_chain([s.encode() for s in chain[1:]]) == chain[-1].content
    assert other.latest == chain[-1]


def test_first_contact_accepts_any_version(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key)
    verifier.verify_next(chain[2])
    assert verifier.current == chain[2].content


def test_idempotent(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[1])
    assert verifier.verify_next(chain[1]) == chain[1].content
    assert verifier.verify_chain([chain[1], chain[2]]) == chain[2].content
    assert verifier.latest == chain[2]


def test_rollback(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[2])
    for old in chain[:2]:
        with pytest.raises(RollbackError):
            verifier.verify_next(old)
    assert verifier.latest == chain[2]


def test_fork(chain: list[dl.SignedDeviceList]) -> None:
    # Another version 2, properly signed, naming the right predecessor but with other devices.
    fork = dl.successor(chain[0], ACCOUNT, [PHONE.entry(ACCOUNT), TABLET.entry(ACCOUNT, joined=2)])
    assert fork.version == 2 and fork != chain[1]
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[1])
    with pytest.raises(ForkError):
        verifier.verify_next(fork)
    assert verifier.latest == chain[1]


def test_chain_gap(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[0])
    with pytest.raises(ChainBreakError):
        verifier.verify_next(chain[2])
    with pytest.raises(ChainBreakError):
        verifier.verify_chain([chain[1], chain[3]])
    assert verifier.latest == chain[0]  # all or nothing


def test_chain_wrong_hash(chain: list[dl.SignedDeviceList]) -> None:
    # Version 3 built on a forked version 2: it names a hash the verifier never saw.
    fork2 = dl.successor(chain[0], ACCOUNT, [PHONE.entry(ACCOUNT), TABLET.entry(ACCOUNT, joined=2)])
    fork3 = dl.successor(fork2, ACCOUNT, [TABLET.entry(ACCOUNT, joined=2)])
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[1])
    with pytest.raises(ChainBreakError):
        verifier.verify_next(fork3)
    # A hand-signed successor with an arbitrary previous hash.
    content = dl.DeviceList.create(3, b"\x42" * 32, ACCOUNT.public_key, "alice", [PHONE.entry(ACCOUNT)])
    with pytest.raises(ChainBreakError):
        verifier.verify_next(dl.sign(ACCOUNT, content))
    assert verifier.latest == chain[1]


def test_chain_checks_signature_before_chain_rules(chain: list[dl.SignedDeviceList]) -> None:
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[1])
    enc = bytearray(chain[1].encode())
    enc[-1] ^= 1
    with pytest.raises(DeviceListSignatureError):
        verifier.verify_next(bytes(enc))  # not a ForkError: unsigned bytes prove nothing
    with pytest.raises(UnknownSignerError):
        verifier.verify_next(dl.first(MALLORY, "alice", [PHONE.entry(MALLORY)]))
    with pytest.raises(UnknownSignerError):
        dl.DeviceListChainVerifier(MALLORY.public_key, chain[0])


def test_check_successor_function(chain: list[dl.SignedDeviceList]) -> None:
    assert dl.check_successor(None, chain[3])
    assert dl.check_successor(chain[0], chain[1])
    assert not dl.check_successor(chain[1], chain[1])
    with pytest.raises(RollbackError):
        dl.check_successor(chain[1], chain[0])
    with pytest.raises(ChainBreakError):
        dl.check_successor(chain[0], chain[3])


def _renamed(previous: dl.SignedDeviceList, username: str) -> dl.SignedDeviceList:
    """A correctly chained, signed successor of ``previous`` that names another username."""
    content = dl.DeviceList.create(
        previous.version + 1, previous.hash(), ACCOUNT.public_key, username, previous.content.devices
    )
    return dl.sign(ACCOUNT, content)


def test_verify_pins_the_expected_username(v1: dl.SignedDeviceList) -> None:
    assert dl.verify(v1, ACCOUNT.public_key, "alice") == v1.content
    assert dl.verify(v1, ACCOUNT.public_key, "ALICE") == v1.content  # normalised first
    with pytest.raises(UsernameMismatchError):
        dl.verify(v1, ACCOUNT.public_key, "bob")
    with pytest.raises(EncodingError):
        dl.verify(v1, ACCOUNT.public_key, "a")  # not a valid username


def test_successor_cannot_change_the_username(chain: list[dl.SignedDeviceList]) -> None:
    renamed = _renamed(chain[1], "mallory")
    assert dl.verify(renamed, ACCOUNT.public_key).username == "mallory"  # well signed and chained ...
    with pytest.raises(UsernameMismatchError):
        dl.check_successor(chain[1], renamed)  # ... but not a successor
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key)
    verifier.verify_chain(chain[:2])
    with pytest.raises(UsernameMismatchError):
        verifier.verify_next(renamed)
    with pytest.raises(UsernameMismatchError):
        verifier.verify_next(renamed.encode())
    assert verifier.latest == chain[1]  # unchanged
    with pytest.raises(UsernameMismatchError):  # all or nothing
        dl.DeviceListChainVerifier(ACCOUNT.public_key).verify_chain([chain[0], chain[1], renamed])
    assert verifier.verify_next(chain[2]).username == "alice"


def test_chain_verifier_pins_the_expected_username(chain: list[dl.SignedDeviceList]) -> None:
    pinned = dl.DeviceListChainVerifier(ACCOUNT.public_key, expected_username="Alice")
    assert pinned.verify_chain(chain).username == "alice"
    with pytest.raises(UsernameMismatchError):
        dl.DeviceListChainVerifier(ACCOUNT.public_key, expected_username="bob").verify_next(chain[0])
    with pytest.raises(UsernameMismatchError):
        dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[0], expected_username="bob")
    bob_list = dl.first(ACCOUNT, "bob", [PHONE.entry(ACCOUNT)])
    with pytest.raises(UsernameMismatchError):  # first contact with a list for another user
        dl.DeviceListChainVerifier(ACCOUNT.public_key, expected_username="alice").verify_next(bob_list)
    with pytest.raises(DeviceListError):
        pinned.verify_chain([])


def test_errors_form_one_hierarchy() -> None:
    for cls in (
        RollbackError,
        ForkError,
        ChainBreakError,
        UnboundDeviceError,
        UnknownSignerError,
        UsernameMismatchError,
    ):
        assert issubclass(cls, DeviceListError) and issubclass(cls, CryptoError)


def test_builders_check_their_inputs(chain: list[dl.SignedDeviceList]) -> None:
    with pytest.raises(EncodingError):
        dl.with_device_removed(chain[0], ACCOUNT, LAPTOP.device_id)  # not listed
    with pytest.raises(EncodingError):
        dl.with_device_removed(chain[0], ACCOUNT, PHONE.device_id)  # the last device
    with pytest.raises(UnknownSignerError):
        dl.successor(chain[0], MALLORY, [PHONE.entry(MALLORY)])
    v5 = dl.successor(chain[3], ACCOUNT, chain[3].content.devices)
    assert v5.content.username == "alice" and v5.content.previous_hash == chain[3].hash()


# -- properties -----------------------------------------------------------------------------------------

_POOL = [Device(f"d{i}") for i in range(6)]


@settings(max_examples=40, deadline=None)
@given(
    version=st.integers(min_value=1, max_value=2**64 - 1),
    previous=st.binary(min_size=32, max_size=32).filter(lambda b: b != bytes(32)),
    username=st.text(min_size=1, max_size=40) | st.text(alphabet="abcXYZ019_.-", min_size=3, max_size=32),
    picks=st.sets(st.integers(min_value=0, max_value=len(_POOL) - 1), min_size=1),
    added_at=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_encoding_round_trip_property(
    version: int, previous: bytes, username: str, picks: set[int], added_at: int
) -> None:
    try:
        name = dl.normalize_username(username)
    except EncodingError:
        return
    entries = [_POOL[i].entry(ACCOUNT, added_at) for i in picks]  # added_at is signed by the device
    content = dl.DeviceList.create(
        version, previous if version > 1 else bytes(32), ACCOUNT.public_key, name, entries
    )
    encoded = content.encode()
    assert dl.DeviceList.decode(encoded) == content
    assert dl.DeviceList.decode(encoded).encode() == encoded
    signed = dl.sign(ACCOUNT, content)
    assert dl.SignedDeviceList.decode(signed.encode()) == signed
    assert dl.verify(signed.encode(), ACCOUNT.public_key) == content


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_decode_never_raises_anything_but_encoding_error(data: bytes) -> None:
    try:
        dl.SignedDeviceList.decode(data)
    except EncodingError:
        pass


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_bit_flip_is_refused(index: int, bit: int) -> None:
    signed = dl.first(ACCOUNT, "alice", [PHONE.entry(ACCOUNT), LAPTOP.entry(ACCOUNT)])
    enc = bytearray(signed.encode())
    enc[index % len(enc)] ^= 1 << bit
    with pytest.raises(CryptoError):
        dl.verify(bytes(enc), ACCOUNT.public_key)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40) | st.text(alphabet="aZ9_.-\u212a\u0130\u00e9 ", max_size=40))
def test_normalize_username_is_the_server_rule(text: str) -> None:
    """Accepts exactly 3..32 chars of [a-z0-9_.-] after lower-casing ASCII; idempotent."""
    server = re.fullmatch(r"[a-z0-9_.-]{3,32}", text.lower()) if text.isascii() else None
    try:
        once = dl.normalize_username(text)
    except EncodingError:
        assert server is None
        return
    assert server is not None and once == text.lower()
    assert dl.normalize_username(once) == once


# -- joined versions, removed ids, account-key succession ------------------------------------------

SUCCESSOR = AccountKey(seeded("account-2"))
THIEF = AccountKey(seeded("thief"))


def test_replayed_binding_of_a_removed_device_is_refused(chain: list[dl.SignedDeviceList]) -> None:
    # v4 removed PHONE; its old entry (joined at 1) is put back by an account-key holder.
    old_phone = chain[0].content.device(PHONE.device_id)
    assert old_phone is not None
    readded = dl.sign(
        ACCOUNT,
        dl.DeviceList.create(
            5, chain[3].hash(), ACCOUNT.public_key, "alice", (*chain[3].content.devices, old_phone)
        ),
    )
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[3])
    with pytest.raises(BindingReplayError, match="replayed"):
        verifier.verify_next(readded)
    with pytest.raises(BindingReplayError):
        dl.with_device_added(chain[3], ACCOUNT, old_phone)
    # A fresh binding at the right version is refused by a verifier that saw the removal.
    fresh = dl.sign(
        ACCOUNT,
        dl.DeviceList.create(
            5,
            chain[3].hash(),
            ACCOUNT.public_key,
            "alice",
            (*chain[3].content.devices, PHONE.entry(ACCOUNT, joined=5)),
        ),
    )
    seen = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[0])
    seen.verify_chain(chain[1:])
    assert seen.retired == {PHONE.device_id}
    with pytest.raises(BindingReplayError, match="removed"):
        seen.verify_next(fresh)
    assert seen.latest == chain[3]


def test_carried_entry_cannot_change(chain: list[dl.SignedDeviceList]) -> None:
    changed = [d for d in chain[1].content.devices if d.device_id != LAPTOP.device_id]
    changed.append(LAPTOP.entry(ACCOUNT, 1_700_000_999, 2))  # re-signed, other added_at
    content = dl.DeviceList.create(3, chain[1].hash(), ACCOUNT.public_key, "alice", changed)
    with pytest.raises(BindingReplayError, match="changed"):
        dl.check_successor(chain[1], dl.sign(ACCOUNT, content))


def test_entry_cannot_join_after_its_list() -> None:
    with pytest.raises(EncodingError, match="joins after"):
        dl.first(ACCOUNT, "alice", [PHONE.entry(ACCOUNT, joined=2)])


def _rotated(chain: list[dl.SignedDeviceList], new: AccountKey = SUCCESSOR) -> dl.SignedDeviceList:
    return dl.with_device_removed(chain[3], ACCOUNT, LAPTOP.device_id, rotate_to=new)


def test_succession_layout_and_verification(chain: list[dl.SignedDeviceList]) -> None:
    v5 = _rotated(chain)
    c = v5.content
    assert c.account_key == SUCCESSOR.public_key and c.root == ACCOUNT.public_key
    assert c.succession is not None and c.succession.previous_key == ACCOUNT.public_key
    enc = v5.encode()
    assert enc[-64 - 97] == 1 and enc[-64 - 96 : -64 - 64] == bytes(ACCOUNT.public_key)
    message = (
        bytes(ACCOUNT.public_key)
        + bytes(SUCCESSOR.public_key)
        + bytes(ACCOUNT.public_key)
        + struct.pack(">Q", 5)
        + chain[3].hash()
    )
    assert len(message) == 136
    assert enc[-128:-64] == p.ed25519_sign(
        seeded("account"), b"saltline/v1/account-key-succession\x00" + message
    )
    assert dl.SignedDeviceList.decode(enc) == v5
    # Trusted through the old key (the succession) and through the new key directly.
    assert dl.verify(v5, ACCOUNT.public_key) == c
    assert dl.verify(v5, SUCCESSOR.public_key) == c
    with pytest.raises(UnknownSignerError):
        dl.verify(v5, THIEF.public_key)
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[0])
    verifier.verify_chain([*chain[1:], v5])
    assert verifier.trusted_account_key == SUCCESSOR.public_key
    # After the rotation the old key signs nothing the verifier accepts.
    v6_old = dl.sign(
        ACCOUNT,
        dl.DeviceList.create(6, v5.hash(), ACCOUNT.public_key, "alice", c.devices, ACCOUNT.public_key),
    )
    with pytest.raises(UnknownSignerError):
        verifier.verify_next(v6_old)
    # The new key adds devices bound to the root, as before the rotation.
    v6 = dl.with_device_added(v5, SUCCESSOR, Device("desk").entry(ACCOUNT, joined=6))
    assert verifier.verify_next(v6).account_key == SUCCESSOR.public_key


def test_forked_succession_is_a_fork(chain: list[dl.SignedDeviceList]) -> None:
    legit = _rotated(chain)
    forged = dl.with_device_removed(chain[3], ACCOUNT, LAPTOP.device_id, rotate_to=THIEF)
    seen = dl.DeviceListChainVerifier(ACCOUNT.public_key, chain[3])
    seen.verify_next(legit)
    with pytest.raises(ForkError):
        seen.verify_next(forged)
    assert seen.trusted_account_key == SUCCESSOR.public_key
    # The thief continuing its own branch is refused too (it does not extend what was seen).
    thief6 = dl.successor(forged, THIEF, forged.content.devices)
    with pytest.raises((ChainBreakError, UnknownSignerError)):
        seen.verify_next(thief6)


def test_bad_successions_are_refused(chain: list[dl.SignedDeviceList]) -> None:
    v5 = _rotated(chain)
    c = v5.content
    assert c.succession is not None
    # A succession signed by another key than the predecessor's.
    bad_sig = dl.Succession(ACCOUNT.public_key, THIEF.sign(SigningContext.ACCOUNT_KEY_SUCCESSION, b"x"))
    forged = dl.DeviceList.create(5, c.previous_hash, c.account_key, "alice", c.devices, c.root, bad_sig)
    with pytest.raises(SuccessionError):
        dl.sign(SUCCESSOR, forged)
    signed = dl.SignedDeviceList(forged, SUCCESSOR.sign(SigningContext.DEVICE_LIST, forged.encode()))
    with pytest.raises(SuccessionError):
        dl.verify(signed, ACCOUNT.public_key)
    # The account key changing with no succession at all.
    silent = dl.DeviceList.create(5, c.previous_hash, c.account_key, "alice", c.devices, c.root)
    with pytest.raises(SuccessionError):
        dl.check_successor(chain[3], dl.sign(SUCCESSOR, silent))
    # A succession naming a version or predecessor other than its own.
    moved = dl.DeviceList.create(5, b"\x07" * 32, c.account_key, "alice", c.devices, c.root, c.succession)
    with pytest.raises(SuccessionError):
        dl.sign(SUCCESSOR, moved)
    # A new root is a broken chain.
    rerooted = dl.DeviceList.create(
        5, c.previous_hash, c.account_key, "alice", c.devices, SUCCESSOR.public_key, c.succession
    )
    with pytest.raises((ChainBreakError, SuccessionError, UnboundDeviceError)):
        dl.check_successor(
            chain[3],
            dl.SignedDeviceList(rerooted, SUCCESSOR.sign(SigningContext.DEVICE_LIST, rerooted.encode())),
        )
    # Version 1 cannot carry one; a succession to the same key is not one.
    with pytest.raises(EncodingError):
        dl.DeviceList.create(
            1, bytes(32), ACCOUNT.public_key, "alice", [PHONE.entry(ACCOUNT)], None, c.succession
        )
    with pytest.raises(EncodingError):
        dl.successor(chain[3], ACCOUNT, chain[3].content.devices, rotate_to=ACCOUNT)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["add", "remove", "rotate"]), min_size=1, max_size=8))
def test_property_any_honest_chain_verifies_and_any_replay_is_refused(steps: list[str]) -> None:
    """Honest histories of adds, removals and rotations verify from version 1 and end trusting
    the last key; putting any removed device's old entry back is refused."""
    keys = [ACCOUNT]
    devices = [Device(f"d{i}") for i in range(12)]
    lists = [dl.first(ACCOUNT, "alice", [devices[0].entry(ACCOUNT)])]
    next_device = 1
    removed: list[dl.DeviceEntry] = []
    for step in steps:
        last = lists[-1]
        if step == "add" and next_device < len(devices):
            entry = devices[next_device].entry(ACCOUNT, joined=last.version + 1)
            next_device += 1
            lists.append(dl.with_device_added(last, keys[-1], entry))
        elif len(last.content.devices) > 1:
            gone = last.content.devices[-1]
            removed.append(gone)
            rotate = AccountKey(seeded(f"k{len(keys)}")) if step == "rotate" else None
            lists.append(dl.with_device_removed(last, keys[-1], gone.device_id, rotate_to=rotate))
            if rotate is not None:
                keys.append(rotate)
    verifier = dl.DeviceListChainVerifier(ACCOUNT.public_key)
    verifier.verify_chain(lists)
    assert verifier.trusted_account_key == keys[-1].public_key
    for gone in removed:
        last = lists[-1]
        replay = dl.DeviceList.create(
            last.version + 1,
            last.hash(),
            keys[-1].public_key,
            "alice",
            (*last.content.devices, gone),
            ACCOUNT.public_key,
        )
        with pytest.raises(BindingReplayError):
            verifier.verify_next(dl.sign(keys[-1], replay))
