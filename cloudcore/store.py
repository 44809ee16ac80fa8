"""cloudcore's database: the only module that issues SQL on the cloud side.

SQLAlchemy 2 Core (not ORM) because the hot paths are batch reads of the
per-node desired-state log and batch writes of results; design.md's
measurements put Core at ~1.6x ORM bulk and ~70x ORM merge-per-row.

Schema (docs/protocol.md §6 explains the cursors):
- nodes: identity, labels, capacity, health, and the two cursors:
  `acked_rv` (highest desired-state rv the edge applied) and
  `received_seq` (highest outbox seq the cloud applied from the edge).
- desired: the per-node desired-state log, compacted: one row per
  (node, resource) holding its latest rv; deletes are tombstones.
- tasks / assignments / results: what operators asked for, where it was
  placed (with an epoch for fencing, from the cloud-wide `epoch` counter;
  revoked assignments stay as tombstones), and what happened.
- join_tokens: hashed single-use join secrets.
- counters: the global rv sequence.

`metadata` is the model; the schema itself is made by the Alembic revisions in
cloudcore/migrations/, and a test keeps the two equal.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloudcore import migrations
from shared.errors import JoinError, NotFound
from shared.fencing import Assignment, Verdict, upstream_verdict
from shared.pki import hash_token_secret, token_secret_matches
from shared.protocol.messages import Envelope
from shared.sqlstore import SqlStore

log = logging.getLogger(__name__)

metadata = sa.MetaData()

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, default="Unknown"),
    sa.Column("reason", sa.String(256), nullable=False, default=""),
    # Placement labels: the operator's (join token, `edgectl node label`).
    sa.Column("labels", sa.JSON, nullable=False, default=dict),
    # What the node's hello says about itself: shown, used for placement only for the
    # keys `node_label_keys` lets nodes set (docs/operations.md, "Node labels").
    sa.Column("reported_labels", sa.JSON, nullable=False, server_default="{}"),
    sa.Column("capacity", sa.JSON, nullable=False, default=dict),
    sa.Column("heartbeat", sa.JSON, nullable=False, default=dict),
    sa.Column("software", sa.String(64), nullable=False, default=""),
    sa.Column("store_id", sa.String(64), nullable=True),
    sa.Column("acked_rv", sa.BigInteger, nullable=False, default=0),
    sa.Column("received_seq", sa.BigInteger, nullable=False, default=0),
    # A resync was asked for and the edge has not yet applied anything from the snapshot.
    sa.Column("resync_pending", sa.Boolean, nullable=False, default=False),
    sa.Column("joined_ms", sa.BigInteger, nullable=False),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("connected_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("transport", sa.String(16), nullable=False, default=""),
    sa.Column("peer", sa.String(128), nullable=False, default=""),
)

desired = sa.Table(
    "desired",
    metadata,
    sa.Column("node", sa.String(63), primary_key=True),
    sa.Column("res", sa.String(200), primary_key=True),
    sa.Column("rv", sa.BigInteger, nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("body", sa.JSON, nullable=True),
    sa.Index("ix_desired_node_rv", "node", "rv"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("namespace", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("res", sa.String(200), primary_key=True),
    sa.Column("node", sa.String(63), primary_key=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("rv", sa.BigInteger, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("runs", sa.BigInteger, nullable=False, default=0),
    sa.Column("last_result", sa.JSON, nullable=True),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    # Set: a tombstone. The task was moved off (or deleted on) this node; the row keeps its
    # epoch so a late message from the node is judged stale, not forbidden (shared/fencing.py).
    sa.Column("revoked_ms", sa.BigInteger, nullable=True),
    sa.Index("ix_assignments_node_rv", "node", "rv"),
)

LIVE = assignments.c.revoked_ms.is_(None)
"""Assignments that are not tombstones."""

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("node", sa.String(63), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("res", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("stale", sa.Boolean, nullable=False, default=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    # One row per run. Not (node, seq): a reinstalled edge numbers its outbox from 1 again.
    sa.UniqueConstraint("node", "run_id", name="uq_results_node_run"),
    sa.Index("ix_results_res_node", "res", "node", "id"),
)

join_tokens = sa.Table(
    "join_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("node", sa.String(63), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
    sa.Column("used_ms", sa.BigInteger, nullable=True),
    sa.Column("labels", sa.JSON, nullable=True),
)

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

TERMINAL_PHASES = ("succeeded", "failed")


class JoinGrant(NamedTuple):
    """What a consumed join token grants."""

    node: str
    labels: dict[str, str] | None
    """The operator's labels for the node, or None if the token carried none."""


