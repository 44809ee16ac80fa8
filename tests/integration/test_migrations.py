"""Schema migrations on both stores, against real SQLite files and a real PostgreSQL database.

The fixtures under tests/fixtures/ were written by the stores of commit 1f63a07, before
migrations existed (tests/fixtures/README.md); every test upgrades a copy.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cloudcore import migrations
from cloudcore.store import CloudStore, Placement, metadata
from edgecore.migrations import MIGRATIONS, Migration, backup_path
from edgecore.store import SCHEMA_VERSION, EdgeStore, OutboxItem
from edgecore.store import metadata as edge_metadata
from shared.errors import JoinError, StoreError
from shared.outbox import OutboxClass
from shared.protocol.messages import Envelope, Op
from tests.integration.conftest import empty_pg_schema

FIXTURES = Path(__file__).parent.parent / "fixtures"
NOW = 1_732_500_000_000
FIXTURE_NOW = 1_732_400_000_000  # the clock of make_fixtures.py (join tokens last an hour)


def schema_diff(url: str, model: sa.MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match `model`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, model))
    finally:
        engine.dispose()


def schema_of(url: str) -> dict[str, Any]:
    """Tables, columns and indexes as the database reports them (to show nothing changed)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: (
                    [
                        (c["name"], str(c["type"]), c["nullable"])
                        for c in inspector.get_columns(table)
                    ],
                    sorted(i["name"] or "" for i in inspector.get_indexes(table)),
                )
                for table in sorted(inspector.get_table_names())
            }
    finally:
        engine.dispose()


