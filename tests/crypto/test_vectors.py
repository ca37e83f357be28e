"""The code reproduces the published test vectors in docs/protocol/vectors/ byte for byte.

Independent of the generator: every value is re-derived here from the inputs stored in the JSON
through the public API of ``crypto`` (with this module's own implementation of the documented
deterministic rng), decrypt-side checks decrypt the *stored* ciphertexts with the stored keys or
states, and every negative case raises exactly the named error class. The last test runs the
generator's ``--check`` logic so that a change to the code without regenerated vectors fails.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import struct
from collections.abc import Callable
from typing import Any

import nacl.bindings as sodium
import pytest

from saltline.crypto import attachments, device_list, errors, private_state, safety, sealed, x3dh
from saltline.crypto import primitives as p
from saltline.crypto import ratchet as rt
from saltline.crypto.errors import CryptoError
from saltline.crypto.keys import (
    AccountKey,
    AccountPublicKey,
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
from tests.crypto.vectors_support import (
    PART_2_3_FILES,
    VECTOR_DIR,
    Case,
    DRng,
    b,
    case,
    fixed_rng,
    load,
    negatives,
    no_rng,
    positives,
)

FILES = (
    "encodings.json",
    "device_lists.json",
    "x3dh.json",
    "ratchet.json",
    "sealed.json",
    "attachments.json",
    "safety_numbers.json",
    "private_state.json",
    "rfc.json",
)


# -- helpers -------------------------------------------------------------------------------------


def assert_raises_exactly(expected: str, fn: Callable[[], object]) -> None:
    cls = getattr(errors, expected)
    assert issubclass(cls, CryptoError)
    with pytest.raises(CryptoError) as info:
        fn()
    assert type(info.value) is cls, f"raised {type(info.value).__name__}, expected {expected}"


# -- the files themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_file_format(name: str) -> None:
    text = (VECTOR_DIR / name).read_text(encoding="utf-8")
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    assert set(document) == {"construction", "spec", "version", "generator", "provenance", "cases"}
    assert document["construction"] + ".json" == name
    assert document["generator"] == "docs/protocol/vectors/generate.py"
    assert (VECTOR_DIR.parents[2] / document["spec"]).is_file()
    assert document["version"] == 1 and document["provenance"]
    names = [c["name"] for c in document["cases"]]
    assert len(names) == len(set(names))
    for c in document["cases"]:
        assert {"name", "description", "inputs"} <= set(c)
        assert ("outputs" in c) != ("error" in c)
        if "seed" in c:
            assert c["seed"].startswith("saltline/v1/vectors/")


def test_every_error_class_named_exists() -> None:
    for name in FILES:
        for c in load(name)["cases"]:
            if "error" in c:
                assert issubclass(getattr(errors, c["error"]), CryptoError)


# -- encodings.json -------------------------------------------------------------------------------

_PRIVATE_BY_KIND: dict[str, Callable[[bytes], Any]] = {
    "ACCOUNT": AccountKey,
    "DEVICE_SIGNING": DeviceSigningKey,
    "DEVICE_DH": DeviceDHKey,
    "SIGNED_PREKEY": lambda raw: SignedPreKey(0, raw),
    "ONE_TIME_PREKEY": lambda raw: OneTimePreKey(0, raw),
    "LAST_RESORT_PREKEY": lambda raw: LastResortPreKey(0, raw),
    "EPHEMERAL": EphemeralKey,
}


def test_public_key_encodings() -> None:
    c = case("encodings.json", "public_keys")
    rng = DRng(c["seed"])
    keys = c["outputs"]["keys"]
    assert [k["kind"] for k in keys] == c["inputs"]["rng_draw_order"]
    for k in keys:
        assert rng(32).hex() == k["private"]
        public = _PRIVATE_BY_KIND[k["kind"]](b(k["private"])).public_key
        encoded = public.encode()
        assert bytes(public).hex() == k["public"]
        assert encoded == bytes([1, KeyKind[k["kind"]]]) + bytes(public) and len(encoded) == 34
        assert encoded.hex() == k["encoded"]
        assert k["kind_byte"] == KeyKind[k["kind"]] == encoded[1]
        assert public.to_b64() == k["encoded_b64"] == b64encode(encoded)
        assert public.fingerprint() == k["fingerprint"] == hashlib.sha256(encoded).hexdigest()[:16]
        assert type(public).decode(encoded) == public
        assert type(public).from_b64(k["encoded_b64"]) == public


def test_prekey_encodings() -> None:
    c = case("encodings.json", "prekeys")
    signer = DeviceSigningKey(b(c["inputs"]["device_signing_private"]))
    assert signer.public_key.encode().hex() == c["outputs"]["device_signing_public"]
    classes = {
        "SIGNED_PREKEY": SignedPreKey,
        "ONE_TIME_PREKEY": OneTimePreKey,
        "LAST_RESORT_PREKEY": LastResortPreKey,
    }
    for k in c["outputs"]["prekeys"]:
        prekey = classes[k["kind"]](k["key_id"], b(k["private"]))
        assert bytes(prekey.public_key).hex() == k["public"]
        part = bytes([1, KeyKind[k["kind"]]]) + struct.pack(">I", k["key_id"]) + bytes(prekey.public_key)
        assert part.hex() == k["signed_part"]
        assert (b"saltline/v1/prekey\x00" + part).hex() == k["signing_input"]
        p.ed25519_verify(bytes(signer.public_key), b(k["signing_input"]), b(k["signature"]))
        public = prekey.signed_public(signer)
        assert public.signature.hex() == k["signature"]
        assert public.encode().hex() == k["encoded"] and len(public.encode()) == 102
        assert public.to_b64() == k["encoded_b64"]
        decoded = PreKeyPublic.decode(b(k["encoded"]))
        assert decoded == public
        decoded.verify(signer.public_key)


def test_signing_inputs() -> None:
    c = case("encodings.json", "signing_inputs")
    account = AccountKey(b(c["inputs"]["account_private"]))
    message = b(c["inputs"]["message"])
    assert account.public_key.encode().hex() == c["outputs"]["account_public"]
    contexts = c["outputs"]["contexts"]
    assert sorted(x["context"] for x in contexts) == sorted(ctx.name for ctx in SigningContext)
    for x in contexts:
        ctx = SigningContext[x["context"]]
        assert ctx.value.hex() == x["context_label"]
        expected = b"saltline/v1/" + ctx.value + b"\x00" + message
        assert signing_input(ctx, message) == expected == b(x["signing_input"])
        assert account.sign(ctx, message).hex() == x["signature"]
        account.public_key.verify(ctx, message, b(x["signature"]))


def test_base64url_examples() -> None:
    c = case("encodings.json", "base64url")
    for data, text in zip(c["inputs"]["data"], c["outputs"]["text_b64"], strict=True):
        assert b64encode(b(data)) == text
        assert b64decode(text) == b(data)


_ENCODING_OPS: dict[str, Callable[[dict[str, Any]], object]] = {
    "DeviceDHPublicKey.decode": lambda i: DeviceDHPublicKey.decode(b(i["data"])),
    "PreKeyPublic.decode": lambda i: PreKeyPublic.decode(b(i["data"])),
    "DeviceDHPublicKey.from_b64": lambda i: DeviceDHPublicKey.from_b64(i["text"]),
    "b64decode": lambda i: b64decode(i["text"]),
    "PreKeyPublic.verify": lambda i: PreKeyPublic.decode(b(i["data"])).verify(
        DeviceSigningPublicKey.decode(b(i["signer"]))
    ),
}


@pytest.mark.parametrize("c", negatives("encodings.json"))
def test_encoding_rejections(c: Case) -> None:
    assert_raises_exactly(c["error"], lambda: _ENCODING_OPS[c["inputs"]["operation"]](c["inputs"]))


# -- device_lists.json ------------------------------------------------------------------------------


def test_device_list_chain() -> None:
    c = case("device_lists.json", "chain")
    inputs, outputs = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    assert rng(32).hex() == inputs["account_private"] and rng(32).hex() == inputs["other_account_private"]
    account = AccountKey(b(inputs["account_private"]))
    assert account.public_key.encode().hex() == inputs["account_public"]
    entries = []
    for d in inputs["devices"]:
        assert [rng(16).hex(), rng(32).hex(), rng(32).hex()] == [
            d["device_id"],
            d["signing_private"],
            d["dh_private"],
        ]
        signing = DeviceSigningKey(b(d["signing_private"]))
        dh = DeviceDHKey(b(d["dh_private"]))
        assert bytes(signing.public_key).hex() == d["signing_public"]
        assert bytes(dh.public_key).hex() == d["dh_public"]
        message = (
            bytes(account.public_key)
            + b(d["device_id"])
            + bytes(signing.public_key)
            + bytes(dh.public_key)
            + struct.pack(">QQ", d["added_at"], d["joined_version"])
        )
        assert message.hex() == d["binding_message"] and len(message) == 128
        assert (
            device_list.binding_message(
                account.public_key,
                b(d["device_id"]),
                signing.public_key,
                dh.public_key,
                d["added_at"],
                d["joined_version"],
            )
            == message
        )
        assert signing_input(SigningContext.DEVICE_BINDING, message).hex() == d["binding_signing_input"]
        entry = device_list.bind_device(
            account.public_key, b(d["device_id"]), signing, dh.public_key, d["added_at"], d["joined_version"]
        )
        assert entry.binding_signature.hex() == d["binding_signature"]
        p.ed25519_verify(bytes(signing.public_key), b(d["binding_signing_input"]), b(d["binding_signature"]))
        assert entry.encode().hex() == d["entry"] and len(entry.encode()) == 160
        assert b(d["entry"])[80:96] == struct.pack(">QQ", d["added_at"], d["joined_version"])
        assert device_list.DeviceEntry.decode(b(d["entry"])) == entry
        entries.append(entry)

    assert outputs["username"] == device_list.normalize_username(inputs["username"])
    previous_hash = bytes(32)
    verifier = device_list.DeviceListChainVerifier(account.public_key, expected_username=inputs["username"])
    for spec, expected in zip(inputs["lists"], outputs["lists"], strict=True):
        content = device_list.DeviceList.create(
            spec["version"],
            previous_hash,
            account.public_key,
            inputs["username"],
            [entries[i] for i in spec["devices"]],
        )
        encoded = content.encode()
        signed = device_list.sign(account, content)
        assert expected["version"] == spec["version"]
        assert expected["previous_hash"] == previous_hash.hex()
        assert expected["device_ids"] == [d.hex() for d in content.device_ids]
        assert encoded.hex() == expected["content"]
        assert (b"saltline/v1/device-list\x00" + encoded).hex() == expected["signing_input"]
        assert signed.signature.hex() == expected["signature"]
        assert signed.encode().hex() == expected["signed"] == encoded.hex() + expected["signature"]
        assert signed.to_b64() == expected["signed_b64"]
        assert hashlib.sha256(signed.encode()).hexdigest() == expected["hash"] == signed.hash().hex()
        # decrypt-side: the stored bytes parse back and verify as the successor of the one before
        assert verifier.verify_next(b(expected["signed"])) == content
        previous_hash = signed.hash()


def test_device_list_succession() -> None:
    c = case("device_lists.json", "succession")
    i, out = c["inputs"], c["outputs"]
    old, new = AccountKey(b(i["account_private"])), AccountKey(b(i["successor_private"]))
    previous = device_list.SignedDeviceList.decode(b(i["previous"]))
    message = (
        bytes(old.public_key)
        + bytes(new.public_key)
        + bytes(previous.content.root)
        + struct.pack(">Q", previous.version + 1)
        + previous.hash()
    )
    assert message.hex() == out["succession_message"] and len(message) == 136
    assert (b"saltline/v1/account-key-succession\x00" + message).hex() == out["succession_signing_input"]
    assert (
        p.ed25519_sign(b(i["account_private"]), b(out["succession_signing_input"])).hex()
        == (out["succession_signature"])
    )
    entry = device_list.DeviceEntry.decode(b(i["device_2_entry"]))
    signed = device_list.successor(previous, old, (*previous.content.devices, entry), rotate_to=new)
    assert signed.encode().hex() == out["list"]["signed"]
    content = signed.content.encode()
    # ... || entries || 0x01 || previous_pk (32) || succession signature (64)
    assert content[-97] == 1 and content[-96:-64] == bytes(old.public_key)
    assert content[-64:].hex() == out["succession_signature"]
    assert signed.hash().hex() == out["list"]["hash"]
    assert device_list.verify(b(out["list"]["signed"]), old.public_key).account_key == new.public_key


def _chain_verifier(inputs: dict[str, Any]) -> device_list.DeviceListChainVerifier:
    trusted = AccountPublicKey.decode(b(inputs["trusted_account_key"]))
    known = inputs["known"]
    last = None if known is None else device_list.SignedDeviceList.decode(b(known))
    return device_list.DeviceListChainVerifier(trusted, last, inputs["expected_username"])


@pytest.mark.parametrize(
    "c", [x for x in positives("device_lists.json") if x.values[0]["name"] not in ("chain", "succession")]
)
def test_device_list_accepted(c: Case) -> None:
    verifier = _chain_verifier(c["inputs"])
    result = verifier.verify_chain([b(x) for x in c["inputs"]["offered"]])
    assert result.version == c["outputs"]["latest_version"]
    assert result.encode().hex() == c["outputs"]["latest_content"]


@pytest.mark.parametrize("c", negatives("device_lists.json"))
def test_device_list_rejections(c: Case) -> None:
    verifier = _chain_verifier(c["inputs"])
    before = verifier.latest
    assert_raises_exactly(c["error"], lambda: verifier.verify_chain([b(x) for x in c["inputs"]["offered"]]))
    assert verifier.latest == before


# -- x3dh.json -------------------------------------------------------------------------------------


def _identity(party: dict[str, Any]) -> x3dh.DeviceIdentityKeys:
    return x3dh.DeviceIdentityKeys(
        b(party["device_id"]),
        DeviceSigningKey(b(party["signing_private"])),
        DeviceDHKey(b(party["dh_private"])),
    )


def _prekeys(party: dict[str, Any], held: list[int] | None = None) -> x3dh.InMemoryPreKeys:
    return x3dh.InMemoryPreKeys(
        [SignedPreKey(party["signed_prekey"]["id"], b(party["signed_prekey"]["private"]))],
        [
            OneTimePreKey(k["id"], b(k["private"]))
            for k in party["one_time_prekeys"]
            if held is None or k["id"] in held
        ],
        [LastResortPreKey(party["last_resort_prekey"]["id"], b(party["last_resort_prekey"]["private"]))],
    )


def _bundle(d: dict[str, Any]) -> x3dh.PreKeyBundle:
    opk = d["one_time_prekey"]
    return x3dh.PreKeyBundle(
        b(d["device_id"]),
        DeviceSigningPublicKey.decode(b(d["signing_key"])),
        DeviceDHPublicKey.decode(b(d["dh_key"])),
        PreKeyPublic.decode(b(d["signed_prekey"])),
        None if opk is None else PreKeyPublic.decode(b(opk)),
    )


def _entry(party: dict[str, Any], account_seed: str) -> device_list.DeviceEntry:
    """The party's device-list entry, re-derived: its account key is the first draw of
    ``account_seed`` and the entry is the binding of the party's keys (with ``added_at``) under it."""
    account = AccountKey(b(party["account_private"]))
    assert DRng(account_seed)(32) == bytes(account)
    signing = DeviceSigningKey(b(party["signing_private"]))
    dh = DeviceDHKey(b(party["dh_private"]))
    message = (
        bytes(account.public_key)
        + b(party["device_id"])
        + bytes(signing.public_key)
        + bytes(dh.public_key)
        + struct.pack(">QQ", party["added_at"], 1)  # joined at version 1
    )
    signature = p.ed25519_sign(bytes(signing), signing_input(SigningContext.DEVICE_BINDING, message))
    raw = (
        b(party["device_id"])
        + bytes(signing.public_key)
        + bytes(dh.public_key)
        + struct.pack(">QQ", party["added_at"], 1)
        + signature
    )
    assert raw.hex() == party["entry"]
    entry = device_list.DeviceEntry.decode(raw)
    entry.verify_binding(account.public_key)
    return entry