class SessionStart(NamedTuple):
    """How a new session resumes (see CloudStore.node_connected)."""

    received_seq: int
    labels_changed: bool
    resync: bool
    snapshot_rv: int
    """The node's newest desired rv: a resyncing edge has the whole snapshot once it has
    applied this one (0: the snapshot is empty)."""


@dataclass(frozen=True, slots=True)
class DesiredRow:
    res: str
    rv: int
    op: str
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpstreamOutcome:
    """What happened to one upstream message: applied, duplicate, stale or forbidden."""

    envelope: Envelope
    verdict: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one task must run, as computed by the scheduler."""

    res: str
    generation: int
    document: dict[str, Any]
    nodes: frozenset[str]


class CloudStore(SqlStore):
    """Synchronous repository; the daemon runs it on one dedicated DB thread.

    Error handling: every SQLAlchemy error is translated to StoreError with
    the failing operation named; nothing half-done is committed.
    """

    def __init__(self, url: str, sqlite_synchronous: str = "FULL") -> None:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        super().__init__(url, f"cloud database {shown}", sqlite_synchronous)
        self.url = url

    def create_schema(self) -> None:
        """Create or upgrade the schema (Alembic, cloudcore/migrations), in one transaction.

        Raises StoreError, leaving the database untouched, if a newer
        cloudcore wrote it (an unknown revision).
        """
        with self._schema_tx("migrate the schema") as conn:
            migrations.upgrade(conn, self.where)
            present = set(conn.execute(sa.select(counters.c.name)).scalars())
            for name in ("rv", "generation", "epoch"):
                if name not in present:
                    conn.execute(sa.insert(counters).values(name=name, value=0))

    def _next_rvs(self, conn: Connection, count: int) -> int:
        """Reserve `count` revisions; returns the first. The row lock orders commits by rv."""
        return self._next(conn, "rv", count)

    def _next(self, conn: Connection, counter: str, count: int) -> int:
        """Reserve `count` values of a cloud-wide sequence; returns the first."""
        value = conn.execute(
            sa.update(counters)
            .where(counters.c.name == counter)
            .values(value=counters.c.value + count)
            .returning(counters.c.value)
        ).scalar_one()
        return int(value) - count + 1

    # ---------------------------------------------------------------- join tokens

    def add_join_token(
        self,
        token_id: str,
        node: str,
        secret: str,
        now_ms: int,
        expires_ms: int,
        labels: dict[str, str] | None = None,
    ) -> None:
        """`labels`: the operator's placement labels for the node this token joins."""
        with self._tx("store a join token") as conn:
            conn.execute(
                sa.insert(join_tokens).values(
                    id=token_id,
                    node=node,
                    secret_hash=hash_token_secret(secret),
                    created_ms=now_ms,
                    expires_ms=expires_ms,
                    labels=labels or None,
                )
            )

    def consume_join_token(self, token_id: str, secret: str, now_ms: int) -> JoinGrant:
        """Mark a token used; returns its node and labels. JoinError if unknown, forged,
        expired or used."""
        with self._tx("consume a join token") as conn:
            row = conn.execute(
                sa.select(join_tokens).where(join_tokens.c.id == token_id)
            ).one_or_none()
            if row is None or not token_secret_matches(secret, row.secret_hash):
                raise JoinError("join token is not valid for this cloud (unknown or forged)")
            if row.used_ms is not None:
                raise JoinError(
                    f"join token for node {row.node!r} was already used; create a new one "
                    "with `edgectl token create`"
                )
            if now_ms >= row.expires_ms:
                raise JoinError(
                    f"join token for node {row.node!r} expired; create a new one with "
                    "`edgectl token create`"
                )
            updated = conn.execute(
                sa.update(join_tokens)
                .where(join_tokens.c.id == token_id, join_tokens.c.used_ms.is_(None))
                .values(used_ms=now_ms)
            ).rowcount
            if updated != 1:
                raise JoinError("join token was used concurrently by another join")
            return JoinGrant(str(row.node), dict(row.labels) if row.labels else None)

    # ---------------------------------------------------------------- nodes

    def register_node(self, name: str, now_ms: int, labels: dict[str, str] | None = None) -> None:
        """Create a node at join, or reset a re-joining node's cursors (its store is new).

        `labels` (from the join token) become its placement labels; None keeps a
        re-joining node's labels (a new node starts with none).
        """
        with self._tx(f"register node {name}") as conn:
            exists = conn.execute(
                sa.select(nodes.c.name).where(nodes.c.name == name)
            ).scalar_one_or_none()
            values = dict(
                state="NotReady",
                reason="joined, not connected yet",
                acked_rv=0,
                received_seq=0,
                store_id=None,
                joined_ms=now_ms,
            )
            if labels is not None:
                values["labels"] = labels
            if exists is None:
                values.setdefault("labels", {})
                conn.execute(
                    sa.insert(nodes).values(
                        name=name, reported_labels={}, capacity={}, heartbeat={}, **values
                    )
                )
            else:
                conn.execute(sa.update(nodes).where(nodes.c.name == name).values(**values))

    def set_node_labels(self, name: str, labels: dict[str, str]) -> None:
        """Replace a node's placement labels (the operator's); NotFound if there is no node."""
        with self._tx(f"label node {name}") as conn:
            updated = conn.execute(
                sa.update(nodes).where(nodes.c.name == name).values(labels=labels)
            ).rowcount
            if updated == 0:
                raise NotFound(f"node {name!r} not found")

    def node_exists(self, name: str) -> bool:
        with self._tx("look up a node") as conn:
            return (
                conn.execute(
                    sa.select(nodes.c.name).where(nodes.c.name == name)
                ).scalar_one_or_none()
                is not None
            )

    def node_connected(
        self,
        name: str,
        *,
        store_id: str,
        reported_labels: dict[str, str],
        capacity: dict[str, Any],
        software: str,
        applied_rv: int,
        transport: str,
        peer: str,
        now_ms: int,
    ) -> SessionStart:
        """Record a session start and decide how it resumes (docs/protocol.md §6.5).

        If the edge's store is new (`store_id` changed: reinstalled, disk
        replaced) its outbox numbering restarted, so `received_seq` resets to 0.
        The edge's `applied_rv` is the truth for what it holds, unless the
        cloud cannot vouch for it: after a re-join (the node was registered
        anew) or when it is above every rv this cloud ever issued (its
        database was restored from an older backup). Then the edge must drop
        its desired state and take a full snapshot (`resync`).
        """
        with self._tx(f"record the session of {name}") as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"node {name!r} is not registered; join it first")
            received_seq = int(row.received_seq)
            issued = int(
                conn.execute(
                    sa.select(counters.c.value).where(counters.c.name == "rv")
                ).scalar_one()
            )
            # Sticky until the edge applies something from the snapshot (record_acked):
            # a resync welcome lost to a crash must be asked for again.
            resync = applied_rv > 0 and (
                bool(row.resync_pending) or row.store_id is None or applied_rv > issued
            )
            if resync:
                log.warning(
                    "node %s: the cloud cannot vouch for its applied rv %d (re-joined, or "
                    "the cloud database is older); sending a full snapshot",
                    name,
                    applied_rv,
                )
            if row.store_id is not None and row.store_id != store_id:
                log.warning(
                    "node %s has a new local store (was %s, now %s); its outbox numbering restarts",
                    name,
                    row.store_id,
                    store_id,
                )
                received_seq = 0
            conn.execute(
                sa.update(nodes)
                .where(nodes.c.name == name)
                .values(
                    state="Ready",
                    reason="connected",
                    reported_labels=reported_labels,
                    capacity=capacity,
                    software=software[:64],
                    store_id=store_id,
                    acked_rv=0 if resync else applied_rv,
                    resync_pending=resync,
                    received_seq=received_seq,
                    last_seen_ms=now_ms,
                    connected_ms=now_ms,
                    transport=transport,
                    peer=peer[:128],
                )
            )
            snapshot_rv = conn.execute(
                sa.select(sa.func.max(desired.c.rv)).where(desired.c.node == name)
            ).scalar_one_or_none()
            labels_changed = dict(row.reported_labels or {}) != reported_labels
            return SessionStart(received_seq, labels_changed, resync, int(snapshot_rv or 0))

    def node_disconnected(self, name: str, reason: str, now_ms: int) -> None:
        with self._tx(f"record the disconnect of {name}") as conn:
            conn.execute(
                sa.update(nodes)
                .where(nodes.c.name == name)
                .values(state="NotReady", reason=reason[:256], last_seen_ms=now_ms)
            )

    def list_nodes(self) -> list[dict[str, Any]]:
        with self._tx("list nodes") as conn:
            rows = conn.execute(sa.select(nodes).order_by(nodes.c.name)).mappings().all()
            return [dict(r) for r in rows]

    def get_node(self, name: str) -> dict[str, Any]:
        with self._tx("read a node") as conn:
            row = (
                conn.execute(sa.select(nodes).where(nodes.c.name == name)).mappings().one_or_none()
            )
            if row is None:
                raise NotFound(f"node {name!r} not found")
            node = dict(row)
            node["assignments"] = _assignment_rows(
                conn, assignments.c.node == name, assignments.c.res
            )
            return node

    def delete_node(self, name: str) -> None:
        with self._tx(f"delete node {name}") as conn:
            if conn.execute(sa.delete(nodes).where(nodes.c.name == name)).rowcount == 0:
                raise NotFound(f"node {name!r} not found")
            conn.execute(sa.delete(desired).where(desired.c.node == name))
            conn.execute(sa.delete(assignments).where(assignments.c.node == name))

    # ---------------------------------------------------------------- tasks

    def put_task(self, namespace: str, name: str, document: dict[str, Any], now_ms: int) -> int:
        """Create or update a task; returns its generation, which changes only with the spec.

        Generations come from one cloud-wide sequence, so a task deleted and
        created again under the same name never reuses a generation an edge
        has already run (`once` tasks run once per generation).
        """
        with self._tx(f"save task {namespace}/{name}") as conn:
            row = conn.execute(
                sa.select(tasks).where(tasks.c.namespace == namespace, tasks.c.name == name)
            ).one_or_none()
            if row is not None and row.document == document:
                return int(row.generation)
            generation = self._next(conn, "generation", 1)
            if row is None:
                conn.execute(
                    sa.insert(tasks).values(
                        namespace=namespace,
                        name=name,
                        document=document,
                        generation=generation,
                        created_ms=now_ms,
                        updated_ms=now_ms,
                    )
                )
            else:
                conn.execute(
                    sa.update(tasks)
                    .where(tasks.c.namespace == namespace, tasks.c.name == name)
                    .values(document=document, generation=generation, updated_ms=now_ms)
                )
            return generation

    def delete_task(self, namespace: str, name: str) -> None:
        with self._tx(f"delete task {namespace}/{name}") as conn:
            deleted = conn.execute(
                sa.delete(tasks).where(tasks.c.namespace == namespace, tasks.c.name == name)
            ).rowcount
            if deleted == 0:
                raise NotFound(f"task {namespace}/{name} not found")

    def list_tasks(self) -> list[dict[str, Any]]:
        with self._tx("list tasks") as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    sa.select(tasks).order_by(tasks.c.namespace, tasks.c.name)
                ).mappings()
            ]
            by_res: dict[str, list[dict[str, Any]]] = {}
            live = sa.select(assignments).where(LIVE).order_by(assignments.c.node)
            for a in conn.execute(live).mappings():
                by_res.setdefault(a["res"], []).append(dict(a))
            for row in rows:
                row["assignments"] = by_res.get(f"task/{row['namespace']}/{row['name']}", [])
            return rows

    def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        res = f"task/{namespace}/{name}"
        with self._tx(f"read task {namespace}/{name}") as conn:
            row = (
                conn.execute(
                    sa.select(tasks).where(tasks.c.namespace == namespace, tasks.c.name == name)
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise NotFound(f"task {namespace}/{name} not found")
            task = dict(row)
            task["assignments"] = _assignment_rows(
                conn, assignments.c.res == res, assignments.c.node
            )
            task["results"] = [
                dict(r)
                for r in conn.execute(
                    sa.select(results)
                    .where(results.c.res == res)
                    .order_by(results.c.id.desc())
                    .limit(100)
                ).mappings()
            ]
            return task

    def assignment_count(self, res: str) -> int:
        with self._tx("count assignments") as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(assignments)
                    .where(assignments.c.res == res, LIVE)
                ).scalar_one()
            )

    def scheduling_inputs(
        self,
        task_keys: Collection[tuple[str, str]] | None = None,
        node_names: Collection[str] | None = None,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Tasks and nodes as the scheduler needs them, optionally only some of them."""
        with self._tx("read scheduling inputs") as conn:
            tq = sa.select(tasks)
            if task_keys is not None:
                if not task_keys:
                    return [], []
                tq = tq.where(sa.tuple_(tasks.c.namespace, tasks.c.name).in_(list(task_keys)))
            nq = sa.select(
                nodes.c.name,
                nodes.c.labels,
                nodes.c.reported_labels,
                nodes.c.state,
                nodes.c.capacity,
            )
            if node_names is not None:
                nq = nq.where(nodes.c.name.in_(list(node_names)))
            task_rows = [dict(r) for r in conn.execute(tq).mappings()]
            node_rows = [dict(r) for r in conn.execute(nq).mappings()]
            return task_rows, node_rows

    def apply_placements(
        self,
        placements: Sequence[Placement],
        now_ms: int,
        *,
        tasks: Collection[str] | None = None,
        nodes: Collection[str] | None = None,
    ) -> dict[str, list[DesiredRow]]:
        """Make assignments and the desired log match the placements, in one transaction.

        Only assignments in scope are compared: those of `tasks` (resource
        names) and/or `nodes`; None means all. A new or changed assignment
        writes the task into that node's desired log with a fresh rv; a
        removed one (task deleted, node no longer selected) writes a
        tombstone into the log and turns the assignment into a tombstone
        (`revoked_ms`) that keeps its epoch. A new assignment, or one revived
        from a tombstone, takes a fresh epoch from the cloud-wide counter (one
        per call), above every epoch the task had on any node: results from
        the node it left are then stale. Returns the rows written, per node,
        in rv order.
        """
        written: dict[str, list[DesiredRow]] = {}
        with self._tx("apply task placements") as conn:
            query = sa.select(assignments)
            if tasks is not None:
                query = query.where(assignments.c.res.in_(list(tasks)))
            if nodes is not None:
                query = query.where(assignments.c.node.in_(list(nodes)))
            current: dict[tuple[str, str], Any] = {(a.res, a.node): a for a in conn.execute(query)}
            live = {k for k, a in current.items() if a.revoked_ms is None}
            wanted = {
                (p.res, n): p
                for p in placements
                for n in p.nodes
                if (nodes is None or n in nodes) and (tasks is None or p.res in tasks)
            }
            changes: list[tuple[str, str, Placement | None]] = [
                (res, node, p)
                for (res, node), p in wanted.items()
                if (res, node) not in live or current[(res, node)].generation != p.generation
            ]
            changes += [(res, node, None) for (res, node) in live if (res, node) not in wanted]
            if not changes:
                return written
            rv = self._next_rvs(conn, len(changes))
            fresh_epoch: int | None = None
            desired_rows: list[dict[str, Any]] = []
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            revives: list[dict[str, Any]] = []
            revokes: list[dict[str, Any]] = []
            for res, node, p in changes:
                row = current.get((res, node))
                if p is not None:
                    if row is None or row.revoked_ms is not None:
                        if fresh_epoch is None:
                            fresh_epoch = self._next(conn, "epoch", 1)
                        epoch = fresh_epoch
                    else:
                        epoch = int(row.epoch)
                    body: dict[str, Any] | None = {
                        "document": p.document,
                        "generation": p.generation,
                        "epoch": epoch,
                    }
                    op = "apply"
                    if row is None:
                        inserts.append(
                            {
                                "res": res,
                                "node": node,
                                "epoch": epoch,
                                "generation": p.generation,
                                "rv": rv,
                                "phase": "scheduled",
                                "runs": 0,
                                "updated_ms": now_ms,
                            }
                        )
                    elif row.revoked_ms is not None:
                        revives.append(
                            {
                                "b_res": res,
                                "b_node": node,
                                "b_gen": p.generation,
                                "b_rv": rv,
                                "b_epoch": epoch,
                            }
                        )
                    else:
                        updates.append(
                            {"b_res": res, "b_node": node, "b_gen": p.generation, "b_rv": rv}
                        )
                else:
                    body, op = None, "delete"
                    revokes.append({"b_res": res, "b_node": node})
                desired_rows.append({"node": node, "res": res, "rv": rv, "op": op, "body": body})
                written.setdefault(node, []).append(DesiredRow(res, rv, op, body))
                rv += 1
            self._upsert_desired(conn, desired_rows)
            same_row = (
                assignments.c.res == sa.bindparam("b_res"),
                assignments.c.node == sa.bindparam("b_node"),
            )
            if inserts:
                conn.execute(sa.insert(assignments), inserts)
            if updates:
                conn.execute(
                    sa.update(assignments)
                    .where(*same_row)
                    .values(
                        generation=sa.bindparam("b_gen"),
                        rv=sa.bindparam("b_rv"),
                        phase="scheduled",
                        updated_ms=now_ms,
                    ),
                    updates,
                )
            if revives:
                conn.execute(
                    sa.update(assignments)
                    .where(*same_row)
                    .values(
                        epoch=sa.bindparam("b_epoch"),
                        generation=sa.bindparam("b_gen"),
                        rv=sa.bindparam("b_rv"),
                        phase="scheduled",
                        runs=0,
                        last_result=None,
                        revoked_ms=None,
                        updated_ms=now_ms,
                    ),
                    revives,
                )
            if revokes:
                conn.execute(
                    sa.update(assignments)
                    .where(*same_row)
                    .values(phase="revoked", revoked_ms=now_ms, updated_ms=now_ms),
                    revokes,
                )
        return written

    def _upsert_desired(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert or replace desired-log rows in one statement (native upsert)."""
        stmt: Any = (
            postgresql.insert(desired)
            if conn.dialect.name == "postgresql"
            else sqlite.insert(desired)
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[desired.c.node, desired.c.res],
            set_={"rv": stmt.excluded.rv, "op": stmt.excluded.op, "body": stmt.excluded.body},
        )
        conn.execute(stmt, rows)

    # ---------------------------------------------------------------- sync

    def desired_after(self, node: str, rv: int, limit: int) -> list[DesiredRow]:
        """The node's desired state newer than `rv`, in rv order (compacted, with tombstones)."""
        with self._tx(f"read the desired state of {node}") as conn:
            rows = conn.execute(
                sa.select(desired.c.res, desired.c.rv, desired.c.op, desired.c.body)
                .where(desired.c.node == node, desired.c.rv > rv)
                .order_by(desired.c.rv)
                .limit(limit)
            ).all()
            return [DesiredRow(r.res, int(r.rv), r.op, r.body) for r in rows]

    def record_acked(self, node: str, rv: int, now_ms: int) -> None:
        """One node's ack; see record_progress."""
        self.record_progress({node: rv}, {}, now_ms)

    def record_progress(
        self, acked: dict[str, int], heartbeats: dict[str, dict[str, Any]], now_ms: int
    ) -> None:
        """Persist many nodes' acks and heartbeats in one transaction (the hub batches them).

        An ack means the edge durably applied everything up to that rv:
        advance its cursor, settle phases, drop tombstones it no longer needs.
        """
        with self._tx("record acks and heartbeats") as conn:
            if acked:
                params = [{"b_node": n, "b_rv": rv} for n, rv in acked.items()]
                node_is = nodes.c.name == sa.bindparam("b_node")
                rv_le: Any = sa.bindparam("b_rv")
                conn.execute(
                    sa.update(nodes)
                    .where(node_is, nodes.c.acked_rv < rv_le)
                    .values(acked_rv=rv_le, last_seen_ms=now_ms, resync_pending=False),
                    params,
                )
                conn.execute(
                    sa.update(assignments)
                    .where(
                        assignments.c.node == sa.bindparam("b_node"),
                        assignments.c.rv <= rv_le,
                        assignments.c.phase == "scheduled",
                        LIVE,
                    )
                    .values(phase="dispatched", updated_ms=now_ms),
                    params,
                )
                conn.execute(
                    sa.delete(desired).where(
                        desired.c.node == sa.bindparam("b_node"),
                        desired.c.op == "delete",
                        desired.c.rv <= rv_le,
                    ),
                    params,
                )
            if heartbeats:
                conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.name == sa.bindparam("b_node"))
                    .values(heartbeat=sa.bindparam("b_hb"), last_seen_ms=now_ms),
                    [{"b_node": n, "b_hb": hb} for n, hb in heartbeats.items()],
                )

    def record_upstream(
        self, node: str, envelopes: Iterable[Envelope], now_ms: int, history: int
    ) -> list[UpstreamOutcome]:
        """Apply a batch of reports/results from `node` in one transaction, idempotently.

        Messages at or below the node's `received_seq` are duplicates and
        change nothing. A message about a resource not assigned to this node
        is refused as forbidden (and still consumed, so the edge's outbox does
        not jam). A result from an older epoch is kept but marked stale and
        never overwrites the current state.
        """
        outcomes: list[UpstreamOutcome] = []
        with self._tx(f"apply reports from {node}") as conn:
            received = conn.execute(
                sa.select(nodes.c.received_seq).where(nodes.c.name == node)
            ).scalar_one()
            top = int(received)
            for env in envelopes:
                assert env.seq is not None and env.res is not None
                if env.seq <= top:
                    outcomes.append(UpstreamOutcome(env, "duplicate"))
                    continue
                top = env.seq
                outcomes.append(self._apply_upstream(conn, node, env, now_ms, history))
            if top > received:
                conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.name == node)
                    .values(received_seq=top, last_seen_ms=now_ms)
                )
        return outcomes

    def _apply_upstream(
        self, conn: Connection, node: str, env: Envelope, now_ms: int, history: int
    ) -> UpstreamOutcome:
        assert env.res is not None and env.seq is not None
        row = conn.execute(
            sa.select(assignments).where(assignments.c.res == env.res, assignments.c.node == node)
        ).one_or_none()
        if row is None:
            return UpstreamOutcome(env, "forbidden", f"{env.res} is not assigned to node {node}")
        body = env.body or {}
        epoch = body.get("epoch")
        generation = body.get("generation")
        run_id = body.get("run_id")
        phase = body.get("phase")
        if not (
            isinstance(epoch, int)
            and isinstance(generation, int)
            and isinstance(run_id, str)
            and isinstance(phase, str)
        ):
            return UpstreamOutcome(
                env,
                "invalid",
                "report/result needs integer epoch and generation, string run_id and phase",
            )
        assignment = Assignment(int(row.epoch), revoked=row.revoked_ms is not None)
        verdict, detail = upstream_verdict(assignment, epoch)
        if verdict is Verdict.FORBIDDEN:
            return UpstreamOutcome(env, verdict.value, f"{env.res} on node {node}: {detail}")
        if env.op.value == "result":
            seen = conn.execute(
                sa.select(results.c.id).where(
                    results.c.node == node, results.c.run_id == run_id[:64]
                )
            ).first()
            if seen is not None:
                verdict, _ = upstream_verdict(assignment, epoch, duplicate=True)
                return UpstreamOutcome(env, verdict.value, f"run {run_id} was already recorded")
            conn.execute(
                sa.insert(results).values(
                    node=node,
                    seq=env.seq,
                    res=env.res,
                    run_id=run_id[:64],
                    epoch=epoch,
                    generation=generation,
                    phase=phase[:16],
                    stale=verdict is Verdict.STALE,
                    body=body,
                    received_ms=now_ms,
                )
            )
            self._trim_results(conn, env.res, node, history)
        if verdict is Verdict.STALE:
            return UpstreamOutcome(env, verdict.value, detail)
        values: dict[str, Any] = {"phase": phase[:16], "updated_ms": now_ms}
        if env.op.value == "result":
            values["runs"] = assignments.c.runs + 1
            values["last_result"] = body
        conn.execute(
            sa.update(assignments)
            .where(assignments.c.res == env.res, assignments.c.node == node)
            .values(**values)
        )
        return UpstreamOutcome(env, verdict.value)

    def _trim_results(self, conn: Connection, res: str, node: str, keep: int) -> None:
        cutoff = conn.execute(
            sa.select(results.c.id)
            .where(results.c.res == res, results.c.node == node)
            .order_by(results.c.id.desc())
            .offset(keep)
            .limit(1)
        ).scalar_one_or_none()
        if cutoff is not None:
            conn.execute(
                sa.delete(results).where(
                    results.c.res == res, results.c.node == node, results.c.id <= cutoff
                )
            )

    def results_for(self, res: str, node: str | None = None) -> list[dict[str, Any]]:
        with self._tx("read results") as conn:
            q = sa.select(results).where(results.c.res == res)
            if node is not None:
                q = q.where(results.c.node == node)
            return [dict(r) for r in conn.execute(q.order_by(results.c.id)).mappings()]


def _assignment_rows(conn: Connection, where: Any, order: Any) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(sa.select(assignments).where(where, LIVE).order_by(order)).mappings()
    ]
