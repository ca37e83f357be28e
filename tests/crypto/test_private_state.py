"""Private device state: generation, updates, strict versioned JSON, migrations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saltline.crypto import device_list as dl
from saltline.crypto import private_state as ps
from saltline.crypto.errors import EncodingError, PreKeyConsumedError, StateVersionError
from saltline.crypto.keys import AccountKey, b64encode


def counter_rng(label: bytes = b"rng") -> Callable[[int], bytes]:
    counter = iter(range(10**9))

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(label + next(counter).to_bytes(8, "big")).digest()
        return out[:n]

    return rng


ACCOUNT = AccountKey(hashlib.sha256(b"account").digest())


@pytest.fixture
def state() -> ps.DeviceState:
    return ps.generate_device(account_key=ACCOUNT, one_time_prekeys=5, rng=counter_rng())


def doc_of(state: ps.DeviceState) -> dict[str, Any]:
    loaded = json.loads(state.encode())
    assert isinstance(loaded, dict)
    return loaded


def test_generate_is_deterministic_and_documented_order(state: ps.DeviceState) -> None:
    again = ps.generate_device(account_key=ACCOUNT, one_time_prekeys=5, rng=counter_rng())
    assert again.encode() == state.encode()
    draws: list[int] = []
    inner = counter_rng()

    def recording(n: int) -> bytes:
        draws.append(n)
        return inner(n)

    ps.generate_device(one_time_prekeys=3, rng=recording)
    assert draws == [16, 32, 32, 32, 32, 32, 32, 32]
    assert state.signed_prekey.key_id == 1
    assert state.last_resort_prekey.key_id == 2
    assert list(state.one_time_prekeys) == [3, 4, 5, 6, 7]
    assert state.next_prekey_id == 8
    assert state.previous_signed_prekey is None


def test_random_generation_differs() -> None:
    a, b = ps.generate_device(one_time_prekeys=1), ps.generate_device(one_time_prekeys=1)
    assert a.device_id != b.device_id and a.signing_key != b.signing_key
    assert a.account_key is None and a.account_public_key is None


def test_round_trip(state: ps.DeviceState) -> None:
    encoded = state.encode()
    back = ps.decode(encoded)
    assert back.encode() == encoded
    assert back == state
    assert ps.decode(encoded.decode()).encode() == encoded  # str input too
    no_account = state.with_account_key(None)
    assert ps.decode(no_account.encode()).account_key is None


def test_layout(state: ps.DeviceState) -> None:
    doc = doc_of(state)
    assert doc["format"] == "saltline-device-state" and doc["v"] == 2
    assert doc["device_id"] == b64encode(state.device_id)
    assert doc["account_key"] == b64encode(bytes(ACCOUNT))
    assert doc["signed_prekey"] == {"id": 1, "key": b64encode(bytes(state.signed_prekey))}
    assert [o["id"] for o in doc["one_time_prekeys"]] == [3, 4, 5, 6, 7]
    assert doc["previous_signed_prekey"] is None and doc["previous_last_resort_prekey"] is None
    assert set(doc) == ps._FIELDS_V2
    # Canonical: sorted keys, no whitespace.
    assert state.encode() == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_updates(state: ps.DeviceState) -> None:
    more = state.add_one_time_prekeys(3, rng=counter_rng(b"more"))
    assert list(more.one_time_prekeys) == [3, 4, 5, 6, 7, 8, 9, 10] and more.next_prekey_id == 11
    used = more.remove_one_time_prekey(4)
    assert 4 not in used.one_time_prekeys and 4 in more.one_time_prekeys  # immutable
    with pytest.raises(PreKeyConsumedError):
        used.remove_one_time_prekey(4)
    rotated = used.rotate_signed_prekey(rng=counter_rng(b"spk"))
    assert rotated.previous_signed_prekey == used.signed_prekey
    assert rotated.signed_prekey.key_id == 11 and rotated.next_prekey_id == 12
    twice = rotated.rotate_signed_prekey(rng=counter_rng(b"spk2"))
    assert twice.previous_signed_prekey is not None and twice.previous_signed_prekey.key_id == 11
    assert twice.find_signed_prekey(1) is None and twice.find_signed_prekey(11) is not None
    assert ps.decode(twice.encode()).encode() == twice.encode()


def test_prekey_lookup(state: ps.DeviceState) -> None:
    lookup = state.prekey_lookup()
    assert lookup.signed_prekey(1) is state.signed_prekey
    assert lookup.signed_prekey(2) is None
    assert lookup.one_time_prekey(3) is state.one_time_prekeys[3]
    assert lookup.one_time_prekey(1) is None
    assert lookup.last_resort_prekey(2) is state.last_resort_prekey
    assert lookup.last_resort_prekey(3) is None


def test_public_parts_are_signed(state: ps.DeviceState) -> None:
    signer = state.signing_key.public_key
    state.signed_prekey_public().verify(signer)
    state.last_resort_prekey_public().verify(signer)
    for public in state.one_time_prekeys_public():
        public.verify(signer)
    entry = state.device_entry(ACCOUNT.public_key, 1_700_000_000)
    entry.verify_binding(ACCOUNT.public_key)
    signed = dl.first(ACCOUNT, "alice", [entry])
    assert dl.verify(signed, ACCOUNT.public_key).devices == (entry,)


def test_repr_hides_secrets(state: ps.DeviceState) -> None:
    text = repr(state)
    for secret in (ACCOUNT, state.signing_key, state.dh_key, state.signed_prekey):
        assert bytes(secret).hex()[:16] not in text
        assert b64encode(bytes(secret))[:12] not in text


# -- strict parsing -----------------------------------------------------------------------------------


def _mutations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    def changed(**kw: Any) -> dict[str, Any]:
        return {**doc, **kw}

    yield "missing field", {k: v for k, v in doc.items() if k != "device_dh_key"}
    yield "unknown field", changed(extra=1)
    yield "bool version", changed(v=True)
    yield "string version", changed(v="1")
    yield "short device id", changed(device_id=b64encode(b"x" * 15))
    yield "padded b64", changed(device_id=doc["device_id"] + "=")
    yield (
        "standard b64",
        changed(device_signing_key=doc["device_signing_key"].replace("-", "+").replace("_", "/") + "+"),
    )
    yield "key not a string", changed(device_dh_key=123)
    yield "long key", changed(device_dh_key=b64encode(b"k" * 33))
    yield "prekey id too large", changed(signed_prekey={"id": 2**32, "key": doc["signed_prekey"]["key"]})
    yield "prekey id bool", changed(signed_prekey={"id": True, "key": doc["signed_prekey"]["key"]})
    yield "prekey extra field", changed(signed_prekey={**doc["signed_prekey"], "x": 1})
    yield "prekey not object", changed(last_resort_prekey=[1, "a"])
    yield "otps not list", changed(one_time_prekeys={})
    yield "otps unsorted", changed(one_time_prekeys=list(reversed(doc["one_time_prekeys"])))
    yield "otps duplicate id", changed(one_time_prekeys=[doc["one_time_prekeys"][0]] * 2)
    yield "id shared across kinds", changed(last_resort_prekey={**doc["last_resort_prekey"], "id": 1})
    yield "next id too small", changed(next_prekey_id=5)
    yield "next id float", changed(next_prekey_id=8.0)
    yield "next id too large", changed(next_prekey_id=2**32 + 1)
    yield "account key wrong type", changed(account_key=[])
    yield "wrong format name", changed(format="something-else")
    yield "no format", {k: v for k, v in doc.items() if k != "format"}


def test_malformed_rejected_with_encoding_error(state: ps.DeviceState) -> None:
    doc = doc_of(state)
    for name, bad in _mutations(doc):
        with pytest.raises(EncodingError):
            ps.decode(json.dumps(bad).encode())
            pytest.fail(name)


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b"null", b"\xff\xfe", b"{", b'{"v": NaN}', b'{"v": 1, "v": 1}', b"1e999999"],
)
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(EncodingError):
        ps.decode(raw)


def test_duplicate_keys_rejected(state: ps.DeviceState) -> None:
    text = state.encode().decode()
    with pytest.raises(EncodingError):
        ps.decode(text[:-1] + ',"v":1}')


@pytest.mark.parametrize("version", [0, -1, 3, 99])
def test_unknown_version(state: ps.DeviceState, version: int) -> None:
    doc = doc_of(state)
    doc["v"] = version
    with pytest.raises(StateVersionError):
        ps.decode(json.dumps(doc).encode())


def _v1_bytes(state: ps.DeviceState) -> bytes:
    """``state`` as a version-1 document (which had no previous_last_resort_prekey)."""
    assert state.previous_last_resort_prekey is None
    doc = {k: v for k, v in doc_of(state).items() if k != "previous_last_resort_prekey"}
    return json.dumps({**doc, "v": 1}, sort_keys=True, separators=(",", ":")).encode()


def test_version_1_is_migrated(state: ps.DeviceState) -> None:
    rotated = state.rotate_signed_prekey(rng=counter_rng(b"spk"))
    for s in (state, rotated):
        back = ps.decode(_v1_bytes(s))
        assert back == s and back.previous_last_resort_prekey is None
        assert back.encode() == s.encode()  # re-encoded in the current version
    doc = json.loads(_v1_bytes(state))
    doc["previous_last_resort_prekey"] = None  # a v1 document never had it
    with pytest.raises(EncodingError):
        ps.decode(json.dumps(doc).encode())


def test_migration_hook(state: ps.DeviceState, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version-3 reader registers MIGRATIONS[2] and reads version-1 and version-2 states."""
    v1_bytes = _v1_bytes(state)

    def v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "v": 3}

    monkeypatch.setattr(ps, "CURRENT_VERSION", 3)
    with pytest.raises(StateVersionError, match="no migration"):
        ps.decode(v1_bytes)
    monkeypatch.setattr(ps, "MIGRATIONS", {**ps.MIGRATIONS, 2: v2_to_v3})
    assert ps.decode(v1_bytes).device_id == state.device_id
    monkeypatch.setattr(ps, "MIGRATIONS", {**ps.MIGRATIONS, 2: lambda d: d})
    with pytest.raises(StateVersionError, match="did not produce"):
        ps.decode(v1_bytes)


