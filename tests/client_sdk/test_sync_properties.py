"""Property tests of the sync core (docs/protocol/sync.md): any set of devices that received the
same operations, in any order, with duplicates, shows the same state, which equals the state
computed from the operations in server_seq order."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltline.client_sdk.core import diff
from saltline.client_sdk.core.sync import clock as vc
from saltline.client_sdk.core.sync import ops
from saltline.client_sdk.core.sync.composer import Composer
from saltline.client_sdk.core.sync.state import ConversationState

settings.register_profile(
    "sync",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SYNC = settings.get_profile("sync")

CID = b"\xc0" * 16
ACCOUNTS = [bytes([0xA0 + i]) * 16 for i in range(3)]
OUTSIDER = b"\xee" * 16
TITLES = ["trip", "Trip!", "plans", None]
EMOJI = ["👍", "❤️", "😂"]
# operation kinds by weight: 0 message, 1 edit, 2 delete, 3/4 reaction add/remove, 5 edit of a
# message that never arrives, 6 read marker, 7 title, 8 mute, 9 timer, 10 membership, 11 typing
KINDS = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8, 9, 10, 10, 11]

Entry = tuple[int, bytes, bytes, bytes, bytes]  # seq, plaintext, clock, device, account


@dataclass
class Device:
    device_id: bytes
    account: bytes
    state: ConversationState
    composer: Composer
    online: bool = True
    outbox: list[tuple[bytes, bytes]] = field(default_factory=list)
    inbox: list[Entry] = field(default_factory=list)

    def deliver(self, entry: Entry) -> None:
        seq, plaintext, clock, device, account = entry
        got = self.state.receive(seq, ops.decode(plaintext, clock, device, account))
        assert got.forks == ()  # an honest server: every author saw this device's transcript


class DeltaCheckedDevice(Device):
    """Receives through ``receive_changes`` and checks its delta against two whole views."""

    def deliver(self, entry: Entry) -> None:
        seq, plaintext, clock, device, account = entry
        before = self.state.view()
        op = ops.decode(plaintext, clock, device, account)
        got, delta = self.state.receive_changes(seq, op, self.account)
        after = self.state.view()
        assert not got.duplicate or delta.messages == () or all(o == m for o, m in delta.messages)
        assert diff.delta_changes("c", delta) == diff.changes("c", self.account, before, after)
        assert delta.unread == (before.unread(self.account), after.unread(self.account))
        assert self.state.unread(self.account) == after.unread(self.account)
        assert self.state.message_seqs() == tuple(m.seq for m in after.messages if not m.deleted)


class World:
    def __init__(self, owners: list[int], device: type[Device] = Device) -> None:
        self.members = ACCOUNTS[: max(owners) + 1]
        self.devices = [
            device(
                bytes([0x10 + i]) * 16,
                ACCOUNTS[owner],
                ConversationState(CID, self.members),
                Composer(bytes([0x10 + i]) * 16, ACCOUNTS[owner]),
            )
            for i, owner in enumerate(owners)
        ]
        self.log: list[Entry] = []

    def author(self, d: Device, choice: int, a: int, b: int) -> None:
        kind = KINDS[choice % len(KINDS)]
        messages = d.state.view().messages
        if kind in (1, 2) and b % 4:  # mostly edit/delete one's own messages (others' are ignored)
            messages = tuple(m for m in messages if m.author == d.account) or messages
        # targets cluster on a few messages so that devices conflict over the same one
        target = messages[-1 - a % min(2, len(messages))].dot if messages else None
        body: ops.Body
        if kind == 0 or (target is None and kind <= 5):
            reply = target if b % 3 == 0 else None
            body = ops.Message(f"m{a}-{b}", reply, sent_at_ms=a)
        elif kind == 1:
            body = ops.Edit(target, f"edit{b}")  # type: ignore[arg-type]
        elif kind == 2:
            body = ops.Delete(target)  # type: ignore[arg-type]
        elif kind == 3:
            body = ops.ReactionAdd(target, EMOJI[b % 3])  # type: ignore[arg-type]
        elif kind == 4:
            body = ops.ReactionRemove(target, EMOJI[b % 3])  # type: ignore[arg-type]
        elif kind == 5:
            # a target that does not exist (yet): waits in the pending set for ever
            body = ops.Edit(vc.Dot(b"\x77" * 16, 1 + a % 3), "ghost")
        elif kind == 6:
            body = ops.ReadMarker(min(a, d.state.base_seq + 2), receipts=b % 2 == 0)
        elif kind == 7:
            body = ops.SettingsChange("title", TITLES[b % 4])
        elif kind == 8:
            body = ops.SettingsChange("mute", b % 2 == 0)
        elif kind == 9:
            body = ops.SettingsChange("disappearing_ms", [None, 0, 60_000][b % 3])
        elif kind == 10:
            who = ([*ACCOUNTS, OUTSIDER])[a % 4]
            body = ops.MembershipChange(who, add=b % 2 == 0)
        else:
            typing = d.composer.compose(d.state, ops.Typing(b % 2 == 0))
            for other in self.devices:
                if other.online and other is not d:
                    before = other.state.view()
                    plaintext, clock = ops.encode(typing)
                    got = other.state.receive(None, ops.decode(plaintext, clock, d.device_id, d.account))
                    assert got.typing is not None and got.applied == ()
                    assert other.state.view() == before
            return
        op = d.composer.compose(d.state, body)
        d.outbox.append(ops.encode(op))

    def flush(self, d: Device) -> None:
        if not d.online:
            return
        for plaintext, clock in d.outbox:
            entry = (len(self.log) + 1, plaintext, clock, d.device_id, d.account)
            self.log.append(entry)
            for other in self.devices:
                other.inbox.append(entry)
        d.outbox.clear()

    def gap_fill(self, d: Device) -> None:
        gap = d.state.gap()
        if d.online and gap is not None:
            for entry in self.log[gap.after_seq :]:
                d.deliver(entry)


# One step is one integer (cheap to generate; shrinking still shortens the list), scrambled so
# that hypothesis' preference for small integers does not skew the mix of steps, and read as
# (action, device, a, b, c, flag): action 0-4 author an operation, 5-6 deliver up to c envelopes of
# the inbox (reordered), 7 flush the outbox to the server, 8 go on/offline, 9 fill the gap.
step = st.integers(0, 2**31)


def _decode_step(x: int) -> tuple[int, int, int, int, int, bool]:
    x = (x * 2654435761) % 2**32
    x, action = divmod(x, 10)
    x, device = divmod(x, 5)
    x, a = divmod(x, 1000)
    x, b = divmod(x, 51)
    x, c = divmod(x, 41)
    return action, device, a, b, c, bool(x % 2)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    users = draw(st.integers(2, 3))
    devices = draw(st.integers(users, 5))
    owners = list(range(users)) + draw(
        st.lists(st.integers(0, users - 1), min_size=devices - users, max_size=devices - users)
    )
    size = draw(st.integers(20, 120))
    steps = draw(st.lists(step, min_size=size, max_size=size))
    return owners, steps


def _run(world: World, steps: list[int], rnd: random.Random) -> None:
    n = len(world.devices)
    for x in steps:
        action, device, a, b, c, flag = _decode_step(x)
        d = world.devices[device % n]
        if action <= 4:
            world.author(d, c, a, b)
        elif action <= 6 and d.online:
            for k in range(1 + c % 8):
                if not d.inbox:
                    break
                i = (a + 7 * k) % len(d.inbox)
                # flag: the first envelope stays in the inbox and will be delivered again
                entry = d.inbox[i] if flag and k == 0 else d.inbox.pop(i)
                d.deliver(entry)
        elif action == 7:
            world.flush(d)
        elif action == 8:
            d.online = flag
        else:
            world.gap_fill(d)
    # the partition heals: everyone reconnects, sends, and receives everything in a random order,
    # some envelopes twice
    for d in world.devices:
        d.online = True
    for d in rnd.sample(world.devices, n):
        world.flush(d)
    for d in world.devices:
        pending = d.inbox + rnd.sample(d.inbox, len(d.inbox) // 3)
        rnd.shuffle(pending)
        for entry in pending:
            d.deliver(entry)
        d.inbox.clear()


@SYNC
@given(worlds(), st.randoms(use_true_random=False))
def test_every_device_converges_to_the_server_order_state(
    world_spec: tuple[list[int], list[int]], rnd: random.Random
) -> None:
    owners, steps = world_spec
    world = World(owners)
    _run(world, steps, rnd)

    reference = ConversationState(CID, world.members)
    for entry in world.log:  # server_seq order: every operation is causally ready on arrival
        seq, plaintext, clock, device, account = entry
        op = ops.decode(plaintext, clock, device, account)
        got = reference.receive(seq, op)
        assert got.applied == (op.dot,) and got.held == () and got.gap is None
        assert reference.effective_lamport(op.dot) == op.lamport  # honest lamport: max seen + 1
    expected = reference.view()
    assert reference.base_seq == len(world.log)

    for d in world.devices:
        assert d.state.gap() is None
        assert d.state.held() == ()
        assert d.state.base_seq == len(world.log)
        assert d.state.view() == expected
        assert d.state.pending_targets() == reference.pending_targets()
        assert d.state.applied_clock() == reference.applied_clock()
    # unread counts agree on every device of a user
    for account in world.members:
        assert len({d.state.view().unread(account) for d in world.devices}) == 1


@SYNC
@given(worlds(), st.randoms(use_true_random=False))
def test_the_delta_of_each_receive_gives_the_events_of_two_whole_views(
    world_spec: tuple[list[int], list[int]], rnd: random.Random
) -> None:
    """``receive_changes`` reports only what it touched, yet the events made from it equal those of
    comparing the whole view before and after, for every receive of every device (held operations,
    released ones, duplicates, pending targets, deletes, read markers, settings, membership)."""
    owners, steps = world_spec
    world = World(owners, DeltaCheckedDevice)
    _run(world, steps, rnd)
    assert all(d.state.held() == () for d in world.devices)


@SYNC
@given(st.randoms(use_true_random=False), st.integers(1, 8))
def test_any_order_with_duplicates_equals_server_order(rnd: random.Random, rounds: int) -> None:
    """Direct shuffle of a fixed log (all permutations reachable): deliveries in any order."""
    world = World([0, 1, 0, 1])
    for r in range(rounds):
        for d in world.devices:
            world.author(d, rnd.randrange(11), rnd.randrange(50), r)
        world.flush(world.devices[rnd.randrange(4)])
        for d in world.devices:
            for entry in list(d.inbox):
                if rnd.random() < 0.5:
                    d.deliver(entry)
    for d in world.devices:
        world.flush(d)
    reference = ConversationState(CID, world.members)
    for seq, plaintext, clock, device, account in world.log:
        reference.receive(seq, ops.decode(plaintext, clock, device, account))
    shuffled = ConversationState(CID, world.members)
    log = world.log + rnd.sample(world.log, len(world.log) // 2)
    rnd.shuffle(log)
    for seq, plaintext, clock, device, account in log:
        shuffled.receive(seq, ops.decode(plaintext, clock, device, account))
    assert shuffled.view() == reference.view()
    assert shuffled.held() == ()


@SYNC
@given(worlds(), st.data())
def test_any_permutation_of_the_log_and_its_reverse_equal_server_order(
    world_spec: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    """A fresh device fed the whole log newest first (everything held until server_seq 1 arrives)
    or in any permutation applies every operation exactly once and ends in the server-order state;
    ``Received.held`` is always the held set in server_seq order."""
    owners, steps = world_spec
    world = World(owners)
    _run(world, steps, random.Random(0))
    reference = ConversationState(CID, world.members)
    for seq, plaintext, clock, device, account in world.log:
        reference.receive(seq, ops.decode(plaintext, clock, device, account))
    every = sorted(ops.decode(p, c, d, a).dot for _, p, c, d, a in world.log)
    for order in (world.log[::-1], data.draw(st.permutations(world.log))):
        state = ConversationState(CID, world.members)
        applied: list[vc.Dot] = []
        for seq, plaintext, clock, device, account in order:
            got = state.receive(seq, ops.decode(plaintext, clock, device, account))
            applied.extend(got.applied)
            assert got.held == state.held()
            assert not set(got.applied) & set(got.held)
        assert sorted(applied) == every
        assert state.held() == () and state.gap() is None
        assert state.base_seq == len(world.log)
        assert state.view() == reference.view()
        assert state.pending_targets() == reference.pending_targets()
        assert state.applied_clock() == reference.applied_clock()


dots = st.builds(vc.Dot, st.binary(min_size=16, max_size=16), st.integers(1, 2**40))
bodies = st.one_of(
    st.builds(ops.Message, st.text(max_size=50), st.none() | dots, st.integers(0, 2**50)),
    st.builds(ops.Edit, dots, st.text(max_size=50)),
    st.builds(ops.Delete, dots),
    st.builds(ops.ReactionAdd, dots, st.sampled_from(EMOJI)),
    st.builds(ops.ReactionRemove, dots, st.sampled_from(EMOJI)),
    st.builds(ops.ReadMarker, st.integers(0, 2**40), st.booleans()),
    st.builds(ops.SettingsChange, st.just("title"), st.none() | st.text(max_size=30)),
    st.builds(ops.SettingsChange, st.just("mute"), st.booleans()),
    st.builds(ops.SettingsChange, st.just("disappearing_ms"), st.none() | st.integers(0, 2**40)),
    st.builds(ops.MembershipChange, st.binary(min_size=16, max_size=16), st.booleans()),
)


@SYNC
@given(
    bodies,
    st.binary(min_size=16, max_size=16),
    st.integers(1, 2**40),
    st.integers(0, 2**40),
    st.dictionaries(st.binary(min_size=16, max_size=16), st.integers(1, 2**40), max_size=4),
    st.integers(0, 2**40),
)
def test_operation_encoding_roundtrips(
    body: ops.Body, device: bytes, n: int, base: int, extras: dict[bytes, int], lamport: int
) -> None:
    clock = vc.CompactClock.of(base, {**extras, device: n})
    op = ops.Op(vc.Dot(device, n), b"\xaa" * 16, clock, lamport, body)
    plaintext, clock_bytes = ops.encode(op)
    assert ops.decode(plaintext, clock_bytes, device, b"\xaa" * 16) == op
    assert vc.CompactClock.decode(clock_bytes) == clock
    assert ops.encode(ops.decode(plaintext, clock_bytes, device, b"\xaa" * 16)) == (plaintext, clock_bytes)


@SYNC
@given(worlds(), st.randoms(use_true_random=False), st.data())
def test_a_server_that_swaps_two_positions_is_caught_by_any_later_operation(
    world_spec: tuple[list[int], list[int]], rnd: random.Random, data: st.DataObject
) -> None:
    """The server shows one device the log with two operations' server_seqs swapped. Every
    operation whose author had applied past both positions (clock base >= the later one) carries a
    transcript hash that disagrees with that device's: the device reports a fork as soon as it
    applies one; if the swap leaves operations unable to apply (a causal order it breaks), they
    stay held and the gap never closes (the SDK reports HistoryGap). An honest log never reports a
    fork (``Device.deliver`` above)."""
    owners, steps = world_spec
    world = World(owners)
    _run(world, steps, rnd)
    log = world.log
    if len(log) < 3:
        return
    i = data.draw(st.integers(1, len(log) - 1), label="first position")
    j = data.draw(st.integers(i + 1, len(log)), label="second position")
    swapped = {i: j, j: i}
    victim = ConversationState(CID, world.members)
    forks = []
    for seq, plaintext, clock, device, account in log:
        got = victim.receive(swapped.get(seq, seq), ops.decode(plaintext, clock, device, account))
        forks.extend(got.forks)
    witnesses = [
        seq
        for seq, plaintext, clock, device, account in log
        if seq not in swapped and vc.CompactClock.decode(clock).base >= j
    ]
    if witnesses:
        # reported as a fork when the operations still apply, or (when the relabelling breaks
        # causal order so that they cannot) as a gap that no gap fill closes: HistoryGap
        assert forks or victim.gap() is not None, (
            f"swap of {i} and {j} not detected although {witnesses[0]} covers both"
        )
    assert all(f.seq not in swapped or f.base >= i for f in forks)
