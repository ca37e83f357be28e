"""Generate Saltline's deterministic test vectors (docs/protocol/vectors/*.json).

Usage (from the repository root)::

    .venv/bin/python docs/protocol/vectors/generate.py           # (re)write every JSON file
    .venv/bin/python docs/protocol/vectors/generate.py --check   # exit 1 if any file would change

Every value comes from the reference implementation in ``crypto/`` (there is no second code
path), called with fixed inputs and a deterministic ``rng``. The files of parts 2 and 3 (message
and sync layers, reference code in ``client_sdk/core/``) are built by the sibling module
``generate_messages.py``, whose builders are part of :data:`BUILDERS`. ``tests/crypto/test_vectors.py``
checks, without importing this builder, that the code reproduces every file byte for byte; it
also runs :func:`check` so that a code change without regenerated vectors fails CI.

Deterministic rng (:class:`DRng`)
---------------------------------
Every function of ``crypto/`` that needs randomness takes ``rng(n) -> n bytes``. The vectors
pass one :class:`DRng` per party per case, built from a *seed label* (an ASCII string stored
in each case as ``"seed"``; the seed bytes are its UTF-8 encoding). The ``k``-th call
(counting from 1) asking for ``n`` bytes returns the first ``n`` bytes of::

    SHA-256(seed || uint32_be(k) || uint32_be(0))
    || SHA-256(seed || uint32_be(k) || uint32_be(32))
    || SHA-256(seed || uint32_be(k) || uint32_be(64)) || ...

(the last field is the byte offset within the call's output). A value therefore depends only
on the seed, the position of the call and its size; the order of calls of each operation is
documented in ``docs/protocol/vectors.md`` § 1. The same construction is the ``DRng`` helper of
``tests/crypto/test_x3dh.py``.

File format
-----------
One JSON object per construction, UTF-8, keys sorted, two-space indentation, trailing
newline. Binary values are lowercase hex unless the field name ends in ``_b64`` (base64url
without padding, the wire text form) or ``_json`` (a UTF-8 JSON text). Top level::

    {"construction", "spec", "version", "generator", "provenance", "cases": [
        {"name", "description", "seed"?, "inputs", "outputs" | "error"}, ...]}

Negative cases carry ``"error"``: the exact name of the :class:`crypto.errors.CryptoError`
subclass the operation must raise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling generate_messages.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import nacl.bindings as sodium  # noqa: E402
from generate_messages import BUILDERS as MESSAGE_BUILDERS  # noqa: E402

from crypto import attachments, device_list, private_state, safety, sealed, x3dh  # noqa: E402
from crypto import primitives as p  # noqa: E402
from crypto import ratchet as rt  # noqa: E402
from crypto.errors import CryptoError  # noqa: E402
from crypto.keys import (  # noqa: E402
    AccountKey,
    DeviceDHKey,
    DeviceDHPublicKey,
    DeviceSigningKey,
    DeviceSigningPublicKey,
    EphemeralKey,
    KeyKind,
    LastResortPreKey,
    OneTimePreKey,
    PreKeyPublic,
    SignedPreKey,
    SigningContext,
    b64decode,
    b64encode,
    signing_input,
)

OUT_DIR = Path(__file__).resolve().parent
GENERATOR = "docs/protocol/vectors/generate.py"
SEED_PREFIX = "saltline/v1/vectors/"
VECTORS_VERSION = 1
RNG_DESCRIPTION = (
    "DRng(seed): the k-th call (k = 1, 2, ...) asking for n bytes returns the first n bytes of "
    "SHA-256(seed || uint32_be(k) || uint32_be(0)) || SHA-256(seed || uint32_be(k) || uint32_be(32)) "
    "|| ...; seed = UTF-8 bytes of the case's 'seed' label; one DRng per party per case"
)
PLAINTEXT_RULE = "byte i of the plaintext is i mod 251"


class DRng:
    """The deterministic rng described in the module docstring. Records every value drawn."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.seed = label.encode("utf-8")
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        k = len(self.draws) + 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + struct.pack(">II", k, len(out))).digest()
        value = out[:n]
        self.draws.append(value)
        return value


def seed(name: str) -> str:
    return SEED_PREFIX + name


def hx(data: bytes | bytearray | None) -> str | None:
    return None if data is None else bytes(data).hex()


