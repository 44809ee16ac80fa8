"""CloudStore against a real SQLite file and a real PostgreSQL database.

PostgreSQL: the `pg_database` fixture of conftest.py (EDGESYNC_TEST_PG_URL); each test
starts from an empty schema, which `create_schema` migrates to the head revision.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection

from cloudcore import migrations
from cloudcore.store import (
    LIVE,
    CloudStore,
    Placement,
    SessionStart,
    UpstreamContext,
    UpstreamHandler,
    UpstreamOutcome,
    assignments,
    counters,
    desired,
    heartbeat_history,
    nodes,
    results,
)
from shared.errors import ConfigError, Forbidden, JoinError, LocalProtocolError, NotFound
from shared.protocol.messages import Envelope, Op
from tests.integration.conftest import empty_pg_schema

NOW = 1_732_400_000_000
HISTORY = 20


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    url: str = request.getfixturevalue("pg_database")
    empty_pg_schema(url)  # every test starts from an empty schema
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[CloudStore]:
    cloud_store = CloudStore(db_url)
    cloud_store.create_schema()
    try:
        yield cloud_store
    finally:
        cloud_store.close()


def place(res: str, generation: int, *nodes: str) -> Placement:
    name = res.rsplit("/", 1)[-1]
    return Placement(
        res, generation, {"metadata": {"name": name}, "gen": generation}, frozenset(nodes)
    )


def rows(store: CloudStore, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).where(*where)).mappings()]


def rv_counter(store: CloudStore) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(sa.select(counters.c.value).where(counters.c.name == "rv")).scalar_one()
        )


def result(
    res: str, seq: int, *, epoch: int = 1, phase: str = "succeeded", run: str = ""
) -> Envelope:
    body = {"run_id": run or f"run-{seq}", "generation": 1, "epoch": epoch, "phase": phase}
    return Envelope(op=Op.RESULT, id=f"m{seq}", ts=NOW, res=res, seq=seq, body=body)


def report(res: str, seq: int, phase: str = "running") -> Envelope:
    body = {"run_id": f"run-{seq}", "generation": 1, "epoch": 1, "phase": phase}
    return Envelope(op=Op.REPORT, id=f"r{seq}", ts=NOW, res=res, seq=seq, body=body)


A, B, C = "task/default/a", "task/default/b", "task/default/c"


# ---------------------------------------------------------------- desired state


def test_rv_allocation_strictly_increases_across_calls(store: CloudStore) -> None:
    seen: list[list[int]] = []
    steps = [
        [place(A, 1, "n1", "n2")],
        [place(A, 2, "n1", "n2"), place(B, 1, "n1")],
        [place(A, 2, "n1", "n2"), place(B, 1, "n1")],  # no change: no rv spent
        [place(A, 2, "n1"), place(B, 2, "n1", "n2")],
        [],
    ]
    for step in steps:
        before = rv_counter(store)
        changed = store.apply_placements(step, NOW)
        after = rv_counter(store)
        new = sorted(r["rv"] for r in rows(store, desired) if r["rv"] > before)
        assert new == list(range(before + 1, after + 1)), (before, after, new)
        seen.append(new)
        if not new:
            assert changed == {}

    assert [len(s) for s in seen] == [2, 3, 0, 3, 3]
    flat = [rv for s in seen for rv in s]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)


def test_desired_after_is_compacted_in_rv_order_with_tombstones(store: CloudStore) -> None:
    store.apply_placements([place(A, 1, "n1")], NOW)  # rv 1
    store.apply_placements([place(A, 1, "n1"), place(B, 1, "n1")], NOW)  # rv 2
    store.apply_placements([place(A, 2, "n1"), place(B, 1, "n1"), place(C, 1, "n1")], NOW)
    store.apply_placements([place(A, 2, "n1"), place(C, 1, "n1")], NOW)  # B removed

    log = store.desired_after("n1", 0, 100)

    assert [(r.res, r.op) for r in log] == [(A, "apply"), (C, "apply"), (B, "delete")]
    assert [r.rv for r in log] == sorted(r.rv for r in log)
    assert log[0].body is not None and log[0].body["generation"] == 2  # latest only
    assert log[0].body["epoch"] == 1 and log[0].body["document"]["gen"] == 2
    assert log[2].body is None
    assert store.desired_after("n1", log[0].rv, 100) == log[1:]
    assert store.desired_after("n1", 0, 2) == log[:2]
    assert store.desired_after("n1", log[-1].rv, 100) == []
    assert store.desired_after("n2", 0, 100) == []


def test_removing_a_node_from_a_placement_tombstones_only_that_node(store: CloudStore) -> None:
    store.apply_placements([place(A, 1, "n1", "n2")], NOW)
    changed = store.apply_placements([place(A, 1, "n2")], NOW)

    assert set(changed) == {"n1"}
    assert [(r.res, r.op) for r in changed["n1"]] == [(A, "delete")]  # the rows written
    assert [(r.res, r.op) for r in store.desired_after("n1", 0, 10)] == [(A, "delete")]
    assert [(r.res, r.op) for r in store.desired_after("n2", 0, 10)] == [(A, "apply")]
    assert [a["node"] for a in rows(store, assignments, LIVE)] == ["n2"]
    # n1's assignment stays as a tombstone, with its epoch, for late messages (fencing).
    [gone] = rows(store, assignments, assignments.c.node == "n1")
    assert (gone["phase"], gone["revoked_ms"], gone["epoch"]) == ("revoked", NOW, 1)


def test_record_acked_dispatches_phases_and_drops_acked_tombstones(store: CloudStore) -> None:
    store.register_node("n1", NOW)
    store.apply_placements([place(A, 1, "n1"), place(B, 1, "n1")], NOW)
    store.apply_placements([place(A, 1, "n1")], NOW)  # B tombstone
    store.apply_placements([place(A, 1, "n1"), place(C, 1, "n1")], NOW)
    log = {r.res: r for r in store.desired_after("n1", 0, 10)}
    assert log[A].rv < log[B].rv < log[C].rv

    store.record_acked("n1", log[B].rv, NOW + 1)

    phases = {a["res"]: a["phase"] for a in rows(store, assignments)}
    assert phases == {A: "dispatched", B: "revoked", C: "scheduled"}
    assert [(r.res, r.op) for r in store.desired_after("n1", 0, 10)] == [(A, "apply"), (C, "apply")]
    assert store.get_node("n1")["acked_rv"] == log[B].rv

    store.record_acked("n1", log[A].rv, NOW + 2)  # an older ack never moves the cursor back
    assert store.get_node("n1")["acked_rv"] == log[B].rv


def test_unacked_tombstones_are_kept(store: CloudStore) -> None:
    store.register_node("n1", NOW)
    store.apply_placements([place(A, 1, "n1")], NOW)
    store.apply_placements([], NOW)
    [tomb] = store.desired_after("n1", 0, 10)
    store.record_acked("n1", tomb.rv - 1, NOW)
    assert store.desired_after("n1", 0, 10) == [tomb]
    store.record_acked("n1", tomb.rv, NOW)
    assert store.desired_after("n1", 0, 10) == []


# ---------------------------------------------------------------- upstream


@pytest.fixture
def placed(store: CloudStore) -> CloudStore:
    """n1 runs A and C, n2 runs B."""
    store.register_node("n1", NOW)
    store.register_node("n2", NOW)
    store.apply_placements([place(A, 1, "n1"), place(B, 1, "n2"), place(C, 1, "n1")], NOW)
    return store


def assignment(store: CloudStore, res: str, node: str) -> dict[str, Any]:
    [row] = rows(store, assignments, assignments.c.res == res, assignments.c.node == node)
    return row


def test_record_upstream_is_idempotent_by_seq(placed: CloudStore) -> None:
    batch = [report(A, 1), result(A, 2), report(C, 3, "running")]

    first = placed.record_upstream("n1", batch, NOW, HISTORY)
    snapshot = (
        placed.results_for(A),
        rows(placed, assignments),
        placed.get_node("n1")["received_seq"],
    )
    again = placed.record_upstream("n1", batch, NOW + 1000, HISTORY)

    assert [o.verdict for o in first] == ["applied"] * 3
    assert [o.verdict for o in again] == ["duplicate"] * 3
    assert snapshot == (
        placed.results_for(A),
        rows(placed, assignments),
        placed.get_node("n1")["received_seq"],
    )
    a = assignment(placed, A, "n1")
    assert (a["phase"], a["runs"], a["last_result"]["run_id"]) == ("succeeded", 1, "run-2")
    assert snapshot[2] == 3
    # A batch overlapping the applied prefix applies only the new tail.
    mixed = placed.record_upstream("n1", [result(A, 3), result(A, 4)], NOW, HISTORY)
    assert [o.verdict for o in mixed] == ["duplicate", "applied"]
    assert [r["seq"] for r in placed.results_for(A)] == [2, 4]


def test_record_upstream_refuses_resources_of_other_nodes(placed: CloudStore) -> None:
    outcomes = placed.record_upstream(
        "n1", [result(B, 1), result("task/default/nowhere", 2), result(A, 3)], NOW, HISTORY
    )

    assert [o.verdict for o in outcomes] == ["forbidden", "forbidden", "applied"]
    assert "not assigned to node n1" in outcomes[0].detail
    assert placed.results_for(B) == []
    b = assignment(placed, B, "n2")
    assert (b["phase"], b["runs"], b["last_result"]) == ("scheduled", 0, None)
    assert placed.get_node("n1")["received_seq"] == 3  # consumed: the outbox must not jam
    assert placed.get_node("n2")["received_seq"] == 0


def test_results_from_an_older_epoch_are_stale(placed: CloudStore) -> None:
    placed.record_upstream("n1", [result(A, 1, run="current")], NOW, HISTORY)

    outcomes = placed.record_upstream(
        "n1", [result(A, 2, epoch=0, phase="failed", run="old")], NOW, HISTORY
    )

    assert [o.verdict for o in outcomes] == ["stale"]
    stored = placed.results_for(A, "n1")
    assert [(r["run_id"], r["stale"]) for r in stored] == [("current", False), ("old", True)]
    a = assignment(placed, A, "n1")
    assert (a["phase"], a["runs"], a["last_result"]["run_id"]) == ("succeeded", 1, "current")
    assert placed.get_node("n1")["received_seq"] == 2


def test_upstream_without_required_fields_is_invalid(placed: CloudStore) -> None:
    bad = Envelope(op=Op.RESULT, id="x", ts=NOW, res=A, seq=1, body={"phase": "succeeded"})
    [outcome] = placed.record_upstream("n1", [bad], NOW, HISTORY)
    assert outcome.verdict == "invalid"
    assert placed.results_for(A) == []


def test_result_history_is_trimmed_per_task_and_node(placed: CloudStore) -> None:
    keep = 3
    placed.record_upstream("n1", [result(A, s) for s in range(1, 8)], NOW, keep)
    placed.record_upstream("n1", [result(C, 8)], NOW, keep)

    assert [r["seq"] for r in placed.results_for(A, "n1")] == [5, 6, 7]
    assert [r["seq"] for r in placed.results_for(C, "n1")] == [8]  # other task untouched
    assert assignment(placed, A, "n1")["runs"] == 7


# ---------------------------------------------------------------- join tokens


def test_join_token_is_consumed_once(store: CloudStore) -> None:
    store.add_join_token("0123456789abcdef", "n1", "s" * 43, NOW, NOW + 60_000)

    assert store.consume_join_token("0123456789abcdef", "s" * 43, NOW + 1).node == "n1"
    with pytest.raises(JoinError, match="already used"):
        store.consume_join_token("0123456789abcdef", "s" * 43, NOW + 2)


def test_expired_join_token_is_refused(store: CloudStore) -> None:
    store.add_join_token("0123456789abcdef", "n1", "s" * 43, NOW, NOW + 60_000)
    with pytest.raises(JoinError, match="expired"):
        store.consume_join_token("0123456789abcdef", "s" * 43, NOW + 60_000)
    store.add_join_token("fedcba9876543210", "n2", "t" * 43, NOW, NOW + 60_000)
    assert store.consume_join_token("fedcba9876543210", "t" * 43, NOW + 59_999).node == "n2"


def test_forged_or_unknown_join_token_is_refused(store: CloudStore) -> None:
    store.add_join_token("0123456789abcdef", "n1", "s" * 43, NOW, NOW + 60_000)

    with pytest.raises(JoinError, match="unknown or forged"):
        store.consume_join_token("0123456789abcdef", "f" * 43, NOW)
    with pytest.raises(JoinError, match="unknown or forged"):
        store.consume_join_token("fedcba9876543210", "s" * 43, NOW)
    # Neither attempt used the real token up.
    assert store.consume_join_token("0123456789abcdef", "s" * 43, NOW).node == "n1"


def test_join_token_secret_is_stored_hashed(store: CloudStore) -> None:
    secret = uuid.uuid4().hex + "x" * 11
    store.add_join_token("0123456789abcdef", "n1", secret, NOW, NOW + 60_000)
    with store.engine.connect() as conn:
        dump = str(conn.execute(sa.text("SELECT * FROM join_tokens")).all())
    assert secret not in dump


# ---------------------------------------------------------------- nodes


def connect(store: CloudStore, node: str, store_id: str, **kw: Any) -> SessionStart:
    args: dict[str, Any] = dict(
        store_id=store_id,
        reported_labels={"zone": "lab"},
        capacity={"cpus": 4},
        software="edgecore/test",
        applied_rv=0,
        transport="websocket",
        peer="127.0.0.1:1",
        now_ms=NOW,
    )
    args.update(kw)
    return store.node_connected(node, **args)


def test_node_connected_resets_received_seq_when_the_store_id_changes(
    placed: CloudStore,
) -> None:
    assert connect(placed, "n1", "store-1")[:2] == (0, True)
    placed.record_upstream("n1", [result(A, 1), result(A, 5)], NOW, HISTORY)

    assert connect(placed, "n1", "store-1")[:2] == (5, False)  # same store: resume after 5
    assert placed.get_node("n1")["received_seq"] == 5

    seq = connect(placed, "n1", "store-2").received_seq  # reinstalled: its outbox restarts at 1
    assert seq == 0
    node = placed.get_node("n1")
    assert (node["received_seq"], node["store_id"], node["state"]) == (0, "store-2", "Ready")


@pytest.mark.parametrize("reset", ["new-store-id", "re-join"])
def test_results_from_a_new_edge_store_are_recorded_after_the_reset(
    placed: CloudStore, reset: str
) -> None:
    connect(placed, "n1", "store-1")
    placed.record_upstream("n1", [result(A, 1, run="old-1"), result(A, 2, run="old-2")], NOW, 20)
    if reset == "new-store-id":
        assert connect(placed, "n1", "store-2")[0] == 0
    else:
        placed.register_node("n1", NOW)
        assert connect(placed, "n1", "store-2")[0] == 0

    # The reinstalled edge's outbox numbering starts again at 1.
    outcome = placed.record_upstream("n1", [result(A, 1, run="new-1")], NOW, 20)

    assert [o.verdict for o in outcome] == ["applied"]
    assert [r["run_id"] for r in placed.results_for(A, "n1")] == ["old-1", "old-2", "new-1"]
    assert placed.get_node("n1")["received_seq"] == 1


def test_node_connected_reports_label_changes_and_takes_applied_rv(placed: CloudStore) -> None:
    assert connect(placed, "n1", "s", reported_labels={"zone": "lab"})[1] is True
    assert connect(placed, "n1", "s", reported_labels={"zone": "lab"}, applied_rv=3).resync is False
    assert placed.get_node("n1")["acked_rv"] == 3
    assert connect(placed, "n1", "s", reported_labels={"zone": "lab"})[1] is False
    assert connect(placed, "n1", "s", reported_labels={"zone": "attic"})[1] is True


def test_unregistered_node_cannot_connect(store: CloudStore) -> None:
    with pytest.raises(NotFound, match="not registered"):
        connect(store, "ghost", "s")


def test_register_node_on_rejoin_resets_cursors(placed: CloudStore) -> None:
    connect(placed, "n1", "store-1", applied_rv=3)
    placed.record_upstream("n1", [result(A, 4)], NOW, HISTORY)
    placed.record_acked("n1", 3, NOW)
    before = placed.get_node("n1")
    assert (before["acked_rv"], before["received_seq"], before["state"]) == (3, 4, "Ready")

    placed.register_node("n1", NOW + 10)

    node = placed.get_node("n1")
    assert (node["acked_rv"], node["received_seq"], node["store_id"]) == (0, 0, None)
    assert (node["state"], node["joined_ms"]) == ("NotReady", NOW + 10)
    assert node["reported_labels"] == {"zone": "lab"}  # kept until the edge reports its own
    assert node["labels"] == {}  # the operator never gave it any

    placed.register_node("n1", NOW + 20, {"zone": "field"})  # a token with labels
    assert placed.get_node("n1")["labels"] == {"zone": "field"}
    placed.register_node("n1", NOW + 30)  # a token without: the operator's labels stay
    assert placed.get_node("n1")["labels"] == {"zone": "field"}
    assert len(placed.list_nodes()) == 2


def test_resync_when_the_cloud_cannot_vouch_for_the_edge(placed: CloudStore) -> None:
    newest = max(r.rv for r in placed.desired_after("n1", 0, 100))
    first = connect(placed, "n1", "s1", applied_rv=0)
    assert first.resync is False  # a freshly joined edge holds nothing yet
    again = connect(placed, "n1", "s1", applied_rv=newest)
    assert again.resync is False and again.snapshot_rv == newest
    # The cloud database is older than what the edge applied (restored from a backup).
    restored = connect(placed, "n1", "s1", applied_rv=newest + 1000)
    assert restored.resync is True and restored.snapshot_rv == newest
    # Re-join: the node is registered anew, so its old state is not vouched for.
    placed.register_node("n1", NOW)
    rejoined = connect(placed, "n1", "s1", applied_rv=newest)
    assert rejoined.resync is True
    assert placed.get_node("n1")["acked_rv"] == 0


def test_a_recreated_task_never_reuses_a_generation(store: CloudStore) -> None:
    doc = {"spec": {"x": 1}}
    first = store.put_task("default", "job", doc, NOW)
    assert store.put_task("default", "job", doc, NOW) == first  # unchanged spec
    store.delete_task("default", "job")
    again = store.put_task("default", "job", doc, NOW)
    assert again > first  # an edge that ran `first` runs the new task too


def test_a_lost_resync_is_asked_for_again(placed: CloudStore) -> None:
    newest = max(r.rv for r in placed.desired_after("n1", 0, 100))
    connect(placed, "n1", "s1")
    placed.register_node("n1", NOW)  # re-join
    assert connect(placed, "n1", "s1", applied_rv=newest).resync is True
    # The edge crashed before dropping its state: same applied rv, same store.
    assert connect(placed, "n1", "s1", applied_rv=newest).resync is True
    placed.record_acked("n1", 1, NOW)  # it applied part of the snapshot: reset done
    assert connect(placed, "n1", "s1", applied_rv=1).resync is False


def test_a_scoped_placement_leaves_other_tasks_and_nodes_alone(store: CloudStore) -> None:
    store.register_node("n1", NOW)
    store.register_node("n2", NOW)
    store.apply_placements([place(A, 1, "n1", "n2"), place(B, 1, "n1")], NOW)
    # Only task B is in scope: A's assignments are not touched even though A is absent.
    written = store.apply_placements([place(B, 2, "n1")], NOW, tasks={B})
    assert {n: [r.res for r in rs] for n, rs in written.items()} == {"n1": [B]}
    assert sorted((a["res"], a["node"]) for a in rows(store, assignments, LIVE)) == [
        (A, "n1"),
        (A, "n2"),
        (B, "n1"),
    ]
    # Only node n2 is in scope: n1 keeps everything.
    written = store.apply_placements([], NOW, nodes={"n2"})
    assert list(written) == ["n2"] and [r.op for r in written["n2"]] == ["delete"]
    live = sorted((a["res"], a["node"]) for a in rows(store, assignments, LIVE))
    assert live == [(A, "n1"), (B, "n1")]


def test_progress_for_many_nodes_is_one_batch(placed: CloudStore) -> None:
    newest = {n: max(r.rv for r in placed.desired_after(n, 0, 100)) for n in ("n1", "n2")}
    placed.record_progress(newest, {"n1": {"cpu": 0.5}}, NOW)
    assert placed.get_node("n1")["acked_rv"] == newest["n1"]
    assert placed.get_node("n2")["acked_rv"] == newest["n2"]
    assert placed.get_node("n1")["heartbeat"] == {"cpu": 0.5}
    phases = {(a["res"], a["node"]): a["phase"] for a in rows(placed, assignments)}
    assert set(phases.values()) == {"dispatched"}


# ---------------------------------------------------------------- fencing epochs


def pinned_task(store: CloudStore, name: str, node: str, now: int) -> None:
    """Save a task document pinned to `node` and apply its placement: a pinned task goes
    to exactly its pinned node (the scheduler's decision, written out here so this test
    of the store does not depend on the scheduler's interface)."""
    document = {
        "apiVersion": "edgesync.io/v1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "kind": "command",
            "command": {"argv": ["uname", "-a"]},
            "trigger": {"type": "once"},
            "placement": {"nodes": [node]},
        },
    }
    generation = store.put_task("default", name, document, now)
    placement = Placement(f"task/default/{name}", generation, document, frozenset({node}))
    store.apply_placements([placement], now, tasks=[placement.res])