def test_last_resort_replacement_and_grace(state: ps.DeviceState) -> None:
    replaced = state.replace_last_resort_prekey(rng=counter_rng(b"lr"))
    assert replaced.previous_last_resort_prekey == state.last_resort_prekey
    assert replaced.last_resort_prekey.key_id == 8 and replaced.next_prekey_id == 9
    lookup = replaced.prekey_lookup()
    assert lookup.last_resort_prekey(2) == state.last_resort_prekey  # the previous one, in its grace
    assert lookup.last_resort_prekey(8) == replaced.last_resort_prekey
    assert ps.decode(replaced.encode()) == replaced
    twice = replaced.rotate_signed_prekey(rng=counter_rng(b"spk")).replace_last_resort_prekey(
        rng=counter_rng(b"lr2")
    )
    assert twice.find_last_resort_prekey(2) is None  # the former previous one is deleted
    assert twice.find_last_resort_prekey(8) is not None and twice.find_signed_prekey(1) is not None
    assert twice.has_previous_prekeys
    assert twice.reusable_prekey_ids() == {1, 8, 9, 10}
    dropped = twice.drop_previous_prekeys()
    assert not dropped.has_previous_prekeys
    assert dropped.find_last_resort_prekey(8) is None and dropped.find_signed_prekey(1) is None
    assert dropped.reusable_prekey_ids() == {9, 10}
    assert ps.decode(dropped.encode()) == dropped


