"""The authenticated membership (docs/protocol/sync.md § 5.7): table tests of who may do what, and
a property test that every device converges on the same membership whatever the interleaving, and
that fan-out never names an account outside it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.client_sdk.core import sync
from saltline.client_sdk.core.sync import membership as mb

CID = bytes(16)
A, B, C, M = (bytes([i]) * 16 for i in (0xA0, 0xB0, 0xC0, 0xEE))  # accounts; M: never a member
DA, DA2, DB, DC, DM = (bytes([i]) * 16 for i in (1, 2, 3, 4, 5))  # devices
ACCOUNT = {DA: A, DA2: A, DB: B, DC: C, DM: M}


@dataclass
class Device:
    """One device: its state, its composer, and the log positions it has received."""

    device: bytes
    state: sync.ConversationState = field(default_factory=lambda: sync.ConversationState(CID))
    composer: sync.Composer | None = None
    seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.composer = sync.Composer(self.device, ACCOUNT[self.device])

    def compose(self, body: sync.ops.Body) -> sync.Op:
        assert self.composer is not None
        return self.composer.compose(self.state, body)


class Log:
    def __init__(self) -> None:
        self.ops: list[sync.Op] = []

    def append(self, author: Device, op: sync.Op) -> sync.Received:
        self.ops.append(op)
        seq = len(self.ops)
        author.seen.add(seq)
        return author.state.receive(seq, op)

    def deliver(self, device: Device, seq: int) -> sync.Received:
        device.seen.add(seq)
        return device.state.receive(seq, self.ops[seq - 1])


def _group(*devices: Device) -> Log:
    """A group created by A's device with A (admin) and B as members."""
    log = Log()
    creator = devices[0]
    log.append(creator, creator.compose(sync.Genesis("group", tuple(sorted((A, B))), (A,))))
    for d in devices[1:]:
        log.deliver(d, 1)
    return log


def _reasons(received: sync.Received) -> list[str]:
    return [r.reason for r in received.rejected]


def test_nothing_is_a_member_before_the_genesis_and_an_op_without_it_is_rejected() -> None:
    b = Device(DB)
    assert b.state.roles() is None and b.state.members() == frozenset()
    op = b.compose(sync.Message("first"))
    got = Log().append(b, op)
    assert _reasons(got) == [mb.NO_GENESIS] and b.state.view().messages == ()


def test_the_genesis_at_seq_1_sets_the_members_and_admins() -> None:
    a, b = Device(DA), Device(DB)
    _group(a, b)
    for d in (a, b):
        view = d.state.view()
        assert view.members == {A, B} and view.admins == {A} and view.kind == "group"


@pytest.mark.parametrize(
    ("genesis", "seq_offset", "reason"),
    [
        (sync.Genesis("group", (A, B), (A,)), 1, mb.BAD_GENESIS),  # not at server_seq 1
        (sync.Genesis("group", (A, B), (B,)), 0, mb.BAD_GENESIS),  # its author is not an admin
        (sync.Genesis("group", tuple(sorted((B, C))), (B,)), 0, mb.BAD_GENESIS),  # author not a member
        (sync.Genesis("direct", (A, B), ()), 0, None),
    ],
)
def test_genesis_rules(genesis: sync.Genesis, seq_offset: int, reason: str | None) -> None:
    a = Device(DA)
    op = a.compose(genesis)
    got = a.state.receive(1 + seq_offset, op)
    assert _reasons(got) == ([reason] if reason else [])
    assert (a.state.roles() is None) == (reason is not None)


def test_a_second_genesis_is_rejected_and_changes_nothing() -> None:
    a, b = Device(DA), Device(DB)
    log = _group(a, b)
    got = log.append(b, b.compose(sync.Genesis("group", tuple(sorted((B, C))), (B,))))
    assert _reasons(got) == [mb.BAD_GENESIS]
    assert b.state.members() == {A, B}


