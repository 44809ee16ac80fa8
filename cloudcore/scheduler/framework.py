"""Placement as filter → score → bind over typed inputs, all pure (design.md "Scheduling").

A `Filter` says why a node cannot take a task (or None: it can); a `Score`
ranks the nodes that passed, in [0, 1], times its weight. `place` runs them
for every task and binds: every admitted node, or the best `replicas` of
them. Ties (and a fleet with no scores at all) are broken by rendezvous
hashing, so the same inputs always give the same nodes and a node joining or
leaving moves only the replicas it takes or held. The reconciler
(cloudcore/scheduler/reconciler.py) feeds this from the store and writes
what it returns; nothing here reads a clock or a database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.resources import Task


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What placement knows about a node."""

    name: str
    labels: Mapping[str, str]
    """Operator-owned labels (selectors and affinity match these)."""
    state: str
    capacity: Mapping[str, Any] = field(default_factory=dict)
    """What the node reported about itself in hello (cpus, memory_bytes, arch, …)."""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task: Task
    generation: int
    document: dict[str, Any]
    """The canonical document, handed to the nodes as it is."""

    @property
    def key(self) -> str:
        return self.task.key


class Filter(Protocol):
    name: str

    def reject(self, task: TaskInfo, node: NodeInfo) -> str | None:
        """Why `node` cannot take `task`, for an operator; None if it can."""


class Score(Protocol):
    name: str
    weight: float

    def score(self, task: TaskInfo, node: NodeInfo) -> float:
        """How well `node` suits `task`, in [0, 1]."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one task runs, and why the other nodes were left out."""

    task: TaskInfo
    nodes: frozenset[str]
    rejected: Mapping[str, str]
    """node → the first filter's reason."""


def place(
    tasks: Iterable[TaskInfo],
    nodes: Sequence[NodeInfo],
    filters: Sequence[Filter],
    scores: Sequence[Score] = (),
) -> list[Decision]:
    decisions = []
    for task in tasks:
        admitted: list[NodeInfo] = []
        rejected: dict[str, str] = {}
        for node in nodes:
            reason = next((r for f in filters if (r := f.reject(task, node)) is not None), None)
            if reason is None:
                admitted.append(node)
            else:
                rejected[node.name] = reason
        replicas = task.task.spec.placement.replicas
        if replicas is not None and len(admitted) > replicas:
            admitted = rank(task, admitted, scores)[:replicas]
        decisions.append(Decision(task, frozenset(n.name for n in admitted), rejected))
    return decisions


def rank(task: TaskInfo, nodes: Sequence[NodeInfo], scores: Sequence[Score]) -> list[NodeInfo]:
    """Best first: by weighted score, then by rendezvous hash of (task, node)."""

    def key(node: NodeInfo) -> tuple[float, bytes]:
        total = sum(s.weight * min(1.0, max(0.0, s.score(task, node))) for s in scores)
        return total, rendezvous(task.key, node.name)

    return sorted(nodes, key=key, reverse=True)


def rendezvous(key: str, node: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest()
