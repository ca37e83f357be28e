"""Strings of an operation must be Unicode scalar values: a lone surrogate (JSON ``"\\ud800"``)
in any string makes the operation malformed at parse time, and sending one is a :class:`UsageError`
(docs/protocol/sync.md § 2.1). A stored one that decrypted is a void: reported once, never retried,
and it consumes its dot and server_seq, so the author's next message still arrives."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.client import Client
from saltline.client_sdk.core.attachments import AttachmentPointer, padded_size
from saltline.client_sdk.core.events import DecryptionFailed, HistoryGap
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import CompactClock
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.core.sync.state import ConversationState
from saltline.client_sdk.errors import UsageError
from saltline.client_sdk.stores.base import Store
from saltline.client_sdk.stores.memory import MemoryStore
from saltline.client_sdk.stores.sqlite import SqliteStore
from tests.client_sdk.harness import FakeRelay
from tests.client_sdk.test_client_harness import _add_device

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


# -- with the fake relay: one bad envelope does not stop the conversation ---------------------------

URL = "http://relay.invalid"
KEY = bytes(range(32))


async def _user(relay: FakeRelay, name: str, store: Store | None = None) -> Client:
    client = await Client.create(URL, store or MemoryStore(), http_transport=relay)
    await client.register(name, "a long passphrase")
    return client


def _state(client: Client, cid: str) -> ConversationState:
    record = client.inbound.conversations.known(cid)
    assert record is not None
    return client.inbound.conversations.state(record)


async def _send_hostile(alice: Client, cid: str, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile (or buggy, or newer) client escapes a lone surrogate in its plaintext: ASCII JSON,
    so it encrypts fine; an honest client refuses to send it."""
    with pytest.raises(UsageError, match="surrogate"):
        await alice.send_text(cid, text)
    with monkeypatch.context() as m:
        m.setattr(
            ops, "canonical_json", lambda doc: json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        )
        m.setattr("saltline.client_sdk.facets.outbound.check_accepted", lambda *args: None)
        await alice.send_text(cid, text)


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_peers_malformed_operation_is_a_void_and_the_next_message_in_the_same_conversation_arrives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store_kind: str
) -> None:
    relay = FakeRelay()

    def bob_store() -> Store:
        return MemoryStore() if store_kind == "memory" else SqliteStore.open(tmp_path / "bob.db", key=KEY)

    alice, bob = await _user(relay, "alice"), await _user(relay, "bob", bob_store())
    failed: list[DecryptionFailed] = []
    gaps: list[HistoryGap] = []
    bob.on(DecryptionFailed, failed.append)
    bob.on(HistoryGap, gaps.append)
    direct = await alice.create_conversation(["bob"])
    await alice.send_text(direct, "before")
    await _send_hostile(alice, direct, "boom \ud800", monkeypatch)
    await alice.send_text(direct, "after")
    top = relay.conversations[direct]["last_server_seq"]
    await relay.deliver(bob)
    # reported once, as before; but its dot and server_seq are consumed: nothing waits behind it
    assert [f.code for f in failed] == ["malformed"] and "surrogate" in failed[0].reason
    assert failed[0].sender_device_id == alice.device_id
    assert [m.text for m in (await bob.conversation(direct)).messages] == ["before", "after"]
    assert not relay.queues[bob.device_id]  # everything acknowledged: nothing left to retry
    state = _state(bob, direct)
    assert state.held() == () and state.gap() is None and state.base_seq == top
    assert gaps == []
    # a gap fill from the start hands the same envelopes again: duplicates, no second event
    bob.store.cursors.set_server_seq(direct, 0)
    await bob.fill_gaps()
    assert len(failed) == 1 and [m.text for m in bob.messages(direct)] == ["before", "after"]

    # a restart replays the void from the store: the same state, no event, nothing held
    store = bob.store
    await bob.close()
    if store_kind == "sqlite":
        store.close()  # type: ignore[attr-defined]
        store = bob_store()
    bob = await Client.create(URL, store, http_transport=relay)
    bob.on(DecryptionFailed, failed.append)
    state = _state(bob, direct)
    assert state.held() == () and state.base_seq == top
    assert [m.text for m in (await bob.conversation(direct)).messages] == ["before", "after"]
    await alice.send_text(direct, "later")
    await relay.deliver(bob)
    assert [m.text for m in (await bob.conversation(direct)).messages] == ["before", "after", "later"]
    assert len(failed) == 1 and _state(bob, direct).base_seq == top + 1
    await alice.close()
    await bob.close()


async def test_a_void_travels_in_a_history_bundle_and_is_a_void_on_the_new_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    direct = await alice.create_conversation(["bob"])
    await _send_hostile(alice, direct, "boom \ud800", monkeypatch)
    await alice.send_text(direct, "after")
    await relay.deliver(bob)
    bundle = bob.linking.history_bundle("all")
    (conv,) = bundle["conversations"]
    assert len(conv["ops"]) == 3  # the genesis, the void (its plaintext as decrypted), "after"
    phone = await _add_device(relay, bob, seed=False)
    failed: list[DecryptionFailed] = []
    phone.on(DecryptionFailed, failed.append)
    with phone._ctx.transaction():
        phone.linking.seed_history(bundle)
    state = _state(phone, direct)
    assert state.held() == () and state.base_seq == 3
    assert state.view() == _state(bob, direct).view()  # (the phone has no contacts' names yet)
    assert state.applied_clock() == _state(bob, direct).applied_clock()
    await alice.send_text(direct, "later")
    await relay.deliver(phone)
    assert [m.text for m in (await phone.conversation(direct)).messages] == ["after", "later"]
    assert failed == []  # reported where it arrived, not again on the new device
    for c in (alice, bob, phone):
        await c.close()


async def test_an_undecryptable_envelope_with_a_real_messages_dot_does_not_erase_it() -> None:
    """A hostile server forges an envelope with the sender, clock (so the dot) and server_seq of a
    real message but a ciphertext it cannot make: it does not decrypt, so its header is not
    authenticated; it is dropped, never a void, and the real message applies when it comes."""
    relay = FakeRelay()
    alice, bob = await _user(relay, "alice"), await _user(relay, "bob")
    failed: list[DecryptionFailed] = []
    bob.on(DecryptionFailed, failed.append)
    direct = await alice.create_conversation(["bob"])
    await relay.deliver(bob)
    await alice.send_text(direct, "real")
    (real,) = relay.queues[bob.device_id]
    ciphertext = base64.urlsafe_b64decode(real["ciphertext"] + "==")
    forged = {
        **real,
        "envelope_id": base64.urlsafe_b64encode(b"\x66" * 16).rstrip(b"=").decode(),
        "ciphertext": base64.urlsafe_b64encode(ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]))
        .rstrip(b"=")
        .decode(),
    }
    relay.queues[bob.device_id] = [forged, {**real, "queue_seq": real["queue_seq"] + 1}]
    relay.next_queue_seq[bob.device_id] += 1
    state = _state(bob, direct)
    assert await relay.deliver(bob) == 2
    assert [f.code for f in failed] == ["undecryptable"] and failed[0].envelope_id == forged["envelope_id"]
    assert [m.text for m in (await bob.conversation(direct)).messages] == ["real"]
    assert state.base_seq == real["server_seq"] and state.held() == ()
    await alice.close()
    await bob.close()