@pytest.mark.parametrize(
    ("author", "body", "reason", "members", "admins"),
    [
        # a member writes; a non-member (an account the server routes) cannot
        (DB, sync.Message("hi"), None, {A, B}, {A}),
        (DM, sync.Message("ghost"), mb.NOT_A_MEMBER, {A, B}, {A}),
        (DM, sync.MembershipChange(M, True), mb.NOT_A_MEMBER, {A, B}, {A}),
        # only an admin adds or removes others; anyone leaves
        (DB, sync.MembershipChange(C, True), mb.NOT_AN_ADMIN, {A, B}, {A}),
        (DB, sync.MembershipChange(A, False), mb.NOT_AN_ADMIN, {A, B}, {A}),
        (DB, sync.MembershipChange(B, False), None, {A}, {A}),
        (DA, sync.MembershipChange(C, True), None, {A, B, C}, {A}),
        (DA, sync.MembershipChange(B, True, True), None, {A, B}, {A, B}),
        (DA, sync.MembershipChange(B, False), None, {A}, {A}),
        (DA2, sync.MembershipChange(A, False), None, {B}, set()),  # the last admin leaves
    ],
)
def test_who_may_do_what_in_a_group(
    author: bytes, body: sync.ops.Body, reason: str | None, members: set[bytes], admins: set[bytes]
) -> None:
    a, writer = Device(DA), Device(author)
    log = _group(a, writer) if author != DA else _group(a)
    if author == DA:
        writer = a
    got = log.append(writer, writer.compose(body))
    assert _reasons(got) == ([reason] if reason else [])
    assert writer.state.members() == members and writer.state.view().admins == admins
    # the device refuses to compose what the receivers would reject (bar the genesis cases)
    assert mb.may_compose(sync.Roles.of("group", {A, B}, {A}), ACCOUNT[author], body) == reason


def test_a_rejected_message_is_not_in_the_view() -> None:
    a, m = Device(DA), Device(DM)
    log = _group(a, m)
    got = log.append(m, m.compose(sync.Message("ghost")))
    assert _reasons(got) == [mb.NOT_A_MEMBER] and m.state.view().messages == ()


def test_nobody_changes_a_direct_conversations_members() -> None:
    a, b = Device(DA), Device(DB)
    log = Log()
    log.append(a, a.compose(sync.Genesis("direct", tuple(sorted((A, B))), ())))
    log.deliver(b, 1)
    for d, body in ((a, sync.MembershipChange(C, True)), (b, sync.MembershipChange(B, False))):
        assert _reasons(log.append(d, d.compose(body))) == [mb.DIRECT_FIXED]
    assert b.state.members() == {A, B}


def test_a_removed_member_cannot_write_after_its_removal_but_before_it_counts() -> None:
    a, b = Device(DA), Device(DB)
    log = _group(a, b)
    concurrent = b.compose(sync.Message("sent before b saw its removal"))
    log.append(a, a.compose(sync.MembershipChange(B, False)))
    log.append(b, concurrent)
    log.deliver(a, 3)
    log.deliver(b, 2)  # b now knows it was removed
    after = b.compose(sync.Message("after"))
    got = log.append(b, after)
    log.deliver(a, 4)
    assert _reasons(got) == [mb.NOT_A_MEMBER]
    assert [m.text for m in a.state.view().messages] == ["sent before b saw its removal"]
    assert a.state.view() == b.state.view()


def test_concurrent_add_and_remove_removes() -> None:
    a, a2 = Device(DA), Device(DA2)
    log = _group(a, a2)
    add = a.compose(sync.MembershipChange(C, True))
    log.append(a, add)
    remove = a2.compose(sync.MembershipChange(C, False))  # a2 has not seen the add
    log.append(a2, remove)
    log.deliver(a, 3)
    log.deliver(a2, 2)
    assert a.state.members() == a2.state.members() == {A, B}


