"""Injected time. The protocol core never reads a clock; drivers pass `now`.

`Clock` is what daemons hand down; `FakeClock` makes timeout-heavy tests instant.
Monotonic time (`monotonic()`) drives deadlines; wall time (`time_ms()`) only
stamps messages and records.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (deadlines, backoff)."""
        ...

    def time_ms(self) -> int:
        """Wall-clock Unix time in milliseconds (timestamps only)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0, wall_ms: int = 1_732_400_000_000) -> None:
        self._now = start
        self._wall_offset_ms = wall_ms - int(start * 1000)

    def monotonic(self) -> float:
        return self._now

    def time_ms(self) -> int:
        return int(self._now * 1000) + self._wall_offset_ms

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds
