"""Strings of an operation must be Unicode scalar values: a lone surrogate (JSON ``"\\ud800"``)
in any string makes the operation malformed at parse time (dropped, reported, never retried), and
sending one is a :class:`UsageError` (docs/protocol/sync.md § 2.1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.attachments import AttachmentPointer, padded_size
from saltline.client_sdk.core.events import DecryptionFailed
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import CompactClock
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.stores.memory import MemoryStore
from tests.client_sdk.harness import FakeRelay

DEVICE, ACCOUNT = b"\x01" * 16, b"\x02" * 16
CLOCK = CompactClock.of(0, {DEVICE: 1}).encode()
TARGET = [ops._b64(DEVICE), 1]
POINTER = AttachmentPointer(
    b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, padded_size(10), 10, "a.txt", "text/plain"
)


def _decode(doc: dict[str, Any]) -> ops.Op:
    # json.dumps escapes a lone surrogate as \udXXX (ASCII): what a hostile peer's bytes hold
    return ops.decode(json.dumps({"v": 2, "lamport": 1, **doc}).encode(), CLOCK, DEVICE, ACCOUNT)


BAD = "x\ud800y"


@pytest.mark.parametrize(
    "doc",
    [
        {"type": "message", "text": BAD},
        {"type": "message", "text": "ok", "attachment": {**POINTER.to_json(), "name": BAD}},
        {"type": "message", "text": "ok", "attachment": {**POINTER.to_json(), "mime": "text/\udfff"}},
        {"type": "edit", "target": TARGET, "text": BAD},
        {"type": "reaction", "action": "add", "target": TARGET, "emoji": "\udc80"},
        {"type": "settings", "field": "title", "value": BAD},
        {"type": "poll", "question": BAD},  # an unknown type too: it would be kept as raw JSON
        {"type": "message", "text": "ok", "ignored": BAD},  # a member the type does not define
        {"type": "message", "text": "ok", BAD: 1},  # a member name
        {"type": "message\ud800", "text": "ok"},
    ],
)
def test_a_lone_surrogate_in_any_string_is_malformed(doc: dict[str, Any]) -> None:
    with pytest.raises(SyncFormatError, match="surrogate"):
        _decode(doc)


def test_legacy_text_with_a_lone_surrogate_is_malformed() -> None:
    raw = json.dumps({"v": 1, "type": "text", "text": BAD}).encode()
    with pytest.raises(SyncFormatError):
        ops.decode(raw, CLOCK, DEVICE, ACCOUNT)


def test_valid_pairs_and_astral_characters_still_parse() -> None:
    op = _decode({"type": "message", "text": "\ud83d\ude00 é \u2028"})
    assert isinstance(op.body, ops.Message) and op.body.text == "😀 é \u2028"


#: Any str: ordinary characters and surrogates (lone or paired, in any order).
ANY_STR = st.lists(
    st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=40
).map("".join)


@settings(max_examples=300, deadline=None)
@given(ANY_STR)
def test_any_text_parses_to_encodable_strings_or_is_refused(text: str) -> None:
    try:
        op = _decode({"type": "message", "text": text})
    except SyncFormatError:
        with pytest.raises(UnicodeEncodeError):
            text.encode()
        return
    assert isinstance(op.body, ops.Message)
    op.body.text.encode()  # never raises: what parses can be stored, shown and sent on
    assert ops.encode_plaintext(op)  # and encoded again


@settings(max_examples=100, deadline=None)
@given(ANY_STR)
def test_sending_refuses_exactly_what_cannot_be_encoded(text: str) -> None:
    op = ops.Op(ops.Dot(DEVICE, 1), ACCOUNT, CompactClock.of(0, {DEVICE: 1}), 1, ops.Message(text or "x"))
    try:
        plaintext = ops.encode_plaintext(op)
    except UsageError:
        with pytest.raises(UnicodeEncodeError):
            (text or "x").encode()
        return
    assert ops.decode(plaintext, CLOCK, DEVICE, ACCOUNT).body == op.body


# -- with the fake relay: one bad envelope does not stop the receiver --------------------------------

URL = "http://relay.invalid"


async def _user(relay: FakeRelay, name: str) -> Client:
    client = await Client.create(URL, MemoryStore(), http_transport=relay)
    await client.register(name, "a long passphrase")
    return client


async def test_a_peers_lone_surrogate_is_dropped_and_the_next_message_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    failed: list[DecryptionFailed] = []
    bob.on(DecryptionFailed, failed.append)
    direct = await alice.create_conversation(["bob"])
    other = await alice.create_conversation(["bob", "alice"])
    await relay.deliver(bob)
    with pytest.raises(UsageError, match="surrogate"):  # an honest client refuses to send it
        await alice.send_text(direct, "boom \ud800")
    # a hostile client escapes it in its plaintext (ASCII JSON, so it encrypts fine)
    monkeypatch.setattr(
        ops, "canonical_json", lambda doc: json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    )
    monkeypatch.setattr("saltline.client_sdk.facets.outbound.check_accepted", lambda *args: None)
    await alice.send_text(direct, "boom \ud800")
    monkeypatch.undo()
    await relay.deliver(bob)  # before the fix: RetryLater("surrogates not allowed"), for ever
    assert [f.code for f in failed] == ["malformed"] and "surrogate" in failed[0].reason
    await alice.send_text(other, "after")
    await relay.deliver(bob)
    assert [m.text for m in (await bob.conversation(other)).messages] == ["after"]
    assert not relay.queues[bob.device_id]  # everything acknowledged: nothing left to retry
    await alice.close()
    await bob.close()
