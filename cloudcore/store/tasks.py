"""Tasks, where they are placed (assignments, with fencing epochs), and placement writes.

A placement change writes the node's desired log (desired.py) in the same
transaction, with fresh rvs from the cloud-wide counter.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudcore.store.base import StoreBase, next_values
from cloudcore.store.desired import DesiredRow, upsert_desired
from cloudcore.store.schema import LIVE, assignments, nodes, results, tasks
from shared.errors import NotFound


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one task must run, as computed by the scheduler."""

    res: str
    generation: int
    document: dict[str, Any]
    nodes: frozenset[str]


class TaskStore(StoreBase):
    """Tasks (table `tasks`) and their assignments (table `assignments`)."""

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
            generation = next_values(conn, "generation", 1)
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
            task["assignments"] = live_assignments(
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
            rv = next_values(conn, "rv", len(changes))
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
                            fresh_epoch = next_values(conn, "epoch", 1)
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
            upsert_desired(conn, desired_rows)
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


def live_assignments(conn: Connection, where: Any, order: Any) -> list[dict[str, Any]]:
    """The assignments matching `where` that are not tombstones, as dicts, in `order`."""
    return [
        dict(r)
        for r in conn.execute(sa.select(assignments).where(where, LIVE).order_by(order)).mappings()
    ]
