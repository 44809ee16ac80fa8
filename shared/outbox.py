"""Edge outbox classes and the pure decisions over them (no I/O; the edge store only
reads and writes rows).

Every outbox row has a class. The class fixes its priority and its drop rule
when the outbox reaches `outbox_max_rows` (docs/protocol.md §6.1):

| class     | priority | at the bound                                   |
|-----------|----------|------------------------------------------------|
| telemetry | 0        | dropped, oldest first                          |
| status    | 1        | dropped, oldest first, after every telemetry row |
| twin      | 2        | never dropped; an unsent report is coalesced   |
| result    | 3        | never dropped                                  |

When only never-dropped rows are left above the bound the enqueue fails
(`OutboxFull`): the outbox is bounded, and the operator is told.
Rows are always sent in `seq` order: the priority decides what is dropped,
never the order of delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class OutboxClass(str, Enum):
    """What an outbox row carries, which decides what may happen to it."""

    TELEMETRY = "telemetry"
    """Sensor samples and metrics: the newest matter, old ones may go."""
    STATUS = "status"
    """Progress reports such as a run's `running` report (the 1f63a07 `status` kind)."""
    TWIN = "twin"
    """A device twin's reported properties: each version must reach the cloud or be
    carried by a newer report."""
    RESULT = "result"
    """A run's outcome: must reach the cloud."""


@dataclass(frozen=True, slots=True)
class ClassRule:
    priority: int
    """Lower is less important: dropped first."""
    droppable: bool
    """May be deleted unsent when the outbox is at its bound."""
    coalesces: bool
    """A newer row for the same resource may replace an unsent one (twin_report_supersedes)."""


RULES: Mapping[OutboxClass, ClassRule] = {
    OutboxClass.TELEMETRY: ClassRule(0, droppable=True, coalesces=False),
    OutboxClass.STATUS: ClassRule(1, droppable=True, coalesces=False),
    OutboxClass.TWIN: ClassRule(2, droppable=False, coalesces=True),
    OutboxClass.RESULT: ClassRule(3, droppable=False, coalesces=False),
}

DROPPABLE: frozenset[OutboxClass] = frozenset(c for c, r in RULES.items() if r.droppable)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row the store offers as a possible victim."""

    seq: int
    cls: OutboxClass


@dataclass(frozen=True, slots=True)
class Victims:
    """What to do at the bound."""

    drop: tuple[int, ...]
    """Seqs to delete, lowest priority first, then oldest first."""
    short: int
    """Rows still above the bound after those: above 0, the enqueue must be refused."""


def outbox_victims(count: int, bound: int, candidates: Iterable[Candidate]) -> Victims:
    """Which rows to drop once the outbox holds `count` rows (new ones included).

    `candidates` are rows the store read, in any order; at most
    `count - bound` of them are chosen, droppable classes only, lowest
    priority first and oldest (lowest seq) first within a class. Rows just
    enqueued may be chosen too: telemetry arriving at a full outbox is the
    oldest telemetry there is, and is dropped instead of refused.
    """
    if bound < 1:
        raise ValueError(f"the outbox bound must be at least 1, not {bound}")
    excess = count - bound
    if excess <= 0:
        return Victims((), 0)
    ordered = sorted(
        (c for c in candidates if RULES[c.cls].droppable),
        key=lambda c: (RULES[c.cls].priority, c.seq),
    )
    drop = tuple(sorted(c.seq for c in ordered[:excess]))
    return Victims(drop, excess - len(drop))


def _reported(body: Mapping[str, Any]) -> dict[str, tuple[int, Any]] | None:
    """A twin report's properties as {name: (version, value)}; None if malformed."""
    reported = body.get("reported")
    if not isinstance(reported, Mapping) or not reported:
        return None
    out: dict[str, tuple[int, Any]] = {}
    for name, prop in reported.items():
        if not isinstance(prop, Mapping):
            return None
        version = prop.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            return None
        out[str(name)] = (version, prop.get("value"))
    return out


def twin_report_supersedes(older: Mapping[str, Any], newer: Mapping[str, Any]) -> bool:
    """True if the unsent `older` twin report may be deleted because `newer` (for the same
    resource, queued after it) carries everything it did, so no version is lost.

    A twin report body is `{"reported": {NAME: {"value": V, "version": N}, ...}, ...}`.
    `newer` supersedes `older` when every property of `older` is in `newer` at
    the same or a higher version (twin state is last-version-wins: the cloud
    keeps the newest version of each property), with an equal value where the
    version is the same, and every other key of `older` is in `newer` with an
    equal value. A body that is not of that shape never supersedes and is
    never superseded: keeping a row is always safe.
    """
    old, new = _reported(older), _reported(newer)
    if old is None or new is None:
        return False
    for name, (version, value) in old.items():
        if name not in new:
            return False
        new_version, new_value = new[name]
        if new_version < version or (new_version == version and new_value != value):
            return False
    return all(k in newer and newer[k] == v for k, v in older.items() if k != "reported")