def sha(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def doc(
    construction: str, spec: str, cases: list[dict[str, Any]], provenance: str | None = None
) -> dict[str, Any]:
    return {
        "construction": construction,
        "spec": spec,
        "version": VECTORS_VERSION,
        "generator": GENERATOR,
        "provenance": provenance
        or (
            f"Generated by {GENERATOR} from the reference implementation in crypto/ with fixed "
            f"inputs; randomness: {RNG_DESCRIPTION}."
        ),
        "cases": cases,
    }


def error_name(fn: Callable[..., object], *args: Any) -> str:
    """Run ``fn(*args)`` and return the class name of the CryptoError it raises (it must raise)."""
    try:
        fn(*args)
    except CryptoError as exc:
        return type(exc).__name__
    raise AssertionError("negative vector did not raise")


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


# -- encodings.json ----------------------------------------------------------------------------


LOW_ORDER_POINTS = (  # libsodium's blocklist (crypto/primitives.py); X25519 ignores the top bit
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
)


def build_encodings() -> dict[str, Any]:
    label = seed("encodings/keys")
    rng = DRng(label)
    account = AccountKey.generate(rng)
    signing = DeviceSigningKey.generate(rng)
    dh = DeviceDHKey.generate(rng)
    spk = SignedPreKey.generate_with_id(1, rng)
    otk = OneTimePreKey.generate_with_id(3, rng)
    lrk = LastResortPreKey.generate_with_id(2, rng)
    eph = EphemeralKey.generate(rng)
    other_signing = DeviceSigningKey.generate(rng)

    keys: list[dict[str, Any]] = []
    for kind, private in (
        (KeyKind.ACCOUNT, account),
        (KeyKind.DEVICE_SIGNING, signing),
        (KeyKind.DEVICE_DH, dh),
        (KeyKind.SIGNED_PREKEY, spk),
        (KeyKind.ONE_TIME_PREKEY, otk),
        (KeyKind.LAST_RESORT_PREKEY, lrk),
        (KeyKind.EPHEMERAL, eph),
    ):
        public = private.public_key
        assert public.KIND == kind
        keys.append(
            {
                "kind": kind.name,
                "kind_byte": int(kind),
                "algorithm": "Ed25519" if kind in (KeyKind.ACCOUNT, KeyKind.DEVICE_SIGNING) else "X25519",
                "private": hx(bytes(private)),
                "public": hx(bytes(public)),
                "encoded": hx(public.encode()),
                "encoded_b64": public.to_b64(),
                "fingerprint": public.fingerprint(),
            }
        )
    cases: list[dict[str, Any]] = [
        {
            "name": "public_keys",
            "description": "each key kind: private key, raw public key, 34-byte encoding "
            "(0x01 || kind || key), base64url form, fingerprint (SHA-256(encoding)[:8])",
            "seed": label,
            "inputs": {"rng_draw_order": [k["kind"] for k in keys]},
            "outputs": {"keys": keys},
        }
    ]

    prekeys = []
    for prekey in (spk, otk, lrk):
        pub = prekey.signed_public(signing)
        part = PreKeyPublic.signed_part(prekey.KIND, prekey.key_id, bytes(prekey.public_key))
        assert pub.encode() == part + pub.signature and len(pub.encode()) == PreKeyPublic.SIZE
        prekeys.append(
            {
                "kind": prekey.KIND.name,
                "key_id": prekey.key_id,
                "private": hx(bytes(prekey)),
                "public": hx(bytes(prekey.public_key)),
                "signed_part": hx(part),
                "signing_input": hx(signing_input(SigningContext.PREKEY, part)),
                "signature": hx(pub.signature),
                "encoded": hx(pub.encode()),
                "encoded_b64": pub.to_b64(),
            }
        )
    cases.append(
        {
            "name": "prekeys",
            "description": "signed, one-time and last-resort prekey signed by the device signing key: "
            "signed part (38 bytes), signing input, Ed25519 signature, 102-byte encoding",
            "seed": label,
            "inputs": {"device_signing_private": hx(bytes(signing))},
            "outputs": {"device_signing_public": hx(signing.public_key.encode()), "prekeys": prekeys},
        }
    )

    message = b"saltline test vector"
    contexts = [
        {
            "context": ctx.name,
            "context_label": hx(ctx.value),
            "signing_input": hx(signing_input(ctx, message)),
            "signature": hx(account.sign(ctx, message)),
        }
        for ctx in SigningContext
    ]
    cases.append(
        {
            "name": "signing_inputs",
            "description": "signing_input(context, m) = 'saltline/v1/' || context || 0x00 || m for every "
            "SigningContext, and the account key's Ed25519 signature over it",
            "seed": label,
            "inputs": {"message": hx(message), "account_private": hx(bytes(account))},
            "outputs": {"account_public": hx(account.public_key.encode()), "contexts": contexts},
        }
    )

    samples = [b"", b"\x00", b"\xfb\xff", b"\xfb\xff\xbf", bytes(range(8)), account.public_key.encode()]
    cases.append(
        {
            "name": "base64url",
            "description": "the wire text form: URL-safe base64 without padding",
            "inputs": {"data": [hx(s) for s in samples]},
            "outputs": {"text_b64": [b64encode(s) for s in samples]},
        }
    )

    dh_enc = dh.public_key.encode()
    text = dh.public_key.to_b64()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    noncanonical = text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]
    spk_enc = bytearray(spk.signed_public(signing).encode())
    spk_enc[1] = KeyKind.EPHEMERAL
    negatives: list[tuple[str, str, str, dict[str, Any]]] = [
        ("short_key", "a 33-byte encoded key", "DeviceDHPublicKey.decode", {"data": hx(dh_enc[:-1])}),
        ("long_key", "a 35-byte encoded key", "DeviceDHPublicKey.decode", {"data": hx(dh_enc + b"\x00")}),
        (
            "version_2",
            "encoding version 0x02",
            "DeviceDHPublicKey.decode",
            {"data": hx(b"\x02" + dh_enc[1:])},
        ),
        (
            "wrong_kind",
            "an ACCOUNT key given to the DEVICE_DH decoder",
            "DeviceDHPublicKey.decode",
            {"data": hx(account.public_key.encode())},
        ),
        (
            "prekey_kind_7",
            "a prekey whose kind byte is EPHEMERAL",
            "PreKeyPublic.decode",
            {"data": hx(spk_enc)},
        ),
        ("padded_b64", "base64url with '=' padding", "DeviceDHPublicKey.from_b64", {"text": text + "=="}),
        (
            "noncanonical_b64",
            "unused low bits set in the last character",
            "DeviceDHPublicKey.from_b64",
            {"text": noncanonical},
        ),
        ("standard_alphabet_b64", "'+' and '/' of standard base64", "b64decode", {"text": "+/8"}),
    ]
    for i, point in enumerate(LOW_ORDER_POINTS):
        negatives.append(
            (
                f"low_order_point_{i}",
                "a DEVICE_DH key that is a low-order X25519 point",
                "DeviceDHPublicKey.decode",
                {"data": hx(bytes([1, KeyKind.DEVICE_DH]) + bytes.fromhex(point))},
            )
        )
    negatives.append(
        (
            "prekey_signature_other_device",
            "a signed prekey verified under another device's signing key",
            "PreKeyPublic.verify",
            {
                "data": hx(spk.signed_public(signing).encode()),
                "signer": hx(other_signing.public_key.encode()),
            },
        )
    )
    decoders: dict[str, Callable[[dict[str, Any]], object]] = {
        "DeviceDHPublicKey.decode": lambda i: DeviceDHPublicKey.decode(bytes.fromhex(i["data"])),
        "PreKeyPublic.decode": lambda i: PreKeyPublic.decode(bytes.fromhex(i["data"])),
        "DeviceDHPublicKey.from_b64": lambda i: DeviceDHPublicKey.from_b64(i["text"]),
        "b64decode": lambda i: b64decode(i["text"]),
        "PreKeyPublic.verify": lambda i: PreKeyPublic.decode(bytes.fromhex(i["data"])).verify(
            DeviceSigningPublicKey.decode(bytes.fromhex(i["signer"]))
        ),
    }
    for name, description, operation, inputs in negatives:
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {"operation": operation, **inputs},
                "error": error_name(decoders[operation], inputs),
            }
        )
    return doc("encodings", "docs/protocol/keys.md", cases)


# -- device_lists.json ---------------------------------------------------------------------------


def _signed_list_doc(signed: device_list.SignedDeviceList) -> dict[str, Any]:
    content = signed.content.encode()
    return {
        "version": signed.version,
        "previous_hash": hx(signed.content.previous_hash),
        "device_ids": [hx(d) for d in signed.content.device_ids],
        "content": hx(content),
        "signing_input": hx(signing_input(SigningContext.DEVICE_LIST, content)),
        "signature": hx(signed.signature),
        "signed": hx(signed.encode()),
        "signed_b64": signed.to_b64(),
        "hash": hx(signed.hash()),
    }


def _unchecked_sign(account: AccountKey, content: device_list.DeviceList) -> device_list.SignedDeviceList:
    """Sign without the binding check of device_list.sign (to build an invalid list on purpose)."""
    return device_list.SignedDeviceList(content, account.sign(SigningContext.DEVICE_LIST, content.encode()))


