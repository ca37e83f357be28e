"""The reference code reproduces the vectors of parts 2 and 3 (docs/protocol/vectors.md § 5).

Independent of the generator (docs/protocol/vectors/generate_messages.py is not imported): every
value is re-derived from the inputs stored in the JSON through ``crypto`` and ``saltline.client_sdk.core``,
with this module's own implementation of the documented deterministic rng; stored ciphertexts are
decrypted with keys rebuilt from their seeds; every negative case raises exactly the named class.
That the files are what the code produces now is checked by ``generate.py --check`` in
tests/crypto/test_vectors.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from saltline.client_sdk import errors as sdk_errors
from saltline.client_sdk.core import history, linking
from saltline.client_sdk.core import message as msg
from saltline.client_sdk.core.sync import clock as vc
from saltline.client_sdk.core.sync import errors as sync_errors
from saltline.client_sdk.core.sync import ops, transcript
from saltline.client_sdk.core.sync.state import ConversationState
from saltline.client_sdk.core.wire import canonical_json
from saltline.crypto import attachments, device_list, login, private_state, sealed, x3dh
from saltline.crypto import errors as crypto_errors
from saltline.crypto.keys import (
    AccountKey,
    DeviceSigningKey,
    DeviceSigningPublicKey,
    EphemeralKey,
    SigningContext,
    b64encode,
    signing_input,
)
from saltline.crypto.ratchet import Session
from tests.crypto.vectors_support import (
    PART_2_3_FILES,
    VECTOR_DIR,
    Case,
    DRng,
    b,
    case,
    negatives,
    no_rng,
    positives,
)

FILES = PART_2_3_FILES
ERROR_MODULES = (sdk_errors, sync_errors, crypto_errors)


def error_class(name: str) -> type[Exception]:
    found = [getattr(m, name) for m in ERROR_MODULES if isinstance(getattr(m, name, None), type)]
    assert len(found) == 1, f"{name} names no single error class"
    cls: type[Exception] = found[0]
    return cls


def assert_raises_exactly(expected: str, fn: Callable[[], object]) -> None:
    cls = error_class(expected)
    with pytest.raises(Exception) as info:
        fn()
    assert type(info.value) is cls, f"raised {type(info.value).__name__}, expected {expected}"


def rule_bytes(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


class Party:
    """vectors.md § 5: generate_device from ``<prefix>/<who>-device`` (the given number of one-time
    prekeys), account key = first draw of ``<prefix>/<who>-account``, entry with ``added_at``."""

    def __init__(self, device_seed: str, account_seed: str, one_time_prekeys: int, added_at: int) -> None:
        self.state = private_state.generate_device(one_time_prekeys=one_time_prekeys, rng=DRng(device_seed))
        self.account = AccountKey(DRng(account_seed)(32))
        self.entry = self.state.device_entry(self.account.public_key, added_at)


def parties(i: dict[str, Any]) -> tuple[Party, Party]:
    alice = Party(
        i["initiator_device_seed"],
        i["initiator_account_seed"],
        i["initiator_one_time_prekeys"],
        i["added_at"],
    )
    bob = Party(
        i["responder_device_seed"],
        i["responder_account_seed"],
        i["responder_one_time_prekeys"],
        i["added_at"],
    )
    assert alice.entry.encode().hex() == i["initiator_entry"]
    assert bob.entry.encode().hex() == i["responder_entry"]
    return alice, bob


def bundle(bob: private_state.DeviceState, which: str) -> x3dh.PreKeyBundle:
    opk = {
        "one_time": lambda: bob.one_time_prekeys_public()[0],
        "last_resort": bob.last_resort_prekey_public,
        "none": lambda: None,
    }[which]()
    return x3dh.PreKeyBundle(
        bob.device_id, bob.signing_key.public_key, bob.dh_key.public_key, bob.signed_prekey_public(), opk
    )


def never_seen(prekey_id: int, digest: bytes) -> bool:
    return False


# -- the files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_file_format(name: str) -> None:
    text = (VECTOR_DIR / name).read_text(encoding="utf-8")
    document = json.loads(text)
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    assert set(document) == {"construction", "spec", "version", "generator", "provenance", "cases"}
    assert document["version"] == 1 and (VECTOR_DIR.parents[2] / document["spec"]).is_file()
    assert "generate_messages.py" in document["generator"]
    names = [c["name"] for c in document["cases"]]
    assert len(names) == len(set(names))
    for c in document["cases"]:
        assert ("outputs" in c) != ("error" in c)
        if "error" in c:
            error_class(c["error"])
        if "seed" in c:
            assert c["seed"].startswith("saltline/v1/vectors/")


# -- envelope_ad.json ----------------------------------------------------------------------


@pytest.mark.parametrize("c", positives("envelope_ad.json"))
def test_envelope_associated_data(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    ids = [rng(16) for _ in range(7)]
    assert b(i["conversation_id"]) == ids[0] and b(i["sender_device_id"]) == ids[3]
    assert b(i["recipient_device_id"]) in (ids[4], ids[5])
    fields = [b(i[k]) for k in ("conversation_id", "envelope_id", "sender_account_id", "sender_device_id")]
    header = msg.EnvelopeHeader(*fields, b(i["clock"]), i["ephemeral"])
    ad = header.associated_data(b(i["recipient_device_id"]))
    assert ad.hex() == out["associated_data"] and len(ad) == out["length"]
    # the layout of messages.md § 3, independently of the code
    parts = [*fields, b(i["recipient_device_id"]), b(i["clock"]), bytes([1 if i["ephemeral"] else 0])]
    assert b"saltline/v1/envelope-ad" + b"".join(struct.pack(">I", len(f)) + f for f in parts) == ad
    assert vc.CompactClock.decode(b(i["clock"])).counter_of(b(i["sender_device_id"])) >= 1


def test_envelope_ad_differs_per_recipient() -> None:
    one, other = case("envelope_ad.json", "one_extra"), case("envelope_ad.json", "other_recipient")
    assert one["outputs"]["associated_data"] != other["outputs"]["associated_data"]


# -- padding.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "c", [p for p in positives("padding.json") if p.values[0]["name"].startswith("pad_")]
)
def test_padding(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    body = rule_bytes(i["body_size"]) if i["body"] is None else b(i["body"])
    assert len(body) == i["body_size"]
    padded = msg.pad(body)
    assert len(padded) == out["padded_length"]
    assert hashlib.sha256(padded).hexdigest() == out["padded_sha256"]
    if out["padded"] is not None:
        assert padded.hex() == out["padded"]
    size = 256
    while size < len(body) + 1:
        size *= 2
    assert padded == body + b"\x80" + bytes(size - len(body) - 1)
    assert msg.unpad(padded) == body


def test_unpad_does_not_check_the_bucket() -> None:
    c = case("padding.json", "unpad_not_a_bucket")
    assert msg.unpad(b(c["inputs"]["padded"])).hex() == c["outputs"]["body"]


@pytest.mark.parametrize("c", negatives("padding.json"))
def test_unpad_rejections(c: Case) -> None:
    assert_raises_exactly(c["error"], lambda: msg.unpad(b(c["inputs"]["padded"])))


# -- clocks.json ----------------------------------------------------------------------


def _pairs(items: list[list[Any]]) -> list[tuple[bytes, int]]:
    return [(b(d), n) for d, n in items]


@pytest.mark.parametrize(
    "c", [p for p in positives("clocks.json") if p.values[0]["name"].startswith("encode_")]
)
def test_clock_encode(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    ids = sorted(rng(16) for _ in range(3))
    assert all(d in ids for d, _ in _pairs(i["extras"]))
    log_hash = b(i["log_hash"]) if "log_hash" in i else None
    clock = vc.CompactClock.of(i["base"], dict(_pairs(i["extras"])), log_hash)
    data = clock.encode()
    expected = sorted((d, n) for d, n in _pairs(i["extras"]) if n > 0)
    assert _pairs(out["decoded_extras"]) == expected
    entries = b"".join(struct.pack(">16sQ", d, n) for d, n in expected)
    if log_hash is None:
        assert data.hex() == out["clock"] and len(data) == out["length"] == 11 + 24 * len(clock.extras)
        assert data == struct.pack(">BQH", 2, i["base"], len(expected)) + entries
    else:
        assert data.hex() == out["clock"] and len(data) == out["length"] == 43 + 24 * len(clock.extras)
        assert data == struct.pack(">BQ32sH", 3, i["base"], log_hash, len(expected)) + entries
    assert vc.CompactClock.decode(data) == clock


def test_transcript_hash() -> None:
    c = case("clocks.json", "transcript")
    cid = b(c["inputs"]["conversation_id"])
    log = [vc.Dot(b(d), n) for d, n in c["inputs"]["log"]]
    expected = [b(h) for h in c["outputs"]["T"]]
    assert transcript.genesis(cid) == expected[0]
    assert expected[0] == hashlib.sha256(b"saltline/v1/transcript/genesis" + cid).digest()
    for n, dot in enumerate(log, start=1):
        assert transcript.step(expected[n - 1], n, dot) == expected[n]
        assert (
            expected[n]
            == hashlib.sha256(
                b"saltline/v1/transcript/step"
                + expected[n - 1]
                + struct.pack(">Q", n)
                + dot.device
                + struct.pack(">Q", dot.n)
            ).digest()
        )
    # the reducer computes the same hashes as it receives the log
    state = ConversationState(cid, [])
    for n, dot in enumerate(log, start=1):
        state.receive(
            n,
            ops.Op(dot, b"\xaa" * 16, vc.CompactClock.of(0, {dot.device: dot.n}), n, ops.Unknown("x", "{}")),
        )
        assert state.transcript(n) == expected[n]


def test_clock_decode_legacy() -> None:
    c = case("clocks.json", "decode_legacy_v1")
    got = vc.CompactClock.decode(b(c["inputs"]["clock"]))
    assert got.base == c["outputs"]["base"] == 0
    assert list(got.extras) == _pairs(c["outputs"]["decoded_extras"])
    assert got.encode().hex() == c["outputs"]["reencoded"]


def test_clock_expand() -> None:
    c = case("clocks.json", "expand")
    prefix = dict(_pairs(c["inputs"]["prefix"]))
    full = vc.CompactClock.decode(b(c["inputs"]["clock"])).expand(prefix)
    assert sorted(full.items()) == _pairs(c["outputs"]["full"])


@pytest.mark.parametrize("c", negatives("clocks.json"))
def test_clock_rejections(c: Case) -> None:
    assert_raises_exactly(c["error"], lambda: vc.CompactClock.decode(b(c["inputs"]["clock"])))


# -- ops.json ----------------------------------------------------------------------


def build_body(d: dict[str, Any]) -> ops.Body:
    def dot(value: list[Any] | None) -> vc.Dot | None:
        return None if value is None else vc.Dot(b(value[0]), value[1])

    kind = d["class"]
    if kind == "Message":
        return ops.Message(d["text"], dot(d["reply_to"]), d["sent_at_ms"])
    if kind == "Edit":
        return ops.Edit(vc.Dot(b(d["target"][0]), d["target"][1]), d["text"])
    if kind == "Delete":
        return ops.Delete(vc.Dot(b(d["target"][0]), d["target"][1]))
    if kind in ("ReactionAdd", "ReactionRemove"):
        cls = ops.ReactionAdd if kind == "ReactionAdd" else ops.ReactionRemove
        return cls(vc.Dot(b(d["target"][0]), d["target"][1]), d["emoji"])
    if kind == "ReadMarker":
        return ops.ReadMarker(d["up_to"], d["receipts"])
    if kind == "Typing":
        return ops.Typing(d["typing"])
    if kind == "SettingsChange":
        return ops.SettingsChange(d["field"], d["value"])
    if kind == "MembershipChange":
        w = d["welcome"]
        welcome = None
        if w is not None:
            welcome = ops.Welcome(
                w["kind"],
                tuple(b(m) for m in w["members"]),
                tuple(b(a) for a in w["admins"]),
                w["floor_seq"],
                b(w["floor_clock"]),
            )
        key = None if d["key"] is None else b(d["key"])
        return ops.MembershipChange(b(d["member"]), d["add"], d["admin"], welcome, key)
    if kind == "Genesis":
        return ops.Genesis(
            d["kind"],
            tuple(b(m) for m in d["members"]),
            tuple(b(a) for a in d["admins"]),
            tuple(b(k) for k in d["keys"]),
        )
    if kind == "Unknown":
        return ops.Unknown(d["type"], d["raw"])
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "c", [p for p in positives("ops.json") if not p.values[0]["name"].startswith("decode_")]
)
def test_op_encoding(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    device, account = rng(16), rng(16)
    assert (device.hex(), account.hex()) == (i["sender_device_id"], i["sender_account_id"])
    body = build_body(i["body"])
    clock = vc.CompactClock.decode(b(i["clock"]))
    n = 0 if isinstance(body, ops.Typing) else clock.counter_of(device)
    op = ops.Op(vc.Dot(device, n), account, clock, i["lamport"], body)
    plaintext, clock_bytes = ops.encode(op)
    assert plaintext.hex() == out["plaintext"] and plaintext.decode("utf-8") == out["plaintext_json"]
    assert clock_bytes.hex() == i["clock"]
    assert plaintext == canonical_json(json.loads(plaintext))
    assert json.loads(plaintext)["v"] == 2 and json.loads(plaintext)["lamport"] == i["lamport"]
    decoded = ops.decode(b(out["plaintext"]), b(i["clock"]), device, account)
    assert decoded == op
    assert [decoded.dot.device.hex(), decoded.dot.n] == out["dot"]


@pytest.mark.parametrize("c", [p for p in positives("ops.json") if p.values[0]["name"].startswith("decode_")])
def test_op_decoding(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    if i["plaintext_json"] is None:
        plaintext = canonical_json({"lamport": 7, "text": "a" * ops.MAX_TEXT, "type": "message", "v": 2})
        assert str(ops.MAX_TEXT) in i["plaintext_rule"]
    else:
        plaintext = i["plaintext_json"].encode("utf-8")
    op = ops.decode(plaintext, b(i["clock"]), b(i["sender_device_id"]), b(i["sender_account_id"]))
    expected = dict(out["body"])
    if expected.get("text_length") is not None:
        assert isinstance(op.body, ops.Message) and len(op.body.text) == expected.pop("text_length")
        expected["text"] = op.body.text
    assert op.body == build_body(expected)
    assert op.lamport == out["lamport"] and [op.dot.device.hex(), op.dot.n] == out["dot"]
    reencoded = ops.encode_plaintext(op)
    assert hashlib.sha256(reencoded).hexdigest() == out["reencoded_sha256"]
    if out["reencoded_json"] is not None:
        assert reencoded.decode("utf-8") == out["reencoded_json"]


@pytest.mark.parametrize("c", negatives("ops.json"))
def test_op_rejections(c: Case) -> None:
    i = c["inputs"]
    if i["plaintext"] is None:
        count = ops.MAX_TEXT + 1
        assert str(count) in i["plaintext_rule"]
        plaintext = canonical_json({"lamport": 1, "text": "a" * count, "type": "message", "v": 2})
    else:
        plaintext = b(i["plaintext"])
    assert hashlib.sha256(plaintext).hexdigest() == i["plaintext_sha256"]
    assert_raises_exactly(
        c["error"],
        lambda: ops.decode(plaintext, b(i["clock"]), b(i["sender_device_id"]), b(i["sender_account_id"])),
    )
    # stored after decrypting: a void consuming its dot, or refused when it has none (sync.md § 2.1)
    stored = c["stored_as"]
    args = (plaintext, b(i["clock"]), b(i["sender_device_id"]), b(i["sender_account_id"]))
    if "refused" in stored:
        assert_raises_exactly(stored["refused"], lambda: ops.decode_or_void(*args))
    else:
        op = ops.decode_or_void(*args)
        assert isinstance(op.body, ops.Void)
        assert [op.dot.device.hex(), op.dot.n] == stored["void"]


# -- device_ciphertexts.json ----------------------------------------------------------------------


def test_device_ciphertext_script() -> None:
    """Replays the script with the seeded parties and rngs: every per-device ciphertext is
    reproduced byte for byte, has the documented wrapper, and decrypts on the other side."""
    c = case("device_ciphertexts.json", "script")
    i, steps = c["inputs"], c["outputs"]["steps"]
    alice, bob = parties(i)
    env = DRng(i["envelope_seed"])
    conversation_id, account_a, account_b = env(16), env(16), env(16)
    assert (conversation_id.hex(), account_a.hex(), account_b.hex()) == (
        i["conversation_id"],
        i["alice_account_id"],
        i["bob_account_id"],
    )
    rngs = {"alice": DRng(i["alice_rng_seed"]), "bob": DRng(i["bob_rng_seed"])}
    who = {"alice": (alice, account_a, bob), "bob": (bob, account_b, alice)}
    sessions: dict[str, Session | None] = {"alice": None, "bob": None}
    for step in steps:
        sender = step["sender"]
        receiver = "bob" if sender == "alice" else "alice"
        me, account, peer = who[sender]
        envelope_id = env(16)
        assert envelope_id.hex() == step["envelope_id"]
        clock = vc.CompactClock.of(0, {me.state.device_id: 1}).encode()
        assert clock.hex() == step["clock"]
        header = msg.EnvelopeHeader(conversation_id, envelope_id, account, me.state.device_id, clock)
        ad = header.associated_data(peer.state.device_id)
        assert ad.hex() == step["associated_data"]
        padded = msg.pad(step["body"].encode())
        assert len(padded) == step["padded_length"]
        pre_key_bundle = bundle(peer.state, step["bundle"]) if step["bundle"] else None
        before = len(rngs[sender].draws)
        enc = msg.encrypt_to_device(
            msg.identity_keys(me.state),
            sessions[sender],
            pre_key_bundle,
            peer.entry,
            padded,
            ad,
            rngs[sender],
        )
        assert [before + 1, len(rngs[sender].draws)] == step["rng_calls"]
        sessions[sender] = enc.session
        ct = enc.ciphertext
        assert ct.hex() == step["ciphertext"]
        assert ct[0] == step["version"] == 0x01 and ct[1] == step["kind"]
        if ct[1] == 0x01:
            assert ct[2:130].hex() == step["initial_header"] and ct[130:].hex() == step["ratchet_message"]
            assert x3dh.InitialHeader.decode(ct[2:130]).initiator.device_id == me.state.device_id
        else:
            assert (
                ct[1] == 0x02 and step["initial_header"] is None and ct[2:].hex() == step["ratchet_message"]
            )
        held = [s for s in (sessions[receiver],) if s is not None]
        dec = msg.decrypt_from_device(
            who[receiver][0].state, held, b(step["ciphertext"]), ad, me.entry, rngs[receiver], never_seen
        )
        assert msg.unpad(dec.padded) == step["body"].encode()
        assert dec.one_time_prekey_id == step["receiver_one_time_prekey_id"]
        use = step["receiver_reusable_prekey_use"]
        assert dec.reusable_prekey_use == (None if use is None else (use[0], b(use[1])))
        sessions[receiver] = dec.session
    # kinds: prekey messages until alice has read bob's reply
    assert [s["kind"] for s in steps] == [1, 1, 2, 2]


@pytest.mark.parametrize("c", negatives("device_ciphertexts.json"))
def test_device_ciphertext_rejections(c: Case) -> None:
    i = c["inputs"]
    state = private_state.generate_device(
        one_time_prekeys=i["responder_one_time_prekeys"], rng=DRng(i["responder_device_seed"])
    )
    sessions = [] if i["session"] is None else [Session.from_bytes(b(i["session"]), no_rng)]
    from saltline.crypto.device_list import DeviceEntry

    trusted = DeviceEntry.decode(b(i["trusted_entry"]))
    assert_raises_exactly(
        c["error"],
        lambda: msg.decrypt_from_device(
            state, sessions, b(i["ciphertext"]), b(i["associated_data"]), trusted, no_rng, never_seen
        ),
    )
    if sessions:  # a failed decryption leaves the session unchanged
        assert sessions[0].to_bytes() == b(i["session"])


# -- seen_base_keys.json ----------------------------------------------------------------------


@pytest.mark.parametrize("c", positives("seen_base_keys.json"))
def test_seen_base_key_digest(c: Case) -> None:
    i, out = c["inputs"], c["outputs"]
    alice, bob = parties(i)
    setup = x3dh.initiate(
        msg.identity_keys(alice.state), bundle(bob.state, i["bundle"]), bob.entry, DRng(c["seed"])
    )
    header = setup.header
    assert header.encode().hex() == i["initial_header"]
    assert bytes(header.ephemeral_key).hex() == out["ephemeral_key"]
    use = msg.reusable_prekey_use(x3dh.InitialHeader.decode(b(i["initial_header"])))
    if out["reusable_prekey_id"] is None:
        assert use is None and i["bundle"] == "one_time"
        return
    assert use is not None
    expected_id = (
        bob.state.signed_prekey.key_id if i["bundle"] == "none" else bob.state.last_resort_prekey.key_id
    )
    assert use[0] == out["reusable_prekey_id"] == expected_id
    digest_input = b"saltline/v1/seen-base-key" + struct.pack(">I", use[0]) + bytes(header.ephemeral_key)
    assert digest_input.hex() == out["digest_input"]
    assert hashlib.sha256(digest_input).hexdigest() == out["digest"] == use[1].hex()
    assert msg.seen_base_key_digest(use[0], bytes(header.ephemeral_key)).hex() == out["digest"]


@pytest.mark.parametrize("c", negatives("seen_base_keys.json"))
def test_seen_set_refuses_a_replay(c: Case) -> None:
    i = c["inputs"]
    alice, bob = parties(i)
    ciphertext, ad = b(i["ciphertext"]), b(i["associated_data"])
    seen = {(pid, b(d)) for pid, d in i["seen"]}
    header = x3dh.InitialHeader.decode(ciphertext[2:130])
    assert msg.reusable_prekey_use(header) in seen
    # not in the seen set: it decrypts (so the refusal below is the seen set's doing)
    ok = msg.decrypt_from_device(bob.state, [], ciphertext, ad, alice.entry, DRng("unused"), never_seen)
    assert ok.reusable_prekey_use in seen
    assert_raises_exactly(
        c["error"],
        lambda: msg.decrypt_from_device(
            bob.state, [], ciphertext, ad, alice.entry, no_rng, lambda pid, d: (pid, d) in seen
        ),
    )


# -- linking.json ----------------------------------------------------------------------


def test_link_code() -> None:
    c = case("linking.json", "link_code")
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    channel_id, link_key, device_id = rng(16), EphemeralKey(rng(32)), rng(16)
    assert (channel_id.hex(), bytes(link_key).hex(), device_id.hex()) == (
        i["channel_id"],
        i["link_private"],
        i["device_id"],
    )
    assert bytes(link_key.public_key).hex() == out["link_public"]
    code = linking.LinkCode(channel_id, i["secret"], bytes(link_key.public_key), device_id)
    secret = i["secret"].encode("ascii")
    raw = b"\x02" + channel_id + bytes([len(secret)]) + secret + bytes(link_key.public_key) + device_id
    assert raw.hex() == out["raw"]
    assert code.to_text() == out["text"] == "saltline-link:" + b64encode(raw)
    assert linking.LinkCode.parse(" " + out["text"] + "\n") == code


@pytest.mark.parametrize("c", [p for p in negatives("linking.json") if "_code_" in p.values[0]["name"]])
def test_link_code_rejections(c: Case) -> None:
    assert_raises_exactly(c["error"], lambda: linking.LinkCode.parse(c["inputs"]["text"]))


def test_link_confirmation_code_and_reply() -> None:
    c = case("linking.json", "confirmation_and_reply")
    i, out = c["inputs"], c["outputs"]
    link_key, approver = EphemeralKey(b(i["link_private"])), EphemeralKey(b(i["approver_private"]))
    link_pk, approver_pk = bytes(link_key.public_key), bytes(approver.public_key)
    # the code, from the spec text (messages.md § 6.2)
    digest = hashlib.sha256(
        b"saltline/v1/link-confirmation\x00"
        + link_pk
        + approver_pk
        + b(i["device_id"])
        + b(i["account_public"])
    ).digest()
    digits = f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"
    assert out["code"] == f"{digits[:3]} {digits[3:]}"
    from saltline.crypto.keys import AccountPublicKey

    account_pk = AccountPublicKey(b(i["account_public"]))
    assert linking.confirmation_code(link_pk, approver_pk, b(i["device_id"]), account_pk) == out["code"]
    # the reply opens with the approver's key and carries the device's name and keys
    reply = linking.open_reply(approver, link_pk, b(out["reply"]))
    assert (reply.device_id, reply.name, reply.signing_key, reply.dh_key) == (
        b(i["device_id"]),
        i["name"],
        b(i["signing_key"]),
        b(i["dh_key"]),
    )
    fresh = linking.seal_reply(link_key, approver_pk, reply, DRng(c["seed"]))
    assert fresh.hex() == out["reply"]


def test_link_reply_rejection() -> None:
    c = case("linking.json", "reject_reply_other_approver")
    link_pk = bytes(
        EphemeralKey(b(case("linking.json", "confirmation_and_reply")["inputs"]["link_private"])).public_key
    )
    other = EphemeralKey(b(c["inputs"]["approver_private"]))
    assert_raises_exactly(c["error"], lambda: linking.open_reply(other, link_pk, b(c["inputs"]["reply"])))


def test_account_key_handoff_and_device_name() -> None:
    from saltline.client_sdk.core import account_keys
    from saltline.crypto.keys import AccountKey, DeviceDHKey

    c = case("linking.json", "handoff_and_name")
    i, out = c["inputs"], c["outputs"]
    successor = AccountKey(b(i["successor_private"]))
    dh = DeviceDHKey(b(i["device_dh_private"]))
    account_id = b(i["account_id"])
    assert (
        out["handoff_plaintext"]
        == (b"\x01" + account_id + struct.pack(">Q", i["version"]) + bytes(successor)).hex()
    )
    assert (
        sealed.open(dh, b(out["handoff"]), b"saltline/v1/account-key-handoff").hex()
        == out["handoff_plaintext"]
    )
    got = account_keys.open_handoff(dh, b(out["handoff"]), account_id, i["version"], successor.public_key)
    assert got.public_key == successor.public_key
    for bad in (
        lambda: account_keys.open_handoff(
            dh, b(out["handoff"]), account_id, i["version"] + 1, successor.public_key
        ),
        lambda: account_keys.open_handoff(
            dh, b(out["handoff"]), bytes(16), i["version"], successor.public_key
        ),
        lambda: account_keys.open_handoff(
            dh, b(out["handoff"]), account_id, i["version"], AccountKey(bytes(32)).public_key
        ),
    ):
        with pytest.raises(account_keys.HandoffError):
            bad()
    account = AccountKey(b(i["account_private"]))
    sealed_name = b(out["sealed_name"])
    from saltline.crypto import primitives as prim  # the names key (HKDF), recomputed from the spec

    names_key = prim.hkdf_sha256(bytes(account), salt=b"", info=b"saltline/v1/device-names", length=32)
    plain = prim.aead_decrypt(
        names_key, sealed_name[:24], sealed_name[24:], b"saltline/v1/device-name" + b(i["device_id"])
    )
    assert plain.decode() == i["name"]
    assert account_keys.open_name(account, b(i["device_id"]), sealed_name) == i["name"]
    assert account_keys.open_name(account, bytes(16), sealed_name) is None  # bound to its device
    assert account_keys.seal_name(account, b(i["device_id"]), i["name"], DRng(i["name_seed"])) == sealed_name


def _link_payload(i: dict[str, Any]) -> history.LinkPayload:
    key = attachments.AttachmentKey.decode(b(i["history_attachment_key"]))
    ref = history.HistoryRef(tuple(i["history_blob_ids"]), key.encode(), key.digest)
    account_id, contact_id = b64encode(b(i["account_id"])), b64encode(b(i["contact_id"]))
    return history.LinkPayload(
        account_id,
        i["username"],
        b(i["account_private"]),
        b(i["device_list"]),
        (
            history.LinkContact(
                contact_id, i["contact_username"], b(i["contact_account_public"]), b(i["contact_signed_list"])
            ),
        ),
        (
            (
                b64encode(b(i["conversation_id"])),
                i["conversation_kind"],
                tuple(sorted((account_id, contact_id))),
            ),
        ),
        ref,
        (b64encode(b(i["follow_up_channel_id"])), i["follow_up_secret"], b64encode(b(i["follow_up_key"]))),
    )


def test_link_payload() -> None:
    c = case("linking.json", "link_payload")
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    draws = [rng(n) for n in (16, 32, 16, 32)]  # link code: channel, link key, device id; account key
    assert draws[1].hex() == i["link_private"] and draws[3].hex() == i["account_private"]
    account = AccountKey(draws[3])
    # the device list in the payload is signed by the payload's account key, for the payload's username
    listed = device_list.verify(
        device_list.SignedDeviceList.decode(b(i["device_list"])), account.public_key, i["username"]
    )
    assert listed.version == 1
    payload = _link_payload(i)
    document = {"v": 1, "secret": i["secret"], **history.encode_link_payload(payload)}
    body = canonical_json(document)
    assert body.decode("utf-8") == out["payload_json"]
    assert hashlib.sha256(body).hexdigest() == out["payload_sha256"]
    link_key = EphemeralKey(b(i["link_private"]))
    box = sealed.seal(link_key.public_key, body, sealed.LINK_PAYLOAD, DRng(i["box_seed"]))
    assert box.hex() == out["sealed"] and len(box) == out["sealed_length"] == 73 + len(body)
    opened = linking.open_payload(link_key, i["secret"], b(out["sealed"]))
    assert opened == document and history.parse_link_payload(opened) == payload
    # seal_payload (random ephemeral key) seals exactly these bytes
    code = linking.LinkCode(bytes(16), i["secret"], bytes(link_key.public_key), bytes(16))
    fresh = linking.seal_payload(code, history.encode_link_payload(payload))
    assert sealed.open(link_key, fresh, sealed.LINK_PAYLOAD) == body


def test_link_follow_up() -> None:
    c = case("linking.json", "follow_up")
    i, out = c["inputs"], c["outputs"]
    key = attachments.AttachmentKey.decode(b(i["history_attachment_key"]))
    ref = history.HistoryRef(tuple(i["history_blob_ids"]), key.encode(), key.digest)
    document = {"v": 1, "kind": "history-follow-up", "history": history.encode_ref(ref)}
    body = canonical_json(document)
    assert body.decode("utf-8") == out["payload_json"]
    key, box = b(i["follow_up_key"]), b(out["sealed"])
    nonce = DRng(c["seed"])(24)
    assert box[:24] == nonce
    from saltline.crypto import primitives as prim

    assert prim.aead_decrypt(key, nonce, box[24:], b"saltline/v1/link-follow-up") == body
    assert history.parse_follow_up(linking.open_follow_up(key, box)) == ref
    with pytest.raises(sdk_errors.LinkError):  # whoever saw the code has no key
        linking.open_follow_up(bytes(32), box)


@pytest.mark.parametrize("c", [p for p in negatives("linking.json") if "_payload_" in p.values[0]["name"]])
def test_link_payload_rejections(c: Case) -> None:
    i = c["inputs"]
    if "payload_json" in i:
        doc = json.loads(i["payload_json"])
        assert_raises_exactly(c["error"], lambda: history.parse_link_payload(doc))
        return
    link_key = EphemeralKey(b(i["link_private"]))
    assert_raises_exactly(c["error"], lambda: linking.open_payload(link_key, i["secret"], b(i["sealed"])))


# -- login.json ----------------------------------------------------------------------


def test_login_challenge() -> None:
    c = case("login.json", "alice")
    i, out = c["inputs"], c["outputs"]
    rng = DRng(c["seed"])
    signing = DeviceSigningKey(rng(32))
    assert (bytes(signing).hex(), rng(16).hex(), rng(32).hex()) == (
        i["device_signing_private"],
        i["device_id"],
        i["nonce"],
    )
    message = login.login_challenge_message(i["username"], b(i["device_id"]), b(i["nonce"]))
    name = device_list.normalize_username(i["username"]).encode("ascii")
    assert message == bytes([len(name)]) + name + b(i["device_id"]) + b(i["nonce"])
    assert message.hex() == out["message"]
    assert signing_input(SigningContext.LOGIN_CHALLENGE, message).hex() == out["signing_input"]
    assert out["signing_input"] == (b"saltline/v1/login-challenge\x00" + message).hex()
    assert signing.sign(SigningContext.LOGIN_CHALLENGE, message).hex() == out["signature"]
    public = DeviceSigningPublicKey(b(out["device_signing_public"]))
    public.verify(SigningContext.LOGIN_CHALLENGE, message, b(out["signature"]))


@pytest.mark.parametrize("c", negatives("login.json"))
def test_login_challenge_rejections(c: Case) -> None:
    i = c["inputs"]
    assert_raises_exactly(
        c["error"], lambda: login.login_challenge_message(i["username"], b(i["device_id"]), b(i["nonce"]))
    )
