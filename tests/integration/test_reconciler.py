"""The background reconciler on a real SQLite store, its time injected (cloudcore/scheduler)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cloudcore.scheduler import Scheduler
from cloudcore.scheduler.reconciler import Written
from cloudcore.store import CloudStore
from shared.aio.dbthread import DbThread
from shared.clock import FakeClock
from shared.resources import parse_task, to_document
from tests.integration.harness import eventually


def document(name: str, nodes: list[str]) -> dict[str, object]:
    doc = {
        "metadata": {"name": name},
        "spec": {"command": {"argv": ["true"]}, "placement": {"nodes": nodes}},
    }
    return to_document(parse_task(doc))


async def test_full_resync_on_the_injected_clock_places_what_no_request_asked_for(
    tmp_path: Path,
) -> None:
    store = CloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    db = DbThread()
    clock = FakeClock()
    notified: list[Written] = []
    await db.run(store.create_schema)
    await db.run(store.register_node, "n1", clock.time_ms())
    scheduler = Scheduler(store, db, clock, notified.append, resync_interval=60.0)
    scheduler.start()
    try:
        await scheduler.ready()
        # Written behind the scheduler's back, as a crash right after the commit leaves it.
        await db.run(store.put_task, "default", "orphan", document("orphan", ["n1"]), 0)
        scheduler.request()  # a wake-up that asks for nothing
        await asyncio.sleep(0.2)
        assert await db.run(store.assignment_count, "task/default/orphan") == 0
        clock.advance(61)
        scheduler.request()
        await eventually(
            lambda: db.run(store.assignment_count, "task/default/orphan"),
            what="the periodic full reconcile to place the orphan",
        )
        assert [sorted(w) for w in notified] == [["n1"]]
    finally:
        await scheduler.stop()
        db.shutdown()


async def test_requests_during_a_reconcile_are_merged_and_every_waiter_answered(
    tmp_path: Path,
) -> None:
    store = CloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    db = DbThread()
    clock = FakeClock()
    await db.run(store.create_schema)
    for n in ("n1", "n2"):
        await db.run(store.register_node, n, clock.time_ms())
    scheduler = Scheduler(store, db, clock, lambda written: None)
    scheduler.start()
    try:
        await scheduler.ready()
        names = [f"t{i}" for i in range(20)]
        for name in names:
            await db.run(store.put_task, "default", name, document(name, ["n1", "n2"]), 0)
        answers = await asyncio.gather(
            *(scheduler.placed(tasks={f"task/default/{n}"}, timeout=10) for n in names)
        )
        assert all(answers)
        counts = [await db.run(store.assignment_count, f"task/default/{n}") for n in names]
        assert counts == [2] * len(names)
    finally:
        await scheduler.stop()
        db.shutdown()