def build_device_lists() -> dict[str, Any]:
    label = seed("device_lists")
    rng = DRng(label)
    account = AccountKey.generate(rng)
    other_account = AccountKey.generate(rng)
    devices = []
    for i in range(3):
        device_id = rng(16)
        signing = DeviceSigningKey.generate(rng)
        dh = DeviceDHKey.generate(rng)
        devices.append((device_id, signing, dh, 1_735_689_600_000 + i * 86_400_000))
    entries = [device_list.bind_device(account.public_key, d, s, h.public_key, t) for d, s, h, t in devices]
    username_input = "Alice"
    v1 = device_list.first(account, username_input, [entries[0]])
    v2 = device_list.with_device_added(v1, account, entries[1])
    v3 = device_list.with_device_removed(v2, account, entries[0].device_id)

    device_docs = []
    for (device_id, signing, dh, added_at), entry in zip(devices, entries, strict=True):
        message = device_list.binding_message(
            account.public_key, device_id, signing.public_key, dh.public_key, added_at
        )
        device_docs.append(
            {
                "device_id": hx(device_id),
                "signing_private": hx(bytes(signing)),
                "dh_private": hx(bytes(dh)),
                "signing_public": hx(bytes(signing.public_key)),
                "dh_public": hx(bytes(dh.public_key)),
                "added_at": added_at,
                "binding_message": hx(message),
                "binding_signing_input": hx(signing_input(SigningContext.DEVICE_BINDING, message)),
                "binding_signature": hx(entry.binding_signature),
                "entry": hx(entry.encode()),
            }
        )
    common_inputs = {
        "account_private": hx(bytes(account)),
        "account_public": hx(account.public_key.encode()),
        "other_account_private": hx(bytes(other_account)),
        "username": username_input,
        "devices": device_docs,
    }
    cases: list[dict[str, Any]] = [
        {
            "name": "chain",
            "description": "version 1 (device 0), version 2 (device 1 added), version 3 (device 0 removed); "
            "each names its predecessor's hash",
            "seed": label,
            "inputs": {
                **common_inputs,
                "lists": [
                    {"version": 1, "devices": [0]},
                    {"version": 2, "devices": [0, 1]},
                    {"version": 3, "devices": [1]},
                ],
            },
            "outputs": {
                "username": v1.content.username,
                "lists": [_signed_list_doc(s) for s in (v1, v2, v3)],
            },
        }
    ]

    # Accepted chain operations.
    def verify_chain(
        known: bytes | None, offered: list[bytes], expected_username: str | None = None
    ) -> device_list.DeviceList:
        last = device_list.SignedDeviceList.decode(known) if known is not None else None
        verifier = device_list.DeviceListChainVerifier(account.public_key, last, expected_username)
        return verifier.verify_chain(offered)

    accepted: list[tuple[str, str, device_list.SignedDeviceList | None, list[Any], str | None]] = [
        ("whole_chain", "versions 1, 2, 3 verified at once from first contact", None, [v1, v2, v3], None),
        ("successor", "version 3 after a known version 2", v2, [v3], None),
        ("idempotent", "the known version 2 offered again is accepted and changes nothing", v2, [v2], None),
        ("first_contact_v2", "first contact may start at any version", None, [v2], None),
        (
            "expected_username",
            "versions 1, 2 with the username pinned to 'ALICE' (normalised to 'alice' first)",
            None,
            [v1, v2],
            "ALICE",
        ),
    ]
    for name, description, known, offered, expected in accepted:
        result = verify_chain(
            None if known is None else known.encode(), [s.encode() for s in offered], expected
        )
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {
                    "trusted_account_key": hx(account.public_key.encode()),
                    "known": None if known is None else hx(known.encode()),
                    "offered": [hx(s.encode()) for s in offered],
                    "expected_username": expected,
                },
                "outputs": {"latest_version": result.version, "latest_content": hx(result.encode())},
            }
        )

    # Rejected cases.
    other_entry = device_list.bind_device(
        other_account.public_key, devices[0][0], devices[0][1], devices[0][2].public_key, devices[0][3]
    )
    foreign = device_list.first(other_account, username_input, [other_entry])
    fork = device_list.with_device_added(v1, account, entries[2])
    wrong_hash = device_list.sign(
        account,
        device_list.DeviceList.create(
            2, hashlib.sha256(b"not the predecessor").digest(), account.public_key, "alice", entries[:2]
        ),
    )
    unbound_entry = device_list.bind_device(
        other_account.public_key, devices[2][0], devices[2][1], devices[2][2].public_key, devices[2][3]
    )
    unbound = _unchecked_sign(
        account,
        device_list.DeviceList.create(2, v1.hash(), account.public_key, "alice", [entries[0], unbound_entry]),
    )
    # Device 1's entry with added_at moved by one millisecond after it signed its binding.
    e1_moved = device_list.DeviceEntry(
        entries[1].device_id,
        entries[1].signing_key,
        entries[1].dh_key,
        entries[1].added_at + 1,
        entries[1].binding_signature,
    )
    added_at_moved = _unchecked_sign(
        account,
        device_list.DeviceList.create(2, v1.hash(), account.public_key, "alice", [entries[0], e1_moved]),
    )
    # A correctly chained, validly signed version 2 that names another username.
    renamed = device_list.sign(
        account, device_list.DeviceList.create(2, v1.hash(), account.public_key, "mallory", entries[:2])
    )
    # Hand-made encodings the parser must refuse (validly signed, so only the parser rejects them).
    v2_content = v2.content.encode()
    entry_start = len(v2_content) - 2 * device_list.DEVICE_ENTRY_SIZE
    e0 = v2_content[entry_start : entry_start + device_list.DEVICE_ENTRY_SIZE]
    e1 = v2_content[entry_start + device_list.DEVICE_ENTRY_SIZE :]
    unsorted = v2_content[:entry_start] + e1 + e0
    unnormal = v2_content.replace(b"alice", b"Alice", 1)
    assert unnormal != v2_content

    def raw_signed(content: bytes) -> bytes:
        return content + account.sign(SigningContext.DEVICE_LIST, content)

    rejected: list[tuple[str, str, bytes | None, list[bytes], str | None]] = [
        (
            "bad_signature",
            "version 2 with one bit of its signature flipped",
            v1.encode(),
            [flip(v2.encode(), len(v2.encode()) - 1)],
            None,
        ),
        ("unknown_signer", "a list made and signed by another account key", None, [foreign.encode()], None),
        ("rollback", "version 1 offered after version 2", v2.encode(), [v1.encode()], None),
        (
            "fork",
            "a different version 2 (device 2 added instead of device 1)",
            v2.encode(),
            [fork.encode()],
            None,
        ),
        (
            "chain_break_skip",
            "version 3 offered after version 1 (version 2 skipped)",
            v1.encode(),
            [v3.encode()],
            None,
        ),
        (
            "chain_break_wrong_hash",
            "a version 2 that names the wrong predecessor hash",
            v1.encode(),
            [wrong_hash.encode()],
            None,
        ),
        (
            "unbound_device",
            "device 2's binding signature names another account",
            v1.encode(),
            [unbound.encode()],
            None,
        ),
        (
            "binding_added_at_altered",
            "device 1's added_at moved by 1 ms after it signed its binding (the binding covers added_at)",
            v1.encode(),
            [added_at_moved.encode()],
            None,
        ),
        ("chain_break_in_batch", "a batch 1, 3: all or nothing", None, [v1.encode(), v3.encode()], None),
        ("trailing_byte", "version 1 followed by one extra byte", None, [v1.encode() + b"\x00"], None),
        (
            "unsorted_devices",
            "a validly signed version 2 whose entries are not sorted by device id",
            v1.encode(),
            [raw_signed(unsorted)],
            None,
        ),
        (
            "username_not_normal",
            "a validly signed version 2 whose username is 'Alice' (not normalised)",
            v1.encode(),
            [raw_signed(unnormal)],
            None,
        ),
        (
            "username_changed",
            "a correctly chained, validly signed version 2 naming 'mallory' after version 1 naming 'alice'",
            v1.encode(),
            [renamed.encode()],
            None,
        ),
        (
            "expected_username_mismatch",
            "first contact with version 1 (username 'alice') while the caller looked up 'bob'",
            None,
            [v1.encode()],
            "bob",
        ),
    ]
    for name, description, known_raw, offered_raw, expected in rejected:
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {
                    "trusted_account_key": hx(account.public_key.encode()),
                    "known": hx(known_raw),
                    "offered": [hx(o) for o in offered_raw],
                    "expected_username": expected,
                },
                "error": error_name(verify_chain, known_raw, offered_raw, expected),
            }
        )
    return doc("device_lists", "docs/protocol/device-lists.md", cases)


# -- x3dh.json --------------------------------------------------------------------------------------


def _device_keys(state: private_state.DeviceState) -> x3dh.DeviceIdentityKeys:
    return x3dh.DeviceIdentityKeys(state.device_id, state.signing_key, state.dh_key)


ENTRY_ADDED_AT = 1_735_689_600_000  # added_at of every device entry of x3dh.json / ratchet.json


class Party:
    """A device (generate_device output) with its account key and its signed device-list entry."""

    def __init__(self, prefix: str, who: str, one_time_prekeys: int) -> None:
        self.device_seed = seed(f"{prefix}/{who}-device")
        self.account_seed = seed(f"{prefix}/{who}-account")
        self.state = private_state.generate_device(
            one_time_prekeys=one_time_prekeys, rng=DRng(self.device_seed)
        )
        self.account = AccountKey.generate(DRng(self.account_seed))
        self.entry = self.state.device_entry(self.account.public_key, ENTRY_ADDED_AT)
        self.entry.verify_binding(self.account.public_key)


def _party_doc(party: Party, with_prekeys: bool) -> dict[str, Any]:
    state = party.state
    out: dict[str, Any] = {
        "device_id": hx(state.device_id),
        "signing_private": hx(bytes(state.signing_key)),
        "dh_private": hx(bytes(state.dh_key)),
        "account_private": hx(bytes(party.account)),
        "added_at": party.entry.added_at,
        "entry": hx(party.entry.encode()),
    }
    if with_prekeys:
        out["signed_prekey"] = {"id": state.signed_prekey.key_id, "private": hx(bytes(state.signed_prekey))}
        out["last_resort_prekey"] = {
            "id": state.last_resort_prekey.key_id,
            "private": hx(bytes(state.last_resort_prekey)),
        }
        out["one_time_prekeys"] = [
            {"id": k.key_id, "private": hx(bytes(k))} for k in state.one_time_prekeys.values()
        ]
    return out


def _bundle_doc(bundle: x3dh.PreKeyBundle) -> dict[str, Any]:
    return {
        "device_id": hx(bundle.device_id),
        "signing_key": hx(bundle.signing_key.encode()),
        "dh_key": hx(bundle.dh_key.encode()),
        "signed_prekey": hx(bundle.signed_prekey.encode()),
        "one_time_prekey": None if bundle.one_time_prekey is None else hx(bundle.one_time_prekey.encode()),
    }


def _x3dh_parties(prefix: str) -> tuple[Party, Party]:
    return Party(prefix, "alice", 0), Party(prefix, "bob", 2)


def _parties_doc(alice: Party, bob: Party) -> dict[str, Any]:
    return {
        "initiator": _party_doc(alice, with_prekeys=False),
        "initiator_seed": alice.device_seed,
        "initiator_account_seed": alice.account_seed,
        "responder": _party_doc(bob, with_prekeys=True),
        "responder_seed": bob.device_seed,
        "responder_account_seed": bob.account_seed,
    }


