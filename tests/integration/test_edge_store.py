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

from edgecore.store import SCHEMA_VERSION, EdgeStore, OutboxItem, TaskObject
from shared.errors import OutboxFull, StoreError
from shared.outbox import OutboxClass
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


def telemetry(n: int, res: str = "device/default/thermo") -> OutboxItem:
    return OutboxItem(Op.REPORT, res, OutboxClass.TELEMETRY, {"run_id": f"t{n}", "sample": n})


def twin(res: str, **props: tuple[int, Any]) -> OutboxItem:
    reported = {name: {"version": v, "value": value} for name, (v, value) in props.items()}
    return OutboxItem(Op.REPORT, res, OutboxClass.TWIN, {"reported": reported})


def classes(store: EdgeStore) -> list[tuple[str, str]]:
    return [(r.cls.value, r.body.get("run_id", "")) for r in store.outbox_after(0, 10_000)]


def kept_count(store: EdgeStore) -> int:
    [(value,)] = sql(store.path, "SELECT value FROM meta WHERE key = 'outbox_rows'")
    return int(value)


def real_count(store: EdgeStore) -> int:
    [(count,)] = sql(store.path, "SELECT COUNT(*) FROM outbox")
    return int(count)


def test_outbox_bound_with_mixed_classes_drops_telemetry_then_status(db_path: Path) -> None:
    store = EdgeStore(db_path, outbox_max_rows=6)
    store.open()
    try:
        store.start_run(task(A), "run-a", 0)  # status
        store.enqueue([telemetry(1), telemetry(2)], 1)
        store.finish_run("run-a", {"phase": "succeeded"}, 2)  # result
        store.start_run(task(B), "run-b", 3)  # status
        store.enqueue([twin("twin/default/t1", temp=(1, 20))], 4)
        assert store.outbox_size() == 6  # at the bound, nothing dropped yet

        store.enqueue([telemetry(3)], 5)  # 7 rows: the oldest telemetry goes, not status
        assert classes(store) == [
            ("status", "run-a"),
            ("telemetry", "t2"),
            ("result", "run-a"),
            ("status", "run-b"),
            ("twin", ""),
            ("telemetry", "t3"),
        ]
        store.finish_run("run-b", {"phase": "failed"}, 6)  # a result: both telemetry go first
        store.enqueue([twin("twin/default/t2", hum=(1, 40))], 7)
        assert classes(store) == [
            ("status", "run-a"),
            ("result", "run-a"),
            ("status", "run-b"),
            ("twin", ""),
            ("result", "run-b"),
            ("twin", ""),
        ]
        store.enqueue([telemetry(4)], 8)  # no room: the new telemetry is the oldest there is
        assert [c for c, _ in classes(store)].count("telemetry") == 0
        store.finish_run("run-a", {"phase": "succeeded"}, 9)  # statuses go, oldest first
        assert [c for c, _ in classes(store)] == [
            "result",
            "status",
            "twin",
            "result",
            "twin",
            "result",
        ]
        assert store.outbox_metrics.dropped == {OutboxClass.TELEMETRY: 4, OutboxClass.STATUS: 1}
        assert store.outbox_size() == kept_count(store) == real_count(store) == 6
    finally:
        store.close()


def test_an_outbox_full_of_results_and_twins_refuses_with_a_typed_error(db_path: Path) -> None:
    store = EdgeStore(db_path, outbox_max_rows=3)
    store.open()
    try:
        for name in "ab":
            store.start_run(task(f"task/default/{name}"), f"run-{name}", 0)
            store.finish_run(f"run-{name}", {"phase": "succeeded"}, 1)
        store.enqueue([twin("twin/default/t1", temp=(1, 20))], 2)
        assert [c for c, _ in classes(store)] == ["result", "result", "twin"]
        store.start_run(task(), "run-c", 3)  # its status row is dropped at once; the run starts
        before = outbox(store)
        assert before == outbox(store) and len(before) == 3

        with pytest.raises(OutboxFull) as caught:
            store.finish_run("run-c", {"phase": "succeeded"}, 4)
        message = str(caught.value)
        assert str(store.path) in message and "outbox is full" in message
        assert "outbox_max_rows" in message and "never dropped" in message
        with pytest.raises(OutboxFull):
            store.enqueue([twin("twin/default/t2", hum=(1, 1)), telemetry(1)], 5)

        assert outbox(store) == before  # nothing queued
        phase = {r["run_id"]: r["phase"] for r in store.runs_for(A)}
        assert phase["run-c"] == "running"  # the state change rolled back too
        assert store.outbox_metrics.refused == 3
        assert kept_count(store) == real_count(store) == 3

        store.outbox_acked(before[0][0])  # the link drains a row: there is room again
        store.finish_run("run-c", {"phase": "succeeded"}, 6)
        assert {r["run_id"]: r["phase"] for r in store.runs_for(A)}["run-c"] == "succeeded"
    finally:
        store.close()