def _check_parties(inputs: dict[str, Any]) -> None:
    """The identities are what generate_device draws from the stated seeds (documented order)."""
    a = DRng(inputs["initiator_seed"])
    ini = inputs["initiator"]
    assert [a(16).hex(), a(32).hex(), a(32).hex()] == [
        ini["device_id"],
        ini["signing_private"],
        ini["dh_private"],
    ]
    r = DRng(inputs["responder_seed"])
    res = inputs["responder"]
    expected = [
        res["device_id"],
        res["signing_private"],
        res["dh_private"],
        res["signed_prekey"]["private"],
        res["last_resort_prekey"]["private"],
        *(k["private"] for k in res["one_time_prekeys"]),
    ]
    assert [r(16).hex()] + [r(32).hex() for _ in expected[1:]] == expected
    _entry(ini, inputs["initiator_account_seed"])
    _entry(res, inputs["responder_account_seed"])


@pytest.mark.parametrize("c", positives("x3dh.json"))
def test_x3dh_session_setup(c: Case) -> None:
    inputs, out = c["inputs"], c["outputs"]
    _check_parties(inputs)
    alice, bob = _identity(inputs["initiator"]), _identity(inputs["responder"])
    alice_entry = _entry(inputs["initiator"], inputs["initiator_account_seed"])
    bob_entry = _entry(inputs["responder"], inputs["responder_account_seed"])
    assert x3dh.identity_matches(alice.public, alice_entry) and x3dh.identity_matches(bob.public, bob_entry)
    responder = inputs["responder"]
    # The bundle is the responder's published, signed prekeys.
    spk = SignedPreKey(responder["signed_prekey"]["id"], b(responder["signed_prekey"]["private"]))
    assert spk.signed_public(bob.signing_key).encode().hex() == inputs["bundle"]["signed_prekey"]
    bundle = _bundle(inputs["bundle"])
    assert bundle.identity == bob.public
    opk_private: bytes | None = None
    if bundle.one_time_prekey is not None:
        opk = bundle.one_time_prekey
        pool = (
            responder["one_time_prekeys"]
            if opk.kind == KeyKind.ONE_TIME_PREKEY
            else [responder["last_resort_prekey"]]
        )
        opk_private = next(b(k["private"]) for k in pool if k["id"] == opk.key_id)
        cls = OneTimePreKey if opk.kind == KeyKind.ONE_TIME_PREKEY else LastResortPreKey
        assert cls(opk.key_id, opk_private).signed_public(bob.signing_key) == opk

    rng = DRng(c["seed"])
    result = x3dh.initiate(alice, bundle, bob_entry, rng)
    assert rng.draws == [b(out["ephemeral_private"])]
    ek = b(out["ephemeral_private"])
    assert p.x25519_public(ek).hex() == out["ephemeral_public"]
    dhs = [
        p.x25519(bytes(alice.dh_key), bytes(spk.public_key)),
        p.x25519(ek, bytes(bob.dh_key.public_key)),
        p.x25519(ek, bytes(spk.public_key)),
    ]
    if opk_private is not None:
        dhs.append(p.x25519(ek, p.x25519_public(opk_private)))
    assert [d.hex() for d in dhs] == [
        out["dh1"],
        out["dh2"],
        out["dh3"],
        *([out["dh4"]] if out["dh4"] else []),
    ]
    assert (out["dh4"] is None) == (opk_private is None)
    ikm = b"\xff" * 32 + b"".join(dhs)
    assert ikm.hex() == out["kdf_input"]
    sk = p.hkdf_sha256(ikm, salt=bytes(32), info=b"Saltline X3DH v1", length=32)
    assert sk.hex() == out["shared_key"] == result.shared_key.hex()
    assert alice.public.encode().hex() == out["initiator_identity"]
    assert bob.public.encode().hex() == out["responder_identity"]
    assert (
        result.associated_data.hex()
        == out["associated_data"]
        == out["initiator_identity"] + out["responder_identity"]
    )
    assert result.header.encode().hex() == out["initial_header"]
    assert b64encode(result.header.encode()) == out["initial_header_b64"]
    assert bytes(result.remote_ratchet_key).hex() == out["remote_ratchet_key"]
    # Responder side, from the stored header bytes, under both forms of trust policy.
    header = x3dh.InitialHeader.decode(b(out["initial_header"]))
    for policy in (alice_entry, lambda identity: identity == alice.public):
        response = x3dh.respond(bob, _prekeys(responder), header, trusted=policy)
        assert response.shared_key.hex() == out["shared_key"]
        assert response.associated_data.hex() == out["associated_data"]
        assert response.one_time_prekey_id == out["responder_one_time_prekey_id"]