def _bundle(bob: private_state.DeviceState, opk: PreKeyPublic | None) -> x3dh.PreKeyBundle:
    return x3dh.PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, bob.dh_key.public_key, bob.signed_prekey_public(), opk
    )


def build_x3dh() -> dict[str, Any]:
    alice_party, bob_party = _x3dh_parties("x3dh")
    alice, bob = alice_party.state, bob_party.state
    alice_entry, bob_entry = alice_party.entry, bob_party.entry
    alice_keys, bob_keys = _device_keys(alice), _device_keys(bob)
    parties = _parties_doc(alice_party, bob_party)
    first_otk = next(iter(bob.one_time_prekeys.values()))
    variants = [
        (
            "with_one_time_prekey",
            "bundle with a one-time prekey: four DH outputs",
            first_otk.signed_public(bob.signing_key),
        ),
        ("without_one_time_prekey", "bundle without a one-time prekey: three DH outputs", None),
        (
            "with_last_resort_prekey",
            "no one-time prekey left: the last-resort prekey is DH4",
            bob.last_resort_prekey_public(),
        ),
    ]
    cases: list[dict[str, Any]] = []
    headers: dict[str, x3dh.InitialHeader] = {}
    for name, description, opk in variants:
        bundle = _bundle(bob, opk)
        label = seed(f"x3dh/{name}/alice")
        rng = DRng(label)
        result = x3dh.initiate(alice_keys, bundle, bob_entry, rng)
        headers[name] = result.header
        ek = EphemeralKey(rng.draws[0])
        spk_pub = bundle.signed_prekey.public_key
        dhs = [alice.dh_key.dh(spk_pub), ek.dh(bob.dh_key.public_key), ek.dh(spk_pub)]
        if opk is not None:
            dhs.append(ek.dh(opk.public_key))
        ikm = x3dh.X3DH_PREFIX + b"".join(dhs)
        sk = p.hkdf_sha256(ikm, salt=x3dh.X3DH_SALT, info=x3dh.X3DH_INFO, length=32)
        assert sk == result.shared_key
        response = x3dh.respond(
            bob_keys,
            bob.prekey_lookup(),
            x3dh.InitialHeader.decode(result.header.encode()),
            trusted=alice_entry,
        )
        assert response.shared_key == sk and response.associated_data == result.associated_data
        cases.append(
            {
                "name": name,
                "description": description,
                "seed": label,
                "inputs": {**parties, "bundle": _bundle_doc(bundle)},
                "outputs": {
                    "ephemeral_private": hx(bytes(ek)),
                    "ephemeral_public": hx(bytes(ek.public_key)),
                    "dh1": hx(dhs[0]),
                    "dh2": hx(dhs[1]),
                    "dh3": hx(dhs[2]),
                    "dh4": hx(dhs[3]) if len(dhs) == 4 else None,
                    "kdf_input": hx(ikm),
                    "shared_key": hx(sk),
                    "initiator_identity": hx(alice_keys.public.encode()),
                    "responder_identity": hx(bob_keys.public.encode()),
                    "associated_data": hx(result.associated_data),
                    "initial_header": hx(result.header.encode()),
                    "initial_header_b64": b64encode(result.header.encode()),
                    "remote_ratchet_key": hx(bytes(result.remote_ratchet_key)),
                    "responder_one_time_prekey_id": response.one_time_prekey_id,
                },
            }
        )

    # Negative cases.
    otk_pub = first_otk.signed_public(bob.signing_key)
    spk_pub_doc = bob.signed_prekey_public()
    bad_spk = PreKeyPublic(
        spk_pub_doc.kind, spk_pub_doc.key_id, spk_pub_doc.key, flip(spk_pub_doc.signature, 0)
    )
    bad_otk = PreKeyPublic(otk_pub.kind, otk_pub.key_id, otk_pub.key, flip(otk_pub.signature, 63, 0x40))
    bad_spk_bundle = x3dh.PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, bob.dh_key.public_key, bad_spk, otk_pub
    )
    bad_otk_bundle = x3dh.PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, bob.dh_key.public_key, spk_pub_doc, bad_otk
    )
    self_bundle = _bundle(bob, otk_pub)
    h = headers["with_one_time_prekey"]
    unknown_spk = x3dh.InitialHeader(
        h.initiator, h.ephemeral_key, 99, h.one_time_prekey_kind, h.one_time_prekey_id
    )
    kind_zero = bytearray(headers["without_one_time_prekey"].encode())
    kind_zero[124:128] = struct.pack(">I", 5)
    all_otks = [k.key_id for k in bob.one_time_prekeys.values()]
    remaining = [i for i in all_otks if i != first_otk.key_id]

    # A third device (not in any list the initiator or responder trusts) and its entry.
    mallory = Party("x3dh", "mallory", 1)
    mallory_otk = next(iter(mallory.state.one_time_prekeys.values())).signed_public(mallory.state.signing_key)
    mallory_bundle = _bundle(mallory.state, mallory_otk)
    substituted_bundle = x3dh.PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, mallory.state.dh_key.public_key, spk_pub_doc, otk_pub
    )

    def initiate(who: x3dh.DeviceIdentityKeys, bundle: x3dh.PreKeyBundle, trusted: Any) -> object:
        def no_rng(n: int) -> bytes:
            raise AssertionError("rng drawn before the bundle was verified")

        return x3dh.initiate(who, bundle, trusted, no_rng)

    def respond(header: bytes, held: list[int], trusted: Any = alice_entry) -> object:
        lookup = x3dh.InMemoryPreKeys(
            [bob.signed_prekey],
            [k for k in bob.one_time_prekeys.values() if k.key_id in held],
            [bob.last_resort_prekey],
        )
        return x3dh.respond(bob_keys, lookup, x3dh.InitialHeader.decode(header), trusted=trusted)

    negatives: list[tuple[str, str, dict[str, Any], Callable[[], object]]] = [
        (
            "bad_signed_prekey_signature",
            "signed prekey signature does not verify; no rng draw, no DH",
            {
                "operation": "initiate",
                "run_by": "initiator",
                "bundle": _bundle_doc(bad_spk_bundle),
                "trusted": hx(bob_entry.encode()),
            },
            lambda: initiate(alice_keys, bad_spk_bundle, bob_entry),
        ),
        (
            "bad_one_time_prekey_signature",
            "one-time prekey signature does not verify; no rng draw, no DH",
            {
                "operation": "initiate",
                "run_by": "initiator",
                "bundle": _bundle_doc(bad_otk_bundle),
                "trusted": hx(bob_entry.encode()),
            },
            lambda: initiate(alice_keys, bad_otk_bundle, bob_entry),
        ),
        (
            "self_session",
            "the responder's own bundle given to the responder as initiator",
            {
                "operation": "initiate",
                "run_by": "responder",
                "bundle": _bundle_doc(self_bundle),
                "trusted": hx(bob_entry.encode()),
            },
            lambda: initiate(bob_keys, self_bundle, bob_entry),
        ),
        (
            "bundle_of_untrusted_device",
            "a valid bundle of another device (not the trusted responder entry); no rng draw, no DH",
            {
                "operation": "initiate",
                "run_by": "initiator",
                "bundle": _bundle_doc(mallory_bundle),
                "trusted": hx(bob_entry.encode()),
            },
            lambda: initiate(alice_keys, mallory_bundle, bob_entry),
        ),
        (
            "bundle_dh_key_substituted",
            "the responder's bundle (prekey signatures valid) with another X25519 device key",
            {
                "operation": "initiate",
                "run_by": "initiator",
                "bundle": _bundle_doc(substituted_bundle),
                "trusted": hx(bob_entry.encode()),
            },
            lambda: initiate(alice_keys, substituted_bundle, bob_entry),
        ),
        (
            "consumed_one_time_prekey",
            "the header names a one-time prekey the responder no longer holds",
            {
                "operation": "respond",
                "initial_header": hx(h.encode()),
                "held_one_time_prekeys": remaining,
                "trusted": hx(alice_entry.encode()),
            },
            lambda: respond(h.encode(), remaining),
        ),
        (
            "unknown_signed_prekey",
            "the header names signed prekey id 99",
            {
                "operation": "respond",
                "initial_header": hx(unknown_spk.encode()),
                "held_one_time_prekeys": all_otks,
                "trusted": hx(alice_entry.encode()),
            },
            lambda: respond(unknown_spk.encode(), all_otks),
        ),
        (
            "opk_kind_zero_nonzero_id",
            "header with one-time prekey kind 0x00 but id 5",
            {
                "operation": "respond",
                "initial_header": hx(bytes(kind_zero)),
                "held_one_time_prekeys": all_otks,
                "trusted": hx(alice_entry.encode()),
            },
            lambda: respond(bytes(kind_zero), all_otks),
        ),
        (
            "untrusted_initiator",
            "the initial header of with_one_time_prekey answered with another device's entry as the "
            "trust policy; refused before any prekey lookup or DH",
            {
                "operation": "respond",
                "initial_header": hx(h.encode()),
                "held_one_time_prekeys": all_otks,
                "trusted": hx(mallory.entry.encode()),
            },
            lambda: respond(h.encode(), all_otks, mallory.entry),
        ),
    ]
    for name, description, inputs, fn in negatives:
        assert not set(inputs) & set(parties)
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {**parties, **inputs},
                "error": error_name(fn),
            }
        )
    return doc("x3dh", "docs/protocol/session-setup.md", cases)