def test_a_welcome_must_match_the_membership_and_the_base() -> None:
    a, b = Device(DA), Device(DB)
    log = _group(a, b)
    good = a.state.welcome()
    assert good is not None and good.floor_seq == 1 and good.members == tuple(sorted((A, B)))
    forged = sync.ops.Welcome("group", tuple(sorted((A, B, M))), (A,), 1, good.floor_clock)
    got = log.append(a, a.compose(sync.MembershipChange(C, True, False, forged)))
    assert _reasons(got) == [mb.BAD_WELCOME] and a.state.members() == {A, B}
    got = log.append(a, a.compose(sync.MembershipChange(C, True, False, a.state.welcome())))
    assert _reasons(got) == [] and a.state.members() == {A, B, C}


def test_an_added_account_starts_from_the_welcome() -> None:
    a, b = Device(DA), Device(DB)
    log = _group(a, b)
    log.append(b, b.compose(sync.Message("before carol")))
    log.deliver(a, 2)
    add = a.compose(sync.MembershipChange(C, True, False, a.state.welcome()))
    log.append(a, add)
    w = add.body.welcome  # type: ignore[union-attr]
    assert w is not None
    clock = sync.CompactClock.decode(w.floor_clock)
    carol = Device(DC)
    carol.state = sync.ConversationState(
        CID,
        sync.Roles.of(w.kind, w.members, w.admins),
        floor_seq=w.floor_seq,
        floor_clock=dict(clock.extras),
        floor_hash=clock.log_hash,
    )
    assert _reasons(log.deliver(carol, 3)) == []
    log.deliver(b, 3)
    got = log.append(b, b.compose(sync.Message("hi carol")))
    assert got.forks == ()
    seen = log.deliver(carol, 4)
    assert seen.applied and not seen.forks and not seen.rejected
    assert carol.state.members() == {A, B, C}
    assert [m.text for m in carol.state.view().messages] == ["hi carol"]


def test_recipients_follow_the_authenticated_membership() -> None:
    roles = sync.Roles.of("group", {A, B}, {A})
    assert mb.recipients(None, sync.Message("x")) is None
    assert mb.recipients(None, sync.Genesis("group", (A, C), (A,))) == {A, C}
    assert mb.recipients(roles, sync.Message("x")) == {A, B}
    assert mb.recipients(roles, sync.MembershipChange(C, True)) == {A, B, C}
    assert mb.recipients(roles, sync.MembershipChange(B, False)) == {A, B}  # b learns of it


# -- property: any interleaving converges; fan-out stays inside the membership ----------------------

BODIES = st.one_of(
    st.builds(sync.Message, st.sampled_from(["x", "y"])),
    st.builds(sync.MembershipChange, st.sampled_from([A, B, C, M]), st.booleans(), st.booleans()),
)
STEP = st.tuples(st.sampled_from([DA, DA2, DB, DC, DM]), st.booleans(), BODIES, st.integers(0, 50))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(STEP, max_size=25), order=st.randoms(use_true_random=False))
def test_membership_converges_and_fan_out_stays_inside_it(steps: list, order: object) -> None:
    devices = {d: Device(d) for d in ACCOUNT}
    log = Log()
    log.append(devices[DA], devices[DA].compose(sync.Genesis("group", tuple(sorted((A, B))), (A,))))
    for device_id, write, body, pick in steps:
        device = devices[device_id]
        unseen = [s for s in range(1, len(log.ops) + 1) if s not in device.seen]
        if write or not unseen:
            roles = device.state.roles()
            if isinstance(body, sync.MembershipChange) and body.add:
                body = sync.MembershipChange(body.member, True, body.admin, device.state.welcome())
            to = mb.recipients(roles, body)
            if to is not None:  # fan-out: the membership now, and an added account
                assert roles is not None
                extra = {body.member} if isinstance(body, sync.MembershipChange) and body.add else set()
                assert to <= roles.members | extra
            # composed whether or not it is allowed: a hostile client may send anything
            log.append(device, device.compose(body))
        else:
            log.deliver(device, unseen[pick % len(unseen)])
    reference = sync.ConversationState(CID)
    for seq, op in enumerate(log.ops, 1):
        reference.receive(seq, op)
    for device in devices.values():
        rest = [s for s in range(1, len(log.ops) + 1) if s not in device.seen]
        order.shuffle(rest)  # type: ignore[attr-defined]
        for seq in rest:
            log.deliver(device, seq)
        assert device.state.roles() == reference.roles()
        assert device.state.view() == reference.view()


