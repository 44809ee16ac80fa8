"""Reconnect policy: full-jitter backoff and the retry-or-fatal classifier."""

from __future__ import annotations

import itertools
import random

import pytest

from shared import errors
from shared.backoff import BackoffPolicy, backoff, is_retryable


class ExtremeRng(random.Random):
    """Always returns one end of the requested range and records every request."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


def take(policy: BackoffPolicy, n: int, rng: random.Random | None = None) -> list[float]:
    return list(itertools.islice(backoff(policy, rng), n))


def bounds(policy: BackoffPolicy, n: int) -> list[float]:
    """The documented upper bound of attempt i: min(cap, initial * factor**i)."""
    return [min(policy.cap, policy.initial * policy.factor**i) for i in range(n)]


POLICIES = [
    BackoffPolicy(),
    BackoffPolicy(initial=0.1, cap=5.0, factor=3.0),
    BackoffPolicy(initial=1.0, cap=1.0, factor=2.0),
    BackoffPolicy(initial=0.25, cap=60.0, factor=1.5),
]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_every_delay_is_within_zero_and_its_bound(policy: BackoffPolicy, seed: int) -> None:
    n = 200
    delays = take(policy, n, random.Random(seed))
    assert len(delays) == n
    for delay, bound in zip(delays, bounds(policy, n), strict=True):
        assert 0.0 <= delay <= bound


def test_delays_are_spread_not_constant() -> None:
    policy = BackoffPolicy(initial=10.0, cap=10.0)
    delays = take(policy, 500, random.Random(7))
    assert len(set(delays)) > 400  # jitter, not a fixed delay
    # Full jitter: uniform over [0, bound], so both halves of the range are used.
    assert min(delays) < policy.cap * 0.1 and max(delays) > policy.cap * 0.9
    assert sum(delays) / len(delays) == pytest.approx(policy.cap / 2, rel=0.15)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_bound_grows_by_factor_until_the_cap(policy: BackoffPolicy) -> None:
    rng = ExtremeRng(high=True)
    delays = take(policy, 40, rng)
    assert delays == pytest.approx(bounds(policy, 40))
    assert all(low == 0.0 for low, _ in rng.calls)
    for earlier, later in itertools.pairwise(delays):
        assert later == pytest.approx(min(policy.cap, earlier * policy.factor))
    assert delays[-1] == policy.cap
    assert max(delays) <= policy.cap


def test_lowest_draws_are_zero() -> None:
    assert take(BackoffPolicy(), 20, ExtremeRng(high=False)) == [0.0] * 20


def test_cap_holds_after_many_attempts() -> None:
    policy = BackoffPolicy(initial=0.5, cap=30.0, factor=2.0)
    rng = ExtremeRng(high=True)
    delays = take(policy, 2000, rng)
    assert max(delays) == policy.cap
    assert rng.calls[-1] == (0.0, policy.cap)  # no overflow to inf after 2000 doublings


def test_cap_holds_even_when_initial_exceeds_it() -> None:
    policy = BackoffPolicy(initial=60.0, cap=30.0)
    delays = take(policy, 3, ExtremeRng(high=True))
    assert max(delays) <= policy.cap


def test_seeded_rng_is_reproducible() -> None:
    policy = BackoffPolicy()
    first = take(policy, 50, random.Random(42))
    again = take(policy, 50, random.Random(42))
    other = take(policy, 50, random.Random(43))
    assert first == again
    assert first != other


def test_generators_are_independent() -> None:
    policy = BackoffPolicy()
    a = backoff(policy, random.Random(1))
    b = backoff(policy, random.Random(1))
    first_a = [next(a) for _ in range(5)]
    first_b = [next(b) for _ in range(5)]
    assert first_a == first_b
    assert next(a) == next(b)


def test_default_rng_stays_within_bounds() -> None:
    policy = BackoffPolicy(initial=0.01, cap=0.5)
    delays = take(policy, 100)
    for delay, bound in zip(delays, bounds(policy, 100), strict=True):
        assert 0.0 <= delay <= bound


# ------------------------------------------------------------------ is_retryable

FATAL = [
    errors.AuthError("bad identity"),
    errors.Forbidden("not your resource"),
    errors.JoinError("token expired"),
    errors.ConfigError("edgecore.yaml: unknown key 'clud'"),
    errors.PKIError("certificate missing"),
    errors.UnsupportedVersion("no common version"),
    errors.LinkClosed("we closed it"),
]

RETRYABLE = [
    errors.LinkBroken("connection reset"),
    errors.LinkError("link unusable"),
    errors.StoreError("database is locked"),
    errors.RemoteProtocolError("peer misbehaved"),
    errors.MalformedMessage("bad frame"),
    errors.FrameTooLarge("too big"),
    errors.UnknownOperation("op?"),
    errors.ProtocolError("protocol"),
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    OSError(113, "No route to host"),
    EOFError(),
]


@pytest.mark.parametrize("exc", FATAL, ids=lambda e: type(e).__name__)
def test_operator_errors_are_not_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is False


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retryable(exc: BaseException) -> None:
    assert is_retryable(exc) is True


def test_version_mismatch_is_fatal_although_other_protocol_errors_are_not() -> None:
    assert issubclass(errors.UnsupportedVersion, errors.RemoteProtocolError)
    assert not is_retryable(errors.UnsupportedVersion("x"))
    assert is_retryable(errors.MalformedMessage("x"))


def test_link_closed_is_fatal_but_link_broken_is_not() -> None:
    assert issubclass(errors.LinkClosed, errors.LinkError)
    assert issubclass(errors.LinkBroken, errors.LinkError)
    assert is_retryable(errors.LinkBroken("x")) != is_retryable(errors.LinkClosed("x"))


def test_subclasses_of_fatal_errors_stay_fatal() -> None:
    class RevokedCert(errors.PKIError):
        pass

    class NodeUnknown(errors.Forbidden):
        pass

    assert not is_retryable(RevokedCert("revoked"))
    assert not is_retryable(NodeUnknown("pi-9"))


def test_every_edgesync_error_is_classified_as_documented() -> None:
    fatal_bases = (
        errors.AuthError,
        errors.ConfigError,
        errors.PKIError,
        errors.UnsupportedVersion,
        errors.LinkClosed,
    )
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.EdgesyncError)
    ]
    assert len(classes) >= 18
    for cls in classes:
        assert is_retryable(cls("x")) is not issubclass(cls, fatal_bases), cls.__name__
