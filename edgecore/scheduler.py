"""The edge's local scheduler: runs this node's tasks by trigger and priority,
whether or not the cloud is reachable (design.md, "Scheduling: Edge").

It reads tasks from the local store (what the cloud last sent), starts due
runs up to `max_concurrent`, and records each run's start and result with
their outbox rows; the link delivers them when it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecore.config import RuntimeConfig
from edgecore.runtime.command import RunOutcome, RunSettings, run_command
from edgecore.store import EdgeStore, TaskObject
from shared.clock import Clock
from shared.dbthread import DbThread
from shared.errors import ResourceError
from shared.ids import new_ulid
from shared.resources import Task, task_from_document
from shared.runpolicy import run_limits
from shared.triggers import next_due_ms

log = logging.getLogger(__name__)

PAUSED_RECHECK = 1.0


@dataclass
class _Running:
    task: TaskObject
    run: asyncio.Task[None]
    stop_reason: str = ""
    report: bool = True


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
    ) -> None:
        self.config = config
        self.store = store
        self.db = db
        self.clock = clock
        self.data_dir = data_dir
        self.node = node
        self.on_outbox = on_outbox
        self.link_up = link_up
        self.max_concurrent = config.max_concurrent or os.cpu_count() or 1
        self._wake = asyncio.Event()
        self._reload = True
        self._tasks: dict[str, TaskObject] = {}
        self._specs: dict[tuple[str, int], Task | None] = {}
        self._since: dict[tuple[str, int], int] = {}
        """When this process first held each (task, generation): cron counts from it."""
        self._history: dict[tuple[str, int], tuple[int, int]] = {}
        self._running: dict[str, _Running] = {}

    @property
    def running_count(self) -> int:
        return len(self._running)

    def desired_changed(self, resources: list[str]) -> None:
        """The link applied new desired state: reload tasks."""
        self._reload = True
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
                if self._reload:
                    self._reload = False
                    await self._load()
                timeout = self._start_due()
                if self._wake.is_set():
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    pass
        finally:
            await self.stop_all("edgecore stopped while the task was running", report=True)

    async def stop_all(self, reason: str, report: bool) -> None:
        for res in list(self._running):
            await self._stop(res, reason, report)

    async def _load(self) -> None:
        tasks = await self.db.run(self.store.tasks)
        self._history = await self.db.run(self.store.run_history)
        self._tasks = {t.res: t for t in tasks}
        for res, running in list(self._running.items()):
            current = self._tasks.get(res)
            if current is None:
                await self._stop(res, "stopped: the task was removed from this node", False)
            elif (current.generation, current.epoch) != (
                running.task.generation,
                running.task.epoch,
            ):
                await self._stop(res, "stopped: the task was updated", True)

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

    def _spec(self, task: TaskObject) -> Task | None:
        key = (task.res, task.generation)
        if key not in self._specs:
            try:
                self._specs[key] = task_from_document(task.document)
            except ResourceError as exc:
                log.error(
                    "task %s generation %d is invalid here, not running it: %s",
                    task.res,
                    task.generation,
                    exc,
                )
                self._specs[key] = None
        return self._specs[key]

    def _start_due(self) -> float | None:
        """Start what is due; returns seconds until the next thing may be due (None: never)."""
        now_ms = self.clock.time_ms()
        due: list[tuple[int, TaskObject, Task]] = []
        next_ms: int | None = None
        paused = False
        for task in self._tasks.values():
            typed = self._spec(task)
            if typed is None or task.res in self._running:
                continue
            if typed.spec.offline == "pause" and not self.link_up():
                paused = True
                continue
            key = (task.res, task.generation)
            count, last_start = self._history.get(key, (0, 0))
            since = self._since.setdefault(key, now_ms)
            at = next_due_ms(
                typed.spec.trigger, runs=count, last_start_ms=last_start, since_ms=since
            )
            if at is None:
                continue
            if at <= now_ms:
                due.append((typed.spec.priority, task, typed))
            else:
                next_ms = at if next_ms is None else min(next_ms, at)
        due.sort(key=lambda item: -item[0])
        for _, task, spec in due:
            if len(self._running) >= self.max_concurrent:
                break
            self._launch(task, spec, now_ms)
        waits = [] if next_ms is None else [max(0.0, (next_ms - now_ms) / 1000)]
        if paused:
            waits.append(PAUSED_RECHECK)
        return min(waits) if waits else None

    def _launch(self, task: TaskObject, spec: Task, now_ms: int) -> None:
        run_id = new_ulid(now_ms)
        count, _ = self._history.get((task.res, task.generation), (0, 0))
        self._history[(task.res, task.generation)] = (count + 1, now_ms)
        holder: dict[str, _Running] = {}
        run = asyncio.create_task(
            self._execute(task, spec, run_id, now_ms, holder), name=f"run:{task.res}:{run_id}"
        )
        holder["self"] = self._running[task.res] = _Running(task, run)

    async def _execute(
        self,
        task: TaskObject,
        spec: Task,
        run_id: str,
        now_ms: int,
        holder: dict[str, _Running],
    ) -> None:
        """One run: record its start, run it, record its result, exactly once.

        Whatever the runtime raises (apart from cancellation) ends the run as
        `failed` with the real reason; it is never left `running`.
        """
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
            _, namespace, name = task.res.split("/")
            env = {"EDGESYNC_NODE": self.node, "EDGESYNC_TASK": task.res, "EDGESYNC_RUN_ID": run_id}
            report = True
            try:
                outcome = await run_command(
                    spec.spec.command,
                    self.data_dir,
                    ("work", namespace, name),
                    env,
                    self._run_settings(spec),
                )
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

    def _run_settings(self, task: Task) -> RunSettings:
        config = self.config
        limits = run_limits(
            timeout=task.spec.command.timeout,
            cpus=os.cpu_count() or 1,
            open_files=config.max_open_files,
            memory_mb=task.spec.resources.memory_mb or None,
            default_memory_mb=config.default_memory_mb,
        )
        return RunSettings(
            tail_bytes=config.output_tail_bytes,
            kill_grace=config.kill_grace,
            allow_env=frozenset(config.allow_env),
            run_as=config.run_as,
            limits=limits,
        )

    async def _finish(self, run_id: str, outcome: RunOutcome, report: bool) -> None:
        """Record the result (with its outbox row); a store failure is logged, not raised,
        and the run is then reported as interrupted at the next start."""
        try:
            await self.db.run(
                self.store.finish_run, run_id, outcome.as_result(), self.clock.time_ms(), report
            )
        except Exception as exc:
            log.error("cannot record the result of run %s: %s", run_id, exc)
            return
        if report:
            self.on_outbox()