# -- found by the hostile review: a welcome is adopted only when it is coherent ----------------------


def _add_of_carol(adder: Device, log: Log, welcome: sync.ops.Welcome | None) -> sync.Op:
    op = adder.compose(sync.MembershipChange(C, True, False, welcome))
    log.append(adder, op)
    return op


def test_a_welcome_from_its_admin_with_its_own_floor_is_adoptable() -> None:
    a = Device(DA)
    log = _group(a)
    op = _add_of_carol(a, log, a.state.welcome())
    assert mb.welcome_adoptable(op, len(log.ops), C)
    assert not mb.welcome_adoptable(op, len(log.ops), B)  # it does not add b
    assert not mb.welcome_adoptable(op, op.clock.base, C)  # its floor is not below its position


@pytest.mark.parametrize(
    "forge",
    [
        lambda w, clock: sync.ops.Welcome(
            w.kind, w.members, (B,), w.floor_seq, w.floor_clock
        ),  # adder not admin
        lambda w, clock: sync.ops.Welcome(
            w.kind, w.members, w.admins, 10**12, w.floor_clock
        ),  # floor far ahead
        lambda w, clock: sync.ops.Welcome("direct", w.members, (), w.floor_seq, w.floor_clock),
        lambda w, clock: sync.ops.Welcome(w.kind, (*w.members, C), w.admins, w.floor_seq, w.floor_clock),
        lambda w, clock: sync.ops.Welcome(  # another transcript hash than the add's own clock claims
            w.kind,
            w.members,
            w.admins,
            w.floor_seq,
            sync.CompactClock.of(0, dict(clock.extras), bytes(32)).encode(),
        ),
        lambda w, clock: sync.ops.Welcome(  # a floor that claims the add's own dot
            w.kind,
            w.members,
            w.admins,
            w.floor_seq,
            sync.CompactClock.of(0, {DA: 99}, clock.log_hash).encode(),
        ),
    ],
)
def test_an_incoherent_welcome_is_not_adopted(forge: object) -> None:
    a = Device(DA)
    log = _group(a)
    good = a.state.welcome()
    assert good is not None
    clock = sync.CompactClock.decode(good.floor_clock)
    op = _add_of_carol(a, log, forge(good, clock))  # type: ignore[operator]
    assert not mb.welcome_adoptable(op, len(log.ops), C)


def test_a_creator_whose_genesis_lost_position_1_to_another_refuses_the_conversation() -> None:
    a, m = Device(DA), Device(DM)
    log = Log()
    log.append(m, m.compose(sync.Genesis("group", tuple(sorted((A, B, M))), (M,))))
    log.deliver(a, 1)
    own = a.compose(sync.Genesis("group", tuple(sorted((A, B))), (A,)))
    assert _reasons(log.append(a, own)) == [mb.BAD_GENESIS]
    assert a.state.genesis_refused(A)
    # a direct pair that both wrote the same genesis: the second is no reason to refuse
    x, y = Device(DA), Device(DB)
    log = Log()
    log.append(x, x.compose(sync.Genesis("direct", tuple(sorted((A, B))), ())))
    log.deliver(y, 1)
    log.append(y, y.compose(sync.Genesis("direct", tuple(sorted((A, B))), ())))
    assert not y.state.genesis_refused(B)


def test_vouched_keys_do_not_depend_on_the_apply_order() -> None:
    a, a2 = Device(DA), Device(DA2)
    log = _group(a, a2)
    first = a.compose(sync.MembershipChange(C, True, key=b"\x01" * 32))
    log.append(a, first)
    second = a2.compose(sync.MembershipChange(C, True, key=b"\x02" * 32))  # concurrent
    log.append(a2, second)
    log.deliver(a, 3)
    log.deliver(a2, 2)
    assert a.state.vouched_key(C) == a2.state.vouched_key(C) is not None
