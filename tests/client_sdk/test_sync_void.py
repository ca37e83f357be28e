"""Malformed operations are voids (docs/protocol/sync.md § 2.2, § 4): an
operation that decrypted but does not decode consumes its dot and its server_seq with no effect,
so one bad item never stops a conversation; one without a valid dot is still refused."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.clock import CompactClock, Dot
from saltline.client_sdk.core.sync.composer import Composer
from saltline.client_sdk.core.sync.errors import SyncFormatError
from saltline.client_sdk.core.sync.state import ConversationState
from tests.client_sdk.test_sync_properties import CID, SYNC, World, _run, worlds

ALICE, BOB = b"\xa1" * 16, b"\xb0" * 16
PHONE, DESK = b"\x01" * 16, b"\x03" * 16

#: Plaintexts that decrypt but do not decode (each for a different reason of § 2.1).
MALFORMED = [
    b'{"lamport":1,"text":"x\\ud800y","type":"message","v":2}',  # a lone surrogate
    b'{"lamport":1,"type":"message","v":2}',  # a required field missing
    b'{"lamport":1,"text":"a","text":"b","type":"message","v":2}',  # a member named twice
    b'{"lamport":1,"type":"poll","v":3}',  # an unsupported version
    b"\xff not even UTF-8",
    b"",
]


def _void(plaintext: bytes, clock: CompactClock, device: bytes = PHONE) -> ops.Op:
    return ops.decode_or_void(plaintext, clock.encode(), device, ALICE)


# -- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", MALFORMED)
def test_a_malformed_operation_with_a_dot_decodes_as_a_void(plaintext: bytes) -> None:
    clock = CompactClock.of(4, {PHONE: 3, DESK: 7})
    with pytest.raises(SyncFormatError):
        ops.decode(plaintext, clock.encode(), PHONE, ALICE)
    op = _void(plaintext, clock)
    assert isinstance(op.body, ops.Void) and op.body.reason
    assert (op.dot, op.author, op.clock, op.lamport) == (Dot(PHONE, 3), ALICE, clock, 0)


def test_a_well_formed_operation_is_not_a_void() -> None:
    op = ops.Op(Dot(PHONE, 1), ALICE, CompactClock.of(0, {PHONE: 1}), 1, ops.Message("hi"))
    plaintext, clock = ops.encode(op)
    assert ops.decode_or_void(plaintext, clock, PHONE, ALICE) == op


@pytest.mark.parametrize(
    ("clock", "device"),
    [
        (CompactClock.of(4, {DESK: 7}).encode(), PHONE),  # no entry for the sender: no dot
        (b"\x07garbage", PHONE),  # a clock that does not decode
        (CompactClock.of(0, {PHONE: 1}).encode(), PHONE[:15]),  # not a 16-byte device id
    ],
)
def test_without_a_valid_dot_it_is_still_refused(clock: bytes, device: bytes) -> None:
    with pytest.raises(SyncFormatError):
        ops.decode_or_void(MALFORMED[0], clock, device, ALICE)


def test_a_void_is_never_sent() -> None:
    op = ops.Op(Dot(PHONE, 1), ALICE, CompactClock.of(0, {PHONE: 1}), 1, ops.Void("bad"))
    with pytest.raises(TypeError):
        ops.encode(op)


# -- the reducer ---------------------------------------------------------------------------------------


class Pair:
    """Alice's phone and Bob's desktop in a direct conversation; ``log`` in server order."""

    def __init__(self) -> None:
        self.phone = Composer(PHONE, ALICE)
        self.desk = Composer(DESK, BOB)
        self.author = {
            PHONE: ConversationState(CID, (ALICE, BOB)),
            DESK: ConversationState(CID, (ALICE, BOB)),
        }
        self.log: list[tuple[int, ops.Op]] = []

    def say(self, device: bytes, body: ops.Body, *, void: bool = False) -> tuple[int, ops.Op]:
        composer = self.phone if device == PHONE else self.desk
        op = composer.compose(self.author[device], body)
        entry = (len(self.log) + 1, op)
        self.log.append(entry)
        for state in self.author.values():  # both authors see the true log (honest)
            state.receive(*entry)
        if void:  # what every receiver decodes: the author's plaintext did not decode
            _, clock = ops.encode(op)
            entry = (entry[0], _void(MALFORMED[0], CompactClock.decode(clock), device))
            self.log[-1] = entry
        return entry


def test_a_void_lets_its_authors_later_operations_apply() -> None:
    pair = Pair()
    first = pair.say(PHONE, ops.Message("before"))
    bad = pair.say(PHONE, ops.Message("boom"), void=True)
    after = pair.say(PHONE, ops.Message("after"))
    edit = pair.say(PHONE, ops.Edit(first[1].dot, "before!"))
    receiver = ConversationState(CID, (ALICE, BOB))
    for entry in (after, edit, first, bad):  # the void last: the others wait for it, then apply
        got = receiver.receive(*entry)
    assert set(got.applied) == {bad[1].dot, after[1].dot, edit[1].dot}
    assert receiver.held() == () and receiver.gap() is None and receiver.base_seq == 4
    assert [(m.text, m.seq) for m in receiver.view().messages] == [("before!", 1), ("after", 3)]
    # it counts with the lamport number an honest author gave it: the next one is not "forged"
    assert receiver.effective_lamport(bad[1].dot) == 2
    assert receiver.effective_lamport(after[1].dot) == after[1].lamport == 3


def test_dropping_it_instead_holds_its_author_and_everything_past_its_server_seq() -> None:
    """What a drop did (the bug): the dot never applies (rule 3b holds the author's later
    operations) and its server_seq is never received (rule 3a holds other authors' operations
    whose base passes it); the void releases both."""
    pair = Pair()
    bad = pair.say(PHONE, ops.Message("boom"), void=True)
    after = pair.say(PHONE, ops.Message("after"))
    reply = pair.say(DESK, ops.Message("reply"))  # Bob's desktop had the whole log: base 2
    assert reply[1].clock.base == 2
    dropped = ConversationState(CID, (ALICE, BOB))
    for entry in (after, reply):
        dropped.receive(*entry)
    assert dropped.held() == (after[1].dot, reply[1].dot) and dropped.base_seq == 0
    voided = ConversationState(CID, (ALICE, BOB))
    for entry in (after, reply, bad):
        voided.receive(*entry)
    assert voided.held() == () and voided.base_seq == 3
    assert [m.text for m in voided.view().messages] == ["after", "reply"]


def test_a_voided_message_takes_its_edits_and_reactions_with_it() -> None:
    pair = Pair()
    bad = pair.say(PHONE, ops.Message("boom"), void=True)
    pair.say(PHONE, ops.Edit(bad[1].dot, "fixed"))
    pair.say(DESK, ops.ReactionAdd(bad[1].dot, "👍"))
    receiver = ConversationState(CID, (ALICE, BOB))
    for entry in reversed(pair.log):
        receiver.receive(*entry)
    view = receiver.view()
    # their clocks name the void's dot, so it is "not a message": ignored, nothing left pending
    assert view.messages == () and receiver.pending_targets() == {} and receiver.held() == ()


# -- properties: a void anywhere, any delivery order ---------------------------------------------------


def _corrupt(world: World, picks: list[int]) -> tuple[list[tuple[int, bytes, bytes, bytes, bytes]], set[int]]:
    log = list(world.log)
    voided = {1 + p % len(log) for p in picks} if log else set()
    for i, (seq, _, clock, device, account) in enumerate(log):
        if seq in voided:
            log[i] = (seq, MALFORMED[seq % len(MALFORMED)], clock, device, account)
    return log, voided


@settings(SYNC, max_examples=200)  # each example replays a whole log several times (CI budget)
@given(worlds(), st.lists(st.integers(0, 10_000), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_voids_at_any_position_release_every_later_operation_and_states_converge(
    world_spec: tuple[list[int], list[int]], picks: list[int], rnd: random.Random
) -> None:
    owners, steps = world_spec
    world = World(owners)
    _run(world, steps, rnd)
    log, voided = _corrupt(world, picks)
    honest = ConversationState(CID, world.members)
    reference = ConversationState(CID, world.members)
    for (seq, plaintext, clock, device, account), true in zip(log, world.log, strict=True):
        honest.receive(seq, ops.decode(*true[1:]))
        op = ops.decode_or_void(plaintext, clock, device, account)
        assert isinstance(op.body, ops.Void) == (seq in voided)
        got = reference.receive(seq, op)
        assert got.applied == (op.dot,) and got.held == ()  # server order never holds anything
        if seq not in voided:  # the void's lamport number is the honest one: nothing after is forged
            assert reference.effective_lamport(op.dot) == op.lamport
    assert reference.base_seq == len(log) and reference.gap() is None
    # every dot is consumed, the voids' too: the same applied clock as the log without them
    assert reference.applied_clock() == honest.applied_clock()
    voided_dots = {ops.decode(*world.log[s - 1][1:]).dot for s in voided}
    assert not {m.dot for m in reference.view().messages} & voided_dots
    # any order, with duplicates (a gap fill, a redelivery, a restart's replay): the same state
    for _ in range(2):
        state = ConversationState(CID, world.members)
        shuffled = log + rnd.sample(log, len(log) // 3)
        rnd.shuffle(shuffled)
        for seq, plaintext, clock, device, account in shuffled:
            state.receive(seq, ops.decode_or_void(plaintext, clock, device, account))
        assert state.held() == () and state.gap() is None and state.base_seq == len(log)
        assert state.view() == reference.view()
        assert state.applied_clock() == reference.applied_clock()
        assert state.pending_targets() == reference.pending_targets()


# -- a void above a floor (a new device's history bundle, an added member's welcome) -------------------


def test_a_void_whose_bound_is_below_the_floor_does_not_make_later_operations_forged() -> None:
    """A void just above a floor has an unknown bound (its own predecessor is below the floor).
    Counting it as lamport 0 made its author's next operation look forged (honest lamport above
    the bound computed from that 0), so it was consumed with no effect on the new device only,
    and the new device's lamport numbers stayed one short: every later operation of everyone
    looked forged too (the conversation went silent there, and nowhere else)."""
    pair = Pair()
    pair.say(PHONE, ops.Message("one"))
    pair.say(DESK, ops.Message("two"))
    floor = 2  # the bundle's floor: seq 1..2 are not carried
    pair.say(DESK, ops.Message("three"))  # its lamport is known above the floor
    bad = pair.say(PHONE, ops.Message("boom"), void=True)
    pair.say(PHONE, ops.Message("after"))
    pair.say(DESK, ops.Message("reply"))
    old = ConversationState(CID, (ALICE, BOB))
    for entry in pair.log:
        old.receive(*entry)
    new = ConversationState(CID, (ALICE, BOB), floor_seq=floor, floor_clock=old.prefix(floor))
    for entry in pair.log[floor:]:
        new.receive(*entry)
    assert isinstance(bad[1].body, ops.Void)
    texts = [m.text for m in old.view().messages]
    assert texts == ["one", "two", "three", "after", "reply"]
    assert [m.text for m in new.view().messages] == texts[floor:]
    for _, op in pair.log[floor + 2 :]:  # nothing after the void counts as forged
        assert new.effective_lamport(op.dot) == old.effective_lamport(op.dot) == op.lamport
