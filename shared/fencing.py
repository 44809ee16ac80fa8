"""Fencing: what the cloud does with a report or result from a node, decided by epochs
(design.md "Fencing"; docs/protocol.md §6.4). Pure: the cloud store reads the
assignment and writes what this decides.

Every (task, node) assignment carries an epoch from one cloud-wide counter,
so when a task moves to another node, the new assignment's epoch is above
every epoch the task had before. A revoked assignment is kept as a tombstone
with its last epoch: a late message from the node that lost the task is then
recognised as `stale` (recorded, never applied) instead of `forbidden`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    """The outcome of one upstream message (UpstreamOutcome.verdict)."""

    APPLIED = "applied"
    """Current: recorded and it updates the assignment."""
    DUPLICATE = "duplicate"
    """Seen before (by seq or run_id): changes nothing."""
    STALE = "stale"
    """From an older epoch or a revoked assignment: a result is kept, marked stale; the
    current state is never overwritten."""
    FORBIDDEN = "forbidden"
    """Never assigned to this node, or an epoch never issued: consumed, not stored."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """What the verdict needs of the (task, node) assignment row."""

    epoch: int
    revoked: bool
    """A tombstone: the task was moved away from (or deleted on) this node."""


def upstream_verdict(
    assignment: Assignment | None, epoch: int, *, duplicate: bool = False
) -> tuple[Verdict, str]:
    """The verdict on a message carrying `epoch` for an assignment; (verdict, detail).

    `assignment` is None when the resource was never assigned to the node.
    `duplicate` is the caller's finding that the message was already applied.
    """
    if duplicate:
        return Verdict.DUPLICATE, ""
    if assignment is None:
        return Verdict.FORBIDDEN, "not assigned to this node"
    if epoch > assignment.epoch:
        return Verdict.FORBIDDEN, (
            f"epoch {epoch} was never issued for this assignment (its epoch is {assignment.epoch})"
        )
    if assignment.revoked:
        return Verdict.STALE, f"the assignment (epoch {assignment.epoch}) was revoked"
    if epoch < assignment.epoch:
        return Verdict.STALE, f"epoch {epoch} is older than the current {assignment.epoch}"
    return Verdict.APPLIED, ""
