"""The bot's pure rules: command parsing (a table and properties) and the per-conversation token
bucket (properties on an injected clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saltline.client_sdk.core.commands import Command, RateLimit, TokenBuckets, parse_command

TABLE: list[tuple[str, str, Command | None]] = [
    ("/echo hello", "/", Command("echo", "hello", ("hello",))),
    ("/echo", "/", Command("echo", "", ())),
    ("/ECHO Hi There", "/", Command("echo", "Hi There", ("Hi", "There"))),
    ("  /echo   two  spaces ", "/", Command("echo", "two  spaces ", ("two", "spaces"))),
    ("/echo\nline two", "/", Command("echo", "line two", ("line", "two"))),
    ("/echo_2 x", "/", Command("echo_2", "x", ("x",))),
    ("!ping", "!", Command("ping", "", ())),
    ("bot: ping now", "bot: ", Command("ping", "now", ("now",))),
    ("/ echo", "/", None),
    ("//echo", "/", None),
    ("/echo!", "/", None),
    ("/échо", "/", None),  # non-ASCII look-alikes are not command names
    ("echo", "/", None),
    ("say /echo", "/", None),
    ("/", "/", None),
    ("", "/", None),
    ("/" + "a" * 33, "/", None),
    ("/" + "a" * 32, "/", Command("a" * 32, "", ())),
]


@pytest.mark.parametrize(("text", "prefix", "expected"), TABLE)
def test_command_table(text: str, prefix: str, expected: Command | None) -> None:
    assert parse_command(text, prefix) == expected


NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_"), min_size=1, max_size=32)
WORDS = st.lists(st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1), max_size=5)


@given(NAMES, WORDS)
def test_a_command_round_trips(name: str, words: list[str]) -> None:
    command = parse_command("/" + name + "".join(" " + w for w in words))
    assert command is not None
    assert command.name == name and command.argv == tuple(words)
    assert command.args == " ".join(words)


@given(st.text())
def test_parsing_never_raises_and_names_are_canonical(text: str) -> None:
    command = parse_command(text)
    if command is not None:
        assert text.lstrip().startswith("/")
        assert 1 <= len(command.name) <= 32 and command.name == command.name.lower()
        assert command.args == command.args.lstrip()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=3, per_second=2.0), clock)
    assert [buckets.take("c") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("c") == pytest.approx(0.5)
    assert buckets.take("other") == 0.0  # per conversation
    clock.now += 0.5
    assert buckets.take("c") == 0.0
    assert buckets.take("c") == pytest.approx(0.5)


def test_a_clock_going_back_refills_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst=1, per_second=1.0), clock)
    assert buckets.take("c") == 0.0
    clock.now -= 100
    assert buckets.take("c") > 0


def test_bad_limits_are_refused() -> None:
    for burst, rate in ((0, 1.0), (1, 0.0), (1, -1.0)):
        with pytest.raises(ValueError):
            RateLimit(burst, rate)


@given(
    st.integers(1, 10),
    st.floats(0.1, 50.0),
    st.lists(st.tuples(st.floats(0.0, 5.0), st.sampled_from("ab")), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_time(
    burst: int, rate: float, steps: list[tuple[float, str]]
) -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(burst, rate), clock)
    start = clock.now
    taken = {"a": 0, "b": 0}
    for dt, key in steps:
        clock.now += dt
        wait = buckets.take(key)
        if wait == 0.0:
            taken[key] += 1
        else:
            assert wait > 0
            # waiting as told makes the next take succeed
            clock.now += wait
            assert buckets.take(key) == 0.0
            taken[key] += 1
        for k in taken:
            assert taken[k] <= burst + rate * (clock.now - start) + 1e-6


def test_keys_stay_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(1, 1.0), clock, max_keys=10)
    for i in range(100):
        buckets.take(f"c{i}")
        clock.now += 5  # every earlier bucket is full again
    assert len(buckets._buckets) <= 11


@given(
    max_keys=st.integers(1, 20),
    steps=st.lists(st.tuples(st.integers(0, 60), st.floats(0.0, 3.0)), max_size=300),
)
def test_keys_never_exceed_the_bound_and_takes_stay_constant_work(
    max_keys: int, steps: list[tuple[int, float]]
) -> None:
    """LRU by last touch: never more than ``max_keys`` keys, at most one eviction per take
    (amortised O(1): evictions never outnumber takes), and the key just taken is kept."""
    clock = Clock()
    buckets = TokenBuckets(RateLimit(2, 1.0), clock, max_keys=max_keys)
    for n, (key, dt) in enumerate(steps, 1):
        clock.now += dt
        before = buckets.evictions
        buckets.take(f"c{key}")
        assert len(buckets._buckets) <= max_keys
        assert buckets.evictions - before <= 1 and buckets.evictions <= n
        assert next(reversed(buckets._buckets)) == f"c{key}"


def test_a_busy_key_survives_a_flood_of_new_ones() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(1, 1.0), clock, max_keys=10)
    buckets.take("busy")
    for i in range(1000):
        buckets.take(f"new{i}")
        if i % 5 == 0:
            buckets.take("busy")  # touched: most recently used, never the one evicted
    assert "busy" in buckets._buckets and buckets.evictions == 1000 - 9
