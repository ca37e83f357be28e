"""Disappearing messages, the pure rule (docs/protocol/sync.md § 5.8): a message's timer is the
``disappearing_ms`` setting in its causal past, it expires at ``sent_at_ms + timer``, every
device computes the same expiry whatever the order operations arrive in, and a tombstone in
place of an expired operation keeps every device convergent."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltline.client_sdk.core.sync import clock as vc
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.composer import Composer
from saltline.client_sdk.core.sync.expiry import (
    TimerWrite,
    expired,
    expires_at,
    is_tombstone,
    timer_in_force,
    timer_write,
    tombstone,
)
from saltline.client_sdk.core.sync.rules import lww_key
from saltline.client_sdk.core.sync.state import ConversationState
from tests.client_sdk.test_sync_properties import CID, Device, World, _run, worlds

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

A, B = b"\x01" * 16, b"\x02" * 16


def w(device: bytes, n: int, lamport: int, value: int | None) -> TimerWrite:
    return TimerWrite((lamport, device, n), vc.Dot(device, n), value)


# -- the rule, as tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("writes", "clock", "timer"),
    [
        ([], {A: 5}, None),  # never set: never expires
        ([w(A, 1, 1, 60_000)], {A: 1}, 60_000),  # set before: in force
        ([w(A, 1, 1, 60_000)], {B: 3}, None),  # set concurrently (not seen): not in force
        ([w(A, 1, 1, 60_000), w(A, 2, 2, 5_000)], {A: 2}, 5_000),  # the later change
        ([w(A, 1, 1, 60_000), w(A, 2, 2, 5_000)], {A: 1}, 60_000),  # the later one not seen yet
        ([w(A, 1, 1, 60_000), w(A, 2, 2, None)], {A: 2}, None),  # turned off
        ([w(A, 1, 1, 60_000), w(A, 2, 2, 0)], {A: 2}, None),  # 0 is off too
        # two concurrent changes, both seen: the last writer by (lamport, device)
        ([w(A, 1, 3, 60_000), w(B, 1, 3, 5_000)], {A: 1, B: 1}, 5_000),
        ([w(A, 1, 4, 60_000), w(B, 1, 3, 5_000)], {A: 1, B: 1}, 60_000),
        # two concurrent changes, one seen: the one seen, whatever its lamport
        ([w(A, 1, 9, 60_000), w(B, 1, 3, 5_000)], {B: 1}, 5_000),
    ],
)
def test_the_timer_is_the_setting_in_the_causal_past(
    writes: list[TimerWrite], clock: dict[bytes, int], timer: int | None
) -> None:
    assert timer_in_force(writes, clock) == timer
    assert timer_in_force(list(reversed(writes)), clock) == timer


@pytest.mark.parametrize(
    ("sent_at", "timer", "at"),
    [(1_000, None, None), (1_000, 0, None), (1_000, 5_000, 6_000), (0, 1, 1)],
)
def test_expiry_is_send_time_plus_timer(sent_at: int, timer: int | None, at: int | None) -> None:
    assert expires_at(sent_at, timer) == at


@pytest.mark.parametrize(
    ("at", "now", "gone"),
    [(None, 2**62, False), (6_000, 5_999, False), (6_000, 6_000, True), (6_000, 7_000, True)],
)
def test_expired_from_the_expiry_time_on(at: int | None, now: int, gone: bool) -> None:
    assert expired(at, now) is gone


def test_a_tombstone_keeps_the_lamport_and_nothing_else() -> None:
    op = ops.Op(vc.Dot(A, 3), A, vc.CompactClock.of(2, {A: 3}), 7, ops.Message("secret", None, 99))
    plaintext = tombstone(op)
    assert b"secret" not in plaintext and b"99" not in plaintext
    back = ops.decode(plaintext, op.clock.encode(), A, A)
    assert is_tombstone(back) and back.dot == op.dot and back.lamport == 7
    assert timer_write(back) is None


# -- the rule in the reducer -----------------------------------------------------------------------


def _pair() -> tuple[list[tuple[int, ops.Op]], ConversationState, ConversationState, Composer, Composer]:
    return [], ConversationState(CID, [A, B]), ConversationState(CID, [A, B]), Composer(A, A), Composer(B, B)


def test_reducer_expiries_follow_the_causal_past() -> None:
    log, sa, sb, ca, cb = _pair()

    def send(state: ConversationState, composer: Composer, body: ops.Body) -> ops.Op:
        op = composer.compose(state, body)
        log.append((len(log) + 1, op))
        state.receive(len(log), op)
        return op

    send(sa, ca, ops.SettingsChange("disappearing_ms", 60_000))
    timed = send(sa, ca, ops.Message("under the timer", None, 1_000))
    # bob has not seen the change: his message does not disappear, even after it is seen
    untimed = send(sb, cb, ops.Message("before I knew", None, 2_000))
    for seq, op in log:
        sa.receive(seq, op)
        sb.receive(seq, op)
    after = send(sb, cb, ops.Message("now I know", None, 3_000))
    edit = send(sa, ca, ops.Edit(timed.dot, "edited"))
    reaction = send(sb, cb, ops.ReactionAdd(timed.dot, "👍"))
    # a reply (under no timer) and a reply to it go with the message they answer
    send(sa, ca, ops.SettingsChange("disappearing_ms", None))
    reply = send(sa, ca, ops.Message("re: that", timed.dot, 4_000))
    reply_reply = send(sa, ca, ops.Message("re: re", reply.dot, 4_000))
    reaction_to_reply = send(sa, ca, ops.ReactionAdd(reply.dot, "🔥"))
    for seq, op in log:
        sa.receive(seq, op)
    assert sa.expiry.expiries() == {timed.dot: 61_000, after.dot: 63_000}
    assert untimed.dot not in sa.expiry.expiries()
    assert sa.expiry.next_expiry() == 61_000
    assert not sa.expiry.purge_due(60_999)
    messages, dependents = sa.expiry.due(61_000)
    assert messages == {timed.dot}
    assert dependents == {edit.dot, reaction.dot, reply.dot, reply_reply.dot, reaction_to_reply.dot}
    assert sa.expiry.due(63_000)[0] == {timed.dot, after.dot}
    # the writes in the causal past of the floor (what a history bundle carries)
    assert [x.value for x in sa.expiry.writes(sa.applied_clock())] == [60_000, None]
    assert sa.expiry.writes({B: 1}) == ()


def test_a_floor_device_applies_the_timers_it_was_given() -> None:
    """A new device that starts from a floor (history bundle) knows the timer set below it."""
    _, sa, _, ca, _ = _pair()
    change = ca.compose(sa, ops.SettingsChange("disappearing_ms", 10_000))
    sa.receive(1, change)
    floor = sa.prefix(1)
    fresh = ConversationState(CID, [A, B], floor_seq=1, floor_clock=floor)
    fresh.expiry.seed(sa.expiry.writes(floor))
    message = ca.compose(sa, ops.Message("later", None, 500))
    sa.receive(2, message)
    fresh.receive(2, message)
    assert fresh.expiry.expiries() == sa.expiry.expiries() == {message.dot: 10_500}


def test_what_refers_to_a_message_below_the_floor_goes_with_it() -> None:
    """A floor device does not hold the timed messages below its floor; the bundle tells it when
    they expire, so a reply or an edit above the floor goes with them there too."""
    _, sa, _, ca, _ = _pair()
    sa.receive(1, ca.compose(sa, ops.SettingsChange("disappearing_ms", 10_000)))
    below = ca.compose(sa, ops.Message("below the floor", None, 500))
    sa.receive(2, below)
    floor = sa.prefix(2)
    assert sa.expiry.expiring(floor) == ((below.dot, 10_500),)
    reply = ca.compose(sa, ops.Message("above it", below.dot, 600))
    edit = ca.compose(sa, ops.Edit(below.dot, "edited above it"))
    for at_link, due in ((10_499, frozenset()), (10_500, frozenset({reply.dot, edit.dot}))):
        fresh = ConversationState(CID, [A, B], floor_seq=2, floor_clock=floor)
        fresh.expiry.seed(sa.expiry.writes(floor))
        fresh.expiry.seed_expiring(sa.expiry.expiring(floor), at_link)
        fresh.receive(3, reply)
        fresh.receive(4, edit)
        assert fresh.expiry.due(at_link)[1] == due
        assert fresh.expiry.due(10_500)[1] == {reply.dot, edit.dot}
        assert fresh.expiry.purge_due(10_500)


def test_an_edit_of_a_message_already_expired_is_due_at_once() -> None:
    _, sa, _, ca, _ = _pair()
    change = ca.compose(sa, ops.SettingsChange("disappearing_ms", 1_000))
    sa.receive(1, change)
    message = ca.compose(sa, ops.Message("short-lived", None, 0))
    sa.receive(2, message)
    edit = ca.compose(sa, ops.Edit(message.dot, "edited"))
    # a device replaying its store: the message is already a tombstone, the edit arrives after
    replay = ConversationState(CID, [A, B])
    for seq, op in ((1, change), (2, _tomb(message)), (3, edit)):
        replay.receive(seq, op)
    assert replay.view().messages == ()
    assert replay.expiry.purge_due(0)
    assert replay.expiry.due(0) == (frozenset(), frozenset({edit.dot}))


def _tomb(op: ops.Op) -> ops.Op:
    return ops.decode(tombstone(op), op.clock.encode(), op.dot.device, op.author)


# -- properties --------------------------------------------------------------------------------------


class TimedWorld(World):
    """Records, for every message authored, the timer its author's device showed when it was
    composed (the setting "in force when the message was sent": the last writer among the applied
    register's winner and the device's own changes it has not applied yet, still in its outbox or
    on their way back from the server) and its send time."""

    def __init__(self, owners: list[int]) -> None:
        super().__init__(owners, Device)
        self.shown: dict[vc.Dot, tuple[int | None, int]] = {}
        self.own: dict[bytes, list[ops.Op]] = {}

    def author(self, d: Device, choice: int, a: int, b: int) -> None:
        field = d.state.view().settings["disappearing_ms"]
        candidates: list[tuple[tuple[int, bytes, int], object]] = []
        if field.set_by is not None:
            lamport = d.state.effective_lamport(field.set_by)
            assert lamport is not None
            candidates.append(((lamport, field.set_by.device, field.set_by.n), field.value))
        for own in self.own.get(d.device_id, []):
            if not d.state.is_applied(own.dot):
                assert isinstance(own.body, ops.SettingsChange)
                candidates.append((lww_key(own), own.body.value))
        timer = max(candidates, key=lambda c: c[0])[1] if candidates else None
        before = len(d.outbox)
        super().author(d, choice, a, b)
        if len(d.outbox) > before:
            plaintext, clock = d.outbox[-1]
            op = ops.decode(plaintext, clock, d.device_id, d.account)
            if isinstance(op.body, ops.Message):
                assert timer is None or isinstance(timer, int)
                self.shown[op.dot] = (timer, op.body.sent_at_ms)
            elif isinstance(op.body, ops.SettingsChange) and op.body.field == "disappearing_ms":
                self.own.setdefault(d.device_id, []).append(op)


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False))
def test_every_device_computes_the_same_expiry_as_its_author_showed(
    world_spec: tuple[list[int], list[int]], rnd: random.Random
) -> None:
    owners, steps = world_spec
    world = TimedWorld(owners)
    _run(world, steps, rnd)
    reference = ConversationState(CID, world.members)
    for seq, plaintext, clock, device, account in world.log:
        reference.receive(seq, ops.decode(plaintext, clock, device, account))
    shown = {m.dot: world.shown[m.dot] for m in reference.view().messages}
    expected = {
        dot: at for dot, (timer, sent) in shown.items() if (at := expires_at(sent, timer)) is not None
    }
    assert reference.expiry.expiries() == expected
    for d in world.devices:  # each received the log in its own order, with duplicates
        assert d.state.expiry.expiries() == expected
    shuffled = ConversationState(CID, world.members)
    log = list(world.log)
    rnd.shuffle(log)
    for seq, plaintext, clock, device, account in log:
        shuffled.receive(seq, ops.decode(plaintext, clock, device, account))
    assert shuffled.expiry.expiries() == expected


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False), st.integers(0, 2**20))
def test_tombstones_keep_every_device_convergent(
    world_spec: tuple[list[int], list[int]], rnd: random.Random, now: int
) -> None:
    """Replacing what is due at ``now`` by tombstones (in any order of arrival) changes nothing but
    the expired messages: every other part of the view, the clocks and the lamport numbers stay."""
    owners, steps = world_spec
    world = World(owners)
    _run(world, steps, rnd)
    decoded = [(seq, ops.decode(p, c, d, a)) for seq, p, c, d, a in world.log]
    reference = ConversationState(CID, world.members)
    for seq, op in decoded:
        reference.receive(seq, op)
    expired_now = {m.dot for m in reference.view().messages if rnd.random() < 0.4}
    # what goes with them: edits, reactions, deletes and replies, transitively
    gone = set(expired_now)
    while True:
        more = {
            op.dot
            for _, op in decoded
            if op.dot not in gone
            and (op.target in gone or (isinstance(op.body, ops.Message) and op.body.reply_to in gone))
        }
        if not more:
            break
        gone |= more
    purged = [(seq, _tomb(op) if op.dot in gone else op) for seq, op in decoded]
    rnd.shuffle(purged)
    state = ConversationState(CID, world.members)
    for seq, op in purged:
        state.receive(seq, op)
    view, ref = state.view(), reference.view()
    assert [m for m in ref.messages if m.dot not in gone] == list(view.messages)
    assert (view.settings, view.mute, view.members, view.read_up_to, view.receipts) == (
        ref.settings,
        ref.mute,
        ref.members,
        ref.read_up_to,
        ref.receipts,
    )
    assert state.applied_clock() == reference.applied_clock() and state.held() == ()
    assert state.max_lamport == reference.max_lamport
    assert state.transcript(len(world.log)) == reference.transcript(len(world.log))
    assert not any(d in state.expiry.expiries() for d in gone)
    assert state.expiry.due(0)[1] == frozenset()  # every dependent of a tombstone is one too
