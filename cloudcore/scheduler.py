"""Task placement: which nodes each task runs on (pure), and the reconcile loop around it.

This is the foundation's filter stage (pinned nodes, label selector); the
load-aware scores of design.md plug in as further filters and scores over
the same inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from cloudcore.store import CloudStore, DesiredRow, Placement
from shared.clock import Clock
from shared.dbthread import DbThread
from shared.errors import ResourceError
from shared.resources import task_from_document

log = logging.getLogger(__name__)


def place(tasks: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]]) -> list[Placement]:
    """Compute every task's target nodes. A task no node matches gets an empty set."""
    node_list = list(nodes)
    placements = []
    for row in tasks:
        try:
            task = task_from_document(row["document"])
        except ResourceError as exc:  # validated on write; only a schema change gets here
            log.error(
                "task %s/%s is no longer valid, not placing it: %s",
                row["namespace"],
                row["name"],
                exc,
            )
            continue
        placement = task.spec.placement
        targets = [
            n["name"] for n in node_list if placement.admits(n["name"], n.get("labels") or {})
        ]
        if placement.replicas is not None and len(targets) > placement.replicas:
            targets = pick_replicas(task.key, targets, placement.replicas)
        placements.append(
            Placement(task.key, int(row["generation"]), row["document"], frozenset(targets))
        )
    return placements


def pick_replicas(key: str, candidates: list[str], count: int) -> list[str]:
    """`count` of the candidates by rendezvous hashing: the same choice every time, and a
    node joining or leaving moves at most the replicas it takes or held."""

    def weight(node: str) -> bytes:
        return hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest()

    return sorted(candidates, key=weight, reverse=True)[:count]


class Scheduler:
    """Re-places tasks when tasks or nodes change, one reconcile at a time.

    A reconcile can be scoped to some tasks (an operator applied one) or some
    nodes (one joined or changed labels), so its cost does not grow with the
    whole fleet on every change.
    """

    def __init__(
        self,
        store: CloudStore,
        db: DbThread,
        clock: Clock,
        notify: Callable[[dict[str, list[DesiredRow]]], None],
    ) -> None:
        self._store = store
        self._db = db
        self._clock = clock
        self._notify = notify
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    async def reconcile(
        self, tasks: set[str] | None = None, nodes: set[str] | None = None
    ) -> dict[str, list[DesiredRow]]:
        """Bring assignments in line for `tasks` (resource names) and/or `nodes` (None: all);
        hands the desired rows written to the sessions of their nodes."""
        keys = None if tasks is None else {tuple(t.split("/")[1:]) for t in tasks}
        async with self._lock:
            task_rows, node_rows = await self._db.run(self._store.scheduling_inputs, keys, nodes)
            placements = place(task_rows, node_rows)
            written = await self._db.run(
                self._store.apply_placements,
                placements,
                self._clock.time_ms(),
                tasks=tasks,
                nodes=nodes,
            )
        if written:
            log.info(
                "placement changed the desired state of %d node(s): %s",
                len(written),
                ", ".join(sorted(written)[:10]),
            )
            self._notify(written)
        return written

    def reconcile_soon(self, nodes: set[str]) -> None:
        """Reconcile in the background (a session must not wait for it to start)."""
        task = asyncio.ensure_future(self.reconcile(nodes=nodes))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