def test_outbox_count_stays_right_across_acks_drops_and_a_restart(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = EdgeStore(db_path, outbox_max_rows=5)
    store.open()
    seen: list[int] = []

    def check() -> None:
        assert kept_count(store) == real_count(store) == store.outbox_size()
        seen.append(store.outbox_size())

    store.enqueue([telemetry(i) for i in range(3)], 0)
    check()
    store.start_run(task(), "run-1", 1)
    store.finish_run("run-1", {"phase": "succeeded"}, 2)
    check()
    store.enqueue([telemetry(i) for i in range(3, 7)], 3)  # drops 4
    check()
    store.outbox_acked(store.outbox_after(0, 1)[0].seq)
    check()
    store.outbox_acked(0)  # acks nothing
    check()
    store.enqueue([twin("twin/default/t", x=(1, 1)), twin("twin/default/t", x=(2, 2))], 4)
    check()  # two reports, but the second replaced the first: one row more
    store = reopen(store)
    try:
        check()
        store.outbox_acked(10_000)
        check()
        assert seen == [3, 5, 5, 4, 4, 5, 5, 0]
        assert "outbox count was" not in caplog.text  # never needed repairing
    finally:
        store.close()


def test_outbox_count_is_repaired_at_open_after_an_edit_behind_the_store(
    store: EdgeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.enqueue([telemetry(i) for i in range(4)], 0)
    sql(store.path, "DELETE FROM outbox WHERE seq > 1")

    again = reopen(store)
    try:
        assert again.outbox_size() == 1
        assert "outbox count was 4, the outbox holds 1 rows; corrected" in caplog.text
    finally:
        again.close()


def test_enqueue_is_one_transaction_for_many_rows(store: EdgeStore) -> None:
    commits: list[str] = []
    statements: list[str] = []
    event.listen(store.engine, "commit", lambda conn: commits.append("commit"))
    event.listen(
        store.engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt)
    )

    store.enqueue([telemetry(i) for i in range(200)], 0)
    store.enqueue([], 1)  # nothing to do: no transaction at all

    assert commits == ["commit"]
    assert not [s for s in statements if "count(" in s.lower()]  # the kept count, no scan
    assert sum(s.lstrip().upper().startswith("INSERT") for s in statements) == 1  # executemany
    rows = store.outbox_after(0, 1000)
    assert [r.body["sample"] for r in rows] == list(range(200))
    assert [r.seq for r in rows] == list(range(1, 201))


def test_twin_reports_are_coalesced_only_when_no_version_is_lost(store: EdgeStore) -> None:
    t1, t2 = "twin/default/t1", "twin/default/t2"
    store.enqueue([twin(t1, temp=(1, 20)), twin(t2, temp=(1, 5))], 0)
    store.enqueue([twin(t1, temp=(2, 21), hum=(1, 40))], 1)  # carries temp@1's successor
    store.enqueue([twin(t1, hum=(2, 41))], 2)  # lacks temp: both stay
    # Same temp version with another value: the temp@2=21 report stays; hum@2 is carried.
    store.enqueue([twin(t1, temp=(2, 99), hum=(2, 41))], 3)

    bodies = [(r.res, r.body["reported"]) for r in store.outbox_after(0, 100)]
    assert bodies == [
        (t2, {"temp": {"version": 1, "value": 5}}),  # another resource: untouched
        (t1, {"temp": {"version": 2, "value": 21}, "hum": {"version": 1, "value": 40}}),
        (t1, {"temp": {"version": 2, "value": 99}, "hum": {"version": 2, "value": 41}}),
    ]
    assert store.outbox_metrics.coalesced == 2
    # Within one batch too; seqs keep increasing (the replacement is queued last).
    store.enqueue([twin(t2, temp=(2, 6)), twin(t2, temp=(3, 7))], 4)
    t2_rows = [r for r in store.outbox_after(0, 100) if r.res == t2]
    assert [r.body["reported"]["temp"]["version"] for r in t2_rows] == [3]
    assert t2_rows[0].seq == max(r.seq for r in store.outbox_after(0, 100))
    assert store.outbox_metrics.coalesced == 4
    assert store.outbox_size() == real_count(store) == 3


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


def test_recovery_at_start_queues_its_results_even_above_the_bound(db_path: Path) -> None:
    """An outbox full of results must not keep edgecore from starting (and so from ever
    draining it): the failed results of interrupted runs go in above the bound."""
    store = EdgeStore(db_path, outbox_max_rows=2)
    store.open()
    for name in "ab":
        store.start_run(task(f"task/default/{name}"), f"run-{name}", 0)
        store.finish_run(f"run-{name}", {"phase": "succeeded"}, 1)
    store.start_run(task(B), "cut", 2)  # its status row is dropped; the outbox stays full
    with pytest.raises(OutboxFull):
        store.finish_run("cut", {"phase": "succeeded"}, 3)

    again = reopen(store, outbox_max_rows=2)  # as after a power cut
    try:
        assert again.recover_interrupted_runs(4) == 1
        assert classes(again) == [
            ("result", "run-a"),
            ("result", "run-b"),
            ("result", "cut"),
        ]
        assert again.outbox_size() == real_count(again) == 3
        assert again.outbox_metrics.refused == 0
    finally:
        again.close()
