"""Heartbeats: each node's latest one (`nodes.heartbeat`, shown by the API) and a bounded
history of its last N (`heartbeat_history`) for the load-aware scheduler's EWMA and
slopes (design.md "Scheduling").

The history is a ring: heartbeat number `seq` of a node (`nodes.heartbeat_seq`)
goes to slot `seq % N`, overwriting the one N heartbeats older. Keeping the
table bounded then needs no DELETE, no COUNT and no scan: a flush of B nodes'
heartbeats is two statements of B parameter sets each, inside the caller's
transaction (Hub._flush_progress -> record_progress).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloudcore.store.base import StoreBase
from cloudcore.store.schema import heartbeat_history, nodes

HEARTBEAT_HISTORY = 32
"""Heartbeats kept per node: at the default 15 s ping interval, the last 8 minutes,
enough for an EWMA with alpha 0.2 and a slope over 5 heartbeats."""


@dataclass(frozen=True, slots=True)
class HeartbeatSample:
    """One recorded heartbeat of a node."""

    seq: int
    """The node's heartbeat count when it was recorded: consecutive samples differ by 1
    unless heartbeats were coalesced in the hub (it keeps the newest per flush)."""
    received_ms: int
    """Cloud wall-clock time of the flush that recorded it."""
    body: dict[str, Any]
    """The heartbeat as stored (already bounded by shared/text.py)."""


class HeartbeatStore(StoreBase):
    """Reads of the heartbeat history; writes happen in record_progress (progress.py)."""

    heartbeat_keep: int = HEARTBEAT_HISTORY
    """N, the heartbeats kept per node (CloudStore's `heartbeat_history`)."""

    def recent_heartbeats(self, node: str, limit: int | None = None) -> list[HeartbeatSample]:
        """A node's last `limit` (at most N) heartbeats, oldest first; [] for an unknown node.

        After N was lowered, slots at or above the new N keep older samples until
        the node is deleted; they are never returned, since only the newest N count.
        """
        count = self.heartbeat_keep if limit is None else min(limit, self.heartbeat_keep)
        with self._tx(f"read the heartbeats of {node}") as conn:
            rows = conn.execute(
                sa.select(
                    heartbeat_history.c.seq,
                    heartbeat_history.c.received_ms,
                    heartbeat_history.c.body,
                )
                .where(heartbeat_history.c.node == node)
                .order_by(heartbeat_history.c.seq.desc())
                .limit(count)
            ).all()
        return [HeartbeatSample(int(r.seq), int(r.received_ms), r.body) for r in reversed(rows)]


def record_heartbeats(
    conn: Connection, heartbeats: dict[str, dict[str, Any]], now_ms: int, keep: int
) -> None:
    """Many nodes' heartbeats: the latest on the node row, and into its ring of `keep`.

    Two statements whatever the number of nodes, each an indexed lookup per
    node. A node deleted meanwhile is skipped (the SELECT finds no row).
    """
    if not heartbeats:
        return
    params = [{"b_node": n, "b_hb": hb} for n, hb in heartbeats.items()]
    node_is = nodes.c.name == sa.bindparam("b_node")
    conn.execute(
        sa.update(nodes)
        .where(node_is)
        .values(
            heartbeat=sa.bindparam("b_hb"),
            last_seen_ms=now_ms,
            heartbeat_seq=nodes.c.heartbeat_seq + 1,
        ),
        params,
    )
    newest = sa.select(
        nodes.c.name,
        nodes.c.heartbeat_seq % keep,
        nodes.c.heartbeat_seq,
        sa.literal(now_ms, sa.BigInteger),
        sa.bindparam("b_hb", type_=sa.JSON),
    ).where(node_is)
    stmt: Any = (
        postgresql.insert(heartbeat_history)
        if conn.dialect.name == "postgresql"
        else sqlite.insert(heartbeat_history)
    )
    stmt = stmt.from_select(["node", "slot", "seq", "received_ms", "body"], newest)
    stmt = stmt.on_conflict_do_update(
        index_elements=[heartbeat_history.c.node, heartbeat_history.c.slot],
        set_={
            "seq": stmt.excluded.seq,
            "received_ms": stmt.excluded.received_ms,
            "body": stmt.excluded.body,
        },
    )
    conn.execute(stmt, params)
