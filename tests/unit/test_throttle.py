"""The log budget (shared/throttle.py), on a hand-driven clock."""

from __future__ import annotations

from shared.throttle import LogThrottle


def test_the_first_burst_is_logged_then_counted_then_summarised() -> None:
    t = LogThrottle(burst=3, interval=10.0)
    assert [t.admit(0.0 + i * 0.1) for i in range(3)] == [(True, 0)] * 3
    assert [t.admit(1.0) for _ in range(5)] == [(False, 0)] * 5
    assert t.pending == 5
    assert t.deadline() == 10.0
    assert t.flush(9.9) == 0  # window not over
    # The first event of the next window reports the previous window's count.
    assert t.admit(10.0) == (True, 5)
    assert t.pending == 0


def test_flush_closes_a_window_with_nothing_suppressed() -> None:
    t = LogThrottle(burst=2, interval=1.0)
    t.admit(0.0)
    assert t.flush(5.0) == 0
    assert t.deadline() is None
    assert t.admit(5.0) == (True, 0)


def test_a_quiet_period_restores_the_budget() -> None:
    t = LogThrottle(burst=1, interval=1.0)
    assert t.admit(0.0) == (True, 0)
    assert t.admit(0.5) == (False, 0)
    assert t.flush(1.0) == 1
    assert t.admit(3.0) == (True, 0)
