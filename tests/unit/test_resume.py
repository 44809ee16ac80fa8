"""The resume/resync decision of a hello (shared/resume.py; docs/protocol.md §6.5, §6.6),
table-driven: each row is one recorded state, one hello and the expected decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shared.resume import NodeCursors, Resume, ResyncReason, decide_resume

PENDING, REJOINED, OLDER = ResyncReason.PENDING, ResyncReason.REJOINED, ResyncReason.CLOUD_OLDER


@dataclass(frozen=True)
class Case:
    name: str
    recorded: NodeCursors
    store_id: str
    applied_rv: int
    issued_rv: int
    expected: Resume


def cursors(store_id: str | None, received_seq: int = 7, pending: bool = False) -> NodeCursors:
    return NodeCursors(store_id=store_id, received_seq=received_seq, resync_pending=pending)


def resume(received_seq: int, acked_rv: int, reason: ResyncReason | None, replaced: bool) -> Resume:
    return Resume(
        received_seq=received_seq,
        acked_rv=acked_rv,
        resync_reason=reason,
        store_replaced=replaced,
    )


CASES = [
    Case("same store resumes", cursors("s1"), "s1", 40, 50, resume(7, 40, None, False)),
    Case("fresh edge holds nothing", cursors("s1"), "s1", 0, 50, resume(7, 0, None, False)),
    Case("at the counter is vouched", cursors("s1"), "s1", 50, 50, resume(7, 50, None, False)),
    Case("above the counter", cursors("s1"), "s1", 51, 50, resume(7, 0, OLDER, False)),
    Case("re-joined, then a hello", cursors(None, 0), "s1", 40, 50, resume(0, 0, REJOINED, False)),
    Case("re-joined, empty edge", cursors(None, 0), "s1", 0, 50, resume(0, 0, None, False)),
    Case("new store resets seq", cursors("s1"), "s2", 0, 50, resume(0, 0, None, True)),
    Case("new store keeps rv", cursors("s1"), "s2", 40, 50, resume(0, 40, None, True)),
    Case("new store, cloud older", cursors("s1"), "s2", 60, 50, resume(0, 0, OLDER, True)),
    Case(
        "lost resync asked again",
        cursors("s1", pending=True),
        "s1",
        40,
        50,
        resume(7, 0, PENDING, False),
    ),
    Case(
        "pending wins over older",
        cursors("s1", pending=True),
        "s1",
        60,
        50,
        resume(7, 0, PENDING, False),
    ),
    Case(
        "pending but edge reset to 0",
        cursors("s1", pending=True),
        "s1",
        0,
        50,
        resume(7, 0, None, False),
    ),
    Case(
        "re-joined wins over older",
        cursors(None, 0),
        "s1",
        60,
        50,
        resume(0, 0, REJOINED, False),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_resume(case: Case) -> None:
    got = decide_resume(
        case.recorded, store_id=case.store_id, applied_rv=case.applied_rv, issued_rv=case.issued_rv
    )
    assert got == case.expected
    assert got.resync is (case.expected.resync_reason is not None)
