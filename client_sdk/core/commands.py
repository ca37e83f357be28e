"""Bot rules (pure): how a message names a command, and the per-conversation token bucket that
limits a bot's replies. Used by :mod:`saltline.client_sdk.bot`."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_COMMAND_NAME = 32
_EPSILON = 1e-9
_NAME = re.compile(rf"[a-z0-9_]{{1,{MAX_COMMAND_NAME}}}")


@dataclass(frozen=True, slots=True)
class Command:
    """``/echo  hello world`` -> name ``echo``, args ``hello world``, argv ``("hello", "world")``."""

    name: str  # lower-cased
    args: str  # the text after the name and the blanks that follow it (inner blanks kept)
    argv: tuple[str, ...]  # args split on blanks


def parse_command(text: str, prefix: str = "/") -> Command | None:
    """The command a message starts with, or None. A command is ``prefix`` immediately followed
    by a name (letters, digits, ``_``; at most 32; case-insensitive), then the end of the text
    or a blank. Leading blanks of the message are ignored; ``/ echo``, ``//echo``, ``/echo!`` and
    a prefix in the middle of the text are not commands."""
    body = text.lstrip()
    if not prefix or not body.startswith(prefix):
        return None
    rest = body[len(prefix) :]
    head, _, tail = _split_first(rest)
    name = head.lower()
    if not head.isascii() or not _NAME.fullmatch(name):
        return None
    args = tail.lstrip()
    return Command(name, args, tuple(args.split()))


def _split_first(text: str) -> tuple[str, str, str]:
    for i, c in enumerate(text):
        if c.isspace():
            return text[:i], c, text[i + 1 :]
    return text, "", ""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``burst`` replies at once per conversation, refilled at ``per_second``."""

    burst: int = 5
    per_second: float = 1.0

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_second > 0:
            raise ValueError("a rate limit needs burst >= 1 and per_second > 0")


class TokenBuckets:
    """One token bucket per key (a conversation id). ``clock``: monotonic seconds (injected).
    At most ``max_keys`` keys are kept: beyond that the least recently touched key is forgotten
    (O(1) per take; a forgotten key starts again with a full bucket)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float], max_keys: int = 10_000) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at), LRU first
        self.evictions = 0

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
        elapsed = max(0.0, now - at)  # a clock that goes back refills nothing
        return min(float(self.limit.burst), tokens + elapsed * self.limit.per_second)

    def take(self, key: str) -> float:
        """Take a token now (returns 0.0), or return how many seconds until one is there (nothing
        taken)."""
        now = self._clock()
        tokens = self._level(key, now)
        taken = tokens >= 1.0 - _EPSILON  # waiting the time it said is enough, rounding aside
        self._buckets[key] = (max(0.0, tokens - 1.0) if taken else tokens, now)
        self._buckets.move_to_end(key)
        self._bound()
        if taken:
            return 0.0
        return (1.0 - tokens) / self.limit.per_second

    def available(self, key: str) -> float:
        return self._level(key, self._clock())

    def _bound(self) -> None:
        """Forget the least recently touched keys beyond ``max_keys``."""
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
            self.evictions += 1
