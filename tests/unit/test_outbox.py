"""The pure outbox decisions: which rows go at the bound, which twin reports coalesce."""

from __future__ import annotations

from typing import Any

import pytest

from shared.outbox import (
    DROPPABLE,
    RULES,
    Candidate,
    OutboxClass,
    Victims,
    outbox_victims,
    twin_report_supersedes,
)

T, S, W, R = OutboxClass.TELEMETRY, OutboxClass.STATUS, OutboxClass.TWIN, OutboxClass.RESULT


def rows(*spec: tuple[int, OutboxClass]) -> list[Candidate]:
    return [Candidate(seq, cls) for seq, cls in spec]


def test_the_class_table_matches_the_drop_policy() -> None:
    assert {T, S} == DROPPABLE
    assert RULES[T].priority < RULES[S].priority < RULES[W].priority < RULES[R].priority
    assert [c for c in OutboxClass if RULES[c].coalesces] == [W]


def test_below_or_at_the_bound_nothing_goes() -> None:
    assert outbox_victims(5, 5, rows((1, T))) == Victims((), 0)
    assert outbox_victims(0, 5, []) == Victims((), 0)


def test_telemetry_goes_before_status_oldest_first() -> None:
    candidates = rows((9, S), (2, S), (7, T), (3, T), (8, T))
    assert outbox_victims(12, 10, candidates) == Victims((3, 7), 0)
    assert outbox_victims(14, 10, candidates) == Victims((2, 3, 7, 8), 0)  # all T, then S 2


def test_results_and_twins_are_never_chosen_even_if_offered() -> None:
    assert outbox_victims(11, 10, rows((1, R), (2, W))) == Victims((), 1)


def test_a_shortfall_is_reported_so_the_enqueue_is_refused() -> None:
    assert outbox_victims(13, 10, rows((4, T))) == Victims((4,), 2)


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        outbox_victims(1, 0, [])


def report(**props: tuple[int, Any]) -> dict[str, Any]:
    return {"reported": {n: {"version": v, "value": x} for n, (v, x) in props.items()}}


@pytest.mark.parametrize(
    ("older", "newer", "supersedes"),
    [
        (report(temp=(1, 20)), report(temp=(2, 21)), True),
        (report(temp=(1, 20)), report(temp=(1, 20), hum=(1, 40)), True),  # more is fine
        (report(temp=(3, 20), hum=(1, 4)), report(temp=(4, 1), hum=(1, 4)), True),
        (report(temp=(2, 20)), report(temp=(1, 21)), False),  # an older version
        (report(temp=(1, 20)), report(temp=(1, 99)), False),  # same version, another value
        (report(temp=(1, 20), hum=(1, 40)), report(temp=(2, 21)), False),  # hum would be lost
    ],
)
def test_a_twin_report_supersedes_only_if_it_carries_everything(
    older: dict[str, Any], newer: dict[str, Any], supersedes: bool
) -> None:
    assert twin_report_supersedes(older, newer) is supersedes


def test_other_keys_of_the_older_report_must_be_carried_too() -> None:
    older = {**report(temp=(1, 20)), "device": "d1"}
    assert twin_report_supersedes(older, {**report(temp=(2, 1)), "device": "d1"})
    assert not twin_report_supersedes(older, {**report(temp=(2, 1)), "device": "d2"})
    assert not twin_report_supersedes(older, report(temp=(2, 1)))


@pytest.mark.parametrize(
    "malformed",
    [
        {},
        {"reported": {}},
        {"reported": []},
        {"reported": {"temp": 20}},
        {"reported": {"temp": {"value": 20}}},  # no version
        {"reported": {"temp": {"value": 20, "version": "2"}}},
        {"reported": {"temp": {"value": 20, "version": True}}},
        {"reported": {"temp": {"value": 20, "version": -1}}},
    ],
)
def test_malformed_reports_never_coalesce(malformed: dict[str, Any]) -> None:
    good = report(temp=(5, 20))
    assert not twin_report_supersedes(malformed, good)
    assert not twin_report_supersedes(good, malformed)