def epoch_sent(store: CloudStore, node: str, res: str) -> int:
    [row] = [r for r in store.desired_after(node, 0, 100) if r.res == res]
    assert row.body is not None
    return int(row.body["epoch"])


def test_moving_a_task_makes_the_old_nodes_late_result_stale(store: CloudStore) -> None:
    res = "task/default/mover"
    for name in ("node-a", "node-b"):
        store.register_node(name, NOW)
    pinned_task(store, "other", "node-b", NOW)  # an epoch spent elsewhere first
    pinned_task(store, "mover", "node-a", NOW)
    epoch_a = epoch_sent(store, "node-a", res)
    generation = int(store.get_task("default", "mover")["generation"])

    pinned_task(store, "mover", "node-b", NOW + 1)  # the operator re-pins it

    epoch_b = epoch_sent(store, "node-b", res)
    assert epoch_b > epoch_a
    # node-a is told to stop: a delete tombstone in its desired log.
    assert [(r.res, r.op) for r in store.desired_after("node-a", 0, 100)] == [(res, "delete")]
    [current] = store.get_task("default", "mover")["assignments"]
    assert (current["node"], current["epoch"]) == ("node-b", epoch_b)

    # node-a, still offline-autonomous, finished its run and now delivers the result.
    body = {"run_id": "late", "generation": generation, "epoch": epoch_a, "phase": "succeeded"}
    late = Envelope(op=Op.RESULT, id="late", ts=NOW, res=res, seq=1, body=body)
    [outcome] = store.record_upstream("node-a", [late], NOW + 2, HISTORY)

    assert outcome.verdict == "stale" and "revoked" in outcome.detail
    [recorded] = store.results_for(res)
    assert (recorded["node"], recorded["stale"], recorded["epoch"]) == ("node-a", True, epoch_a)
    [after] = store.get_task("default", "mover")["assignments"]
    assert after == current  # node-b's current state is untouched
    # Its report, too, is stale rather than forbidden; a resend is a duplicate.
    running = Envelope(op=Op.REPORT, id="r", ts=NOW, res=res, seq=2, body={**body, "phase": "x"})
    assert [o.verdict for o in store.record_upstream("node-a", [running], NOW, HISTORY)] == [
        "stale"
    ]
    again = Envelope(op=Op.RESULT, id="again", ts=NOW, res=res, seq=3, body=body)
    assert [o.verdict for o in store.record_upstream("node-a", [again], NOW, HISTORY)] == [
        "duplicate"
    ]

    # Moving it back revives node-a's assignment with an epoch above both.
    pinned_task(store, "mover", "node-a", NOW + 3)
    epoch_back = epoch_sent(store, "node-a", res)
    assert epoch_back > epoch_b
    old = {**body, "run_id": "older"}
    stale_again = Envelope(op=Op.RESULT, id="o", ts=NOW, res=res, seq=4, body=old)
    assert [o.verdict for o in store.record_upstream("node-a", [stale_again], NOW, HISTORY)] == [
        "stale"
    ]
    fresh = {**body, "run_id": "fresh", "epoch": epoch_back}
    ok = Envelope(op=Op.RESULT, id="f", ts=NOW, res=res, seq=5, body=fresh)
    assert [o.verdict for o in store.record_upstream("node-a", [ok], NOW, HISTORY)] == ["applied"]


def test_an_epoch_never_issued_is_forbidden(placed: CloudStore) -> None:
    [outcome] = placed.record_upstream("n1", [result(A, 1, epoch=99)], NOW, HISTORY)
    assert outcome.verdict == "forbidden" and "never issued" in outcome.detail
    assert placed.results_for(A) == []


# ---------------------------------------------------------------- upstream by kind


def test_a_kind_without_a_handler_is_invalid_and_consumed(placed: CloudStore) -> None:
    twin = Envelope(
        op=Op.REPORT, id="t", ts=NOW, res="twin/default/cam", seq=1, body={"reported": {}}
    )

    outcomes = placed.record_upstream("n1", [twin, result(A, 2)], NOW, HISTORY)

    assert [o.verdict for o in outcomes] == ["invalid", "applied"]
    assert "kind 'twin'" in outcomes[0].detail and "task" in outcomes[0].detail
    assert placed.get_node("n1")["received_seq"] == 2  # consumed: the outbox must not jam
    assert [r["res"] for r in rows(placed, results)] == [A]


def test_a_task_result_for_another_nodes_task_is_forbidden(placed: CloudStore) -> None:
    """n1 sends a result for n2's task B, with the epoch B really has on n2."""
    epoch = epoch_sent(placed, "n2", B)

    [outcome] = placed.record_upstream("n1", [result(B, 1, epoch=epoch)], NOW, HISTORY)

    assert outcome.verdict == "forbidden"
    assert outcome.detail == f"{B} is not assigned to node n1"
    assert placed.results_for(B) == []
    b = assignment(placed, B, "n2")
    assert (b["phase"], b["runs"], b["last_result"]) == ("scheduled", 0, None)
    assert placed.get_node("n1")["received_seq"] == 1


