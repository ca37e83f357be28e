"""Who is in a conversation and who may change it: the authenticated membership (sync.md § 5.7).

Membership is not what the server says: it is the creator's :class:`~.ops.Genesis` operation (the
operation at ``server_seq`` 1), or a snapshot this account's own device handed over in a history
bundle, plus the :class:`~.ops.MembershipChange` operations applied since. Every operation is
authorised against the membership **in its causal past** (the writes its full clock contains), so
the decision is the same on every device whatever order the operations arrived in.

Roles: ``NONE`` (not a member), ``MEMBER``, ``ADMIN``. One multi-value register per account; with
concurrent writes the *lower* role wins (a remove concurrent with an add removes, a demotion
concurrent with a promotion demotes: removal is a security action).

Rules (:func:`authorise`):

* the genesis is valid only at ``server_seq`` 1, with nothing in its causal past, from a member
  (a group's from an admin); any other genesis is rejected;
* every other operation needs a known membership in its past and an author who is a member there;
* in a direct conversation nobody changes membership;
* in a group an admin adds (as member or admin) and removes anyone; any member removes itself.

No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from saltline.client_sdk.core.emoji import is_valid_emoji
from saltline.client_sdk.core.sync.clock import CompactClock, Dot, FullClock, contains
from saltline.client_sdk.core.sync.errors import SyncError
from saltline.client_sdk.core.sync.ops import (
    Body,
    ConversationKind,
    Genesis,
    MembershipChange,
    Op,
    ReactionAdd,
    ReactionRemove,
)
from saltline.client_sdk.core.sync.rules import FrontierRegister, Write, lww_key

NONE, MEMBER, ADMIN = 0, 1, 2

# why an operation has no effect (OperationRejected.reason)
NO_GENESIS = "no_genesis"
BAD_GENESIS = "bad_genesis"
NOT_A_MEMBER = "not_a_member"
NOT_AN_ADMIN = "not_an_admin"
DIRECT_FIXED = "direct_members_fixed"
BAD_WELCOME = "bad_welcome"
INVALID_REACTION = "invalid_reaction"  # not exactly one emoji (client_sdk/core/emoji.py)


@dataclass(frozen=True, slots=True)
class Roles:
    """The membership at one point: the conversation's kind and each present account's role."""

    kind: ConversationKind
    roles: Mapping[bytes, int]

    @property
    def members(self) -> frozenset[bytes]:
        return frozenset(a for a, r in self.roles.items() if r >= MEMBER)

    @property
    def admins(self) -> frozenset[bytes]:
        return frozenset(a for a, r in self.roles.items() if r >= ADMIN)

    def role(self, account: bytes) -> int:
        return self.roles.get(account, NONE)

    @staticmethod
    def of(kind: ConversationKind, members: Iterable[bytes], admins: Iterable[bytes] = ()) -> Roles:
        admin_set = frozenset(admins)
        return Roles(kind, {m: ADMIN if m in admin_set else MEMBER for m in frozenset(members) | admin_set})


def role_of(base: int, frontier: Iterable[Write[int]]) -> int:
    """One account's role: ``base`` until a write, then the lowest role of the causal frontier."""
    values = [w.value for w in frontier]
    return min(values) if values else base


def authorise(op: Op, seq: int, full: FullClock, past: Roles | None) -> str | None:
    """Why ``op`` (at ``seq``, with the expanded clock ``full``) has no effect, or None when it is
    allowed. ``past``: the membership in the op's causal past (None: no genesis in it)."""
    body = op.body
    if isinstance(body, ReactionAdd | ReactionRemove) and not is_valid_emoji(body.emoji):
        return INVALID_REACTION
    if isinstance(body, Genesis):
        alone = all(n == 0 for d, n in full.items() if d != op.dot.device) and op.dot.n == 1
        if past is not None or seq != 1 or not alone or op.author not in body.members:
            return BAD_GENESIS
        if body.kind == "group" and op.author not in body.admins:
            return BAD_GENESIS
        return None
    if past is None:
        return NO_GENESIS
    refusal = may_compose(past, op.author, body)
    if refusal is None and isinstance(body, MembershipChange) and body.welcome is not None:
        w = body.welcome
        if w.floor_seq != op.clock.base or Roles.of(w.kind, w.members, w.admins) != past:
            return BAD_WELCOME
    return refusal


