"""Table tests of the client's pure rules (client_sdk/core): inbound frames and envelopes, the
fate of an outbox item, back-off, prekey maintenance, identity changes, history formats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.client_sdk.core import history, inbound, message, outbox, prekeys, trust
from saltline.client_sdk.core.backoff import Backoff, BackoffPolicy
from saltline.client_sdk.errors import LinkError
from saltline.crypto import device_list as dl
from saltline.crypto.keys import AccountKey, b64encode
from saltline.crypto.ratchet import Session
from saltline.crypto.x3dh import initiate
from tests.crypto.test_x3dh import DRng, make_device, make_responder

ID = "AAAAAAAAAAAAAAAAAAAAAA"
ENV = {
    "type": "envelope",
    "queue_seq": 3,
    "conversation_id": ID,
    "envelope_id": ID,
    "server_seq": 7,
    "server_ts": 1,
    "sender": {"account_id": ID, "device_id": ID},
    "clock": "",
    "ciphertext": "AAAA",
}


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"type": "ready", "acked_queue_seq": 4, "heartbeat_interval_s": 0.5}, inbound.Ready(4, 0.5)),
        ({"type": "ready", "acked_queue_seq": 4, "heartbeat_interval_s": "x"}, inbound.Ready(4, 15.0)),
        ({"type": "drained", "queue_seq": 9}, inbound.DrainedFrame(9)),
        ({"type": "gap", "from_queue_seq": 2, "to_queue_seq": 5}, inbound.Gap(2, 5)),
        ({"type": "ping", "queue_seq": 1}, inbound.Ignore("ping")),
        ("not json", inbound.Malformed(None, "the frame is not a JSON object")),
        ([1, 2], inbound.Malformed(None, "the frame is not a JSON object")),
        ({"no": "type"}, inbound.Malformed(None, "the frame has no type")),
        ({"type": "later"}, inbound.Malformed("later", "unknown frame type")),
    ],
)
def test_parse_frame(frame: object, expected: inbound.Frame) -> None:
    assert inbound.parse_frame(frame) == expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"queue_seq": "3"}, "queue_seq"),
        ({"server_seq": 0}, "server_seq"),
        ({"sender": "x"}, "sender"),
        ({"ciphertext": None}, "ciphertext"),
        ({"envelope_id": "x" * 65}, "envelope_id"),
        ({"clock": "!!"}, "clock"),
    ],
)
def test_malformed_envelopes_name_the_field_and_keep_a_readable_queue_seq(
    change: dict[str, object], field: str
) -> None:
    parsed = inbound.parse_frame({**ENV, **change})
    assert isinstance(parsed, inbound.Malformed) and field in parsed.reason
    assert parsed.queue_seq == (3 if field != "queue_seq" else None)


def test_a_well_formed_envelope_parses() -> None:
    parsed = inbound.parse_frame(ENV)
    assert isinstance(parsed, inbound.Envelope) and parsed.queue_seq == 3 and parsed.server_seq == 7


GONE = inbound.Lookup("gone", "removed", 404)
TRANSIENT = inbound.Lookup("transient", "down")


@pytest.mark.parametrize(
    ("conversation", "sender", "tries", "expected"),
    [
        (inbound.OK, inbound.OK, 0, inbound.Accept()),
        (TRANSIENT, inbound.OK, 0, inbound.RetryLater("down")),
        (TRANSIENT, inbound.OK, inbound.MAX_TRANSIENT_TRIES - 1, "retries_exhausted"),
        (inbound.OK, TRANSIENT, 1, inbound.RetryLater("down")),
        (GONE, inbound.OK, 0, "conversation_unavailable"),
        (inbound.OK, inbound.Lookup("refused", "fork"), 0, "untrusted_sender"),
        (inbound.OK, inbound.Lookup("unlisted"), 0, "unknown_sender"),
    ],
)
def test_after_lookup(
    conversation: inbound.Lookup, sender: inbound.Lookup, tries: int, expected: inbound.Decision | str
) -> None:
    decision = inbound.after_lookup(conversation, sender, tries=tries)
    if isinstance(expected, str):
        assert isinstance(decision, inbound.Drop) and decision.code == expected
        assert inbound.ack_for(decision, 5) == 5
    else:
        assert decision == expected
        if isinstance(decision, inbound.RetryLater):
            assert inbound.ack_for(decision, 5) is None  # never acknowledged over a retry


@pytest.mark.parametrize(
    ("kind", "ephemeral", "typing", "dot", "expected"),
    [
        ("ok", False, False, True, inbound.Accept()),
        ("ok", True, True, True, inbound.Accept()),
        ("replayed", False, False, False, inbound.Duplicate()),
        ("failed", False, False, False, "undecryptable"),
        # not authenticated: never a void, whatever dot its (unauthenticated) header claims
        ("failed", False, False, True, "undecryptable"),
        # decrypted, does not decode: a void when stored with a valid dot (sync.md § 2.1) ...
        ("malformed_op", False, False, True, inbound.AcceptVoid("malformed operation: r")),
        # ... dropped without one, or when ephemeral (no server_seq, no dot to consume)
        ("malformed_op", False, False, False, "malformed"),
        ("malformed_op", True, False, True, "malformed"),
        ("malformed_op", True, False, False, "malformed"),
        ("ok", True, False, True, "not_allowed"),
        ("ok", False, True, True, "not_allowed"),
    ],
)
def test_after_decrypt(
    kind: inbound.DecryptKind, ephemeral: bool, typing: bool, dot: bool, expected: object
) -> None:
    decision = inbound.after_decrypt(kind, "r", ephemeral=ephemeral, typing=typing, dot=dot)
    if isinstance(expected, str):
        assert isinstance(decision, inbound.Drop) and decision.code == expected
    else:
        assert decision == expected
    assert inbound.ack_for(decision, 5) == 5  # every outcome of decryption is acknowledged
    if isinstance(decision, inbound.AcceptVoid):
        assert decision.code == "malformed"  # the event it emits names the same code as a drop


def _fate(outcome: outbox.Outcome, reencrypts: int = 0) -> outbox.Fate:
    return outbox.fate(outcome, attempts=0, reencrypts=reencrypts, now_ms=1000, random=lambda: 0.5)


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (outbox.Accepted(3, 9), outbox.Sent),
        (outbox.Refused(409, "idempotency_conflict", "", {"server_seq": 4}), outbox.Sent),
        (outbox.Refused(409, "idempotency_conflict", "", {}), outbox.Failed),
        (
            outbox.Refused(409, "recipients_mismatch", "", {"missing": [{"account_id": "a"}]}),
            outbox.Reencrypt,
        ),
        (outbox.Refused(410, "device_list_outdated", "", {}), outbox.Reencrypt),
        (outbox.Unreachable("down"), outbox.RetryLater),
        (outbox.Refused(503, "service_unavailable", "", {}), outbox.RetryLater),
        (outbox.Refused(429, "rate_limited", "", {}), outbox.RetryLater),
        (outbox.Refused(413, "envelope_too_large", "", {"limit": 10}), outbox.Failed),
        (outbox.Refused(403, "forbidden", "", {}), outbox.Failed),
        (outbox.Refused(404, "conversation_not_found", "", {}), outbox.Failed),
        (outbox.Refused(422, "validation_failed", "", {}), outbox.Failed),
        (outbox.TrustHold("blocked"), outbox.Hold),
    ],
)
def test_outbox_fate(outcome: outbox.Outcome, kind: type) -> None:
    assert isinstance(_fate(outcome), kind)


def test_recipients_that_keep_changing_wait_out_a_back_off() -> None:
    refused = outbox.Refused(409, "recipients_mismatch", "", {"missing": [{"account_id": "a"}]})
    assert _fate(refused) == outbox.Reencrypt(frozenset({"a"}))
    later = _fate(refused, reencrypts=outbox.MAX_REENCRYPTS)
    assert isinstance(later, outbox.RetryLater) and later.next_attempt_ms > 1000


def test_due_skips_failed_and_backing_off_items_unless_forced() -> None:
    items = [
        outbox.Candidate("a", False, 0),
        outbox.Candidate("b", True, 0),
        outbox.Candidate("c", False, 5000),
    ]
    assert outbox.due(items, 1000) == ["a"]
    assert outbox.due(items, 1000, force=True) == ["a", "c"]
    assert outbox.next_wakeup(items) == 5000


@given(st.integers(0, 300_000), st.integers(1, 20))
def test_size_bound_and_largest_body_agree(body: int, devices: int) -> None:
    limit = 256 * 1024
    largest = outbox.largest_body(limit, 8, devices)
    if largest:
        assert outbox.envelope_size(largest, 8, devices) <= limit
    if body <= largest:
        assert outbox.envelope_size(body, 8, devices) <= limit


def test_void_keeps_lamport() -> None:
    assert outbox.void_plaintext(b'{"lamport":7,"text":"x","type":"message","v":2}') == (
        b'{"lamport":7,"type":"void","v":2}'
    )


@given(st.lists(st.booleans(), max_size=40))
def test_backoff_resets_after_a_healthy_period(healthy_long: list[bool]) -> None:
    policy = BackoffPolicy(base_s=0.1, cap_s=5.0, healthy_after_s=10.0)
    b = Backoff(policy)
    now, expected = 0.0, 0
    for long in healthy_long:
        b.healthy(now)
        now += 20.0 if long else 1.0
        attempt, delay = b.failed(now, lambda: 0.999)
        expected = 1 if long else expected + 1
        assert attempt == expected and 0 <= delay <= policy.ceiling(attempt) <= policy.cap_s


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"recheck": True}, (True, False, False)),
        ({"left_on_server": prekeys.LOW_WATER - 1}, (True, False, False)),
        ({"last_count_ms": 0, "now_ms": prekeys.CHECK_INTERVAL_MS}, (True, False, False)),
        ({"last_count_ms": 10, "now_ms": 5}, (True, False, False)),  # the clock went back
        (
            {"rotated_at_ms": 0, "now_ms": prekeys.SPK_ROTATION_MS, "last_count_ms": prekeys.SPK_ROTATION_MS},
            (False, False, True),
        ),
        (
            {"has_previous": True, "now_ms": prekeys.GRACE_MS, "last_count_ms": prekeys.GRACE_MS},
            (False, True, True),
        ),
        ({}, (False, False, False)),
    ],
)
def test_prekey_work_due(kw: dict[str, object], expected: tuple[bool, bool, bool]) -> None:
    args: dict[str, object] = {
        "now_ms": 1000,
        "last_count_ms": 1000,
        "rotated_at_ms": 0,
        "recheck": False,
        "left_on_server": None,
        "has_previous": False,
    }
    args.update(kw)
    work = prekeys.work_due(**args)  # type: ignore[arg-type]
    assert (work.count, work.expire, work.rotate) == expected
    assert prekeys.to_upload(prekeys.LOW_WATER) == 0 and prekeys.to_upload(5) == prekeys.BATCH - 5


@pytest.mark.parametrize(
    ("policy", "own", "verified", "adopt"),
    [
        ("warn", False, False, True),
        ("warn", False, True, False),
        ("warn", True, False, False),
        ("block", False, False, False),
    ],
)
def test_identity_change_policy(policy: str, own: bool, verified: bool, adopt: bool) -> None:
    assert trust.identity_change(policy, own_account=own, verified=verified) is adopt


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"v": 2, "conversations": []},
        {"v": 1},
        {"v": 1, "conversations": [{"conversation_id": ID, "kind": "direct", "members": [ID], "ops": "x"}]},
        {
            "v": 1,
            "conversations": [
                {"conversation_id": ID, "kind": "direct", "members": [ID], "ops": [{"seq": 0}]}
            ],
        },
    ],
)
def test_bad_history_bundles_are_link_errors(doc: object) -> None:
    with pytest.raises(LinkError):
        history.parse_bundle(doc)


def test_history_bundle_round_trip_and_floor() -> None:
    conv = history.BundleConversation(
        ID, "direct", (ID,), (ID,), 2, b"", 5, (history.BundleOp(3, ID, ID, ID, b"\x02", b"{}"),)
    )
    assert history.parse_bundle(history.encode_bundle([conv], 1)) == [conv]
    times = [(3, 100), (4, 500)]
    assert history.choose_floor("all", None, base_seq=4, meta_floor=1, message_times=times) == 1
    assert history.choose_floor("none", None, base_seq=4, meta_floor=1, message_times=times) == 4
    assert history.choose_floor(1, 400, base_seq=4, meta_floor=1, message_times=times) == 3
    with pytest.raises(LinkError):
        history.parse_link_payload({"kind": "history-follow-up"})


# -- identity binding (saltline.client_sdk.core.trust rules 3, 5, 6; core.message.session_binds) -------------


def _list(account: AccountKey, username: str, *device_ids: bytes) -> dl.DeviceList:
    rng = DRng(b"lists " + username.encode())
    entries = []
    for device_id in device_ids:
        keys = make_device(rng, device_id)
        entries.append(
            dl.bind_device(account.public_key, device_id, keys.signing_key, keys.dh_key.public_key, 1)
        )
    return dl.first(account, username, entries).content


def test_a_device_id_in_two_accounts_is_a_collision() -> None:
    alice_key, mallory_key = AccountKey.generate(DRng(b"a")), AccountKey.generate(DRng(b"m"))
    d1, d2, d3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    known = {"alice": _list(alice_key, "alice", d1, d2)}
    assert trust.device_id_collisions("mallory", _list(mallory_key, "mallory", d3), known) == []
    clash = trust.device_id_collisions("mallory", _list(mallory_key, "mallory", d3, d2), known)
    assert clash == [(b64encode(d2), "alice")]
    # the account's own earlier list is not another account
    assert trust.device_id_collisions("alice", _list(alice_key, "alice", d1, d2), known) == []


@pytest.mark.parametrize(
    ("pinned", "account", "taken"),
    [(None, "a1", False), ("a1", "a1", False), ("a1", "a2", True)],
)
def test_a_username_names_the_account_first_seen_with_it(
    pinned: str | None, account: str, taken: bool
) -> None:
    assert trust.username_taken("bob", account, pinned) is taken


@pytest.mark.parametrize(("pending", "blocked"), [(None, False), (b"k" * 32, True)])
def test_a_held_identity_change_blocks_sending_whatever_the_policy(
    pending: bytes | None, blocked: bool
) -> None:
    assert trust.send_blocked(pending) is blocked


def test_after_lookup_drops_envelopes_from_non_members() -> None:
    decision = inbound.after_lookup(inbound.OK, inbound.OK, tries=0, member=False)
    assert isinstance(decision, inbound.Drop) and decision.code == "not_a_member"
    assert isinstance(inbound.after_lookup(inbound.OK, inbound.OK, tries=0, member=True), inbound.Accept)
    # a conversation that is gone is reported as such before membership is considered
    gone = inbound.after_lookup(inbound.Lookup("gone", "x", 404), inbound.OK, tries=0, member=False)
    assert isinstance(gone, inbound.Drop) and gone.code == "conversation_unavailable"


def test_a_session_binds_exactly_the_device_it_was_set_up_with() -> None:
    rng = DRng(b"binds")
    alice = make_device(rng, b"alice")
    bob = make_responder(rng)
    session = Session.initiate(initiate(alice, bob.bundle(), bob.entry, rng), rng)
    assert message.session_binds(session, alice, bob.entry)
    # the same device id with other keys (another account's entry for it): not this session
    impostor = make_device(rng, b"impostor")
    clone = dl.bind_device(
        AccountKey.generate(rng).public_key,
        bob.keys.device_id,
        impostor.signing_key,
        impostor.dh_key.public_key,
        1,
    )
    assert not message.session_binds(session, alice, clone)
    # another local device never uses it either
    assert not message.session_binds(session, make_device(rng, b"other"), bob.entry)


# -- decoding never crashes on a hostile input -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"\x01", b"\x01" + bytes(5), b"\x01" + bytes(17), b"\x01" + bytes(16) + b"\x02\xff\xfe" + bytes(48)],
)
def test_a_short_or_non_ascii_link_code_is_a_link_error(raw: bytes) -> None:
    from saltline.client_sdk.core.linking import LinkCode

    with pytest.raises(LinkError):
        LinkCode.parse("saltline-link:" + b64encode(raw))


def test_an_operation_with_duplicate_members_or_a_non_integer_version_is_refused() -> None:
    from saltline.client_sdk.core.sync import SyncFormatError, ops
    from saltline.client_sdk.core.sync.clock import CompactClock

    device, account = b"\x01" * 16, b"\x02" * 16
    clock = CompactClock.of(0, {device: 1}).encode()
    good = b'{"lamport":1,"sent_at_ms":5,"text":"hi","type":"message","v":2}'
    assert ops.decode(good, clock, device, account).body == ops.Message("hi", None, 5)
    for bad in (
        b'{"lamport":1,"sent_at_ms":5,"text":"hi","text":"bye","type":"message","v":2}',
        b'{"lamport":1,"sent_at_ms":5,"text":"hi","type":"message","v":2.0}',
        b'{"lamport":1,"sent_at_ms":5,"text":"hi","type":"message","v":true}',
    ):
        with pytest.raises(SyncFormatError):
            ops.decode(bad, clock, device, account)


@pytest.mark.parametrize(
    ("verified_at", "now", "due"),
    [(0, trust.DEVICE_LIST_MAX_AGE_MS - 1, False), (0, trust.DEVICE_LIST_MAX_AGE_MS, True), (100, 50, True)],
)
def test_a_stale_device_list_is_due_for_a_refresh(verified_at: int, now: int, due: bool) -> None:
    assert trust.refresh_due(verified_at, now) is due