class DeviceProbe(UpstreamHandler[str]):
    """A handler for a kind the cloud does not handle yet: a node writes only the devices
    named after it (`device/NS/NODE-...`)."""

    kind = "device"

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, int]] = []

    def authorize(self, conn: Connection, ctx: UpstreamContext, env: Envelope) -> str:
        assert env.res is not None
        device = env.res.rsplit("/", 1)[-1]
        if not device.startswith(f"{ctx.node}-"):
            raise Forbidden(f"{env.res} is not a device of node {ctx.node}")
        return device

    def apply(
        self, conn: Connection, ctx: UpstreamContext, env: Envelope, grant: str
    ) -> UpstreamOutcome:
        # Inside the batch's transaction: it sees the batch's earlier writes.
        seq = conn.execute(sa.select(nodes.c.received_seq).where(nodes.c.name == ctx.node))
        self.applied.append((ctx.node, grant, int(seq.scalar_one())))
        return UpstreamOutcome(env, "applied")


def test_a_handler_added_for_a_new_kind_gets_its_messages(placed: CloudStore, db_url: str) -> None:
    probe = DeviceProbe()
    placed.upstream.register(probe)

    def device(name: str, seq: int) -> Envelope:
        return Envelope(op=Op.REPORT, id=f"d{seq}", ts=NOW, res=f"device/default/{name}", seq=seq)

    batch = [device("n1-cam", 1), result(A, 2), device("n2-cam", 3), device("n1-door", 4)]
    outcomes = placed.record_upstream("n1", batch, NOW, HISTORY)

    assert [o.verdict for o in outcomes] == ["applied", "applied", "forbidden", "applied"]
    assert outcomes[2].detail == "device/default/n2-cam is not a device of node n1"
    assert probe.applied == [("n1", "n1-cam", 0), ("n1", "n1-door", 0)]
    assert placed.results_for(A)[0]["seq"] == 2  # task messages still go to TaskRuns
    assert placed.upstream.kinds == ["device", "task"]
    with pytest.raises(LocalProtocolError, match="'device' already has a handler"):
        placed.upstream.register(DeviceProbe())
    # The registry belongs to the store object: another store on the same database
    # (another test, another replica) still refuses the kind.
    other = CloudStore(db_url)
    try:
        [refused] = other.record_upstream("n1", [device("n1-cam", 5)], NOW, HISTORY)
    finally:
        other.close()
    assert refused.verdict == "invalid"


