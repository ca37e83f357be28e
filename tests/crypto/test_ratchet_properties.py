"""Property tests of the Double Ratchet: arbitrary interleavings, drops, reorderings and
replays; tampering; forward secrecy; post-compromise security; the skipped-key bound."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saltline.crypto import primitives as p
from saltline.crypto.errors import CryptoError, DecryptionError, PreKeyConsumedError, TooManySkippedError
from saltline.crypto.ratchet import HEADER_SIZE, MAX_SKIP, MessageHeader, Session, accept, kdf_ck, message_key
from saltline.crypto.x3dh import initiate
from tests.crypto.test_x3dh import DRng, entry_of, make_device, make_responder

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

ALICE, BOB = "alice", "bob"
OTHER = {ALICE: BOB, BOB: ALICE}


@dataclass
class Wire:
    sender: str
    message: bytes
    associated_data: bytes
    plaintext: bytes
    initial_header: bytes | None


class Pair:
    """Alice (initiator) and Bob (responder) with the network between them."""

    def __init__(self, seed: int) -> None:
        self.rng = {ALICE: DRng(b"a%d" % seed), BOB: DRng(b"b%d" % seed)}
        self.alice_keys = alice_keys = make_device(self.rng[ALICE], b"alice")
        self.bob_keys = make_responder(self.rng[BOB])
        x3dh = initiate(alice_keys, self.bob_keys.bundle(), self.bob_keys.entry, self.rng[ALICE])
        self.sessions: dict[str, Session | None] = {ALICE: Session.initiate(x3dh, self.rng[ALICE]), BOB: None}
        self.in_flight: dict[str, list[Wire]] = {ALICE: [], BOB: []}  # keyed by sender
        self.delivered: list[Wire] = []
        self.counter = 0

    def session(self, who: str) -> Session:
        s = self.sessions[who]
        assert s is not None
        return s

    def send(self, who: str) -> Wire | None:
        session = self.sessions[who]
        if session is None:
            return None  # Bob cannot send before he has accepted the session
        self.counter += 1
        plaintext = b"%s %d " % (who.encode(), self.counter) + bytes(self.counter % 7)
        ad = b"envelope %d" % self.counter
        header = session.pending_initial_header
        wire = Wire(who, session.encrypt(plaintext, ad), ad, plaintext, header)
        self.in_flight[who].append(wire)
        return wire

    def receive(self, wire: Wire, message: bytes | None = None, ad: bytes | None = None) -> bytes:
        """Hand ``wire`` (or an altered copy) to its recipient."""
        message = wire.message if message is None else message
        ad = wire.associated_data if ad is None else ad
        receiver = OTHER[wire.sender]
        session = self.sessions[receiver]
        if session is None:
            assert receiver == BOB and wire.initial_header is not None
            accepted = accept(
                self.bob_keys.keys,
                self.bob_keys.store,
                wire.initial_header,
                message,
                ad,
                self.rng[BOB],
                trusted=entry_of(self.alice_keys),
            )
            if accepted.one_time_prekey_id is not None:
                self.bob_keys.store.remove_one_time_prekey(accepted.one_time_prekey_id)
            self.sessions[BOB] = accepted.session
            return accepted.plaintext
        return session.decrypt(message, ad)

    def deliver(self, sender: str, index: int) -> Wire | None:
        queue = self.in_flight[sender]
        if not queue:
            return None
        wire = queue.pop(index % len(queue))
        assert self.receive(wire) == wire.plaintext
        self.delivered.append(wire)
        return wire

    def drop(self, sender: str, index: int) -> None:
        queue = self.in_flight[sender]
        if queue:
            queue.pop(index % len(queue))

    def replay(self, index: int) -> None:
        if not self.delivered:
            return
        wire = self.delivered[index % len(self.delivered)]
        receiver = self.session(OTHER[wire.sender])
        before = receiver.to_bytes()
        with pytest.raises(DecryptionError):
            receiver.decrypt(wire.message, wire.associated_data)
        assert receiver.to_bytes() == before
        if wire.initial_header is not None:  # re-running X3DH: the one-time prekey is gone
            with pytest.raises(PreKeyConsumedError):
                accept(
                    self.bob_keys.keys,
                    self.bob_keys.store,
                    wire.initial_header,
                    wire.message,
                    trusted=entry_of(self.alice_keys),
                )

    def run(self, ops: list[tuple[str, str, int]]) -> None:
        for op, who, index in ops:
            if op == "send":
                self.send(who)
            elif op == "deliver":
                self.deliver(who, index)
            elif op == "drop":
                self.drop(who, index)
            else:
                self.replay(index)

    def ensure_bob(self) -> None:
        if self.sessions[BOB] is None:
            self.send(ALICE)
            self.deliver(ALICE, -1)

    def exchange(self, sender: str) -> Wire:
        """Send one message and deliver it at once."""
        wire = self.send(sender)
        assert wire is not None
        self.in_flight[sender].remove(wire)
        assert self.receive(wire) == wire.plaintext
        self.delivered.append(wire)
        return wire


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "deliver", "deliver", "drop", "replay"]),
        st.sampled_from([ALICE, BOB]),
        st.integers(min_value=0, max_value=10_000),
    ),
    max_size=80,
)


@SETTINGS
@given(seed=st.integers(0, 2**32), ops=ops_strategy, shuffle=st.randoms(use_true_random=False))
def test_any_interleaving_decrypts_every_message_exactly_once(
    seed: int, ops: list[tuple[str, str, int]], shuffle: random.Random
) -> None:
    pair = Pair(seed)
    pair.run(ops)
    rest = [w for sender in (ALICE, BOB) for w in pair.in_flight[sender]]
    shuffle.shuffle(rest)
    pair.in_flight = {ALICE: [], BOB: []}
    for wire in rest:
        assert pair.receive(wire) == wire.plaintext
        pair.delivered.append(wire)
    for i in range(len(pair.delivered)):
        pair.replay(i)  # every message, replayed, is refused without a state change
    if pair.sessions[BOB] is not None:
        for sender in (ALICE, BOB, ALICE):  # and the session still works both ways
            pair.exchange(sender)


@SETTINGS
@given(
    seed=st.integers(0, 2**32),
    ops=ops_strategy,
    target=st.sampled_from([ALICE, BOB]),
    position=st.integers(0, 10_000),
    mask=st.integers(1, 255),
    ad_change=st.sampled_from(["flip", "append", "truncate", "none"]),
)
def test_any_altered_byte_fails_and_leaves_state_unchanged(
    seed: int, ops: list[tuple[str, str, int]], target: str, position: int, mask: int, ad_change: str
) -> None:
    pair = Pair(seed)
    pair.run(ops)
    if pair.sessions[target] is None:
        target = ALICE
    wire = pair.send(target)
    assert wire is not None
    pair.in_flight[target].remove(wire)
    receiver = OTHER[target]
    before = {who: s.to_bytes() for who, s in pair.sessions.items() if s is not None}
    opks_before = dict(pair.bob_keys.store.one_time)

    i = position % len(wire.message)
    altered = wire.message[:i] + bytes([wire.message[i] ^ mask]) + wire.message[i + 1 :]
    with pytest.raises(DecryptionError):
        pair.receive(wire, message=altered)
    ad = wire.associated_data
    if ad_change == "flip":
        j = position % len(ad)
        ad = ad[:j] + bytes([ad[j] ^ mask]) + ad[j + 1 :]
    elif ad_change == "append":
        ad = ad + bytes([mask])
    elif ad_change == "truncate":
        ad = ad[: position % len(ad)]
    if ad_change != "none":
        with pytest.raises(DecryptionError):
            pair.receive(wire, ad=ad)
    if wire.initial_header is not None and pair.sessions[receiver] is None:
        h = wire.initial_header
        j = position % len(h)
        bad_header = h[:j] + bytes([h[j] ^ mask]) + h[j + 1 :]
        with pytest.raises(CryptoError):
            accept(
                pair.bob_keys.keys,
                pair.bob_keys.store,
                bad_header,
                wire.message,
                wire.associated_data,
                trusted=entry_of(pair.alice_keys),
            )
    assert {who: s.to_bytes() for who, s in pair.sessions.items() if s is not None} == before
    assert pair.bob_keys.store.one_time == opks_before
    assert pair.receive(wire) == wire.plaintext  # the genuine message still decrypts


def _window_keys_fail(state: bytes, wire: Wire, session_ad: bytes) -> None:
    """No 32-byte window of ``state``, used as a message key or as the chain key just before
    it, decrypts ``wire``."""
    header, ciphertext = wire.message[:HEADER_SIZE], wire.message[HEADER_SIZE:]
    ad = session_ad + header + wire.associated_data
    nonce = MessageHeader.decode(header).nonce
    for offset in range(len(state) - 31):
        window = state[offset : offset + 32]
        for mk in (window, kdf_ck(window)[0]):
            with pytest.raises(DecryptionError):
                p.aead_decrypt(message_key(mk), nonce, ciphertext, ad)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), ops=ops_strategy)
def test_forward_secrecy_snapshot_cannot_read_what_was_read(
    seed: int, ops: list[tuple[str, str, int]]
) -> None:
    pair = Pair(seed)
    pair.run(ops)
    pair.ensure_bob()
    last = pair.exchange(ALICE) if not pair.delivered or seed % 2 else pair.exchange(BOB)
    receiver = OTHER[last.sender]
    snapshot = pair.session(receiver).to_bytes()
    _window_keys_fail(snapshot, last, pair.session(receiver).associated_data)
    for wire in pair.delivered:  # nothing read so far is readable with the snapshot
        thief = Session.from_bytes(pair.session(OTHER[wire.sender]).to_bytes(), DRng(b"thief"))
        with pytest.raises(DecryptionError):
            thief.decrypt(wire.message, wire.associated_data)


@SETTINGS
@given(seed=st.integers(0, 2**32), ops=ops_strategy, after=st.integers(1, 4))
def test_post_compromise_security(seed: int, ops: list[tuple[str, str, int]], after: int) -> None:
    pair = Pair(seed)
    pair.run(ops)
    pair.ensure_bob()
    stolen = pair.session(BOB).to_bytes()
    follower = Session.from_bytes(stolen, DRng(b"attacker"))  # reads everything sent to Bob, in order

    a1 = pair.exchange(ALICE)
    assert follower.decrypt(a1.message, a1.associated_data) == a1.plaintext  # the compromise is real
    healing = [pair.exchange(BOB), pair.exchange(ALICE), pair.exchange(BOB)]
    for wire in healing:
        if wire.sender == ALICE:
            try:
                follower.decrypt(wire.message, wire.associated_data)
            except DecryptionError:
                pass
    # both sides have now stepped the DH ratchet with keys the attacker never saw
    for _ in range(after):
        wire = pair.exchange(ALICE)
        for thief in (follower, Session.from_bytes(stolen, DRng(b"attacker 2"))):
            with pytest.raises(DecryptionError):
                thief.decrypt(wire.message, wire.associated_data)
        pair.exchange(BOB)


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    gap=st.one_of(st.integers(0, 40), st.integers(MAX_SKIP - 3, MAX_SKIP + 3)),
    new_chain=st.booleans(),
)
def test_skip_bound_is_enforced(seed: int, gap: int, new_chain: bool) -> None:
    rng_a, rng_b = DRng(b"a%d" % seed), DRng(b"b%d" % seed)
    bob_keys = make_responder(rng_b)
    alice_keys = make_device(rng_a, b"alice")
    alice = Session.initiate(initiate(alice_keys, bob_keys.bundle(), bob_keys.entry, rng_a), rng_a)
    first = alice.encrypt(b"first")
    header = alice.pending_initial_header
    assert header is not None
    bob = accept(
        bob_keys.keys, bob_keys.store, header, first, b"", rng_b, trusted=entry_of(alice_keys)
    ).session
    if new_chain:
        alice.decrypt(bob.encrypt(b"reply"))  # Alice's next messages start a new chain (N from 0)
    messages = [alice.encrypt(b"m%d" % i) for i in range(gap + 1)]
    before = bob.to_bytes()
    if gap > MAX_SKIP:
        with pytest.raises(TooManySkippedError):
            bob.decrypt(messages[-1])
        assert bob.to_bytes() == before
        return
    assert bob.decrypt(messages[-1]) == b"m%d" % gap
    assert bob.stored_skipped_keys == gap
    for i in random.Random(seed).sample(range(gap), min(gap, 5)):
        assert bob.decrypt(messages[i]) == b"m%d" % i