# -- ratchet.json ----------------------------------------------------------------------------------


def parse_session_state(data: bytes) -> dict[str, Any]:
    """Split a serialised session (layout in crypto/ratchet.py) into its fields."""
    fixed = struct.Struct(">BB32s32s32sIII")
    _, flags, rk, dhs, _base, ns, nr, pn = fixed.unpack_from(data, 0)
    pos = fixed.size
    out: dict[str, Any] = {"rk": rk, "dhs_private": dhs, "ns": ns, "nr": nr, "pn": pn}
    for bit, name, size in ((1, "dhr", 32), (2, "cks", 32), (4, "ckr", 32), (8, "initial_header", 128)):
        if flags & bit:
            out[name] = data[pos : pos + size]
            pos += size
        else:
            out[name] = None
    return out


# The fixed script: (actor, action, message name).
RATCHET_SCRIPT: list[tuple[str, str, str]] = [
    ("alice", "encrypt", "a0"),
    ("alice", "encrypt", "a1"),
    ("alice", "encrypt", "a2"),
    ("bob", "accept", "a0"),
    ("bob", "decrypt", "a2"),
    ("bob", "decrypt", "a1"),
    ("bob", "encrypt", "b0"),
    ("bob", "encrypt", "b1"),
    ("alice", "decrypt", "b0"),
    ("alice", "decrypt", "b1"),
    ("alice", "encrypt", "a3"),
    ("alice", "encrypt", "a4"),
    ("bob", "decrypt", "a3"),
    ("bob", "decrypt", "a4"),
    ("bob", "encrypt", "b2"),
    ("alice", "decrypt", "b2"),
]


def _envelope_ad(name: str) -> bytes:
    return b"saltline/v1/envelope-header:" + name.encode()


def _plaintext(name: str) -> bytes:
    return f"message {name}: the quick brown fox".encode()


def build_ratchet() -> dict[str, Any]:
    alice_party, bob_party = _x3dh_parties("ratchet")
    alice, bob = alice_party.state, bob_party.state
    alice_keys, bob_keys = _device_keys(alice), _device_keys(bob)
    first_otk = next(iter(bob.one_time_prekeys.values()))
    bundle = _bundle(bob, first_otk.signed_public(bob.signing_key))
    alice_rng = DRng(seed("ratchet/alice"))
    bob_rng = DRng(seed("ratchet/bob"))
    purposes: dict[str, list[str]] = {"alice": ["EK_A (x3dh.initiate)"], "bob": []}
    setup = x3dh.initiate(alice_keys, bundle, bob_party.entry, alice_rng)
    sessions: dict[str, rt.Session] = {"alice": rt.Session.initiate(setup, alice_rng)}
    purposes["alice"].append("first DHs (Session.initiate)")
    rngs = {"alice": alice_rng, "bob": bob_rng}
    messages: dict[str, dict[str, Any]] = {}
    wire: dict[str, bytes] = {}
    steps: list[dict[str, Any]] = []
    snapshots: dict[str, bytes] = {}
    for actor, action, name in RATCHET_SCRIPT:
        if action == "encrypt":
            session = sessions[actor]
            state = parse_session_state(session.to_bytes())
            ck = state["cks"]
            mk, next_ck = rt.kdf_ck(ck)
            key = rt.message_key(mk)
            pending = session.pending_initial_header
            draws_before = len(rngs[actor].draws)
            message = session.encrypt(_plaintext(name), _envelope_ad(name))
            assert len(rngs[actor].draws) == draws_before + 1
            nonce = rngs[actor].draws[-1]
            purposes[actor].append(f"nonce of {name} (Session.encrypt)")
            header = rt.MessageHeader.decode(message[: rt.HEADER_SIZE])
            assert header.nonce == nonce
            aead_ad = session.associated_data + message[: rt.HEADER_SIZE] + _envelope_ad(name)
            assert p.aead_encrypt(key, nonce, _plaintext(name), aead_ad) == message[rt.HEADER_SIZE :]
            wire[name] = message
            messages[name] = {
                "name": name,
                "sender": actor,
                "plaintext": hx(_plaintext(name)),
                "associated_data": hx(_envelope_ad(name)),
                "initial_header": hx(pending),
                "ratchet_key": hx(header.ratchet_key),
                "previous_chain_length": header.previous_chain_length,
                "message_number": header.message_number,
                "nonce_rng_draw": draws_before + 1,  # the call number k, counted from 1
                "header": hx(message[: rt.HEADER_SIZE]),
                "chain_key": hx(ck),
                "message_key": hx(mk),
                "next_chain_key": hx(next_ck),
                "aead_key": hx(key),
                "aead_nonce": hx(nonce),
                "aead_associated_data": hx(aead_ad),
                "ciphertext": hx(message[rt.HEADER_SIZE :]),
                "message": hx(message),
            }
        elif action == "accept":
            accepted = rt.accept(
                bob_keys,
                bob.prekey_lookup(),
                setup.header.encode(),
                wire[name],
                _envelope_ad(name),
                bob_rng,
                trusted=alice_party.entry,
            )
            assert accepted.plaintext == _plaintext(name)
            assert accepted.one_time_prekey_id == first_otk.key_id
            sessions[actor] = accepted.session
            assert len(bob_rng.draws) == 1
            purposes["bob"].append(f"DHs after reading {name} (accept)")
        else:
            session = sessions[actor]
            if actor == "bob" and name == "a4":
                snapshots["bob_before_a4"] = session.to_bytes()
            draws_before = len(rngs[actor].draws)
            assert session.decrypt(wire[name], _envelope_ad(name)) == _plaintext(name)
            if len(rngs[actor].draws) != draws_before:
                assert len(rngs[actor].draws) == draws_before + 1
                purposes[actor].append(f"DHs after reading {name}")
        state_bytes = sessions[actor].to_bytes()
        steps.append(
            {
                "actor": actor,
                "action": action,
                "message": name,
                "state_after_sha256": sha(state_bytes),
                "stored_skipped_keys": sessions[actor].stored_skipped_keys,
            }
        )

    final = {who: s.to_bytes() for who, s in sessions.items()}
    inputs = {
        **_parties_doc(alice_party, bob_party),
        "bundle": _bundle_doc(bundle),
        "alice_seed": alice_rng.label,
        "bob_seed": bob_rng.label,
        "script": [{"actor": a, "action": b, "message": c} for a, b, c in RATCHET_SCRIPT],
        "plaintext_rule": "UTF-8 of 'message <name>: the quick brown fox'",
        "associated_data_rule": "UTF-8 of 'saltline/v1/envelope-header:<name>' (the envelope header)",
    }
    cases: list[dict[str, Any]] = [
        {
            "name": "script",
            "description": "X3DH with a one-time prekey, then A->B a0 a1 a2 (B reads a0, a2, a1: a1 from a "
            "stored skipped key), B->A b0 b1, A->B a3 a4 (new DH ratchet step, PN = 3), B->A b2",
            "seed": alice_rng.label,
            "inputs": inputs,
            "outputs": {
                "alice_rng_draws": [hx(d) for d in alice_rng.draws],
                "alice_rng_purpose": purposes["alice"],
                "bob_rng_draws": [hx(d) for d in bob_rng.draws],
                "bob_rng_purpose": purposes["bob"],
                "shared_key": hx(setup.shared_key),
                "session_associated_data": hx(setup.associated_data),
                "initial_header": hx(setup.header.encode()),
                "messages": [messages[n] for n in sorted(messages, key=lambda n: (n[0], int(n[1:])))],
                "steps": steps,
                "final_state_alice": hx(final["alice"]),
                "final_state_bob": hx(final["bob"]),
                "final_state_alice_sha256": sha(final["alice"]),
                "final_state_bob_sha256": sha(final["bob"]),
                "bob_state_before_a4": hx(snapshots["bob_before_a4"]),
            },
        }
    ]
    assert len(alice_rng.draws) == len(purposes["alice"]) == 4 + 5
    assert len(bob_rng.draws) == len(purposes["bob"]) == 2 + 3

    # The KDFs on fixed inputs.
    kdf_label = seed("ratchet/kdf")
    kdf_rng = DRng(kdf_label)
    rk_in, dh_in, ck_in, mk_in = kdf_rng(32), kdf_rng(32), kdf_rng(32), kdf_rng(32)
    rk_out, ck_out = rt.kdf_rk(rk_in, dh_in)
    mk_out, next_ck = rt.kdf_ck(ck_in)
    key_out = rt.message_key(mk_in)
    cases.append(
        {
            "name": "kdfs",
            "description": "KDF_RK(rk, dh_out), KDF_CK(ck) and the AEAD key message_key(mk) on fixed inputs",
            "seed": kdf_label,
            "inputs": {"rk": hx(rk_in), "dh_out": hx(dh_in), "ck": hx(ck_in), "mk": hx(mk_in)},
            "outputs": {
                "kdf_rk_root_key": hx(rk_out),
                "kdf_rk_chain_key": hx(ck_out),
                "kdf_ck_message_key": hx(mk_out),
                "kdf_ck_chain_key": hx(next_ck),
                "aead_key": hx(key_out),
            },
        }
    )

    # Rejections against Bob's state just before a4 (state must be unchanged afterwards).
    before = snapshots["bob_before_a4"]
    a4 = wire["a4"]
    ad4 = _envelope_ad("a4")
    nr = parse_session_state(before)["nr"]
    too_far = bytearray(a4)
    too_far[37:41] = struct.pack(">I", nr + rt.MAX_SKIP + 1)
    # A message starting a new peer chain whose two skips are each within MAX_SKIP but whose sum
    # is not: PN - Nr = 600 keys left in the current chain plus N = 401 in the new one.
    forged_key = p.x25519_public(DRng(seed("ratchet/forged-ratchet-key"))(32))
    combined = bytearray(a4)
    combined[1:33] = forged_key
    combined[33:37] = struct.pack(">I", nr + 600)
    combined[37:41] = struct.pack(">I", rt.MAX_SKIP - 600 + 1)
    old_version = bytearray(a4)
    old_version[0] = 0x01
    negatives = [
        ("header_bit_flipped", "a4 with one bit of PN flipped", flip(a4, 36), ad4),
        ("nonce_bit_flipped", "a4 with one bit of the header's nonce flipped", flip(a4, 41), ad4),
        ("ciphertext_bit_flipped", "a4 with the first ciphertext bit flipped", flip(a4, rt.HEADER_SIZE), ad4),
        ("tag_bit_flipped", "a4 with the last tag bit flipped", flip(a4, len(a4) - 1, 0x80), ad4),
        ("associated_data_altered", "a4 with one bit of the envelope header flipped", a4, flip(ad4, 0)),
        (
            "header_version_1",
            "a4 with header version 0x01 (the withdrawn 41-byte layout)",
            bytes(old_version),
            ad4,
        ),
        ("header_version_3", "a4 with header version 0x03", b"\x03" + a4[1:], ad4),
        ("too_many_skipped", f"a4 with N = Nr + {rt.MAX_SKIP + 1}", bytes(too_far), ad4),
        (
            "message_number_out_of_range",
            "a4 with N = 0xFFFFFFFF (refused by the header parser)",
            a4[:37] + b"\xff\xff\xff\xff" + a4[41:],
            ad4,
        ),
        (
            "too_many_skipped_combined",
            f"a4 with a new ratchet key (seed {seed('ratchet/forged-ratchet-key')}), PN = Nr + 600 and "
            f"N = {rt.MAX_SKIP - 600 + 1}: each skip within MAX_SKIP, their sum {rt.MAX_SKIP + 1} not",
            bytes(combined),
            ad4,
        ),
        ("replay_current_chain", "a3 delivered again", wire["a3"], _envelope_ad("a3")),
        (
            "replay_former_chain",
            "a0 delivered again (its chain is a former one)",
            wire["a0"],
            _envelope_ad("a0"),
        ),
    ]
    for name, description, message, ad in negatives:

        def attempt(m: bytes = message, a: bytes = ad) -> object:
            session = rt.Session.from_bytes(before, DRng(seed("ratchet/unused")))
            try:
                return session.decrypt(m, a)
            finally:
                assert session.to_bytes() == before

        cases.append(
            {
                "name": name,
                "description": description + "; the state is unchanged afterwards",
                "inputs": {"state": hx(before), "message": hx(message), "associated_data": hx(ad)},
                "error": error_name(attempt),
            }
        )
    return doc("ratchet", "docs/protocol/ratchet.md", cases)


