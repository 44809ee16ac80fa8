"""The pure fencing verdict on an upstream message."""

from __future__ import annotations

import pytest

from shared.fencing import Assignment, Verdict, upstream_verdict

LIVE3 = Assignment(epoch=3, revoked=False)
GONE3 = Assignment(epoch=3, revoked=True)


@pytest.mark.parametrize(
    ("assignment", "epoch", "verdict"),
    [
        (LIVE3, 3, Verdict.APPLIED),
        (LIVE3, 2, Verdict.STALE),  # an older assignment of the task on this node
        (GONE3, 3, Verdict.STALE),  # the task moved away: a late result
        (GONE3, 1, Verdict.STALE),
        (LIVE3, 4, Verdict.FORBIDDEN),  # an epoch never issued
        (GONE3, 4, Verdict.FORBIDDEN),
        (None, 1, Verdict.FORBIDDEN),  # never assigned here
    ],
)
def test_verdict_by_epoch_and_tombstone(
    assignment: Assignment | None, epoch: int, verdict: Verdict
) -> None:
    got, detail = upstream_verdict(assignment, epoch)
    assert got is verdict
    assert (detail == "") is (verdict is Verdict.APPLIED)


def test_a_duplicate_is_a_duplicate_whatever_the_epoch() -> None:
    for assignment in (LIVE3, GONE3, None):
        assert upstream_verdict(assignment, 9, duplicate=True) == (Verdict.DUPLICATE, "")


def test_details_say_why() -> None:
    assert "revoked" in upstream_verdict(GONE3, 3)[1]
    assert "older than the current 3" in upstream_verdict(LIVE3, 1)[1]
    assert "never issued" in upstream_verdict(LIVE3, 7)[1]
