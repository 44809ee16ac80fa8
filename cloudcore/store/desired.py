"""The per-node desired log (docs/protocol.md §6.1): compacted, one row per (node,
resource) with its latest rv; deletes are tombstones until the node acks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloudcore.store.base import StoreBase
from cloudcore.store.schema import LIVE, assignments, desired, nodes


@dataclass(frozen=True, slots=True)
class DesiredRow:
    res: str
    rv: int
    op: str
    body: dict[str, Any] | None


class DesiredStore(StoreBase):
    """Reads of the desired log; its writes come with placements (tasks.py)."""

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


def upsert_desired(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or replace desired-log rows in one statement (native upsert)."""
    stmt: Any = (
        postgresql.insert(desired) if conn.dialect.name == "postgresql" else sqlite.insert(desired)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[desired.c.node, desired.c.res],
        set_={"rv": stmt.excluded.rv, "op": stmt.excluded.op, "body": stmt.excluded.body},
    )
    conn.execute(stmt, rows)


def record_acks(conn: Connection, acked: dict[str, int], now_ms: int) -> None:
    """Many nodes' acks, three statements whatever their number.

    An ack means the edge durably applied everything up to that rv: advance
    its cursor (never back), clear a pending resync, settle `scheduled`
    assignments to `dispatched`, drop the tombstones it no longer needs.
    """
    if not acked:
        return
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
