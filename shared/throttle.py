"""A log-line budget: the first `burst` events per `interval` are logged one by one,
the rest are only counted and reported as one summary line (pure: time is passed in).

A port scan or a cipher scan makes one refusal per connection; logged one by one
that is ~100 lines/s and buries everything else in the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LogThrottle:
    burst: int = 10
    """Events logged individually per interval."""
    interval: float = 10.0
    """Seconds of one budget window."""
    _window_start: float | None = field(default=None, repr=False)
    _logged: int = field(default=0, repr=False)
    _suppressed: int = field(default=0, repr=False)

    def admit(self, now: float) -> tuple[bool, int]:
        """Record one event at `now`: (log it individually?, events suppressed in the
        window that just ended, to report first in a summary line; usually 0)."""
        overdue = self.flush(now)
        if self._window_start is None:
            self._window_start = now
        if self._logged < self.burst:
            self._logged += 1
            return True, overdue
        self._suppressed += 1
        return False, overdue

    def flush(self, now: float) -> int:
        """If the current window is over, close it: the number of events it suppressed."""
        if self._window_start is None or now - self._window_start < self.interval:
            return 0
        suppressed = self._suppressed
        self._window_start = None
        self._logged = self._suppressed = 0
        return suppressed

    @property
    def pending(self) -> int:
        """Events suppressed in the current window (not reported yet)."""
        return self._suppressed

    def deadline(self) -> float | None:
        """When the current window ends (None if no window is open)."""
        return None if self._window_start is None else self._window_start + self.interval