# ---------------------------------------------------------------- heartbeat history


def test_heartbeat_history_keeps_the_last_n_in_order(db_url: str) -> None:
    store = CloudStore(db_url, heartbeat_history=4)
    try:
        store.create_schema()
        for name in ("n1", "n2", "n3"):
            store.register_node(name, NOW)
        for i in range(1, 11):
            beats = {"n1": {"cpu": i / 100}}
            if i <= 2:
                beats["n2"] = {"cpu": 0.5 + i / 100}
            store.record_progress({}, beats, NOW + i * 1000)

        recent = store.recent_heartbeats("n1")
        assert [h.seq for h in recent] == [7, 8, 9, 10]  # oldest first, the newest 4
        assert [h.body["cpu"] for h in recent] == [0.07, 0.08, 0.09, 0.10]
        assert [h.received_ms for h in recent] == [NOW + i * 1000 for i in range(7, 11)]
        assert [h.seq for h in store.recent_heartbeats("n1", limit=2)] == [9, 10]
        assert [h.seq for h in store.recent_heartbeats("n1", limit=99)] == [7, 8, 9, 10]
        assert [h.body["cpu"] for h in store.recent_heartbeats("n2")] == [0.51, 0.52]
        assert store.recent_heartbeats("n3") == [] and store.recent_heartbeats("ghost") == []
        # The bound is on the table, not only on the read.
        assert len(rows(store, heartbeat_history, heartbeat_history.c.node == "n1")) == 4
        node = store.get_node("n1")
        assert (node["heartbeat"], node["heartbeat_seq"]) == ({"cpu": 0.1}, 10)

        store.delete_node("n1")
        assert rows(store, heartbeat_history, heartbeat_history.c.node == "n1") == []
        assert len(rows(store, heartbeat_history)) == 2
    finally:
        store.close()