@pytest.mark.parametrize("c", negatives("x3dh.json"))
def test_x3dh_rejections(c: Case) -> None:
    inputs = c["inputs"]
    trusted = device_list.DeviceEntry.decode(b(inputs["trusted"]))
    if inputs["operation"] == "initiate":
        who = _identity(inputs[inputs["run_by"]])
        assert_raises_exactly(
            c["error"], lambda: x3dh.initiate(who, _bundle(inputs["bundle"]), trusted, no_rng)
        )
    else:
        bob = _identity(inputs["responder"])
        lookup = _prekeys(inputs["responder"], inputs["held_one_time_prekeys"])
        assert_raises_exactly(
            c["error"],
            lambda: x3dh.respond(
                bob, lookup, x3dh.InitialHeader.decode(b(inputs["initial_header"])), trusted=trusted
            ),
        )


# -- ratchet.json -------------------------------------------------------------------------------------


def test_ratchet_script_replayed() -> None:
    """Re-run the script: every message encrypts to the stored bytes, every stored message decrypts,
    and the state after every step hashes to the stored value."""
    c = case("ratchet.json", "script")
    inputs, out = c["inputs"], c["outputs"]
    messages = {m["name"]: m for m in out["messages"]}
    _check_parties(inputs)
    alice, bob = _identity(inputs["initiator"]), _identity(inputs["responder"])
    alice_entry = _entry(inputs["initiator"], inputs["initiator_account_seed"])
    bob_entry = _entry(inputs["responder"], inputs["responder_account_seed"])
    alice_rng, bob_rng = DRng(inputs["alice_seed"]), DRng(inputs["bob_seed"])
    setup = x3dh.initiate(alice, _bundle(inputs["bundle"]), bob_entry, alice_rng)
    assert setup.shared_key.hex() == out["shared_key"]
    assert setup.associated_data.hex() == out["session_associated_data"]
    assert setup.header.encode().hex() == out["initial_header"]
    sessions = {"alice": rt.Session.initiate(setup, alice_rng)}
    assert len(inputs["script"]) == len(out["steps"])
    for step, expected in zip(inputs["script"], out["steps"], strict=True):
        actor, action, name = step["actor"], step["action"], step["message"]
        m = messages[name]
        plaintext, ad = b(m["plaintext"]), b(m["associated_data"])
        assert plaintext == f"message {name}: the quick brown fox".encode()
        assert ad == f"saltline/v1/envelope-header:{name}".encode()
        if action == "encrypt":
            session = sessions[actor]
            assert session.pending_initial_header == (
                None if m["initial_header"] is None else b(m["initial_header"])
            )
            assert session.encrypt(plaintext, ad).hex() == m["message"]
        elif action == "accept":
            accepted = rt.accept(
                bob,
                _prekeys(inputs["responder"]),
                b(m["initial_header"]),
                b(m["message"]),
                ad,
                bob_rng,
                trusted=alice_entry,
            )
            assert accepted.plaintext == plaintext
            assert accepted.initiator == alice.public
            sessions[actor] = accepted.session
        else:
            assert sessions[actor].decrypt(b(m["message"]), ad) == plaintext
        state = sessions[actor].to_bytes()
        assert hashlib.sha256(state).hexdigest() == expected["state_after_sha256"], step
        assert sessions[actor].stored_skipped_keys == expected["stored_skipped_keys"]
    assert sessions["alice"].to_bytes().hex() == out["final_state_alice"]
    assert sessions["bob"].to_bytes().hex() == out["final_state_bob"]
    assert hashlib.sha256(b(out["final_state_alice"])).hexdigest() == out["final_state_alice_sha256"]
    assert hashlib.sha256(b(out["final_state_bob"])).hexdigest() == out["final_state_bob_sha256"]
    assert [d.hex() for d in alice_rng.draws] == out["alice_rng_draws"]
    assert [d.hex() for d in bob_rng.draws] == out["bob_rng_draws"]


