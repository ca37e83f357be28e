"""The SDK's public shapes: one emoji per reaction (a table and properties; the reducer rejects a
peer's invalid one everywhere), events that carry usernames next to account ids, and the
conversation view with text ids only."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.client_sdk.core import diff, views
from saltline.client_sdk.core.emoji import MAX_EMOJI_CODE_POINTS, emoji_problem, is_valid_emoji
from saltline.client_sdk.core.events import Reaction, ReactionChanged, ReadStateChanged
from saltline.client_sdk.core.outgoing import check_accepted, encode_checked
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import Dot
from saltline.client_sdk.core.sync.membership import INVALID_REACTION
from saltline.client_sdk.core.sync.state import ConversationState
from saltline.client_sdk.errors import UsageError
from saltline.crypto.keys import b64encode
from tests.client_sdk.test_sync_rules import ALICE, BOB, CID, Net

VALID = [
    "👍",
    "❤️",
    "❤",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "👩🏽‍💻",
    "🏳️‍🌈",
    "🇫🇷",
    "1️⃣",
    "#⃣",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "☕",
    "©️",
]
INVALID = [
    "",
    "a",
    "+1",
    "hello",
    "👍👍",
    "👍 ",
    " 👍",
    "🇫",
    "1",
    "\u200d",
    "👍\u200d",
    "\u200d👍",
    "🏽",
    "\ufe0f",
    "<b>👍</b>",
    "👍\n",
    "👍" * 100,
    "👨‍👩‍👧‍👦‍👦",  # five people: past the bound of a ZWJ sequence
]


@pytest.mark.parametrize("text", VALID)
def test_one_emoji_is_a_reaction(text: str) -> None:
    assert is_valid_emoji(text) and emoji_problem(text) is None


@pytest.mark.parametrize("text", INVALID)
def test_anything_else_is_not(text: str) -> None:
    assert not is_valid_emoji(text)
    assert emoji_problem(text) is not None


def test_non_strings_are_not_reactions() -> None:
    for value in (None, 1, b"\xf0\x9f\x91\x8d", ["👍"]):
        assert not is_valid_emoji(value)


@given(st.sampled_from(VALID), st.sampled_from(VALID))
def test_two_emoji_side_by_side_are_not_one(a: str, b: str) -> None:
    assert not is_valid_emoji(a + b)


@given(st.sampled_from(VALID), st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1))
def test_emoji_with_text_is_not_a_reaction(emoji: str, text: str) -> None:
    assert not is_valid_emoji(emoji + text)
    assert not is_valid_emoji(text + emoji)


@given(st.text(max_size=64))
def test_validity_is_bounded_and_total(text: str) -> None:
    # never raises, and nothing longer than the bound passes
    if is_valid_emoji(text):
        assert 0 < len(text) <= MAX_EMOJI_CODE_POINTS
        assert emoji_problem(text) is None
    else:
        assert emoji_problem(text) is not None


def test_an_invalid_reaction_from_a_peer_is_rejected_and_never_shown() -> None:
    net = Net()
    _, hello = net.say("alice_phone", ops.Message("hello"))
    net.say("bob_phone", ops.ReactionAdd(hello.dot, "<script>alert(1)</script>"))
    net.say("bob_phone", ops.ReactionAdd(hello.dot, "👍"))
    net.sync()
    state = net.states["alice_phone"]
    assert net.msg("alice_phone", hello.dot).reactions == ((BOB, "👍"),)
    # the invalid one was consumed with no effect, the same on every device
    net.assert_converged()
    fresh = ConversationState(CID, (ALICE, BOB))
    rejected = []
    for seq, op in net.log:
        rejected.extend(fresh.receive(seq, op).rejected)
    assert [r.reason for r in rejected] == [INVALID_REACTION]
    assert state.view() == fresh.view()


def test_an_invalid_removal_does_not_clear_a_reaction() -> None:
    net = Net()
    _, hello = net.say("alice_phone", ops.Message("hello"))
    net.say("bob_phone", ops.ReactionAdd(hello.dot, "🎉"))
    net.say("bob_phone", ops.ReactionRemove(hello.dot, "not an emoji"))
    net.assert_converged()
    assert net.msg("alice_phone", hello.dot).reactions == ((BOB, "🎉"),)


def _names(account_id: str) -> str:
    return {b64encode(ALICE): "alice", b64encode(BOB): "bob"}.get(account_id, "")


def test_events_carry_usernames_next_to_account_ids() -> None:
    net = Net()
    _, hello = net.say("alice_phone", ops.Message("hello"))
    net.sync()
    before = net.view("alice_phone")
    net.say("bob_phone", ops.ReactionAdd(hello.dot, "🎉"))
    net.say("bob_phone", ops.ReadMarker(1))
    net.sync()
    after = net.view("alice_phone")
    events = diff.changes("c", ALICE, before, after, _names)
    reaction = next(e for e in events if isinstance(e, ReactionChanged))
    assert reaction.message_ref == diff.message_ref(hello.dot)
    assert reaction.reactions == (Reaction(b64encode(BOB), "bob", "🎉"),)
    read = next(e for e in events if isinstance(e, ReadStateChanged))
    assert read.usernames == {b64encode(BOB): "bob"} and read.read_up_to == {b64encode(BOB): 1}


def _has_bytes(value: object) -> bool:
    if isinstance(value, bytes | Dot):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(k) or _has_bytes(v) for k, v in value.items())
    if isinstance(value, tuple | list | frozenset | set):
        return any(_has_bytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_has_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def test_the_public_view_has_text_ids_only() -> None:
    net = Net()
    _, hello = net.say("alice_phone", ops.Message("hello"))
    net.say("bob_phone", ops.Message("hi", hello.dot))
    net.say("bob_phone", ops.ReactionAdd(hello.dot, "👍"))
    net.say("alice_phone", ops.SettingsChange("title", "plans"))
    net.say("bob_phone", ops.ReadMarker(2))
    net.sync()
    raw = net.view("alice_phone")
    view = views.public_view(raw, _names)
    assert not _has_bytes(view)
    assert view.conversation_id == b64encode(CID)
    first, reply = view.messages
    assert first.message_ref == diff.message_ref(hello.dot) and first.author_username == "alice"
    assert reply.reply_to == first.message_ref and reply.author == b64encode(BOB)
    assert first.reactions == (Reaction(b64encode(BOB), "bob", "👍"),)
    assert view.settings["title"].value == "plans" and view.settings["title"].set_by_username == "alice"
    assert view.members == {b64encode(ALICE), b64encode(BOB)}
    assert view.usernames == {b64encode(ALICE): "alice", b64encode(BOB): "bob"}
    assert view.message(first.message_ref) == first
    assert view.unread(b64encode(ALICE)) == raw.unread(ALICE)


GOOD_BODIES = [
    ops.Message("hi"),
    ops.SettingsChange("title", "plans"),
    ops.SettingsChange("title", None),
    ops.SettingsChange("disappearing_ms", 60_000),
    ops.SettingsChange("mute", True),
    ops.ReadMarker(0),
    ops.ReactionAdd(Dot(b"\x01" * 16, 1), "👍"),
]
BAD_BODIES = [
    ops.SettingsChange("disappearing_ms", -5),
    ops.SettingsChange("title", 5),
    ops.SettingsChange("mute", "yes"),
    ops.ReadMarker(-1),
    ops.Message(b"bytes"),  # type: ignore[arg-type]
    ops.Message("x" * 65_537),  # receivers refuse a text this long
    ops.Edit(Dot(b"\x01" * 16, 1), "x" * 65_537),
]


@pytest.mark.parametrize("body", GOOD_BODIES, ids=repr)
def test_what_receivers_accept_is_sent(body: ops.Body) -> None:
    net = Net()
    op = net.composers["alice_phone"].compose(net.states["alice_phone"], body)
    device, account = net.composers["alice_phone"].device_id, ALICE
    plaintext, clock = encode_checked(op)
    check_accepted(op, plaintext, clock, device, account)
    assert ops.decode(plaintext, clock, device, account).body == body


@pytest.mark.parametrize("body", BAD_BODIES, ids=repr)
def test_what_receivers_refuse_is_a_usage_error(body: ops.Body) -> None:
    net = Net()
    op = net.composers["alice_phone"].compose(net.states["alice_phone"], body)
    with pytest.raises(UsageError):
        plaintext, clock = encode_checked(op)
        check_accepted(op, plaintext, clock, net.composers["alice_phone"].device_id, ALICE)
