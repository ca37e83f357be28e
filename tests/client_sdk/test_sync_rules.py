"""Named scenarios for every sync rule (docs/protocol/sync.md § 5) and the encodings (§ 2-3)."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from saltline.client_sdk.core.sync import clock as vc
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import CompactClock, Dot, Order
from saltline.client_sdk.core.sync.composer import Composer
from saltline.client_sdk.core.sync.errors import SyncFormatError, SyncProtocolError
from saltline.client_sdk.core.sync.state import ConversationState, ConversationView, GapFill, MessageView

CID = b"\xc0" * 16
ALICE, BOB, CAROL = b"\xa1" * 16, b"\xb0" * 16, b"\xca" * 16
DEVICES = {
    "alice_phone": (b"\x01" * 16, ALICE),
    "alice_desktop": (b"\x02" * 16, ALICE),
    "bob_phone": (b"\x03" * 16, BOB),
}

Entry = tuple[int, ops.Op]


class Net:
    """A server (one ``server_seq`` counter) and devices; nothing is delivered unless asked."""

    def __init__(self, members: tuple[bytes, ...] = (ALICE, BOB)) -> None:
        self.members = members
        self.states = {name: ConversationState(CID, members) for name in DEVICES}
        self.composers = {name: Composer(*DEVICES[name]) for name in DEVICES}
        self.log: list[Entry] = []

    def compose(self, name: str, body: ops.Body) -> ops.Op:
        """Author an operation now (from what the device has applied); not yet sent."""
        op = self.composers[name].compose(self.states[name], body)
        plaintext, clock = ops.encode(op)  # every op crosses the wire format
        return ops.decode(plaintext, clock, *DEVICES[name])

    def send(self, op: ops.Op) -> Entry:
        entry = (len(self.log) + 1, op)
        self.log.append(entry)
        return entry

    def say(self, name: str, body: ops.Body) -> Entry:
        """Author, send and apply on the author's device (the server's echo)."""
        entry = self.send(self.compose(name, body))
        self.deliver(name, entry)
        return entry

    def deliver(self, name: str, *entries: Entry) -> None:
        for seq, op in entries:
            self.states[name].receive(seq, op)

    def sync(self, *names: str) -> None:
        for name in names or tuple(DEVICES):
            self.deliver(name, *self.log)

    def view(self, name: str) -> ConversationView:
        return self.states[name].view()

    def msg(self, name: str, dot: Dot) -> MessageView:
        return _present(self.states[name].view().message(dot))

    def assert_converged(self) -> None:
        self.sync()
        reference = ConversationState(CID, self.members)
        for seq, op in self.log:
            reference.receive(seq, op)
        for state in self.states.values():
            assert state.view() == reference.view()


def _present(message: MessageView | None) -> MessageView:
    assert message is not None
    return message


def _message(net: Net, name: str, text: str) -> Dot:
    _, op = net.say(name, ops.Message(text))
    net.sync()
    return op.dot


# -- edits and deletes -----------------------------------------------------------------------------


def test_phone_edits_offline_while_desktop_deletes() -> None:
    net = Net()
    m = _message(net, "alice_phone", "meet at 5")
    offline_edit = net.compose("alice_phone", ops.Edit(m, "meet at 6"))  # phone is offline
    net.say("alice_desktop", ops.Delete(m))
    net.sync("alice_desktop", "bob_phone")
    assert net.msg("bob_phone", m).deleted
    net.send(offline_edit)  # the phone reconnects
    net.assert_converged()
    for name in DEVICES:
        shown = net.msg(name, m)
        assert shown.deleted and shown.text is None and not shown.edited


def test_delete_beats_a_concurrent_edit_whichever_is_sequenced_first() -> None:
    net = Net()
    m = _message(net, "alice_phone", "typo")
    edit = net.compose("alice_phone", ops.Edit(m, "fixed"))
    delete = net.compose("alice_desktop", ops.Delete(m))
    net.send(edit)
    net.send(delete)
    net.deliver("bob_phone", net.log[-1], net.log[-2])  # bob even gets the delete first
    net.assert_converged()
    assert net.msg("bob_phone", m).text is None


def test_delete_drops_the_body_at_once() -> None:
    net = Net()
    m = _message(net, "alice_phone", "secret")
    net.say("alice_phone", ops.Edit(m, "secret 2"))
    net.say("alice_phone", ops.ReactionAdd(m, "👍"))
    net.sync()
    net.say("alice_phone", ops.Delete(m))
    shown = net.msg("alice_phone", m)
    assert (shown.text, shown.edited, shown.reactions) == (None, False, ())
    assert "secret" not in repr(net.states["alice_phone"].view())


def test_concurrent_edits_last_writer_wins_by_lamport_then_device_id() -> None:
    net = Net()
    m = _message(net, "alice_phone", "v0")
    phone = net.compose("alice_phone", ops.Edit(m, "from phone"))
    desktop = net.compose("alice_desktop", ops.Edit(m, "from desktop"))
    assert phone.lamport == desktop.lamport  # a tie: the larger device id (desktop 0x02..) wins
    net.send(desktop)
    net.send(phone)
    net.assert_converged()
    assert net.msg("bob_phone", m).text == "from desktop"
    # a later edit that saw both wins by lamport
    net.say("alice_phone", ops.Edit(m, "final"))
    net.assert_converged()
    assert net.msg("alice_desktop", m).text == "final"


def test_edit_by_a_non_author_is_ignored() -> None:
    net = Net()
    m = _message(net, "alice_phone", "mine")
    net.say("bob_phone", ops.Edit(m, "bob was here"))
    net.say("bob_phone", ops.Delete(m))
    net.assert_converged()
    shown = net.msg("alice_desktop", m)
    assert (shown.text, shown.edited, shown.deleted) == ("mine", False, False)


def test_edit_from_the_authors_other_device_applies() -> None:
    net = Net()
    m = _message(net, "alice_phone", "helo")
    net.say("alice_desktop", ops.Edit(m, "hello"))
    net.assert_converged()
    shown = net.msg("bob_phone", m)
    assert (shown.text, shown.edited) == ("hello", True)


def test_early_delete_applied_when_target_arrives() -> None:
    net = Net()
    message = net.say("alice_phone", ops.Message("oops"))
    delete = net.say("alice_phone", ops.Delete(message[1].dot))
    got = net.states["bob_phone"].receive(*delete)  # the delete arrives first
    assert got.applied == () and got.held == (delete[1].dot,)
    assert got.gap == GapFill(CID, 0)  # ask the server for everything after server_seq 0
    assert net.view("bob_phone").messages == ()
    got = net.states["bob_phone"].receive(*message)
    assert got.applied == (message[1].dot, delete[1].dot) and got.gap is None
    assert net.msg("bob_phone", message[1].dot).deleted


def test_early_reaction_waits_in_the_pending_set_until_its_target_arrives() -> None:
    """An operation whose clock does not name its target (e.g. a client restored from a backup
    that lost its clock) is not held; it waits for the target in the pending set."""
    state = ConversationState(CID, (ALICE, BOB))
    target = Dot(DEVICES["alice_phone"][0], 1)
    reaction = ops.Op(
        Dot(DEVICES["bob_phone"][0], 1),
        BOB,
        CompactClock.of(0, {DEVICES["bob_phone"][0]: 1}),
        1,
        ops.ReactionAdd(target, "🎉"),
    )
    assert state.receive(1, reaction).applied == (reaction.dot,)
    assert state.pending_targets() == {target: (reaction.dot,)}
    message = ops.Op(target, ALICE, CompactClock.of(0, {target.device: 1}), 1, ops.Message("party"))
    state.receive(2, message)
    assert state.pending_targets() == {}
    assert _present(state.view().message(target)).reactions == ((BOB, "🎉"),)


def test_target_that_is_not_a_message_is_ignored() -> None:
    net = Net()
    _, marker = net.say("alice_phone", ops.ReadMarker(0))
    net.say("alice_phone", ops.Edit(marker.dot, "?"))
    net.assert_converged()
    assert net.states["bob_phone"].pending_targets() == {}
    assert net.view("bob_phone").messages == ()


def test_forged_lamport_above_max_seen_plus_one_has_no_effect() -> None:
    net = Net()
    m = _message(net, "alice_phone", "v0")
    honest = net.compose("alice_phone", ops.Edit(m, "honest"))
    forged = net.compose("alice_desktop", ops.Edit(m, "sticky"))
    forged = ops.Op(forged.dot, forged.author, forged.clock, 2**62, forged.body)  # would win for ever
    net.send(forged)
    net.send(honest)
    net.assert_converged()
    assert net.msg("bob_phone", m).text == "honest"
    assert net.states["bob_phone"].effective_lamport(forged.dot) == 2  # counted as max seen + 1
    net.say("bob_phone", ops.SettingsChange("title", "later"))  # later writers are not starved
    assert net.states["bob_phone"].max_lamport == 3


def test_clock_claiming_to_have_seen_its_own_server_seq_has_no_effect() -> None:
    state = ConversationState(CID, (ALICE, BOB))
    device = DEVICES["bob_phone"][0]
    bad = ops.Op(Dot(device, 1), BOB, CompactClock.of(5, {device: 1}), 1, ops.Message("from the future"))
    got = state.receive(1, bad)
    assert got.applied == (bad.dot,)  # not held for ever behind itself
    assert [(f.dot, f.seq, f.base) for f in got.forks] == [(bad.dot, 1, 5)]  # an impossible placement
    good = ops.Op(Dot(device, 2), BOB, CompactClock.of(1, {device: 2}), 1, ops.Message("ok"))
    assert state.receive(2, good).applied == (good.dot,)
    assert [m.text for m in state.view().messages] == ["ok"]


# -- reactions -------------------------------------------------------------------------------------


def test_reactions_last_writer_wins_per_message_and_user() -> None:
    net = Net()
    m = _message(net, "bob_phone", "lunch?")
    phone = net.compose("alice_phone", ops.ReactionAdd(m, "👍"))
    desktop = net.compose("alice_desktop", ops.ReactionAdd(m, "❤️"))
    net.send(phone)
    net.send(desktop)
    net.say("bob_phone", ops.ReactionAdd(m, "😂"))
    net.assert_converged()
    # one reaction per user: alice's concurrent tie goes to the larger device id (desktop)
    assert net.msg("alice_phone", m).reactions == ((ALICE, "❤️"), (BOB, "😂"))
    net.say("alice_phone", ops.ReactionRemove(m, "❤️"))
    net.assert_converged()
    assert net.msg("bob_phone", m).reactions == ((BOB, "😂"),)


def test_reaction_on_a_deleted_message_is_dropped() -> None:
    net = Net()
    m = _message(net, "alice_phone", "x")
    reaction = net.compose("bob_phone", ops.ReactionAdd(m, "👍"))
    net.say("alice_phone", ops.Delete(m))
    net.send(reaction)
    net.assert_converged()
    assert net.msg("bob_phone", m).reactions == ()


# -- read markers and unread -----------------------------------------------------------------------


def test_reading_on_the_phone_clears_unread_on_the_desktop() -> None:
    net = Net()
    for i in range(3):
        net.say("bob_phone", ops.Message(f"hi {i}"))
    net.sync()
    assert net.view("alice_desktop").unread(ALICE) == 3
    assert net.view("alice_desktop").unread(BOB) == 0  # one's own messages are never unread
    net.say("alice_phone", ops.ReadMarker(2))
    net.sync()
    assert net.view("alice_desktop").unread(ALICE) == 1
    assert net.view("bob_phone").receipts == {ALICE: 2}


def test_read_marker_is_a_max_register() -> None:
    net = Net()
    for i in range(3):
        net.say("bob_phone", ops.Message(f"hi {i}"))
    net.sync()
    late_old = net.compose("alice_desktop", ops.ReadMarker(1))
    net.say("alice_phone", ops.ReadMarker(3))
    net.send(late_old)
    net.assert_converged()
    assert net.view("alice_desktop").read_up_to[ALICE] == 3
    assert net.view("alice_desktop").unread(ALICE) == 0


def test_receipts_off_moves_the_marker_but_shows_no_receipt() -> None:
    net = Net()
    net.say("bob_phone", ops.Message("hi"))
    net.sync()
    net.say("alice_phone", ops.ReadMarker(1, receipts=False))
    net.assert_converged()
    assert net.view("alice_desktop").unread(ALICE) == 0
    assert net.view("bob_phone").receipts == {}


# -- settings --------------------------------------------------------------------------------------


def test_two_devices_rename_the_group_at_once() -> None:
    net = Net()
    phone = net.compose("alice_phone", ops.SettingsChange("title", "Trip"))
    bob = net.compose("bob_phone", ops.SettingsChange("title", "Plans"))
    net.send(bob)
    net.send(phone)
    net.assert_converged()
    title = net.view("alice_desktop").settings["title"]
    # same lamport: the larger device id wins (bob_phone 0x03.. > alice_phone 0x01..)
    assert title.value == "Plans" and title.set_by == bob.dot
    assert [(c.value, c.dot, c.author) for c in title.conflicts] == [("Trip", phone.dot, ALICE)]
    # a rename that saw both resolves the conflict
    net.say("alice_desktop", ops.SettingsChange("title", "Trip plans"))
    net.assert_converged()
    title = net.view("bob_phone").settings["title"]
    assert (title.value, title.conflicts) == ("Trip plans", ())


def test_settings_are_last_writer_wins_per_field() -> None:
    net = Net()
    a = net.compose("alice_phone", ops.SettingsChange("title", "Trip"))
    b = net.compose("bob_phone", ops.SettingsChange("disappearing_ms", 86_400_000))
    net.send(a)
    net.send(b)
    net.assert_converged()
    view = net.view("bob_phone")
    assert view.settings["title"].value == "Trip" and view.settings["title"].conflicts == ()
    assert view.settings["disappearing_ms"].value == 86_400_000


def test_later_setting_overwrites_without_conflict() -> None:
    net = Net()
    net.say("alice_phone", ops.SettingsChange("title", "a"))
    net.sync()
    net.say("bob_phone", ops.SettingsChange("title", "b"))
    net.assert_converged()
    assert net.view("alice_phone").settings["title"].conflicts == ()


def test_mute_is_a_personal_setting_per_user() -> None:
    net = Net()
    phone = net.compose("alice_phone", ops.SettingsChange("mute", True))
    desktop = net.compose("alice_desktop", ops.SettingsChange("mute", False))
    net.send(phone)
    net.send(desktop)
    net.say("bob_phone", ops.SettingsChange("mute", True))
    net.assert_converged()
    mute = net.view("bob_phone").mute
    assert mute[ALICE].value is False and [c.value for c in mute[ALICE].conflicts] == [True]
    assert mute[BOB].value is True


# -- membership ------------------------------------------------------------------------------------


def test_concurrent_add_and_remove_of_a_member_remove_wins() -> None:
    net = Net(members=(ALICE, BOB, CAROL))
    add = net.compose("alice_phone", ops.MembershipChange(CAROL, add=True))  # e.g. a re-invite
    remove = net.compose("bob_phone", ops.MembershipChange(CAROL, add=False))
    net.send(remove)
    net.send(add)
    net.assert_converged()
    assert net.view("alice_phone").members == {ALICE, BOB}
    # an add that saw the removal re-adds
    net.say("alice_desktop", ops.MembershipChange(CAROL, add=True))
    net.assert_converged()
    assert CAROL in net.view("bob_phone").members


def test_sequential_membership_changes() -> None:
    net = Net()
    net.say("alice_phone", ops.MembershipChange(CAROL, add=True))
    net.sync()
    assert net.view("bob_phone").members == {ALICE, BOB, CAROL}
    net.say("bob_phone", ops.MembershipChange(CAROL, add=False))
    net.assert_converged()
    assert net.view("alice_desktop").members == {ALICE, BOB}


# -- order, holding, idempotency -------------------------------------------------------------------


def test_display_order_is_server_seq_on_every_device() -> None:
    net = Net()
    a = net.compose("alice_phone", ops.Message("a"))
    b = net.compose("bob_phone", ops.Message("b"))
    net.send(b)
    net.send(a)
    net.deliver("alice_phone", net.log[1], net.log[0])
    net.assert_converged()
    for name in DEVICES:
        assert [m.text for m in net.view(name).messages] == ["b", "a"]
        assert [m.seq for m in net.view(name).messages] == [1, 2]


def test_duplicates_are_idempotent_by_dot() -> None:
    net = Net()
    entry = net.say("alice_phone", ops.Message("once"))
    state = net.states["bob_phone"]
    assert state.receive(*entry).applied == (entry[1].dot,)
    assert state.receive(*entry).duplicate
    assert state.receive(2, entry[1]).duplicate  # the same dot under another server_seq
    assert len(state.view().messages) == 1 and state.view().messages[0].seq == 1


def test_one_server_seq_for_two_dots_is_a_protocol_error() -> None:
    net = Net()
    first = net.say("alice_phone", ops.Message("a"))
    other = net.compose("bob_phone", ops.Message("b"))
    with pytest.raises(SyncProtocolError):
        net.states["alice_phone"].receive(first[0], other)


def test_held_operation_reports_the_gap_after_the_received_prefix() -> None:
    net = Net()
    entries = [net.say("alice_phone", ops.Message(str(i))) for i in range(4)]
    state = net.states["bob_phone"]
    state.receive(*entries[0])
    got = state.receive(*entries[3])  # 2 and 3 are missing; 4's clock names them
    assert got.held == (entries[3][1].dot,) and got.gap == GapFill(CID, 1)
    for seq, op in net.log[got.gap.after_seq :]:
        state.receive(seq, op)
    assert state.gap() is None and [m.text for m in state.view().messages] == ["0", "1", "2", "3"]


def test_newest_first_delivery_holds_everything_then_releases_in_server_order() -> None:
    """A device catching up newest first: every operation is held (each names the ones before it)
    until server_seq 1 arrives, which releases the whole chain in server_seq order at once."""
    net = Net()
    names = ("alice_phone", "bob_phone", "alice_desktop")
    entries: list[Entry] = []
    for i in range(30):
        entries.append(net.say(names[i % 3], ops.Message(str(i))))
        net.sync()  # every device saw everything: each operation names all the ones before it
    entries.append(net.say("bob_phone", ops.ReactionAdd(entries[5][1].dot, "👍")))
    state = ConversationState(CID, net.members)
    for k, entry in enumerate(reversed(entries[1:])):
        got = state.receive(*entry)
        assert got.applied == () and got.gap == GapFill(CID, 0)
        assert got.held == tuple(op.dot for _, op in entries[len(entries) - 1 - k :])
    got = state.receive(*entries[0])
    assert got.applied == tuple(op.dot for _, op in entries)
    assert got.held == () and got.gap is None and state.base_seq == len(entries)
    assert state.view() == net.view("bob_phone")  # the reaction's author has applied everything


def test_concurrent_operation_is_applied_without_waiting_for_unrelated_gaps() -> None:
    net = Net()
    a = net.send(net.compose("alice_phone", ops.Message("a")))
    b = net.send(net.compose("bob_phone", ops.Message("b")))
    state = net.states["alice_desktop"]
    got = state.receive(*b)  # seq 1 is missing but b does not depend on it
    assert got.applied == (b[1].dot,) and got.gap == GapFill(CID, 0)
    assert state.base_seq == 0
    state.receive(*a)
    assert state.base_seq == 2 and state.gap() is None


def test_typing_never_enters_state() -> None:
    net = Net()
    _message(net, "alice_phone", "x")
    before = net.view("bob_phone")
    typing = net.compose("alice_phone", ops.Typing(True))
    assert typing.dot.n == 0  # consumes no dot
    got = net.states["bob_phone"].receive(None, typing)
    assert got.typing is not None and got.typing.account == ALICE and got.typing.typing
    assert net.view("bob_phone") == before
    # the next real operation is not held behind the typing indicator
    entry = net.say("alice_phone", ops.Message("y"))
    assert net.states["bob_phone"].receive(*entry).applied == (entry[1].dot,)


def test_unknown_operation_type_consumes_its_dot() -> None:
    net = Net()
    device, account = DEVICES["alice_phone"]
    clock = net.states["alice_phone"].local_clock(device, 1)
    op = ops.decode(b'{"lamport":1,"type":"poll","v":2,"question":"?"}', clock.encode(), device, account)
    assert isinstance(op.body, ops.Unknown)
    net.states["alice_phone"].receive(1, op)
    net.composers["alice_phone"].counter = 1
    net.log.append((1, op))
    after = net.say("alice_phone", ops.Message("next"))
    assert net.states["bob_phone"].receive(1, op).applied == (op.dot,)
    assert net.states["bob_phone"].receive(*after).applied == (after[1].dot,)
    assert ops.encode(op)[0] == b'{"lamport":1,"question":"?","type":"poll","v":2}'


def test_new_device_starting_from_a_floor() -> None:
    net = Net()
    entries = [net.say("bob_phone", ops.Message(str(i))) for i in range(3)]
    fresh = ConversationState(CID, (ALICE, BOB), floor_seq=2, floor_clock={DEVICES["bob_phone"][0]: 2})
    assert fresh.receive(*entries[2]).applied == (entries[2][1].dot,)
    assert fresh.receive(*entries[0]).duplicate
    assert [m.text for m in fresh.view().messages] == ["2"] and fresh.base_seq == 3


# -- encodings -------------------------------------------------------------------------------------


def test_message_plaintext_is_canonical_json() -> None:
    net = Net()
    op = net.compose("alice_phone", ops.Message("hi", sent_at_ms=5))
    plaintext, clock = ops.encode(op)
    assert plaintext == b'{"lamport":1,"sent_at_ms":5,"text":"hi","type":"message","v":2}'
    # version 3: base 0, T(0) of the conversation, one extra (the op's own dot)
    t0 = hashlib.sha256(b"saltline/v1/transcript/genesis" + CID).digest()
    assert clock == bytes([3]) + bytes(8) + t0 + b"\x00\x01" + DEVICES["alice_phone"][0] + (1).to_bytes(
        8, "big"
    )
    edit = ops.Op(op.dot, ALICE, op.clock, 2, ops.Edit(Dot(b"\x01" * 16, 1), "x"))
    doc = json.loads(ops.encode_plaintext(edit))
    assert doc == {"v": 2, "lamport": 2, "type": "edit", "target": ["AQEBAQEBAQEBAQEBAQEBAQ", 1], "text": "x"}


def test_the_examples_in_sync_md_decode_and_reencode_byte_for_byte() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "protocol" / "sync.md").read_text()
    examples = [line for line in doc.splitlines() if line.startswith('{"') and '"v":2' in line]
    assert len(examples) == 6
    device, account = DEVICES["alice_phone"]
    clock = CompactClock.of(0, {device: 1}).encode()
    for line in examples:
        op = ops.decode(line.encode(), clock, device, account)
        assert not isinstance(op.body, ops.Unknown)
        assert ops.encode_plaintext(op) == line.encode()


def test_legacy_v1_text_operation_decodes_as_a_message() -> None:
    device, account = DEVICES["alice_phone"]
    op = ops.decode(
        b'{"sent_at_ms":7,"text":"old","type":"text","v":1}',
        CompactClock.of(0, {device: 1}).encode(),
        device,
        account,
    )
    assert op.body == ops.Message("old", None, 7) and op.lamport == 0 and op.dot == Dot(device, 1)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json",
        b'{"v":3,"type":"message","lamport":1,"text":"x"}',
        b'{"v":2,"type":"message","lamport":-1,"text":"x"}',
        b'{"v":2,"type":"message","lamport":1,"text":5}',
        b'{"v":2,"type":"edit","lamport":1,"target":["AQ",1],"text":"x"}',
        b'{"v":2,"type":"reaction","lamport":1,"action":"poke","target":["AQEBAQEBAQEBAQEBAQEBAQ",1],"emoji":"x"}',
        b'{"v":2,"type":"settings","lamport":1,"field":"mute","value":"yes"}',
        b'{"v":2,"type":"settings","lamport":1,"field":"colour","value":"red"}',
        b'{"v":2,"type":"read","lamport":1,"up_to":true}',
    ],
)
def test_malformed_operations_are_rejected(plaintext: bytes) -> None:
    device, account = DEVICES["alice_phone"]
    with pytest.raises(SyncFormatError):
        ops.decode(plaintext, CompactClock.of(0, {device: 1}).encode(), device, account)


def test_an_operation_must_carry_its_own_dot_in_the_clock() -> None:
    device, account = DEVICES["alice_phone"]
    with pytest.raises(SyncFormatError):
        ops.decode(
            b'{"v":2,"type":"message","lamport":1,"text":"x"}',
            CompactClock.of(5, {}).encode(),
            device,
            account,
        )


def test_clock_encoding_is_canonical() -> None:
    a, b = b"\x01" * 16, b"\x02" * 16
    clock = CompactClock.of(42, {b: 3, a: 1, b"\x03" * 16: 0})
    data = clock.encode()
    assert len(data) == 11 + 2 * 24 and CompactClock.decode(data) == clock
    assert clock.extras == ((a, 1), (b, 3))
    for bad in (data[:-1], b"\x03" + data[1:], data[:11] + data[35:] + data[11:35], b""):
        with pytest.raises(SyncFormatError):
            CompactClock.decode(bad)


def test_version_1_full_clock_decodes_as_base_zero() -> None:
    a, b = b"\x01" * 16, b"\x02" * 16
    # version 1: 0x01 || u16 count || (device_id 16 || counter u64)* sorted by device id
    legacy = b"\x01" + struct.pack(">H", 2) + a + struct.pack(">Q", 2) + b + struct.pack(">Q", 5)
    assert CompactClock.decode(legacy) == CompactClock(0, ((a, 2), (b, 5)))


def test_compact_clock_expands_against_the_prefix() -> None:
    a, b = b"\x01" * 16, b"\x02" * 16
    prefix = {a: 7, b: 2}
    full = {a: 7, b: 4}
    compact = vc.compact(full, 10, prefix)
    assert compact == CompactClock(10, ((b, 4),))
    assert compact.expand(prefix) == full


def test_compare_and_concurrency() -> None:
    a, b = b"\x01" * 16, b"\x02" * 16
    assert vc.compare({a: 1}, {a: 1, b: 1}) is Order.BEFORE
    assert vc.compare({a: 2}, {a: 1, b: 1}) is Order.CONCURRENT
    assert vc.compare({a: 1, b: 1}, {a: 1}) is Order.AFTER
    assert vc.compare({a: 1}, {a: 1}) is Order.EQUAL
    assert vc.concurrent(Dot(a, 2), {a: 2}, Dot(b, 1), {a: 1, b: 1})
    assert not vc.concurrent(Dot(a, 1), {a: 1}, Dot(b, 1), {a: 1, b: 1})


def test_pruning_only_removed_devices_every_live_device_has_passed() -> None:
    old, phone, desktop = b"\x09" * 16, b"\x01" * 16, b"\x02" * 16
    removed = {old: 5}
    assert vc.prunable(removed, [{old: 5, phone: 3}, {old: 4, desktop: 1}]) == frozenset()
    assert vc.prunable(removed, [{old: 5, phone: 3}, {old: 6, desktop: 1}]) == {old}
    assert vc.prunable({}, [{old: 5}]) == frozenset()  # a live device is never pruned
    pruned = vc.prune({old: 5, phone: 3}, {old})
    assert pruned == {phone: 3} and vc.restore(pruned, removed) == {old: 5, phone: 3}


def test_state_reports_prunable_devices_from_latest_clocks() -> None:
    net = Net()
    net.say("alice_desktop", ops.Message("last words of the desktop"))
    net.sync()
    desktop = DEVICES["alice_desktop"][0]
    state = net.states["bob_phone"]
    live = [DEVICES["alice_phone"][0], DEVICES["bob_phone"][0]]
    assert state.prunable({desktop: 1}, live) == frozenset()  # the live devices have not spoken since
    net.say("alice_phone", ops.ReadMarker(1))
    net.say("bob_phone", ops.ReadMarker(1))
    net.sync()
    assert state.prunable({desktop: 1}, live) == {desktop}