# The documented order of draws of the script (x3dh.initiate: EK_A; Session.initiate: DHs;
# Session.encrypt: one 24-byte nonce; Session.decrypt: a new DHs on a DH ratchet step only).
ALICE_DRAWS = ["EK_A", "DHs", "nonce a0", "nonce a1", "nonce a2", "DHs b0", "nonce a3", "nonce a4", "DHs b2"]
BOB_DRAWS = ["DHs a0", "nonce b0", "nonce b1", "DHs a3", "nonce b2"]


def test_ratchet_keys_and_nonces_are_the_rng_draws() -> None:
    out = case("ratchet.json", "script")["outputs"]
    messages = {m["name"]: m for m in out["messages"]}
    keys = {name: m["ratchet_key"] for name, m in messages.items()}
    draws = {
        "alice": dict(zip(ALICE_DRAWS, [b(x) for x in out["alice_rng_draws"]], strict=True)),
        "bob": dict(zip(BOB_DRAWS, [b(x) for x in out["bob_rng_draws"]], strict=True)),
    }
    assert len(out["alice_rng_purpose"]) == len(ALICE_DRAWS)
    assert len(out["bob_rng_purpose"]) == len(BOB_DRAWS)
    a, bb = draws["alice"], draws["bob"]
    assert [len(x) for x in a.values()] == [32, 32, 24, 24, 24, 32, 24, 24, 32]
    assert [len(x) for x in bb.values()] == [32, 24, 24, 32, 24]
    header = x3dh.InitialHeader.decode(b(out["initial_header"]))
    assert bytes(header.ephemeral_key) == p.x25519_public(a["EK_A"])
    assert {keys["a0"], keys["a1"], keys["a2"]} == {p.x25519_public(a["DHs"]).hex()}
    assert {keys["a3"], keys["a4"]} == {p.x25519_public(a["DHs b0"]).hex()}
    assert {keys["b0"], keys["b1"]} == {p.x25519_public(bb["DHs a0"]).hex()}
    assert keys["b2"] == p.x25519_public(bb["DHs a3"]).hex()
    order = {"alice": ALICE_DRAWS, "bob": BOB_DRAWS}
    for name, m in messages.items():
        nonce = draws[m["sender"]][f"nonce {name}"]
        # nonce_rng_draw is the DRng call number k, counted from 1 (vectors.md section 1)
        assert order[m["sender"]].index(f"nonce {name}") + 1 == m["nonce_rng_draw"]
        assert nonce.hex() == m["aead_nonce"] == m["header"][2 * 41 :]
    nonces = [m["aead_nonce"] for m in messages.values()]
    assert len(set(nonces)) == len(nonces)


