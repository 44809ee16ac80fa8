"""Task placement: which nodes each task runs on (pure), and the reconcile loop around it.

This is the foundation's filter stage (pinned nodes, label selector); the
load-aware scores of design.md plug in as further filters and scores over
the same inputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from cloudcore.store import CloudStore, Placement
from shared.clock import Clock
from shared.dbthread import DbThread
from shared.errors import ResourceError
from shared.resources import parse_task

log = logging.getLogger(__name__)


def place(tasks: Iterable[dict[str, Any]], nodes: Iterable[dict[str, Any]]) -> list[Placement]:
    """Compute every task's target nodes. A task no node matches gets an empty set."""
    node_list = list(nodes)
    placements = []
    for row in tasks:
        try:
            spec = parse_task(row["document"])
        except ResourceError as exc:  # validated on write; only a schema change gets here
            log.error(
                "task %s/%s is no longer valid, not placing it: %s",
                row["namespace"],
                row["name"],
                exc,
            )
            continue
        targets = set()
        pinned = set(spec.placement.nodes)
        for node in node_list:
            labels = node.get("labels") or {}
            if pinned and node["name"] not in pinned:
                continue
            if all(labels.get(k) == v for k, v in spec.placement.selector.items()):
                targets.add(node["name"])
        placements.append(
            Placement(spec.key, int(row["generation"]), row["document"], frozenset(targets))
        )
    return placements


class Scheduler:
    """Re-places every task when tasks or nodes change, one reconcile at a time."""

    def __init__(
        self,
        store: CloudStore,
        db: DbThread,
        clock: Clock,
        notify: Callable[[set[str]], None],
    ) -> None:
        self._store = store
        self._db = db
        self._clock = clock
        self._notify = notify
        self._lock = asyncio.Lock()

    async def reconcile(self) -> set[str]:
        """Bring assignments in line with tasks and nodes; wakes the sessions of changed nodes."""
        async with self._lock:
            tasks, nodes = await self._db.run(self._store.scheduling_inputs)
            placements = place(tasks, nodes)
            changed = await self._db.run(
                self._store.apply_placements, placements, self._clock.time_ms()
            )
        if changed:
            log.info(
                "placement changed the desired state of %d node(s): %s",
                len(changed),
                ", ".join(sorted(changed)[:10]),
            )
            self._notify(changed)
        return changed