def test_previous_last_resort_id_must_be_unique(state: ps.DeviceState) -> None:
    doc = doc_of(state.replace_last_resort_prekey(rng=counter_rng(b"lr")))
    doc["previous_last_resort_prekey"] = {**doc["previous_last_resort_prekey"], "id": 1}
    with pytest.raises(EncodingError):
        ps.decode(json.dumps(doc).encode())


def test_construction_checks(state: ps.DeviceState) -> None:
    with pytest.raises(EncodingError):
        ps.DeviceState(
            device_id=b"short",
            account_key=None,
            signing_key=state.signing_key,
            dh_key=state.dh_key,
            signed_prekey=state.signed_prekey,
            previous_signed_prekey=None,
            one_time_prekeys={},
            last_resort_prekey=state.last_resort_prekey,
            next_prekey_id=3,
        )
    with pytest.raises(EncodingError):
        ps.DeviceState(
            device_id=state.device_id,
            account_key=None,
            signing_key=state.dh_key,  # type: ignore[arg-type]
            dh_key=state.dh_key,
            signed_prekey=state.signed_prekey,
            previous_signed_prekey=None,
            one_time_prekeys={},
            last_resort_prekey=state.last_resort_prekey,
            next_prekey_id=3,
        )
    with pytest.raises(EncodingError):
        ps.DeviceState(
            device_id=state.device_id,
            account_key=None,
            signing_key=state.signing_key,
            dh_key=state.dh_key,
            signed_prekey=state.signed_prekey,
            previous_signed_prekey=None,
            one_time_prekeys={9: state.one_time_prekeys[3]},  # keyed by the wrong id
            last_resort_prekey=state.last_resort_prekey,
            next_prekey_id=10,
        )


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_decode_fuzz_only_encoding_errors(data: bytes) -> None:
    try:
        ps.decode(data)
    except EncodingError:
        pass


@settings(max_examples=15, deadline=None)
@given(n=st.integers(min_value=0, max_value=20), seed=st.binary(max_size=8), with_account=st.booleans())
def test_property_round_trip(n: int, seed: bytes, with_account: bool) -> None:
    state = ps.generate_device(
        account_key=ACCOUNT if with_account else None, one_time_prekeys=n, rng=counter_rng(seed)
    )
    assert ps.decode(state.encode()).encode() == state.encode()
