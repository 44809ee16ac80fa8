"""Reconnect policy, pure: a backoff generator and a retry-or-fatal classifier.

Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): each
delay is uniform in [0, min(cap, base * 2**attempt)], which spreads a fleet
that lost the cloud at the same instant instead of reconnecting in waves.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from shared.errors import AuthError, ConfigError, LinkClosed, PKIError, UnsupportedVersion


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 0.5
    """Upper bound of the first delay, seconds."""
    cap: float = 30.0
    """No delay is longer than this, seconds."""
    factor: float = 2.0
    """Growth of the upper bound per failed attempt."""


def backoff(policy: BackoffPolicy, rng: random.Random | None = None) -> Iterator[float]:
    """Yield delays forever: full jitter over an exponentially growing, capped bound."""
    rand = rng or random.Random()
    bound = min(policy.initial, policy.cap)
    while True:
        yield rand.uniform(0.0, bound)
        bound = min(policy.cap, bound * policy.factor)


def is_retryable(exc: BaseException) -> bool:
    """True if reconnecting later may succeed; False if an operator must act first.

    Authentication failures, bad configuration, missing certificates and a
    protocol version mismatch do not fix themselves; everything else (refused
    connections, resets, timeouts, a cloud restarting) does.
    """
    fatal = (AuthError, ConfigError, PKIError, UnsupportedVersion, LinkClosed)
    return not isinstance(exc, fatal)
