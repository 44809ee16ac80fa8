"""The reconciler: one background task that brings assignments in line with tasks and nodes.

Placement runs here, never inside an HTTP request or a session: an operator's
apply writes the task and asks for a reconcile (`request`), and may wait for
it (`placed`) without being able to cancel it halfway. Requests that arrive
while a reconcile runs are merged into the next one. A full reconcile runs at
start and every `resync_interval` seconds on the injected clock, so a task
written just before a crash, or a request lost with a failed transaction, is
placed anyway (tests/e2e/test_fleet.py crashes cloudcore between the two).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from cloudcore.scheduler.filters import DEFAULT_FILTERS
from cloudcore.scheduler.framework import Filter, NodeInfo, Score, TaskInfo, place
from cloudcore.store import CloudStore, DesiredRow, Placement
from shared.aio.dbthread import DbThread
from shared.clock import Clock
from shared.errors import ResourceError, StoreError
from shared.labels import placement_labels
from shared.resources import task_from_document

log = logging.getLogger(__name__)

Written = dict[str, list[DesiredRow]]
RESYNC_INTERVAL = 300.0
"""Seconds between full reconciles (a backstop: every change asks for its own)."""
RETRY_AFTER_FAILURE = 5.0


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
        notify: Callable[[Written], None],
        filters: Sequence[Filter] = DEFAULT_FILTERS,
        scores: Sequence[Score] = (),
        resync_interval: float = RESYNC_INTERVAL,
        node_label_keys: Collection[str] = (),
    ) -> None:
        self._store = store
        self._db = db
        self._clock = clock
        self._notify = notify
        self.filters = filters
        self.scores = scores
        self.resync_interval = resync_interval
        self.node_label_keys = frozenset(node_label_keys)
        """Label keys a node may set on itself for placement (shared/labels.py)."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._full = False
        self._tasks: set[str] = set()
        self._nodes: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._loop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    async def ready(self) -> None:
        """Wait for the first full reconcile (or for the loop to fail)."""
        assert self._loop_task is not None, "start() first"
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(self._ready.wait()), self._loop_task],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self._loop_task in done:
            self._loop_task.result()

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for waiter in self._waiters:
            waiter.cancel()

    # ------------------------------------------------------------ requests

    def request(self, tasks: Iterable[str] = (), nodes: Iterable[str] = ()) -> None:
        """Ask for a reconcile of these tasks (resource names) and nodes; returns at once."""
        self._tasks.update(tasks)
        self._nodes.update(nodes)
        self._wake.set()

    def request_all(self) -> None:
        self._full = True
        self._wake.set()

    async def placed(
        self, tasks: Iterable[str] = (), nodes: Iterable[str] = (), timeout: float = 10.0
    ) -> bool:
        """Request a reconcile and wait until one that covers it has committed.

        Returns False if that took longer than `timeout` (the reconcile goes on).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_consume)
        self._waiters.append(waiter)
        self.request(tasks=tasks, nodes=nodes)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return False
        return True

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        await self.reconcile()
        self._ready.set()
        next_full = self._clock.monotonic() + self.resync_interval
        while True:
            timeout = max(0.0, next_full - self._clock.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            self._wake.clear()
            if self._clock.monotonic() >= next_full:
                self._full = True
            full, tasks, nodes, waiters = self._full, self._tasks, self._nodes, self._waiters
            self._full, self._tasks, self._nodes, self._waiters = False, set(), set(), []
            try:
                if full:
                    await self.reconcile()
                else:
                    if tasks:
                        await self.reconcile(tasks=tasks)
                    if nodes:
                        await self.reconcile(nodes=nodes)
            except StoreError as exc:
                log.error("placement failed (retrying in %gs): %s", RETRY_AFTER_FAILURE, exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                next_full = self._clock.monotonic() + RETRY_AFTER_FAILURE
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if full:
                next_full = self._clock.monotonic() + self.resync_interval

    async def reconcile(
        self, tasks: set[str] | None = None, nodes: set[str] | None = None
    ) -> Written:
        """Bring assignments in line for `tasks` (resource names) and/or `nodes` (None: all);
        hands the desired rows written to the sessions of their nodes."""
        keys = None if tasks is None else {tuple(t.split("/")[1:]) for t in tasks}
        async with self._lock:
            task_rows, node_rows = await self._db.run(self._store.scheduling_inputs, keys, nodes)
            decisions = place(
                _task_infos(task_rows),
                _node_infos(node_rows, self.node_label_keys),
                self.filters,
                self.scores,
            )
            placements = [
                Placement(d.task.key, d.task.generation, d.task.document, d.nodes)
                for d in decisions
            ]
            written = await self._db.run(
                self._store.apply_placements,
                placements,
                self._clock.time_ms(),
                tasks=tasks,
                nodes=nodes,
            )
        for d in decisions:
            if not d.nodes and d.rejected:
                reasons = "; ".join(f"{n}: {r}" for n, r in sorted(d.rejected.items())[:5])
                log.info("task %s fits no node (%s)", d.task.key, reasons)
        if written:
            log.info(
                "placement changed the desired state of %d node(s): %s",
                len(written),
                ", ".join(sorted(written)[:10]),
            )
            self._notify(written)
        return written


def _consume(future: asyncio.Future[None]) -> None:
    """A waiter that timed out is not awaited again; do not warn about its exception."""
    if not future.cancelled():
        future.exception()


def _task_infos(rows: Iterable[dict[str, Any]]) -> list[TaskInfo]:
    infos = []
    for row in rows:
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
        infos.append(TaskInfo(task, int(row["generation"]), row["document"]))
    return infos


def _node_infos(rows: Iterable[dict[str, Any]], self_settable: Collection[str]) -> list[NodeInfo]:
    return [
        NodeInfo(
            name=r["name"],
            labels=placement_labels(
                r.get("labels") or {}, r.get("reported_labels") or {}, self_settable
            ),
            state=r["state"],
            capacity=r.get("capacity") or {},
        )
        for r in rows
    ]
