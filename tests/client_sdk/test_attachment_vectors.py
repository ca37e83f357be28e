"""docs/protocol/vectors/attachments_pointer.json reproduced byte for byte without the generator:
Padmé buckets, pointers built from a deterministic encryption (blob, digest, pointer JSON, message
plaintext), and message operations whose pointer must be refused. Plus property tests of the
pointer rules."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.client_sdk.core.attachments import AttachmentPointer, PointerError, padded_size, pointer_of
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.core.wire import canonical_json
from saltline.crypto.attachments import AttachmentEncryptor, ciphertext_size
from saltline.crypto.padding import padme
from tests.crypto.vectors_support import DRng, b, load, negatives, positives

FILE = "attachments_pointer.json"


def _draws(case_name: str) -> dict[str, bytes]:
    """Replay the documented rng: device, account, then plaintext, key, header, id per pointer case."""
    document = load(FILE)
    rng = DRng(next(c["seed"] for c in document["cases"] if "seed" in c))
    rng(16), rng(16)
    sizes = {"pointer_empty": 0, "pointer_1000": 1000, "pointer_two_chunks": 65_537}
    for name, size in sizes.items():
        drawn = {"plaintext": rng(size), "key": rng(32), "header": rng(24), "id": rng(32)}
        if name == case_name:
            return drawn
    raise KeyError(case_name)


@pytest.mark.parametrize("c", [p for p in positives(FILE) if p.values[0]["name"].startswith("padme_")])
def test_padme(c: dict[str, Any]) -> None:
    assert padme(c["inputs"]["length"]) == c["outputs"]["padded"]


@pytest.mark.parametrize("c", [p for p in positives(FILE) if p.values[0]["name"].startswith("pointer_")])
def test_pointer_from_a_deterministic_encryption(c: dict[str, Any]) -> None:
    i, out = c["inputs"], c["outputs"]
    drawn = _draws(c["name"])
    plaintext = drawn["plaintext"] if i["plaintext"] is None else b(i["plaintext"])
    assert hashlib.sha256(plaintext).hexdigest() == i["plaintext_sha256"]
    assert (drawn["key"], drawn["header"], drawn["id"]) == (b(i["key"]), b(i["header"]), b(i["id"]))
    encryptor = AttachmentEncryptor(b(i["key"]), rng=lambda n: b(i["header"]))
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()[0]
    assert len(ciphertext) == ciphertext_size(len(plaintext)) == out["ciphertext_size"]
    blob = ciphertext + bytes(padded_size(len(plaintext)) - len(ciphertext))
    assert len(blob) == out["padded_size"] and hashlib.sha256(blob).hexdigest() == out["blob_sha256"]
    pointer = AttachmentPointer(
        b(i["id"]),
        b(i["key"]),
        hashlib.sha256(blob).digest(),
        len(blob),
        len(plaintext),
        i["name"],
        i["mime"],
    )
    assert canonical_json(pointer.to_json()).decode() == out["pointer_json"]
    message = canonical_json(
        {**ops.body_json(ops.Message(i["caption"], None, 0, pointer)), "v": 2, "lamport": i["lamport"]}
    )
    assert message.decode() == out["message_plaintext"]
    assert pointer_of(message) == pointer
    assert AttachmentPointer.from_json(pointer.to_json()) == pointer


@pytest.mark.parametrize("c", negatives(FILE))
def test_refused_pointers(c: dict[str, Any]) -> None:
    i = c["inputs"]
    assert c["error"] == "SyncFormatError"
    with pytest.raises(SyncFormatError):
        ops.decode(
            i["plaintext"].encode(), b(i["clock"]), b(i["sender_device_id"]), b(i["sender_account_id"])
        )
    assert pointer_of(i["plaintext"].encode()) is None


@given(st.integers(min_value=0, max_value=2**39), st.text(min_size=1, max_size=40))
def test_pointer_rules(size: int, name: str) -> None:
    ok_name = "/" not in name and "\\" not in name and name not in (".", "..")
    ok_name = ok_name and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    args = (bytes(32), bytes(32), bytes(32), padded_size(size), size, name, "application/octet-stream")
    if ok_name:
        pointer = AttachmentPointer(*args)
        assert AttachmentPointer.from_json(pointer.to_json()) == pointer
        assert pointer.padded_size >= ciphertext_size(size)
    else:
        with pytest.raises(PointerError):
            AttachmentPointer(*args)
    with pytest.raises(PointerError):
        AttachmentPointer(*args[:3], padded_size(size) + 1, *args[4:])
