"""Refused edge connections (before a session exists): counted by reason, logged within
a budget (shared/throttle.py) so a scan cannot flood the log, one summary line for the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from shared.text import escape_text
from shared.throttle import LogThrottle

log = logging.getLogger("cloudcore.hub")

BURST = 10
"""Refusals logged one by one per INTERVAL (both transports together)."""
INTERVAL = 10.0


class RefusalLog:
    """One per cloud, shared by the WebSocket and QUIC hubs.

    `counts` is the live reason → count mapping the hub exposes (HubStats).
    """

    def __init__(
        self,
        counts: dict[str, int] | None = None,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: dict[str, int] = counts if counts is not None else {}
        self.throttle = LogThrottle(burst, interval)
        self.clock = clock
        self._window: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def refuse(self, transport: str, peer: str, reason: str, message: str) -> None:
        """Count one refused connection; log it unless this window's budget is spent."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = self.clock()
        logged, overdue = self.throttle.admit(now)
        if overdue:
            self._summary(overdue)
        if logged:
            log.warning(
                "%s connection from %s refused: %s", transport, peer, escape_text(message, 500)
            )
            return
        self._window[reason] += 1
        if self._timer is None:
            deadline = self.throttle.deadline()
            delay = max(0.0, (deadline or now) - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        suppressed = self.throttle.flush(self.clock())
        if suppressed:
            self._summary(suppressed)

    def _summary(self, suppressed: int) -> None:
        by_reason = ", ".join(f"{r} {n}" for r, n in self._window.most_common())
        self._window.clear()
        log.warning(
            "%d more edge connections refused in the last %gs, not logged one by one (%s)",
            suppressed,
            self.throttle.interval,
            by_reason,
        )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        suppressed = self.throttle.flush(float("inf"))
        if suppressed:
            self._summary(suppressed)