@pytest.mark.parametrize(
    "m", [pytest.param(m, id=m["name"]) for m in case("ratchet.json", "script")["outputs"]["messages"]]
)
def test_ratchet_message_construction(m: dict[str, Any]) -> None:
    """Each message from its chain key and its (stored, rng-drawn) nonce alone: KDF_CK, the AEAD
    key, the 65-byte header, AEAD, and the stored ciphertext decrypts under the stored key and nonce."""
    out = case("ratchet.json", "script")["outputs"]
    session_ad = b(out["session_associated_data"])
    ck = b(m["chain_key"])
    mk = p.hmac_sha256(ck, b"\x01")
    assert mk.hex() == m["message_key"] and p.hmac_sha256(ck, b"\x02").hex() == m["next_chain_key"]
    assert rt.kdf_ck(ck) == (mk, b(m["next_chain_key"]))
    key = p.hkdf_sha256(mk, salt=bytes(32), info=b"Saltline message key v2", length=32)
    assert key.hex() == m["aead_key"] == rt.message_key(mk).hex()
    nonce = b(m["aead_nonce"])
    assert len(nonce) == 24
    assert m["nonce_rng_draw"] >= 1
    assert nonce.hex() == out[f"{m['sender']}_rng_draws"][m["nonce_rng_draw"] - 1]
    header = struct.pack(
        ">B32sII24s", 2, b(m["ratchet_key"]), m["previous_chain_length"], m["message_number"], nonce
    )
    assert header.hex() == m["header"] and len(header) == 65
    assert rt.MessageHeader.decode(header) == rt.MessageHeader(
        b(m["ratchet_key"]), m["previous_chain_length"], m["message_number"], nonce
    )
    aead_ad = session_ad + header + b(m["associated_data"])
    assert aead_ad.hex() == m["aead_associated_data"]
    ciphertext = p.aead_encrypt(b(m["aead_key"]), b(m["aead_nonce"]), b(m["plaintext"]), aead_ad)
    assert ciphertext.hex() == m["ciphertext"]
    assert m["message"] == m["header"] + m["ciphertext"]
    assert p.aead_decrypt(b(m["aead_key"]), b(m["aead_nonce"]), b(m["ciphertext"]), aead_ad) == b(
        m["plaintext"]
    )