# -- sealed.json -------------------------------------------------------------------------------------


def build_sealed() -> dict[str, Any]:
    recipient_label = seed("sealed/recipient")
    recipient = DeviceDHKey.generate(DRng(recipient_label))
    other = DeviceDHKey.generate(DRng(seed("sealed/other-recipient")))
    cases: list[dict[str, Any]] = []
    boxes: dict[str, tuple[bytes, bytes]] = {}
    for name, description, context, plaintext in (
        (
            "link_payload",
            "a device-linking payload under the link context",
            sealed.LINK_PAYLOAD,
            b'{"account_key":"...","link_secret":"..."}',
        ),
        ("empty_plaintext", "an empty plaintext under another context", b"saltline/v1/test", b""),
    ):
        label = seed(f"sealed/{name}")
        rng = DRng(label)
        box = sealed.seal(recipient.public_key, plaintext, context, rng=rng)
        esk = rng.draws[0]
        epk = p.x25519_public(esk)
        nonce = sodium.crypto_generichash_blake2b_salt_personal(
            epk + bytes(recipient.public_key), digest_size=24
        )
        inner = bytes([len(context)]) + context + plaintext
        assert box == sealed.seal_with_ephemeral(
            recipient.public_key, plaintext, context, ephemeral_private=esk
        )
        assert sodium.crypto_box_seal_open(box, bytes(recipient.public_key), bytes(recipient)) == inner
        assert sealed.open(recipient, box, context) == plaintext
        boxes[name] = (box, context)
        cases.append(
            {
                "name": name,
                "description": description,
                "seed": label,
                "inputs": {
                    "recipient_private": hx(bytes(recipient)),
                    "recipient_seed": recipient_label,
                    "context": hx(context),
                    "plaintext": hx(plaintext),
                },
                "outputs": {
                    "recipient_public": hx(bytes(recipient.public_key)),
                    "ephemeral_private": hx(esk),
                    "ephemeral_public": hx(epk),
                    "nonce": hx(nonce),
                    "inner": hx(inner),
                    "sealed": hx(box),
                    "sealed_b64": b64encode(box),
                },
            }
        )
    box, context = boxes["link_payload"]
    for name, description, key, data, ctx in (
        ("other_context", "opened under another context", recipient, box, b"saltline/v1/test"),
        ("other_recipient", "opened with another recipient key", other, box, context),
        ("bit_flipped", "one bit of the Poly1305 tag flipped", recipient, flip(box, 40), context),
        ("too_short", "49 bytes (shorter than 48 + 2)", recipient, box[:49], context),
    ):
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {"recipient_private": hx(bytes(key)), "sealed": hx(data), "context": hx(ctx)},
                "error": error_name(sealed.open, key, data, ctx),
            }
        )
    return doc("sealed", "docs/protocol/sealed-and-attachments.md", cases)


# -- attachments.json --------------------------------------------------------------------------------

