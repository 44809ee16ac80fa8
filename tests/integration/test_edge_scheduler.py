"""The edge scheduler and its runtime seam, with a real SQLite store and real processes."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecore.config import RuntimeConfig
from edgecore.runtime import RunContext, RuntimeRegistry
from edgecore.runtime.command import RunOutcome
from edgecore.runtime.command_runtime import CommandRuntime
from edgecore.scheduler import LocalScheduler
from edgecore.store import EdgeStore, TaskObject
from shared.admission import Capacity
from shared.aio.dbthread import DbThread
from shared.clock import SystemClock
from shared.protocol.messages import Envelope, Op
from shared.resources import Task
from tests.integration.harness import eventually

CONFIG = RuntimeConfig(run_as="root", max_concurrent=4)
SLEEP = [sys.executable, "-c", "import time; time.sleep(0.4)"]


class RecordingStore(EdgeStore):
    """The real store, noting which resources each task read asked for."""

    reads: list[Collection[str] | None]

    def tasks(self, resources: Collection[str] | None = None) -> list[TaskObject]:
        self.reads.append(None if resources is None else sorted(resources))
        return super().tasks(resources)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RecordingStore]:
    s = RecordingStore(tmp_path / "edge.db")
    s.reads = []
    s.open()
    yield s
    s.close()


def envelope(rv: int, name: str, generation: int = 1, **spec: Any) -> Envelope:
    spec.setdefault("command", {"argv": ["true"]})
    document = {"metadata": {"name": name, "namespace": "default"}, "spec": spec}
    return Envelope(
        op=Op.APPLY,
        id=f"m{rv}",
        ts=0,
        res=f"task/default/{name}",
        rv=rv,
        body={"document": document, "generation": generation, "epoch": 1},
    )


class Scheduling:
    """A running LocalScheduler over `store`, stopped on exit."""

    def __init__(
        self, store: EdgeStore, tmp: Path, runtimes: RuntimeRegistry, capacity: Capacity
    ) -> None:
        self.db = DbThread()
        self.scheduler = LocalScheduler(
            CONFIG,
            store,
            self.db,
            SystemClock(),
            tmp,
            "n1",
            on_outbox=lambda: None,
            link_up=lambda: True,
            runtimes=runtimes,
            capacity=capacity,
        )

    async def __aenter__(self) -> LocalScheduler:
        self.task = asyncio.create_task(self.scheduler.run())
        return self.scheduler

    async def __aexit__(self, *exc: Any) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.db.shutdown()


def finished(store: EdgeStore, name: str, count: int = 1) -> list[dict[str, Any]]:
    runs = [r for r in store.runs_for(f"task/default/{name}") if r["phase"] != "running"]
    return runs if len(runs) >= count else []


async def test_a_change_reloads_only_the_resources_it_names(
    store: RecordingStore, tmp_path: Path
) -> None:
    store.apply_batch([envelope(1, "a"), envelope(2, "b")])
    registry = RuntimeRegistry([CommandRuntime(CONFIG)])
    async with Scheduling(store, tmp_path, registry, Capacity(0, 0)) as scheduler:
        await eventually(lambda: finished(store, "a") and finished(store, "b"))
        assert store.reads == [None]  # the start reads everything once
        store.apply_batch([envelope(3, "c")])
        scheduler.desired_changed(["task/default/c"])
        await eventually(lambda: finished(store, "c"))
        assert store.reads == [None, ["task/default/c"]]
        scheduler.desired_changed(["*"])  # a completed resync: everything
        await eventually(lambda: len(store.reads) == 3)
        assert store.reads[-1] is None
        await asyncio.sleep(0.2)
    # Nothing ran twice: a reload of unchanged tasks keeps their history.
    assert [len(store.runs_for(f"task/default/{n}")) for n in "abc"] == [1, 1, 1]


class Recording:
    """A runtime for a second task kind, to see what the scheduler calls and when."""

    kind = "command"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def prepare(self, task: Task) -> None:
        self.calls.append(("prepare", task.key, task.spec.priority))

    async def run(self, task: Task, context: RunContext) -> RunOutcome:
        self.calls.append(("run", task.key, task.spec.priority))
        assert context.env["EDGESYNC_RUN_ID"] == context.run_id
        assert context.task_dir == ("work", "default", "r")
        return RunOutcome("succeeded", 0, "", "ok", "", 1)

    async def release(self, task: Task) -> None:
        self.calls.append(("release", task.key, task.spec.priority))

    async def close(self) -> None:
        self.calls.append(("close", "", 0))


async def test_runtime_prepares_once_per_generation_and_releases_what_leaves(
    store: RecordingStore, tmp_path: Path
) -> None:
    runtime = Recording()
    every = {"type": "interval", "every": 0.1}
    store.apply_batch([envelope(1, "r", trigger=every, priority=1)])
    async with Scheduling(store, tmp_path, RuntimeRegistry([runtime]), Capacity(0, 0)) as s:
        await eventually(lambda: finished(store, "r", 3))
        store.apply_batch([envelope(2, "r", generation=2, trigger=every, priority=2)])
        s.desired_changed(["task/default/r"])
        await eventually(lambda: ("run", "task/default/r", 2) in runtime.calls)
        store.apply_batch([Envelope(op=Op.DELETE, id="d", ts=0, res="task/default/r", rv=3)])
        s.desired_changed(["task/default/r"])
        await eventually(lambda: ("release", "task/default/r", 2) in runtime.calls)
    names = [c[0] for c in runtime.calls]
    assert names.count("prepare") == 2 and names.count("release") == 2
    assert runtime.calls[0] == ("prepare", "task/default/r", 1)
    first_release = runtime.calls.index(("release", "task/default/r", 1))
    assert runtime.calls[first_release + 1] == ("prepare", "task/default/r", 2)
    assert runtime.calls[-1] == ("close", "", 0)


async def test_a_kind_with_no_runtime_fails_once_with_the_reason(
    store: RecordingStore, tmp_path: Path
) -> None:
    store.apply_batch([envelope(1, "orphan")])
    async with Scheduling(store, tmp_path, RuntimeRegistry([]), Capacity(0, 0)):
        runs = await eventually(lambda: finished(store, "orphan"))
        await asyncio.sleep(0.2)
    assert len(store.runs_for("task/default/orphan")) == 1
    assert "no runtime for task kind 'command'" in runs[0]["result"]["error"]


async def test_admission_holds_runs_that_do_not_fit_beside_running_ones(
    store: RecordingStore, tmp_path: Path
) -> None:
    wants = {"cpu_millicores": 600}
    store.apply_batch(
        [envelope(i + 1, f"w{i}", command={"argv": SLEEP}, resources=wants) for i in range(3)]
    )
    registry = RuntimeRegistry([CommandRuntime(CONFIG)])
    async with Scheduling(store, tmp_path, registry, Capacity(1000, 0)):
        await eventually(lambda: all(finished(store, f"w{i}") for i in range(3)), timeout=15)
    spans = sorted(
        (r["started_ms"], r["finished_ms"])
        for i in range(3)
        for r in store.runs_for(f"task/default/w{i}")
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two 600m runs overlapped on a 1000m node: {spans}"


async def test_a_task_larger_than_the_node_fails_with_the_reason(
    store: RecordingStore, tmp_path: Path
) -> None:
    store.apply_batch([envelope(1, "huge", resources={"memory_mb": 4096})])
    registry = RuntimeRegistry([CommandRuntime(CONFIG)])
    async with Scheduling(store, tmp_path, registry, Capacity(4000, 1024)):
        runs = await eventually(lambda: finished(store, "huge"))
    assert runs[0]["result"]["error"] == (
        "the task requests 4096 MiB memory and this node has 1024 MiB in all"
    )


async def test_a_full_outbox_holds_the_result_until_the_link_drains_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EdgeStore(tmp_path / "edge.db", outbox_max_rows=2)
    store.open()
    store.apply_batch([envelope(i + 1, f"r{i}") for i in range(3)])
    registry = RuntimeRegistry([CommandRuntime(CONFIG)])
    try:
        async with Scheduling(store, tmp_path, registry, Capacity(0, 0)):

            def phases() -> list[str]:
                return sorted(
                    r["phase"] for i in range(3) for r in store.runs_for(f"task/default/r{i}")
                )

            await eventually(lambda: phases() == ["running", "succeeded", "succeeded"])
            await eventually(lambda: "waiting" in caplog.text, what="the OutboxFull log line")
            await asyncio.sleep(0.3)
            assert phases() == ["running", "succeeded", "succeeded"]  # held, not lost
            store.outbox_acked(max(r.seq for r in store.outbox_after(0, 10)))  # the link drained it
            await eventually(lambda: phases() == ["succeeded"] * 3, timeout=10)
        results = [r for r in store.outbox_after(0, 10) if r.op is Op.RESULT]
        assert len(results) == 1 and results[0].res in {f"task/default/r{i}" for i in range(3)}
    finally:
        store.close()