class Membership:
    """The membership register set of one conversation. ``base``: a trusted snapshot to start
    from (a history bundle of this account's own device, or a test); None: wait for the genesis."""

    __slots__ = ("_base", "_current", "_ever", "_genesis_dot", "_keys", "_now", "_writes")

    def __init__(self, base: Roles | None = None) -> None:
        self._base = base
        self._genesis_dot: Dot | None = None
        self._writes: dict[bytes, list[Write[int]]] = {}  # every valid write, per account
        self._now: Roles | None = None  # current(), kept until the next change (read per op)
        self._current: dict[bytes, FrontierRegister[int]] = {}
        self._ever: set[bytes] = set(base.roles) if base else set()
        # account -> (order, account key) vouched by the genesis (order None: always first) or by
        # the add with the largest LWW key: the same on every device, whatever the apply order
        self._keys: dict[bytes, tuple[tuple[int, bytes, int] | None, bytes]] = {}

    @property
    def known(self) -> bool:
        return self._base is not None

    @property
    def genesis_dot(self) -> Dot | None:
        return self._genesis_dot

    def vouched_key(self, account: bytes) -> bytes | None:
        """The account key the genesis or the latest applied add named for ``account`` (None:
        not vouched for; the contact's pinned key alone decides)."""
        entry = self._keys.get(account)
        return None if entry is None else entry[1]

    def ever(self, account: bytes) -> bool:
        """Whether ``account`` was named by the membership at any point (genesis, snapshot, a
        change): an account never named can author nothing that takes effect."""
        return account in self._ever

    def current(self) -> Roles | None:
        base = self._base
        if base is None:
            return None
        if self._now is not None:
            return self._now
        roles: dict[bytes, int] = {}
        for account in set(base.roles) | set(self._current):
            register = self._current.get(account)
            role = role_of(base.role(account), register.frontier if register else ())
            if role > NONE:
                roles[account] = role
        self._now = Roles(base.kind, roles)
        return self._now

    def at(self, full: FullClock) -> Roles | None:
        """The membership in the causal past ``full`` (None: the genesis is not in it)."""
        base = self._base
        if base is None:
            return None
        if self._genesis_dot is not None and not contains(full, self._genesis_dot):
            return None
        if all(contains(full, w.dot) for ws in self._writes.values() for w in ws):
            return self.current()
        roles: dict[bytes, int] = {}
        for account in set(base.roles) | set(self._writes):
            seen = [w for w in self._writes.get(account, ()) if contains(full, w.dot)]
            frontier = [w for w in seen if not any(o is not w and contains(o.clock, w.dot) for o in seen)]
            role = role_of(base.role(account), frontier)
            if role > NONE:
                roles[account] = role
        return Roles(base.kind, roles)

    def apply(self, op: Op, full: FullClock) -> bool:
        """Record an authorised genesis or membership change; True when the membership changed."""
        body = op.body
        if isinstance(body, Genesis):
            if self._base is not None:
                return False
            self._base = Roles.of(body.kind, body.members, body.admins)
            self._now = None
            self._genesis_dot = op.dot
            self._ever.update(body.members)
            for member, key in zip(body.members, body.keys, strict=False):
                self._keys[member] = (None, key)
            return True
        if not isinstance(body, MembershipChange):
            return False
        value = (ADMIN if body.admin else MEMBER) if body.add else NONE
        write: Write[int] = Write(lww_key(op), op.dot, op.author, full, value)
        self._writes.setdefault(body.member, []).append(write)
        self._now = None
        self._current.setdefault(body.member, FrontierRegister()).add(write)
        self._ever.add(body.member)
        if body.add and body.key is not None:
            order = lww_key(op)
            known = self._keys.get(body.member)
            if known is None or known[0] is None or known[0] < order:
                self._keys[body.member] = (order, body.key)
        return True


def welcome_adoptable(op: Op, seq: int, me: bytes) -> bool:
    """Whether a device of ``me`` with no membership may start from the welcome of ``op`` at
    ``seq`` (sync.md § 5.7): an add of ``me`` into a group, by an admin of the welcome's
    membership that does not already name ``me``, whose floor is the add's own clock base (below
    its position) with the same transcript hash, and whose floor clock does not claim the adder's
    own dot. Anything else is not adopted (the add is then held or rejected like any other op)."""
    body = op.body
    if not (isinstance(body, MembershipChange) and body.add and body.member == me and body.welcome):
        return False
    w = body.welcome
    roles = Roles.of(w.kind, w.members, w.admins)
    if w.kind != "group" or roles.role(op.author) < ADMIN or roles.role(me) > NONE:
        return False
    if w.floor_seq != op.clock.base or w.floor_seq >= seq:
        return False
    try:
        floor = CompactClock.decode(w.floor_clock)
    except (SyncError, ValueError):
        return False
    if floor.base != 0 or floor.log_hash != op.clock.log_hash:
        return False
    return floor.counter_of(op.dot.device) < op.dot.n


def recipients(current: Roles | None, body: Body) -> frozenset[bytes] | None:
    """The accounts an operation is encrypted to (besides the author's own): the authenticated
    members now, plus the account an add names (it must learn it was added); for the genesis, its
    members. None: not known yet (no genesis applied): nothing may be sent."""
    if isinstance(body, Genesis):
        return frozenset(body.members)
    if current is None:
        return None
    if isinstance(body, MembershipChange) and body.add:
        return current.members | {body.member}
    return current.members


def may_compose(current: Roles | None, author: bytes, body: Body) -> str | None:
    """Why this account must not author ``body`` now (the reason codes of :func:`authorise`), or
    None. Unknown membership (no genesis yet) is not a refusal: the operation waits."""
    if isinstance(body, Genesis) or current is None:
        return None
    role = current.role(author)
    if role < MEMBER:
        return NOT_A_MEMBER
    if isinstance(body, MembershipChange):
        if current.kind == "direct":
            return DIRECT_FIXED
        if role < ADMIN and not (body.member == author and not body.add):
            return NOT_AN_ADMIN
    return None
