"""Time as an injectable dependency: services never read the wall clock directly, so tests
can move time forward (token expiry, challenge expiry) without sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

#: Returns the current time in Unix milliseconds.
Clock = Callable[[], int]


def system_clock() -> int:
    return time.time_ns() // 1_000_000