def test_ratchet_stored_states() -> None:
    out = case("ratchet.json", "script")["outputs"]
    for name in ("final_state_alice", "final_state_bob", "bob_state_before_a4"):
        assert rt.Session.from_bytes(b(out[name]), no_rng).to_bytes() == b(out[name])
    # Bob's stored state before a4 decrypts the stored a4 into the state recorded after that step.
    a4 = next(m for m in out["messages"] if m["name"] == "a4")
    session = rt.Session.from_bytes(b(out["bob_state_before_a4"]), no_rng)
    assert session.decrypt(b(a4["message"]), b(a4["associated_data"])) == b(a4["plaintext"])
    step = next(s for s in out["steps"] if s["actor"] == "bob" and s["message"] == "a4")
    assert hashlib.sha256(session.to_bytes()).hexdigest() == step["state_after_sha256"]


def test_ratchet_kdfs() -> None:
    c = case("ratchet.json", "kdfs")
    i, o = {k: b(v) for k, v in c["inputs"].items()}, c["outputs"]
    rng = DRng(c["seed"])
    assert [rng(32) for _ in range(4)] == [i["rk"], i["dh_out"], i["ck"], i["mk"]]
    out = p.hkdf_sha256(i["dh_out"], salt=i["rk"], info=b"Saltline ratchet v1", length=64)
    assert out.hex() == o["kdf_rk_root_key"] + o["kdf_rk_chain_key"]
    assert rt.kdf_rk(i["rk"], i["dh_out"]) == (b(o["kdf_rk_root_key"]), b(o["kdf_rk_chain_key"]))
    assert (p.hmac_sha256(i["ck"], b"\x01") + p.hmac_sha256(i["ck"], b"\x02")).hex() == (
        o["kdf_ck_message_key"] + o["kdf_ck_chain_key"]
    )
    assert rt.kdf_ck(i["ck"]) == (b(o["kdf_ck_message_key"]), b(o["kdf_ck_chain_key"]))
    key = p.hkdf_sha256(i["mk"], salt=bytes(32), info=b"Saltline message key v2", length=32)
    assert key.hex() == o["aead_key"] == rt.message_key(i["mk"]).hex()


@pytest.mark.parametrize("c", negatives("ratchet.json"))
def test_ratchet_rejections_leave_state_unchanged(c: Case) -> None:
    state = b(c["inputs"]["state"])
    session = rt.Session.from_bytes(state, no_rng)
    assert_raises_exactly(
        c["error"], lambda: session.decrypt(b(c["inputs"]["message"]), b(c["inputs"]["associated_data"]))
    )
    assert session.to_bytes() == state


# -- sealed.json -------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", positives("sealed.json"))
def test_sealed_box(c: Case) -> None:
    inputs, out = c["inputs"], c["outputs"]
    recipient = DeviceDHKey(b(inputs["recipient_private"]))
    assert DRng(inputs["recipient_seed"])(32) == bytes(recipient)
    assert bytes(recipient.public_key).hex() == out["recipient_public"]
    context, plaintext = b(inputs["context"]), b(inputs["plaintext"])
    rng = DRng(c["seed"])
    box = sealed.seal(recipient.public_key, plaintext, context, rng=rng)
    assert rng.draws == [b(out["ephemeral_private"])]
    assert box.hex() == out["sealed"] and b64encode(box) == out["sealed_b64"]
    esk = b(out["ephemeral_private"])
    assert sealed.seal_with_ephemeral(recipient.public_key, plaintext, context, ephemeral_private=esk) == box
    epk = p.x25519_public(esk)
    assert epk.hex() == out["ephemeral_public"] and box[:32] == epk
    nonce = hashlib.blake2b(epk + bytes(recipient.public_key), digest_size=24).digest()
    assert nonce.hex() == out["nonce"]
    inner = bytes([len(context)]) + context + plaintext
    assert inner.hex() == out["inner"]
    assert sodium.crypto_box(inner, nonce, bytes(recipient.public_key), esk) == box[32:]
    # decrypt side, from the stored bytes
    assert (
        sodium.crypto_box_seal_open(b(out["sealed"]), bytes(recipient.public_key), bytes(recipient)) == inner
    )
    assert sealed.open(recipient, b(out["sealed"]), context) == plaintext


@pytest.mark.parametrize("c", negatives("sealed.json"))
def test_sealed_rejections(c: Case) -> None:
    i = c["inputs"]
    key = DeviceDHKey(b(i["recipient_private"]))
    assert_raises_exactly(c["error"], lambda: sealed.open(key, b(i["sealed"]), b(i["context"])))


# -- attachments.json ----------------------------------------------------------------------------------