def version_of(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return migrations.current_revision(conn)
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def alembic_upgrade(url: str, revision: str) -> None:
    """Run Alembic itself (as a release at `revision` would have) on an empty database."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), revision)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def cloud_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    url: str = request.getfixturevalue("pg_database")
    empty_pg_schema(url)
    return url


@pytest.fixture
def cloud_store(cloud_url: str) -> Iterator[CloudStore]:
    store = CloudStore(cloud_url)
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------- cloud: Alembic


def test_migrated_schema_equals_the_model(cloud_store: CloudStore) -> None:
    cloud_store.create_schema()

    assert version_of(cloud_store.url) == migrations.head_revision()
    # A change to `metadata` without a migration (or the reverse) fails here.
    assert schema_diff(cloud_store.url, metadata) == []


def test_the_model_check_sees_a_missing_migration(cloud_store: CloudStore) -> None:
    """The check above is not vacuous: a column added to the model only is reported."""
    cloud_store.create_schema()
    model = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(model)
    model.tables["nodes"].append_column(sa.Column("zone", sa.String(32), nullable=True))

    diff = schema_diff(cloud_store.url, model)

    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "nodes", "zone")]


def test_create_schema_twice_changes_nothing(cloud_store: CloudStore) -> None:
    cloud_store.create_schema()
    cloud_store.register_node("n1", NOW)
    before = schema_of(cloud_store.url)

    cloud_store.create_schema()

    assert schema_of(cloud_store.url) == before
    assert [n["name"] for n in cloud_store.list_nodes()] == ["n1"]


def test_a_database_from_a_newer_cloudcore_is_refused_untouched(cloud_store: CloudStore) -> None:
    cloud_store.create_schema()
    cloud_store.close()
    execute(
        cloud_store.url,
        "UPDATE alembic_version SET version_num = '9001_from_the_future'",
        "CREATE TABLE twins (id INTEGER PRIMARY KEY)",
    )
    before = schema_of(cloud_store.url)

    newer = CloudStore(cloud_store.url)
    try:
        with pytest.raises(StoreError) as caught:
            newer.create_schema()
    finally:
        newer.close()

    message = str(caught.value)
    assert "'9001_from_the_future'" in message and "upgrade cloudcore" in message
    assert f"newest is {migrations.head_revision()!r}" in message
    assert schema_of(cloud_store.url) == before
    assert version_of(cloud_store.url) == "9001_from_the_future"


def test_a_database_with_only_some_tables_is_refused(cloud_store: CloudStore) -> None:
    execute(cloud_store.url, "CREATE TABLE nodes (name VARCHAR(63) PRIMARY KEY)")
    before = schema_of(cloud_store.url)

    with pytest.raises(StoreError, match=r"some of cloudcore's tables \(nodes\) but not all"):
        cloud_store.create_schema()

    assert schema_of(cloud_store.url) == before
    assert version_of(cloud_store.url) is None


@pytest.mark.parametrize("origin", ["alembic-0001", "pre-migration"])
def test_a_baseline_database_is_upgraded_and_keeps_its_data(cloud_url: str, origin: str) -> None:
    """A database made by revision 0001 through Alembic, or by the pre-migration code
    (the same tables, no alembic_version), upgrades to the head and keeps its rows."""
    alembic_upgrade(cloud_url, migrations.BASELINE)
    if origin == "pre-migration":
        execute(cloud_url, "DROP TABLE alembic_version")
    execute(
        cloud_url,
        "INSERT INTO counters (name, value) VALUES ('rv', 7), ('generation', 3)",
        "INSERT INTO nodes (name, state, reason, labels, capacity, heartbeat, software, "
        "store_id, acked_rv, received_seq, resync_pending, joined_ms, last_seen_ms, "
        "connected_ms, transport, peer) VALUES ('pi-1', 'Ready', 'connected', "
        "'{\"zone\": \"a\"}', '{}', '{}', 'edgesync 0.1.0', 's1', 7, 2, false, 1, 2, 2, "
        "'websocket', '127.0.0.1:1')",
        "INSERT INTO tasks (namespace, name, document, generation, created_ms, updated_ms) "
        "VALUES ('default', 'hello', '{\"metadata\": {\"name\": \"hello\"}}', 3, 1, 1)",
        "INSERT INTO assignments (res, node, epoch, generation, rv, phase, runs, last_result, "
        "updated_ms) VALUES ('task/default/hello', 'pi-1', 5, 3, 7, 'succeeded', 1, NULL, 1)",
        "INSERT INTO results (node, seq, res, run_id, epoch, generation, phase, stale, body, "
        "received_ms) VALUES ('pi-1', 2, 'task/default/hello', 'run-1', 1, 3, 'succeeded', "
        'false, \'{"run_id": "run-1", "exit_code": 0}\', 5)',
    )

    store = CloudStore(cloud_url)
    try:
        store.create_schema()
        assert version_of(cloud_url) == migrations.head_revision()
        [node] = store.list_nodes()
        assert (node["name"], node["labels"], node["acked_rv"]) == ("pi-1", {"zone": "a"}, 7)
        task = store.get_task("default", "hello")
        assert task["generation"] == 3 and task["assignments"][0]["phase"] == "succeeded"
        assert [r["body"]["exit_code"] for r in store.results_for("task/default/hello")] == [0]
        # The sequences continue where they were; epochs start above every one in use.
        assert store.put_task("default", "hello", {"metadata": {"name": "hello"}, "v": 2}, NOW) == 4
        written = store.apply_placements(
            [Placement("task/default/hello", 4, {"v": 2}, frozenset({"pi-1", "pi-2"}))], NOW
        )
        epochs = {n: rows[0].body["epoch"] for n, rows in written.items() if rows[0].body}
        assert epochs == {"pi-1": 5, "pi-2": 6}  # pi-1 keeps its epoch, pi-2 gets a new one
    finally:
        store.close()
    assert schema_diff(cloud_url, metadata) == []


def test_a_failing_cloud_migration_leaves_sqlite_as_it_was(tmp_path: Path) -> None:
    """Stamping and every revision run in one transaction, also on SQLite (where the
    driver would otherwise commit each DDL statement by itself)."""
    path = tmp_path / "cloud.db"
    shutil.copyfile(FIXTURES / "cloud-1f63a07.db", path)
    conn = sqlite3.connect(path)
    with conn:  # a column revision 0002 adds: its ALTER fails for real
        conn.execute("ALTER TABLE assignments ADD COLUMN revoked_ms BIGINT")
    conn.close()
    before = dump(path)

    store = CloudStore(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreError, match=r"migrate the schema.*revoked_ms"):
            store.create_schema()
    finally:
        store.close()

    assert dump(path) == before  # not even the stamp of revision 0001 stayed
    assert version_of(f"sqlite:///{path}") is None


def test_the_cloud_fixture_from_1f63a07_upgrades_and_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "cloud.db"
    shutil.copyfile(FIXTURES / "cloud-1f63a07.db", path)
    url = f"sqlite:///{path}"
    assert version_of(url) is None  # written before migrations

    store = CloudStore(url)
    try:
        store.create_schema()
        assert version_of(url) == migrations.head_revision()
        assert schema_diff(url, metadata) == []

        nodes = {n["name"]: n for n in store.list_nodes()}
        assert sorted(nodes) == ["pi-garage", "pi-kitchen"]
        assert nodes["pi-garage"]["state"] == "NotReady"
        # 0003: labels nodes reported before stay the placement labels (no task moves)
        # and are kept apart as reported_labels from now on.
        assert nodes["pi-kitchen"]["labels"] == {"zone": "kitchen"}
        assert nodes["pi-kitchen"]["reported_labels"] == {"zone": "kitchen"}
        assert nodes["pi-garage"]["received_seq"] == 4
        garage = store.get_node("pi-garage")
        assert sorted(a["res"] for a in garage["assignments"]) == [
            "task/default/disk",
            "task/default/hello",
        ]
        assert [t["name"] for t in store.list_tasks()] == ["disk", "hello"]
        results = store.results_for("task/default/hello")
        assert sorted(r["node"] for r in results) == ["pi-garage", "pi-kitchen"]
        assert all(r["body"]["stdout_tail"] == "hi\n" for r in results)

        # Tokens: the used one stays used, the open one can still be consumed once.
        with pytest.raises(JoinError, match="already used"):
            store.consume_join_token("tok-used", "secret-used", NOW)
        grant = store.consume_join_token("tok-open", "secret-open", FIXTURE_NOW + 60_000)
        assert grant == ("jetson-lab", None)

        # The session cursors resume; a duplicate result is recognised, a new one applied.
        start = store.node_connected(
            "pi-garage",
            store_id="store-pi-garage",
            reported_labels={"zone": "garage"},
            capacity={},
            software="edgesync 0.2.0",
            applied_rv=3,
            transport="websocket",
            peer="127.0.0.1:1",
            now_ms=NOW,
        )
        assert (start.received_seq, start.resync) == (4, False)
        gen = int(store.get_task("default", "disk")["generation"])
        body = {"run_id": "run-new", "generation": gen, "epoch": 1, "phase": "succeeded"}
        outcomes = store.record_upstream(
            "pi-garage",
            [
                Envelope(op=Op.RESULT, id="x4", ts=NOW, res="task/default/disk", seq=4, body=body),
                Envelope(op=Op.RESULT, id="x5", ts=NOW, res="task/default/disk", seq=5, body=body),
            ],
            NOW,
            20,
        )
        assert [o.verdict for o in outcomes] == ["duplicate", "applied"]

        # New revisions continue above the old ones.
        old_top = max(r.rv for n in nodes for r in store.desired_after(n, 0, 100))
        written = store.apply_placements(
            [Placement("task/default/disk", gen + 100, {"v": 2}, frozenset({"pi-garage"}))],
            NOW,
            tasks=["task/default/disk"],
        )
        assert [r.rv for r in written["pi-garage"]] == [old_top + 1]
        # Fencing epochs (revision 0002) continue above the fixture's epoch 1.
        gen_hello = int(store.get_task("default", "hello")["generation"])
        moved = store.apply_placements(
            [
                Placement(
                    "task/default/hello", gen_hello, {}, frozenset({"pi-kitchen", "jetson-lab"})
                )
            ],
            NOW,
            tasks=["task/default/hello"],
        )
        assert [r.op for r in moved["pi-garage"]] == ["delete"]
        [new] = moved["jetson-lab"]
        assert new.body is not None and new.body["epoch"] == 2
        late = {"run_id": "late", "generation": gen_hello, "epoch": 1, "phase": "succeeded"}
        [outcome] = store.record_upstream(
            "pi-garage",
            [Envelope(op=Op.RESULT, id="x6", ts=NOW, res="task/default/hello", seq=6, body=late)],
            NOW,
            20,
        )
        assert outcome.verdict == "stale"
    finally:
        store.close()


# ---------------------------------------------------------------- edge: the ordered list


def dump(path: Path) -> list[str]:
    """Every schema object and row of a SQLite file, as SQL (the stdlib driver)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def edge_fixture(tmp_path: Path) -> Path:
    path = tmp_path / "edge.db"
    shutil.copyfile(FIXTURES / "edge-1f63a07.db", path)
    return path


def open_edge(path: Path, steps: tuple[Migration, ...] = MIGRATIONS) -> EdgeStore:
    store = EdgeStore(path, migrations=steps)
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


def add_devices(conn: Any) -> None:
    conn.exec_driver_sql("CREATE TABLE devices (id INTEGER PRIMARY KEY)")


def test_edge_schema_from_nothing_equals_the_model(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    open_edge(path).close()

    assert schema_diff(f"sqlite:///{path}", edge_metadata) == []
    assert (
        dump(path).count(f"INSERT INTO \"meta\" VALUES('schema_version','{SCHEMA_VERSION}');") == 1
    )


def test_a_failing_edge_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """All pending steps run in one transaction: DDL and rows of the steps that worked
    are rolled back with the one that failed."""
    path = edge_fixture(tmp_path)
    open_edge(path).close()  # at the newest version; the next step is the failing one
    before = dump(path)

    def breaks_halfway(conn: Any) -> None:
        conn.exec_driver_sql("CREATE TABLE twins (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("DROP TABLE runs")
        conn.exec_driver_sql("ALTER TABLE objects ADD COLUMN zone TEXT")
        conn.exec_driver_sql("DELETE FROM outbox")
        conn.exec_driver_sql("CREATE TABLE objects (res TEXT)")  # already exists: fails

    works = Migration(SCHEMA_VERSION + 1, "adds a table", False, add_devices)
    fails = Migration(SCHEMA_VERSION + 2, "breaks halfway", False, breaks_halfway)

    with pytest.raises(StoreError, match=r"open and migrate the store.*already exists"):
        open_edge(path, (*MIGRATIONS, works, fails))

    assert dump(path) == before
    store = open_edge(path)  # today's code still opens it
    try:
        assert len(store.runs_for("task/default/hello")) == 3
    finally:
        store.close()


def test_a_destructive_step_backs_up_the_file_first(tmp_path: Path) -> None:
    path = edge_fixture(tmp_path)
    open_edge(path).close()
    before = dump(path)
    seen: list[bool] = []

    def rebuild_runs(conn: Any) -> None:
        seen.append(backup_path(path, SCHEMA_VERSION).exists())  # the copy exists already
        conn.exec_driver_sql("DROP TABLE runs")

    step = Migration(SCHEMA_VERSION + 1, "drops runs", True, rebuild_runs)
    open_edge(path, (*MIGRATIONS, step)).close()

    copy = backup_path(path, SCHEMA_VERSION)
    assert seen == [True]
    assert copy.name == f"edge.db.schema-{SCHEMA_VERSION}.bak"
    assert dump(copy) == before  # the file as it was before the step
    assert copy.stat().st_mode & 0o777 == 0o600
    assert not any("CREATE TABLE runs" in line for line in dump(path))


def backups(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".bak"))


def test_no_backup_without_a_destructive_step_or_for_a_new_file(tmp_path: Path) -> None:
    path = edge_fixture(tmp_path)
    open_edge(path).close()
    for name in backups(tmp_path):  # made by today's own destructive steps, if any
        (tmp_path / name).unlink()
    step = Migration(SCHEMA_VERSION + 1, "adds a table", False, add_devices)
    open_edge(path, (*MIGRATIONS, step)).close()
    open_edge(tmp_path / "fresh.db").close()

    assert backups(tmp_path) == []


def test_steps_must_be_numbered_in_order(tmp_path: Path) -> None:
    gap = Migration(SCHEMA_VERSION + 2, "skips a number", False, lambda c: None)
    with pytest.raises(ValueError, match=r"numbered 1\.\.n"):
        open_edge(tmp_path / "edge.db", (*MIGRATIONS, gap))


def test_the_edge_fixture_from_1f63a07_migrates_and_stays_usable(tmp_path: Path) -> None:
    path = edge_fixture(tmp_path)
    old = sqlite3.connect(path)
    try:
        old_outbox = old.execute(
            "SELECT seq, op, res, kind, body FROM outbox ORDER BY seq"
        ).fetchall()
        old_store_id = old.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
    finally:
        old.close()
    before = dump(path)
    assert [row[3] for row in old_outbox] == ["result", "status"] * 3

    store = open_edge(path)
    try:
        # Upgrading past the outbox rebuild (destructive) left a copy of the old file.
        assert dump(backup_path(path, 1)) == before
        assert schema_diff(f"sqlite:///{path}", edge_metadata) == []
        assert store.identity() == (old_store_id, 6)

        # Every row, in order, with its seq; 1f63a07's kinds mapped to classes.
        rows = store.outbox_after(0, 100)
        assert [(r.seq, r.op.value, r.res) for r in rows] == [
            (s, o, r) for s, o, r, _, _ in old_outbox
        ]
        assert [r.cls.value for r in rows] == [k for *_, k, _ in old_outbox]
        assert [r.body for r in rows] == [json.loads(b) for *_, b in old_outbox]
        assert store.outbox_size() == 6

        # Desired state and runs are readable through the store.
        assert sorted(t.res for t in store.tasks()) == ["task/default/disk", "task/default/hello"]
        history = store.run_history()
        assert sum(n for n, _ in history.values()) == 5
        assert store.recover_interrupted_runs(NOW) == 1  # run-open was cut by the upgrade

        # New rows continue the old numbering (seqs 1-3 were acked before the upgrade).
        store.enqueue([OutboxItem(Op.REPORT, "device/default/d", OutboxClass.TELEMETRY, {})], NOW)
        seqs = [r.seq for r in store.outbox_after(0, 100)]
        assert seqs == [4, 5, 6, 7, 8, 9, 10, 11]  # 10: run-open's result, 11: the telemetry
        store.outbox_acked(9)
        assert store.outbox_size() == 2
    finally:
        store.close()
    assert version_of_edge(path) == SCHEMA_VERSION


def version_of_edge(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        )
    finally:
        conn.close()


def test_an_acked_empty_outbox_keeps_its_numbering_through_the_rebuild(tmp_path: Path) -> None:
    path = edge_fixture(tmp_path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM outbox")  # everything acked: only sqlite_sequence remembers 9
    conn.close()

    store = open_edge(path)
    try:
        assert store.outbox_size() == 0
        store.enqueue([OutboxItem(Op.REPORT, "device/default/d", OutboxClass.TELEMETRY, {})], NOW)
        assert [r.seq for r in store.outbox_after(0, 10)] == [10]
    finally:
        store.close()