C = attachments.CHUNK_SIZE
ATTACHMENT_SIZES = (
    ("empty", 0),
    ("one_byte", 1),
    ("small", 1000),
    ("one_chunk", C),
    ("one_chunk_plus_one", C + 1),
    ("two_and_a_half_chunks", 2 * C + C // 2),
)
FULL_CIPHERTEXT_LIMIT = 2048


def rule_plaintext(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def build_attachments() -> dict[str, Any]:
    label = seed("attachments")
    cases: list[dict[str, Any]] = []
    encrypted: dict[str, attachments.EncryptedAttachment] = {}
    for name, size in ATTACHMENT_SIZES:
        rng = DRng(label)
        enc = attachments.encrypt(rule_plaintext(size), rng=rng)
        key, header = rng.draws
        encrypted[name] = enc
        ct = enc.ciphertext
        assert len(ct) == attachments.ciphertext_size(size) and ct[:24] == header
        chunks = []
        n = max(1, -(-size // C))
        pos = attachments.HEADER_SIZE
        for i in range(n):
            length = min(C, size - i * C)
            chunk = ct[pos : pos + length + attachments.ABYTES]
            chunks.append(
                {
                    "index": i,
                    "tag": "FINAL" if i == n - 1 else "MESSAGE",
                    "plaintext_offset": i * C,
                    "plaintext_length": length,
                    "ciphertext_offset": pos,
                    "ciphertext_length": len(chunk),
                    "sha256": sha(chunk),
                }
            )
            pos += len(chunk)
        assert pos == len(ct)
        cases.append(
            {
                "name": name,
                "description": f"{size}-byte plaintext: {n} chunk(s), the last one tagged FINAL",
                "seed": label,
                "inputs": {
                    "key": hx(key),
                    "header": hx(header),
                    "plaintext_size": size,
                    "plaintext_rule": PLAINTEXT_RULE,
                    "chunk_size": C,
                },
                "outputs": {
                    "ciphertext_size": len(ct),
                    "ciphertext": hx(ct) if len(ct) <= FULL_CIPHERTEXT_LIMIT else None,
                    "ciphertext_sha256": sha(ct),
                    "chunks": chunks,
                    "digest": hx(enc.key.digest),
                    "attachment_key": hx(enc.key.encode()),
                    "attachment_key_b64": b64encode(enc.key.encode()),
                },
            }
        )

    base_name = "two_and_a_half_chunks"
    base = encrypted[base_name]
    ct = base.ciphertext
    h, cc = attachments.HEADER_SIZE, attachments.CIPHER_CHUNK_SIZE
    total = len(ct)
    wrong_digest = attachments.AttachmentKey(base.key.key, flip(base.key.digest, 0), base.key.size)
    wrong_size = attachments.AttachmentKey(base.key.key, base.key.digest, base.key.size + 1)

    def piece(offset: int, length: int) -> dict[str, int]:
        return {"from": offset, "length": length}

    negatives: list[tuple[str, str, list[dict[str, Any]], attachments.AttachmentKey | None]] = [
        (
            "final_chunk_dropped",
            "truncated at a chunk boundary: the FINAL chunk is missing",
            [piece(0, h + 2 * cc)],
            None,
        ),
        ("truncated_mid_chunk", "the last byte is missing", [piece(0, total - 1)], None),
        (
            "chunks_swapped",
            "chunks 0 and 1 swapped",
            [piece(0, h), piece(h + cc, cc), piece(h, cc), piece(h + 2 * cc, total - h - 2 * cc)],
            None,
        ),
        (
            "byte_after_final",
            "one byte appended after the FINAL chunk",
            [piece(0, total), {"hex": "00"}],
            None,
        ),
        (
            "bit_flipped",
            "one bit flipped in chunk 1",
            [
                piece(0, h + cc + 100),
                {"hex": hx(bytes([ct[h + cc + 100] ^ 1]))},
                piece(h + cc + 101, total - h - cc - 101),
            ],
            None,
        ),
        ("wrong_digest", "the attachment key record names another digest", [piece(0, total)], wrong_digest),
        ("wrong_size", "the attachment key record names another size", [piece(0, total)], wrong_size),
    ]

    def assemble(pieces: list[dict[str, Any]]) -> bytes:
        return b"".join(
            bytes.fromhex(x["hex"]) if "hex" in x else ct[x["from"] : x["from"] + x["length"]] for x in pieces
        )

    for name, description, pieces, record in negatives:
        key_arg: bytes | attachments.AttachmentKey = base.key.key if record is None else record
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {
                    "base": base_name,
                    "ciphertext_pieces": pieces,
                    "key": hx(base.key.key) if record is None else None,
                    "attachment_key": None if record is None else hx(record.encode()),
                },
                "error": error_name(attachments.decrypt, assemble(pieces), key_arg),
            }
        )
    return doc("attachments", "docs/protocol/sealed-and-attachments.md", cases)


# -- safety_numbers.json ------------------------------------------------------------------------------


def build_safety_numbers() -> dict[str, Any]:
    label = seed("safety_numbers")
    rng = DRng(label)
    keys = [AccountKey.generate(rng) for _ in range(4)]  # DRng calls 1, 2, 3, 4
    cases = []
    for name, description, (d1, n1), (d2, n2) in (
        ("ascii", "'Alice' (normalised to 'alice') and 'bob'", (1, "Alice"), (2, "bob")),
        (
            "ascii_2",
            "'Carol.Smith-99' (normalised to 'carol.smith-99') and 'dave_x' (every character class of "
            "[a-z0-9_.-])",
            (3, "Carol.Smith-99"),
            (4, "dave_x"),
        ),
    ):
        k1, k2 = keys[d1 - 1], keys[d2 - 1]
        assert rng.draws[d1 - 1] == bytes(k1) and rng.draws[d2 - 1] == bytes(k2)
        number = safety.safety_number(k1.public_key, n1, k2.public_key, n2)
        assert number == safety.safety_number(k2.public_key, n2, k1.public_key, n1)
        cases.append(
            {
                "name": name,
                "description": description + "; identical with the parties swapped",
                "seed": label,
                "inputs": {
                    "local_account_draw": d1,
                    "remote_account_draw": d2,
                    "local_account_private": hx(bytes(k1)),
                    "local_account_public": hx(k1.public_key.encode()),
                    "local_username": n1,
                    "remote_account_private": hx(bytes(k2)),
                    "remote_account_public": hx(k2.public_key.encode()),
                    "remote_username": n2,
                },
                "outputs": {
                    "local_username_normalized": device_list.normalize_username(n1),
                    "remote_username_normalized": device_list.normalize_username(n2),
                    "local_fingerprint": hx(safety.fingerprint(k1.public_key, n1)),
                    "remote_fingerprint": hx(safety.fingerprint(k2.public_key, n2)),
                    "digits": number.digits,
                    "display": number.display(),
                    "qr_payload": hx(number.qr_payload),
                },
            }
        )
    for name, description, n1, n2 in (
        (
            "non_ascii_username",
            "a non-ASCII username (decomposed 'Angstrom' with a ring)",
            "A\u030angstr\u00f6m",
            "bob",
        ),
        (
            "full_width_username",
            "a full-width 'BOB' (no NFKC folding any more)",
            "alice",
            "\uff22\uff2f\uff22",
        ),
        ("username_too_short", "a 2-character username", "al", "bob"),
    ):
        cases.append(
            {
                "name": name,
                "description": description + "; safety_number refuses it",
                "inputs": {
                    "local_account_public": hx(keys[0].public_key.encode()),
                    "local_username": n1,
                    "remote_account_public": hx(keys[1].public_key.encode()),
                    "remote_username": n2,
                },
                "error": error_name(safety.safety_number, keys[0].public_key, n1, keys[1].public_key, n2),
            }
        )
    return doc("safety_numbers", "docs/protocol/safety-numbers.md", cases)


# -- private_state.json ---------------------------------------------------------------------------------


def build_private_state() -> dict[str, Any]:
    account_label = seed("private_state/account")
    device_label = seed("private_state/device")
    account = AccountKey.generate(DRng(account_label))
    rng = DRng(device_label)
    state = private_state.generate_device(account_key=account, one_time_prekeys=3, rng=rng)
    encoded = state.encode()
    rotated = state.rotate_signed_prekey(DRng(seed("private_state/rotate"))).remove_one_time_prekey(3)
    replaced = rotated.replace_last_resort_prekey(DRng(seed("private_state/replace_last_resort")))
    v1_doc = {k: v for k, v in json.loads(encoded).items() if k != "previous_last_resort_prekey"}
    v1_text = json.dumps({**v1_doc, "v": 1}, sort_keys=True, separators=(",", ":"))
    cases: list[dict[str, Any]] = [
        {
            "name": "fresh_device",
            "description": "generate_device with an account key and 3 one-time prekeys: the canonical JSON "
            "encoding and the public parts",
            "seed": device_label,
            "inputs": {
                "account_private": hx(bytes(account)),
                "account_seed": account_label,
                "one_time_prekeys": 3,
            },
            "outputs": {
                "rng_draws": [hx(d) for d in rng.draws],
                "rng_purpose": [
                    "device id",
                    "signing seed",
                    "DH key",
                    "signed prekey (id 1)",
                    "last-resort prekey (id 2)",
                    "one-time prekey 3",
                    "one-time prekey 4",
                    "one-time prekey 5",
                ],
                "encoded_json": encoded.decode("utf-8"),
                "encoded_sha256": sha(encoded),
                "device_signing_public": hx(state.signing_key.public_key.encode()),
                "device_dh_public": hx(state.dh_key.public_key.encode()),
                "signed_prekey_public": hx(state.signed_prekey_public().encode()),
                "last_resort_prekey_public": hx(state.last_resort_prekey_public().encode()),
                "one_time_prekeys_public": [hx(k.encode()) for k in state.one_time_prekeys_public()],
            },
        },
        {
            "name": "rotated_device",
            "description": "the fresh device after rotate_signed_prekey (id 6) and one-time prekey 3 deleted",
            "seed": seed("private_state/rotate"),
            "inputs": {
                "encoded_json": encoded.decode("utf-8"),
                "operations": ["rotate_signed_prekey(rng)", "remove_one_time_prekey(3)"],
            },
            "outputs": {"encoded_json": rotated.encode().decode("utf-8")},
        },
        {
            "name": "replaced_last_resort",
            "description": "the rotated device after replace_last_resort_prekey (id 7): the former "
            "last-resort prekey (id 2) becomes previous_last_resort_prekey",
            "seed": seed("private_state/replace_last_resort"),
            "inputs": {
                "encoded_json": rotated.encode().decode("utf-8"),
                "operations": ["replace_last_resort_prekey(rng)"],
            },
            "outputs": {"encoded_json": replaced.encode().decode("utf-8")},
        },
        {
            "name": "migrated_from_v1",
            "description": "a version-1 document (no previous_last_resort_prekey) decodes through "
            "MIGRATIONS[1] to the version-2 state with previous_last_resort_prekey null",
            "inputs": {"encoded_json": v1_text},
            "outputs": {"encoded_json": encoded.decode("utf-8")},
        },
    ]
    base = json.loads(encoded)
    text = encoded.decode("utf-8")
    negatives = [
        ("version_3", "a version this code cannot read", json.dumps({**base, "v": 3}, sort_keys=True)),
        (
            "v1_with_v2_field",
            "a version-1 document that already has the version-2 field",
            json.dumps({**base, "v": 1}, sort_keys=True),
        ),
        ("version_0", "version 0 never existed", json.dumps({**base, "v": 0}, sort_keys=True)),
        ("duplicate_field", "a field given twice", text[:-1] + ',"v":2}'),
        ("extra_field", "an unknown field", json.dumps({**base, "extra": 1}, sort_keys=True)),
        ("wrong_format", "the format name of another document", json.dumps({**base, "format": "other"})),
        (
            "padded_key",
            "a key in padded base64",
            json.dumps({**base, "device_dh_key": base["device_dh_key"] + "="}),
        ),
        (
            "otks_unsorted",
            "one-time prekeys not in ascending id order",
            json.dumps({**base, "one_time_prekeys": base["one_time_prekeys"][::-1]}),
        ),
    ]
    for name, description, data in negatives:
        cases.append(
            {
                "name": name,
                "description": description,
                "inputs": {"encoded_json": data},
                "error": error_name(private_state.decode, data.encode("utf-8")),
            }
        )
    return doc("private_state", "docs/protocol/keys.md", cases)


# -- rfc.json ------------------------------------------------------------------------------------------

RFC_PROVENANCE = (
    "Published vectors copied from the RFCs (not generated): RFC 7748 section 6.1 (X25519), RFC 8032 "
    "section 7.1 TEST 1, TEST 2, TEST 3 (Ed25519), RFC 5869 appendix A.1 (HKDF-SHA256, test case 1). "
    f"{GENERATOR} checks that crypto/primitives.py reproduces them before writing the file."
)


def build_rfc() -> dict[str, Any]:
    x = {
        "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    }
    assert p.x25519_public(bytes.fromhex(x["alice_private"])).hex() == x["alice_public"]
    assert p.x25519_public(bytes.fromhex(x["bob_private"])).hex() == x["bob_public"]
    assert p.x25519(bytes.fromhex(x["alice_private"]), bytes.fromhex(x["bob_public"])).hex() == x["shared"]
    cases: list[dict[str, Any]] = [
        {
            "name": "rfc7748_6.1_x25519",
            "description": "RFC 7748 section 6.1: X25519 key pairs and shared secret",
            "inputs": {"alice_private": x["alice_private"], "bob_private": x["bob_private"]},
            "outputs": {
                "alice_public": x["alice_public"],
                "bob_public": x["bob_public"],
                "shared": x["shared"],
            },
        }
    ]
    ed = [
        (
            "TEST1",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
            "d25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "TEST2",
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
            "387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "TEST3",
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
            "4a7c15e9716ed28dc027beceea1ec40a",
        ),
    ]
    for test, secret, public, message, signature in ed:
        assert p.ed25519_public(bytes.fromhex(secret)).hex() == public
        assert p.ed25519_sign(bytes.fromhex(secret), bytes.fromhex(message)).hex() == signature
        cases.append(
            {
                "name": f"rfc8032_7.1_{test}",
                "description": f"RFC 8032 section 7.1 {test}: Ed25519 (the secret key is the 32-byte seed)",
                "inputs": {"secret_key": secret, "message": message},
                "outputs": {"public_key": public, "signature": signature},
            }
        )
    hkdf: dict[str, Any] = {
        "ikm": "0b" * 22,
        "salt": "000102030405060708090a0b0c",
        "info": "f0f1f2f3f4f5f6f7f8f9",
        "length": 42,
        "okm": "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    }
    okm = p.hkdf_sha256(
        bytes.fromhex(hkdf["ikm"]),
        salt=bytes.fromhex(hkdf["salt"]),
        info=bytes.fromhex(hkdf["info"]),
        length=42,
    )
    assert okm.hex() == hkdf["okm"]
    cases.append(
        {
            "name": "rfc5869_A.1_hkdf_sha256",
            "description": "RFC 5869 appendix A.1 (test case 1): HKDF-SHA256",
            "inputs": {k: hkdf[k] for k in ("ikm", "salt", "info", "length")},
            "outputs": {"okm": hkdf["okm"]},
        }
    )
    return doc("rfc", "docs/protocol/notation.md", cases, provenance=RFC_PROVENANCE)


# -- driver ---------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "encodings.json": build_encodings,
    "device_lists.json": build_device_lists,
    "x3dh.json": build_x3dh,
    "ratchet.json": build_ratchet,
    "sealed.json": build_sealed,
    "attachments.json": build_attachments,
    "safety_numbers.json": build_safety_numbers,
    "private_state.json": build_private_state,
    "rfc.json": build_rfc,
    # parts 2 and 3 (message and sync layers), built by generate_messages.py
    **MESSAGE_BUILDERS,
}


def render(document: dict[str, Any]) -> str:
    """The stable text of one file: sorted keys, two-space indentation, ASCII, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def build_all() -> dict[str, str]:
    """File name -> rendered text, for every vector file."""
    return {name: render(builder()) for name, builder in BUILDERS.items()}


def check(directory: Path = OUT_DIR) -> list[str]:
    """Names of the files that are missing or differ from what the code produces now."""
    stale = []
    for name, text in build_all().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any file would change; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for name in stale:
            print(f"stale or missing: docs/protocol/vectors/{name}", file=sys.stderr)
        if stale:
            print("run: python docs/protocol/vectors/generate.py", file=sys.stderr)
            return 1
        print(f"{len(BUILDERS)} vector files up to date")
        return 0
    for name, text in build_all().items():
        path = OUT_DIR / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote docs/protocol/vectors/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
