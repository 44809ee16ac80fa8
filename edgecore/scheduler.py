"""The edge's local scheduler: runs this node's tasks by trigger and priority,
whether or not the cloud is reachable (design.md, "Scheduling: Edge").

It holds the node's tasks in memory, refreshed only for the resources the link
says changed (all of them after a resync), asks shared/triggers.py when each
is due, admits due runs by priority within `max_concurrent` and the node's
capacity (shared/admission.py), and hands each run to the runtime of its
task kind (edgecore/runtime). Each run's start and result are recorded with
their outbox rows; the link delivers them when it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from edgecore.config import RuntimeConfig
from edgecore.runtime import RunContext, RuntimeRegistry
from edgecore.runtime.command import RunOutcome
from edgecore.store import EdgeStore, TaskObject
from shared.admission import Capacity, admits, never_fits
from shared.aio.dbthread import DbThread
from shared.clock import Clock
from shared.errors import OutboxFull, ResourceError
from shared.ids import new_ulid
from shared.resources import Task, task_from_document
from shared.triggers import next_due_ms

log = logging.getLogger(__name__)

PAUSED_RECHECK = 1.0
OUTBOX_FULL_RETRY = 1.0
OUTBOX_FULL_RETRY_CAP = 30.0
ALL = "*"
"""`desired_changed([ALL])`: everything may have changed (a resync completed)."""


@dataclass
class _Running:
    task: TaskObject
    typed: Task | None
    run: asyncio.Task[None]
    stop_reason: str = ""
    report: bool = True


@dataclass
class _Held:
    """A task this node holds: the stored object, its typed form, its run history."""

    obj: TaskObject
    typed: Task | None
    """None: the document is not valid for this edgecore; `error` says why."""
    error: str = ""
    runs: int = 0
    last_start_ms: int = 0
    since_ms: int | None = None
    """When this process first held the generation: cron counts from it."""
    prepared: bool = False


class LocalScheduler:
    def __init__(
        self,
        config: RuntimeConfig,
        store: EdgeStore,
        db: DbThread,
        clock: Clock,
        data_dir: Path,
        node: str,
        on_outbox: Callable[[], None],
        link_up: Callable[[], bool],
        runtimes: RuntimeRegistry,
        capacity: Capacity | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.db = db
        self.clock = clock
        self.data_dir = data_dir
        self.node = node
        self.on_outbox = on_outbox
        self.link_up = link_up
        self.runtimes = runtimes
        self.capacity = capacity or Capacity(0, 0)
        self.max_concurrent = config.max_concurrent or os.cpu_count() or 1
        self._wake = asyncio.Event()
        self._changed: set[str] = {ALL}
        self._held: dict[str, _Held] = {}
        self._running: dict[str, _Running] = {}
        self.loads = 0
        """How many store reads refreshed tasks (a test checks a change reads only itself)."""

    @property
    def running_count(self) -> int:
        return len(self._running)

    def desired_changed(self, resources: Collection[str]) -> None:
        """The link applied new desired state for these resources ([ALL]: for any)."""
        self._changed.update(resources)
        self._wake.set()

    async def run(self) -> None:
        recovered = await self.db.run(self.store.recover_interrupted_runs, self.clock.time_ms())
        if recovered:
            log.warning(
                "%d run(s) were interrupted by the last stop; reported as failed", recovered
            )
            self.on_outbox()
        try:
            while True:
                self._wake.clear()
                if self._changed:
                    changed, self._changed = self._changed, set()
                    await self._refresh(None if ALL in changed else changed)
                timeout = self._start_due()
                if self._wake.is_set():
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
        finally:
            await self.stop_all("edgecore stopped while the task was running", report=True)
            for held in self._held.values():
                await self._release(held)
            await self.runtimes.close()

    async def stop_all(self, reason: str, report: bool) -> None:
        for res in list(self._running):
            await self._stop(res, reason, report)

    # ------------------------------------------------------------ holding tasks

    async def _refresh(self, resources: set[str] | None) -> None:
        """Re-read the changed tasks (None: all) and their run history; stop what changed."""
        self.loads += 1
        tasks = await self.db.run(self.store.tasks, resources)
        history = await self.db.run(self.store.run_history, resources)
        fresh = {t.res: t for t in tasks}
        scope = set(self._held) | set(fresh) if resources is None else resources
        for res in scope:
            old, new = self._held.get(res), fresh.get(res)
            if old is not None and new is not None and _same(old.obj, new):
                old.obj = new
                continue
            if old is not None:
                running = self._running.get(res)
                if running is not None:
                    if new is None:
                        await self._stop(res, "stopped: the task was removed from this node", False)
                    else:
                        await self._stop(res, "stopped: the task was updated", True)
                await self._release(old)
                del self._held[res]
            if new is not None:
                runs, last = history.get((res, new.generation), (0, 0))
                typed, error = self._decode(new)
                self._held[res] = _Held(new, typed, error, runs, last)

    def _decode(self, task: TaskObject) -> tuple[Task | None, str]:
        try:
            return task_from_document(task.document), ""
        except ResourceError as exc:
            log.error(
                "task %s generation %d is invalid here, not running it: %s",
                task.res,
                task.generation,
                exc,
            )
            return None, f"the task is not valid on this edgecore ({exc}); nothing was run"

    async def _release(self, held: _Held) -> None:
        if not held.prepared or held.typed is None:
            return
        runtime = self.runtimes.get(held.typed.task_kind)
        if runtime is not None:
            try:
                await runtime.release(held.typed)
            except Exception:
                log.exception("%s: the %s runtime failed to release it", held.obj.res, runtime.kind)

    async def _stop(self, res: str, reason: str, report: bool) -> None:
        running = self._running.get(res)
        if running is None:
            return
        running.stop_reason, running.report = reason, report
        running.run.cancel()
        try:
            await running.run
        except asyncio.CancelledError:
            pass

    # ------------------------------------------------------------ starting runs

    def _start_due(self) -> float | None:
        """Start what is due; returns seconds until the next thing may be due (None: never)."""
        now_ms = self.clock.time_ms()
        due: list[_Held] = []
        next_ms: int | None = None
        paused = False
        for held in self._held.values():
            typed = held.typed
            if held.obj.res in self._running:
                continue
            if typed is None:
                if held.runs == 0:
                    self._launch(held, now_ms)  # one failed run tells the cloud why
                continue
            if typed.spec.offline == "pause" and not self.link_up():
                paused = True
                continue
            if held.since_ms is None:
                held.since_ms = now_ms
            at = next_due_ms(
                typed.spec.trigger,
                runs=held.runs,
                last_start_ms=held.last_start_ms,
                since_ms=held.since_ms,
            )
            if at is None:
                continue
            if at <= now_ms:
                due.append(held)
            else:
                next_ms = at if next_ms is None else min(next_ms, at)
        due.sort(key=lambda h: -h.typed.spec.priority if h.typed else 0)
        for held in due:
            if len(self._running) >= self.max_concurrent:
                break
            assert held.typed is not None
            wanted = held.typed.spec.resources
            running = [r.typed.spec.resources for r in self._running.values() if r.typed]
            if never_fits(self.capacity, wanted) is None and not admits(
                self.capacity, running, wanted
            ):
                continue  # waits for a running task to finish (that wakes the loop)
            self._launch(held, now_ms)
        waits = [] if next_ms is None else [max(0.0, (next_ms - now_ms) / 1000)]
        if paused:
            waits.append(PAUSED_RECHECK)
        return min(waits) if waits else None

    def _launch(self, held: _Held, now_ms: int) -> None:
        run_id = new_ulid(now_ms)
        held.runs += 1
        held.last_start_ms = now_ms
        holder: dict[str, _Running] = {}
        task = held.obj
        run = asyncio.create_task(
            self._execute(held, run_id, now_ms, holder), name=f"run:{task.res}:{run_id}"
        )
        holder["self"] = self._running[task.res] = _Running(task, held.typed, run)

    async def _execute(
        self, held: _Held, run_id: str, now_ms: int, holder: dict[str, _Running]
    ) -> None:
        """One run: record its start, run it, record its result, exactly once.

        Whatever the runtime raises (apart from cancellation) ends the run as
        `failed` with the real reason; it is never left `running`.
        """
        task, typed = held.obj, held.typed
        try:
            try:
                await self.db.run(self.store.start_run, task, run_id, now_ms)
            except Exception as exc:
                log.error(
                    "%s: cannot record the start of run %s, not running it: %s",
                    task.res,
                    run_id,
                    exc,
                )
                return
            self.on_outbox()
            log.info("running %s (generation %d, run %s)", task.res, task.generation, run_id)
            report = True
            try:
                if typed is None:
                    outcome = RunOutcome.refused(held.error)
                else:
                    outcome = await self._run(held, typed, run_id)
            except asyncio.CancelledError:
                me = holder.get("self")
                reason = me.stop_reason if me and me.stop_reason else "stopped"
                report = me.report if me else True
                await self._finish(run_id, RunOutcome.refused(reason), report)
                raise
            except Exception as exc:
                log.exception("%s run %s: the runtime failed", task.res, run_id)
                outcome = RunOutcome.refused(
                    f"edgecore could not run the task: {type(exc).__name__}: {exc}"
                )
            await self._finish(run_id, outcome, report)
            if outcome.phase == "failed" and outcome.exit_code is None:
                log.warning("%s run %s failed: %s", task.res, run_id, outcome.error)
            log.info("%s run %s %s (exit %s)", task.res, run_id, outcome.phase, outcome.exit_code)
        finally:
            if self._running.get(task.res) is holder.get("self"):
                del self._running[task.res]
            self._wake.set()

    async def _run(self, held: _Held, typed: Task, run_id: str) -> RunOutcome:
        """Admission's last word, the runtime's prepare (once per generation), then the run."""
        kind = typed.task_kind
        runtime = self.runtimes.get(kind)
        if runtime is None:
            return RunOutcome.refused(
                f"this edgecore has no runtime for task kind {kind!r} (it runs: "
                f"{', '.join(self.runtimes.kinds)}); upgrade edgecore on this node"
            )
        too_big = never_fits(self.capacity, typed.spec.resources)
        if too_big is not None:
            return RunOutcome.refused(too_big)
        if not held.prepared:
            await runtime.prepare(typed)
            held.prepared = True
        _, namespace, name = held.obj.res.split("/")
        context = RunContext(
            run_id=run_id,
            data_dir=self.data_dir,
            task_dir=("work", namespace, name),
            env={
                "EDGESYNC_NODE": self.node,
                "EDGESYNC_TASK": held.obj.res,
                "EDGESYNC_RUN_ID": run_id,
            },
        )
        return await runtime.run(typed, context)

    async def _finish(self, run_id: str, outcome: RunOutcome, report: bool) -> None:
        """Record the result (with its outbox row).

        An outbox full of rows that may not be dropped (OutboxFull) is waited
        out: the run keeps its slot, so the node starts no more work than it can
        report, and the result is recorded once the link drains the outbox.
        Any other store failure is logged; the run is then reported as
        interrupted at the next start.
        """
        delay = OUTBOX_FULL_RETRY
        while True:
            try:
                await self.db.run(
                    self.store.finish_run, run_id, outcome.as_result(), self.clock.time_ms(), report
                )
                break
            except OutboxFull as exc:
                log.error("run %s: %s; waiting %.0fs to record its result", run_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTBOX_FULL_RETRY_CAP)
            except Exception as exc:
                log.error("cannot record the result of run %s: %s", run_id, exc)
                return
        if report:
            self.on_outbox()


def _same(a: TaskObject, b: TaskObject) -> bool:
    return (a.generation, a.epoch) == (b.generation, b.epoch)