def test_heartbeat_history_must_keep_at_least_one(db_url: str) -> None:
    with pytest.raises(ConfigError, match="heartbeat_history must be at least 1"):
        CloudStore(db_url, heartbeat_history=0)


def add_nodes(store: CloudStore, count: int) -> list[str]:
    """`count` registered nodes, written in one statement (register_node is a transaction each)."""
    names = [f"node-{i:05d}" for i in range(count)]
    base = dict(labels={}, reported_labels={}, capacity={}, heartbeat={}, joined_ms=NOW)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(nodes), [{"name": n, **base} for n in names])
    return names


class SqlCounter:
    """Counts the statements sent and the transactions committed through an engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        self.commits = 0

    def __enter__(self) -> SqlCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._statement)
        sa.event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)
        sa.event.remove(self.engine, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.statements.append(statement.split()[0].upper())

    def _commit(self, conn: Any) -> None:
        self.commits += 1


def test_a_flush_of_1000_nodes_is_one_transaction_of_fixed_statements(db_url: str) -> None:
    store = CloudStore(db_url, "NORMAL", heartbeat_history=2)
    try:
        store.create_schema()
        names = add_nodes(store, 1000)
        store.apply_placements([place(A, 1, *names)], NOW)
        newest = {n: max(r.rv for r in store.desired_after(n, 0, 10)) for n in names[:3]}
        counts: dict[int, tuple[list[str], int]] = {}
        timings: list[float] = []
        for flush, size in enumerate([10, 1000, 1000, 1000]):
            acked = {n: newest.get(n, 1) for n in names[:size]}
            beats = {n: {"cpu": flush / 10, "n": n} for n in names[:size]}
            with SqlCounter(store.engine) as sql:
                start = time.perf_counter()
                store.record_progress(acked, beats, NOW + flush)
                timings.append(time.perf_counter() - start)
            counts[size] = (sql.statements, sql.commits)

        # One transaction, and the same five statements for 10 nodes as for 1,000.
        assert counts[10] == counts[1000]
        statements, commits = counts[1000]
        assert commits == 1
        assert statements == ["UPDATE", "UPDATE", "DELETE", "UPDATE", "INSERT"]
        # Three flushes of 1,000 with N = 2: the ring holds 2 per node, the newest two.
        assert len(rows(store, heartbeat_history)) == 2000
        assert [h.seq for h in store.recent_heartbeats(names[999])] == [2, 3]
        assert [h.seq for h in store.recent_heartbeats(names[0])] == [3, 4]
        assert store.get_node(names[0])["acked_rv"] == newest[names[0]]
        print(f"record_progress of 1000 acks + heartbeats: {min(timings[1:]) * 1000:.1f} ms")
    finally:
        store.close()


def test_heartbeat_history_after_an_upgrade_from_revision_0003(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrations.alembic_config(conn), "0003")
            conn.execute(
                sa.text(
                    "INSERT INTO nodes (name, state, reason, labels, reported_labels, capacity, "
                    "heartbeat, software, acked_rv, received_seq, resync_pending, joined_ms, "
                    "last_seen_ms, connected_ms, transport, peer) VALUES ('old', 'Ready', '', "
                    "'{}', '{}', '{}', '{}', '', 0, 0, false, 1, 0, 0, '', '')"
                )
            )
    finally:
        engine.dispose()
    store = CloudStore(db_url)
    try:
        store.create_schema()
        assert store.get_node("old")["heartbeat_seq"] == 0
        store.record_progress({}, {"old": {"cpu": 0.3}}, NOW)
        [sample] = store.recent_heartbeats("old")
        assert (sample.seq, sample.body) == (1, {"cpu": 0.3})
    finally:
        store.close()
