"""EdgeStore on a real SQLite file: idempotency, atomicity, the outbox, and failure modes."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from edgecore.store import SCHEMA_VERSION, EdgeStore, TaskObject
from shared.errors import StoreError
from shared.protocol.messages import Envelope, Op

A, B = "task/default/a", "task/default/b"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "edge.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[EdgeStore]:
    edge_store = EdgeStore(db_path)
    edge_store.open()
    try:
        yield edge_store
    finally:
        edge_store.close()


def reopen(store: EdgeStore, **kw: Any) -> EdgeStore:
    store.close()
    again = EdgeStore(store.path, **kw)
    again.open()
    return again


def apply(
    res: str, rv: int, generation: int = 1, document: dict[str, Any] | None = None
) -> Envelope:
    body = {"document": document or {"name": res}, "generation": generation, "epoch": 1}
    return Envelope(op=Op.APPLY, id=f"a{rv}", ts=0, res=res, rv=rv, body=body)


def delete(res: str, rv: int) -> Envelope:
    return Envelope(op=Op.DELETE, id=f"d{rv}", ts=0, res=res, rv=rv)


def task(res: str = A, generation: int = 1) -> TaskObject:
    return TaskObject(res=res, rv=1, document={}, generation=generation, epoch=1)


def objects(store: EdgeStore) -> dict[str, tuple[int, int]]:
    return {t.res: (t.rv, t.generation) for t in store.tasks()}


def outbox(store: EdgeStore) -> list[tuple[int, str, str, str]]:
    return [
        (r.seq, r.op.value, r.res, r.body.get("run_id", "")) for r in store.outbox_after(0, 10_000)
    ]


def sql(path: Path, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement with the stdlib driver, outside the store."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- desired state


def test_apply_batch_is_idempotent_and_deletes_remove_objects(store: EdgeStore) -> None:
    assert store.apply_batch([apply(A, 1), apply(B, 2)]) == [A, B]
    assert objects(store) == {A: (1, 1), B: (2, 1)}

    # Redelivery after a crash between commit and ack: everything at or below 2 is skipped.
    assert store.apply_batch([apply(A, 1, generation=9), apply(B, 2, generation=9)]) == []
    assert objects(store) == {A: (1, 1), B: (2, 1)}

    # A batch overlapping what was applied: only the tail is applied.
    assert store.apply_batch([apply(B, 2, generation=9), apply(A, 3, 2), delete(B, 4)]) == [A, B]
    assert objects(store) == {A: (3, 2)}
    assert store.identity()[1] == 4
    assert store.apply_batch([delete(B, 4)]) == []  # the delete is not re-applied either
    assert store.apply_batch([delete(A, 5)]) == [A]
    assert objects(store) == {}
    assert store.identity()[1] == 5


def test_applied_rv_and_store_id_persist_across_reopen(store: EdgeStore) -> None:
    store.apply_batch([apply(A, 7), apply(B, 9)])
    store_id, applied = store.identity()

    again = reopen(store)
    try:
        assert again.identity() == (store_id, 9) == (store_id, applied)
        assert objects(again) == {A: (7, 1), B: (9, 1)}
        assert again.apply_batch([apply(A, 9, 5)]) == []
    finally:
        again.close()
    other = EdgeStore(store.path.with_name("other.db"))
    other.open()
    assert other.identity()[0] != store_id  # each store has its own identity
    other.close()


# ---------------------------------------------------------------- runs and the outbox


def test_start_and_finish_run_write_their_outbox_rows(store: EdgeStore) -> None:
    store.start_run(task(), "run-1", 100)
    [run] = store.runs_for(A)
    assert (run["phase"], run["started_ms"]) == ("running", 100)
    [started] = store.outbox_after(0, 10)
    assert (started.op, started.res) == (Op.REPORT, A)
    assert started.body == {
        "run_id": "run-1",
        "generation": 1,
        "epoch": 1,
        "phase": "running",
        "started_ms": 100,
    }

    store.finish_run("run-1", {"phase": "succeeded", "exit_code": 0}, 200)

    [run] = store.runs_for(A)
    assert (run["phase"], run["finished_ms"]) == ("succeeded", 200)
    rows = store.outbox_after(0, 10)
    assert [(r.op, r.res) for r in rows] == [(Op.REPORT, A), (Op.RESULT, A)]
    assert rows[1].seq > rows[0].seq
    assert rows[1].body["exit_code"] == 0 and rows[1].body["finished_ms"] == 200
    assert rows[1].body == run["result"]


def test_finish_run_without_report_writes_no_outbox_row(store: EdgeStore) -> None:
    store.start_run(task(), "run-1", 100)
    store.finish_run("run-1", {"phase": "failed"}, 200, report=False)
    assert [op for _, op, _, _ in outbox(store)] == ["report"]
    assert store.runs_for(A)[0]["phase"] == "failed"


def test_duplicate_run_id_changes_nothing(store: EdgeStore) -> None:
    store.start_run(task(), "run-1", 100)
    before = outbox(store)
    with pytest.raises(StoreError, match="record a run start"):
        store.start_run(task(B), "run-1", 200)
    assert outbox(store) == before
    assert store.runs_for(B) == []


def test_outbox_seq_is_never_reused(store: EdgeStore) -> None:
    for i in range(3):
        store.start_run(task(), f"run-{i}", i)
    assert [seq for seq, *_ in outbox(store)] == [1, 2, 3]
    sql(store.path, "DELETE FROM outbox WHERE seq >= 2")  # the newest rows vanish
    store.outbox_acked(1)
    assert outbox(store) == []

    again = reopen(store)
    try:
        again.start_run(task(), "run-new", 10)
        [(seq, *_)] = outbox(again)
        assert seq == 4  # a plain rowid table would hand out 1 again
    finally:
        again.close()


def test_outbox_acked_drops_only_rows_up_to_the_cursor(store: EdgeStore) -> None:
    for i in range(4):
        store.start_run(task(), f"run-{i}", i)
    store.outbox_acked(2)
    assert [seq for seq, *_ in outbox(store)] == [3, 4]
    assert [r.seq for r in store.outbox_after(3, 10)] == [4]


def test_outbox_bound_drops_oldest_status_rows_never_results(db_path: Path) -> None:
    store = EdgeStore(db_path, outbox_max_rows=4)
    store.open()
    try:
        for name in "abcdef":
            store.start_run(task(f"task/default/{name}"), f"run-{name}", 0)  # status
            store.finish_run(f"run-{name}", {"phase": "succeeded"}, 1)  # result
        rows = outbox(store)
        results = [r for r in rows if r[1] == "result"]
        # Every result survives, even beyond the bound; all status rows went first.
        assert [r[3] for r in results] == [f"run-{n}" for n in "abcdef"]
        assert [r for r in rows if r[1] == "report"] == []
        assert store.outbox_size() == 6

        store.outbox_acked(rows[-1][0])
        store.start_run(task(), "run-x", 2)
        store.start_run(task(B), "run-y", 3)
        store.finish_run("run-x", {"phase": "succeeded"}, 4)
        store.start_run(task(B), "run-z", 5)
        store.start_run(task(B), "run-w", 6)  # 5 rows: the oldest status (run-x) goes
        assert [(op, run) for _, op, _, run in outbox(store)] == [
            ("report", "run-y"),
            ("result", "run-x"),
            ("report", "run-z"),
            ("report", "run-w"),
        ]
    finally:
        store.close()


def test_recover_interrupted_runs_fails_them_with_a_result(store: EdgeStore) -> None:
    store.start_run(task(A), "done", 1)
    store.finish_run("done", {"phase": "succeeded"}, 2)
    store.start_run(task(B), "cut-1", 3)
    store.start_run(task(B), "cut-2", 4)
    store.outbox_acked(10)

    again = reopen(store)  # as after a power cut
    try:
        assert again.recover_interrupted_runs(50) == 2
        phases = {r["run_id"]: r["phase"] for r in again.runs_for(A) + again.runs_for(B)}
        assert phases == {"done": "succeeded", "cut-1": "failed", "cut-2": "failed"}
        rows = again.outbox_after(0, 10)
        assert sorted((r.op, r.body["run_id"], r.body["phase"]) for r in rows) == [
            (Op.RESULT, "cut-1", "failed"),
            (Op.RESULT, "cut-2", "failed"),
        ]
        assert all("stopped while the task was running" in r.body["error"] for r in rows)
        assert again.recover_interrupted_runs(60) == 0
    finally:
        again.close()


# ---------------------------------------------------------------- failure modes


def test_newer_schema_version_is_refused_with_an_actionable_message(store: EdgeStore) -> None:
    store.close()
    sql(
        store.path,
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        str(SCHEMA_VERSION + 1),
    )

    newer = EdgeStore(store.path)
    with pytest.raises(StoreError) as caught:
        newer.open()
    newer.close()

    message = str(caught.value)
    assert str(store.path) in message
    assert f"schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}" in message
    assert "upgrade edgecore" in message
    assert sql(store.path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION + 1),)
    ]


def test_refusing_a_newer_store_leaves_it_untouched(store: EdgeStore) -> None:
    store.close()
    sql(
        store.path,
        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
        str(SCHEMA_VERSION + 1),
    )
    sql(store.path, "DROP TABLE runs")  # the newer layout has no such table
    tables = sql(store.path, "SELECT name FROM sqlite_master ORDER BY name")

    newer = EdgeStore(store.path)
    with pytest.raises(StoreError, match="newer edgecore"):
        newer.open()
    newer.close()

    assert sql(store.path, "SELECT name FROM sqlite_master ORDER BY name") == tables


@pytest.mark.parametrize("damage", ["garbage-file", "garbage-pages"])
def test_corrupt_database_raises_store_error(store: EdgeStore, damage: str) -> None:
    for i in range(40):
        store.start_run(task(), f"run-{i}", i)
    store.close()
    path = store.path
    if damage == "garbage-file":
        path.write_bytes(os.urandom(16384))
    else:  # a real header and schema page, then noise
        data = bytearray(path.read_bytes())
        assert len(data) > 8192
        data[4096:] = os.urandom(len(data) - 4096)
        path.write_bytes(bytes(data))

    broken = EdgeStore(path)
    try:
        with pytest.raises(StoreError) as caught:
            broken.open()
            broken.outbox_after(0, 100)
    finally:
        broken.close()
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sa.exc.DatabaseError)


def limit_growth(store: EdgeStore) -> None:
    """Simulate a full disk: new connections may not grow the file beyond its current size."""
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())

    def cap(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA max_page_count = {pages}")
        cur.close()

    event.listen(store.engine, "connect", cap)
    store.engine.dispose()  # pooled connections predate the cap


BIG = {"stdout_tail": os.urandom(64 * 1024).hex()}


def snapshot(store: EdgeStore) -> tuple[Any, ...]:
    return (store.identity(), objects(store), outbox(store), store.runs_for(A), store.runs_for(B))


def test_disk_full_while_finishing_a_run_leaves_the_run_unfinished(store: EdgeStore) -> None:
    store.start_run(task(), "run-1", 1)
    before = snapshot(store)
    limit_growth(store)

    with pytest.raises(StoreError) as caught:
        store.finish_run("run-1", {"phase": "succeeded", **BIG}, 2)

    message = str(caught.value)
    assert str(store.path) in message and "disk full" in message
    assert snapshot(store) == before  # neither the run's result nor its outbox row
    # Small writes still fit, and the store keeps working.
    store.finish_run("run-1", {"phase": "failed"}, 3)
    assert store.runs_for(A)[0]["phase"] == "failed"


def test_disk_full_while_applying_desired_state_applies_nothing(store: EdgeStore) -> None:
    store.apply_batch([apply(A, 1)])
    before = snapshot(store)
    limit_growth(store)

    with pytest.raises(StoreError) as caught:
        store.apply_batch([apply(B, 2), delete(A, 3), apply("task/default/c", 4, document=BIG)])

    assert str(store.path) in str(caught.value)
    assert snapshot(store) == before  # B not added, A not deleted, applied_rv still 1


def test_disk_full_while_starting_a_run_queues_nothing(store: EdgeStore) -> None:
    limit_growth(store)
    before = snapshot(store)

    with pytest.raises(StoreError, match="disk full"):
        for i in range(500):  # fill the pages that are left, then fail
            store.start_run(task(B, generation=i), f"run-{i:04d}-" + "x" * 40, i)

    runs = store.runs_for(B)
    reports = [r for r in outbox(store) if r[2] == B]
    assert 0 < len(runs) < 500
    assert [r["run_id"] for r in runs] == [r[3] for r in reports]  # pairs, never halves
    assert snapshot(store)[:2] == before[:2]