def rule_plaintext(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@functools.cache
def attachment_ciphertext(name: str) -> bytes:
    i = case("attachments.json", name)["inputs"]
    return attachments.encrypt(
        rule_plaintext(i["plaintext_size"]), rng=fixed_rng(b(i["key"]), b(i["header"]))
    ).ciphertext


@pytest.mark.parametrize("c", positives("attachments.json"))
def test_attachment_stream(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    assert i["chunk_size"] == attachments.CHUNK_SIZE
    key, header = b(i["key"]), b(i["header"])
    rng = DRng(c["seed"])
    assert [rng(32), rng(24)] == [key, header]
    plaintext = rule_plaintext(i["plaintext_size"])
    enc = attachments.encrypt(plaintext, rng=DRng(c["seed"]))
    ct = enc.ciphertext
    assert ct == attachment_ciphertext(c["name"])
    assert len(ct) == out["ciphertext_size"] == attachments.ciphertext_size(len(plaintext))
    assert hashlib.sha256(ct).hexdigest() == out["ciphertext_sha256"] == out["digest"]
    if out["ciphertext"] is not None:
        assert ct.hex() == out["ciphertext"]
    assert ct[:24] == header
    for chunk in out["chunks"]:
        piece = ct[chunk["ciphertext_offset"] : chunk["ciphertext_offset"] + chunk["ciphertext_length"]]
        assert hashlib.sha256(piece).hexdigest() == chunk["sha256"]
    record = attachments.AttachmentKey(key, hashlib.sha256(ct).digest(), len(plaintext))
    assert enc.key == record
    assert record.encode().hex() == out["attachment_key"] and len(record.encode()) == 73
    assert b64encode(record.encode()) == out["attachment_key_b64"]
    # Decrypt side, with libsodium's secretstream directly: chunk boundaries and tags.
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    recovered = b""
    for n, chunk in enumerate(out["chunks"]):
        assert chunk["index"] == n
        assert chunk["ciphertext_length"] == chunk["plaintext_length"] + 17
        piece = ct[chunk["ciphertext_offset"] : chunk["ciphertext_offset"] + chunk["ciphertext_length"]]
        message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, piece, None)
        expected_tag = (
            sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if chunk["tag"] == "FINAL"
            else sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        assert tag == expected_tag
        assert chunk["tag"] == ("FINAL" if n == len(out["chunks"]) - 1 else "MESSAGE")
        assert (
            message
            == plaintext[chunk["plaintext_offset"] : chunk["plaintext_offset"] + chunk["plaintext_length"]]
        )
        recovered += message
    assert recovered == plaintext
    assert attachments.decrypt(ct, attachments.AttachmentKey.decode(b(out["attachment_key"]))) == plaintext


@pytest.mark.parametrize("c", negatives("attachments.json"))
def test_attachment_rejections(c: Case) -> None:
    i = c["inputs"]
    base = attachment_ciphertext(i["base"])
    data = b"".join(
        b(x["hex"]) if "hex" in x else base[x["from"] : x["from"] + x["length"]]
        for x in i["ciphertext_pieces"]
    )
    key: bytes | attachments.AttachmentKey = (
        b(i["key"])
        if i["attachment_key"] is None
        else attachments.AttachmentKey.decode(b(i["attachment_key"]))
    )
    assert_raises_exactly(c["error"], lambda: attachments.decrypt(data, key))


# -- safety_numbers.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("c", positives("safety_numbers.json"))
def test_safety_numbers(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    # One shared DRng: its calls 1..4 are the four account keys, in the order the cases name them.
    rng = DRng(c["seed"])
    draws = [rng(32) for _ in range(4)]
    assert draws[i["local_account_draw"] - 1] == b(i["local_account_private"])
    assert draws[i["remote_account_draw"] - 1] == b(i["remote_account_private"])
    local = AccountKey(b(i["local_account_private"])).public_key
    remote = AccountKey(b(i["remote_account_private"])).public_key
    assert local.encode().hex() == i["local_account_public"]
    assert remote.encode().hex() == i["remote_account_public"]
    assert device_list.normalize_username(i["local_username"]) == out["local_username_normalized"]
    assert device_list.normalize_username(i["remote_username"]) == out["remote_username_normalized"]
    assert safety.fingerprint(local, i["local_username"]).hex() == out["local_fingerprint"]
    assert safety.fingerprint(remote, i["remote_username"]).hex() == out["remote_fingerprint"]
    halves = sorted([b(out["local_fingerprint"]), b(out["remote_fingerprint"])])
    digits = "".join(
        f"{int.from_bytes(h[k : k + 5], 'big') % 100000:05d}" for h in halves for k in range(0, 30, 5)
    )
    assert digits == out["digits"]
    assert (b"\x01" + halves[0][:32] + halves[1][:32]).hex() == out["qr_payload"]
    for number in (
        safety.safety_number(local, i["local_username"], remote, i["remote_username"]),
        safety.safety_number(remote, i["remote_username"], local, i["local_username"]),
    ):
        assert number.digits == out["digits"]
        assert number.display() == out["display"]
        groups = [out["digits"][k : k + 5] for k in range(0, 60, 5)]
        assert out["display"] == "\n".join(" ".join(groups[k : k + 4]) for k in (0, 4, 8))
        assert len(out["display"]) == 71
        assert number.qr_payload.hex() == out["qr_payload"]
        assert number.matches_qr(b(out["qr_payload"]))


@pytest.mark.parametrize("c", negatives("safety_numbers.json"))
def test_safety_number_rejections(c: Case) -> None:
    i = c["inputs"]
    local = AccountPublicKey.decode(b(i["local_account_public"]))
    remote = AccountPublicKey.decode(b(i["remote_account_public"]))
    assert_raises_exactly(
        c["error"], lambda: safety.safety_number(local, i["local_username"], remote, i["remote_username"])
    )
    assert_raises_exactly(
        c["error"], lambda: safety.safety_number(remote, i["remote_username"], local, i["local_username"])
    )


def test_safety_number_fingerprint_construction() -> None:
    """One fingerprint by the documented iteration, independently of saltline.crypto.safety."""
    c = case("safety_numbers.json", "ascii")
    key = AccountKey(b(c["inputs"]["local_account_private"])).public_key
    name = c["outputs"]["local_username_normalized"].encode()
    digest = b"saltline/v1/safety-number\x00\x00\x01" + key.encode() + bytes([len(name)]) + name
    for _ in range(5200):
        digest = hashlib.sha512(digest + bytes(key)).digest()
    assert digest.hex() == c["outputs"]["local_fingerprint"]


# -- private_state.json -----------------------------------------------------------------------------------


def test_private_state_fresh_device() -> None:
    c = case("private_state.json", "fresh_device")
    i, out = c["inputs"], c["outputs"]
    account = AccountKey(b(i["account_private"]))
    assert DRng(i["account_seed"])(32) == bytes(account)
    rng = DRng(c["seed"])
    state = private_state.generate_device(
        account_key=account, one_time_prekeys=i["one_time_prekeys"], rng=rng
    )
    assert [d.hex() for d in rng.draws] == out["rng_draws"]
    encoded = state.encode()
    assert encoded.decode("utf-8") == out["encoded_json"]
    assert hashlib.sha256(encoded).hexdigest() == out["encoded_sha256"]
    # decode side: the stored document parses and re-encodes identically
    decoded = private_state.decode(out["encoded_json"].encode("utf-8"))
    assert decoded.encode() == encoded
    assert decoded.signing_key.public_key.encode().hex() == out["device_signing_public"]
    assert decoded.dh_key.public_key.encode().hex() == out["device_dh_public"]
    assert decoded.signed_prekey_public().encode().hex() == out["signed_prekey_public"]
    assert decoded.last_resort_prekey_public().encode().hex() == out["last_resort_prekey_public"]
    assert [k.encode().hex() for k in decoded.one_time_prekeys_public()] == out["one_time_prekeys_public"]
    document = json.loads(out["encoded_json"])
    draws = out["rng_draws"]
    assert b(draws[0]) == b64decode(document["device_id"])
    assert b(draws[1]) == b64decode(document["device_signing_key"])
    assert b(draws[2]) == b64decode(document["device_dh_key"])
    assert document["signed_prekey"] == {"id": 1, "key": b64encode(b(draws[3]))}
    assert document["last_resort_prekey"] == {"id": 2, "key": b64encode(b(draws[4]))}
    assert document["one_time_prekeys"] == [
        {"id": 3 + n, "key": b64encode(b(d))} for n, d in enumerate(draws[5:])
    ]


def test_private_state_rotated_device() -> None:
    c = case("private_state.json", "rotated_device")
    assert c["inputs"]["operations"] == ["rotate_signed_prekey(rng)", "remove_one_time_prekey(3)"]
    state = private_state.decode(c["inputs"]["encoded_json"].encode("utf-8"))
    rotated = state.rotate_signed_prekey(DRng(c["seed"])).remove_one_time_prekey(3)
    assert rotated.encode().decode("utf-8") == c["outputs"]["encoded_json"]
    assert private_state.decode(c["outputs"]["encoded_json"]).encode() == rotated.encode()


def test_private_state_replaced_last_resort() -> None:
    c = case("private_state.json", "replaced_last_resort")
    assert c["inputs"]["operations"] == ["replace_last_resort_prekey(rng)"]
    state = private_state.decode(c["inputs"]["encoded_json"].encode("utf-8"))
    replaced = state.replace_last_resort_prekey(DRng(c["seed"]))
    assert replaced.encode().decode("utf-8") == c["outputs"]["encoded_json"]
    assert replaced.previous_last_resort_prekey == state.last_resort_prekey
    assert private_state.decode(c["outputs"]["encoded_json"]).encode() == replaced.encode()


def test_private_state_migrated_from_v1() -> None:
    c = case("private_state.json", "migrated_from_v1")
    assert json.loads(c["inputs"]["encoded_json"])["v"] == 1
    decoded = private_state.decode(c["inputs"]["encoded_json"].encode("utf-8"))
    assert decoded.encode().decode("utf-8") == c["outputs"]["encoded_json"]
    assert decoded.previous_last_resort_prekey is None


@pytest.mark.parametrize("c", negatives("private_state.json"))
def test_private_state_rejections(c: Case) -> None:
    assert_raises_exactly(
        c["error"], lambda: private_state.decode(c["inputs"]["encoded_json"].encode("utf-8"))
    )


# -- rfc.json --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", positives("rfc.json"))
def test_rfc_vectors(c: Case) -> None:
    i, o = c["inputs"], c["outputs"]
    if c["name"].startswith("rfc7748"):
        assert p.x25519_public(b(i["alice_private"])).hex() == o["alice_public"]
        assert p.x25519_public(b(i["bob_private"])).hex() == o["bob_public"]
        assert p.x25519(b(i["alice_private"]), b(o["bob_public"])).hex() == o["shared"]
        assert p.x25519(b(i["bob_private"]), b(o["alice_public"])).hex() == o["shared"]
    elif c["name"].startswith("rfc8032"):
        assert p.ed25519_public(b(i["secret_key"])).hex() == o["public_key"]
        assert p.ed25519_sign(b(i["secret_key"]), b(i["message"])).hex() == o["signature"]
        p.ed25519_verify(b(o["public_key"]), b(i["message"]), b(o["signature"]))
    else:
        assert c["name"].startswith("rfc5869")
        okm = p.hkdf_sha256(b(i["ikm"]), salt=b(i["salt"]), info=b(i["info"]), length=i["length"])
        assert okm.hex() == o["okm"]


def test_rfc_provenance_names_the_sections() -> None:
    provenance = load("rfc.json")["provenance"]
    for anchor in ("RFC 7748 section 6.1", "RFC 8032 section 7.1", "TEST 1", "TEST 3", "RFC 5869"):
        assert anchor in provenance


# -- the generator -----------------------------------------------------------------------------------------


def test_generator_check_finds_no_stale_file() -> None:
    """``generate.py --check``: the committed files are exactly what the code produces now."""
    spec = importlib.util.spec_from_file_location("saltline_vectors_generate", VECTOR_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # FILES here; the files of parts 2 and 3 are checked by tests/crypto/test_vectors_messages.py
    assert sorted(module.BUILDERS) == sorted(FILES + PART_2_3_FILES)
    assert module.check() == [], "vectors are stale: run python docs/protocol/vectors/generate.py"
    assert module.main(["--check"]) == 0
