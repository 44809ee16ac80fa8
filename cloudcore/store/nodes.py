"""Nodes: registration at join, session start and end, labels, and the node views.

How a session resumes is decided by shared/resume.py; this module reads the node's
row, calls it, and writes the outcome in the same transaction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa

from cloudcore.store.base import StoreBase, issued_rv, log
from cloudcore.store.schema import assignments, desired, heartbeat_history, nodes
from cloudcore.store.tasks import live_assignments
from shared.errors import NotFound
from shared.resume import NodeCursors, decide_resume


class SessionStart(NamedTuple):
    """How a new session resumes (see NodeStore.node_connected)."""

    received_seq: int
    labels_changed: bool
    resync: bool
    snapshot_rv: int
    """The node's newest desired rv: a resyncing edge has the whole snapshot once it has
    applied this one (0: the snapshot is empty)."""


class NodeStore(StoreBase):
    """Nodes (table `nodes`); their heartbeats are in heartbeats.py, acks in desired.py."""

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
        """Record a session start and how it resumes (docs/protocol.md §6.5, §6.6).

        The decision (a new edge store resets `received_seq`; a resync when the
        cloud cannot vouch for `applied_rv`) is shared.resume.decide_resume's.
        Raises NotFound for a node that is not registered.
        """
        with self._tx(f"record the session of {name}") as conn:
            row = conn.execute(sa.select(nodes).where(nodes.c.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"node {name!r} is not registered; join it first")
            recorded = NodeCursors(
                store_id=row.store_id,
                received_seq=int(row.received_seq),
                resync_pending=bool(row.resync_pending),
            )
            resume = decide_resume(
                recorded, store_id=store_id, applied_rv=applied_rv, issued_rv=issued_rv(conn)
            )
            if resume.resync:
                log.warning(
                    "node %s: the cloud cannot vouch for its applied rv %d (re-joined, or "
                    "the cloud database is older); sending a full snapshot",
                    name,
                    applied_rv,
                )
            if resume.store_replaced:
                log.warning(
                    "node %s has a new local store (was %s, now %s); its outbox numbering restarts",
                    name,
                    row.store_id,
                    store_id,
                )
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
                    acked_rv=resume.acked_rv,
                    resync_pending=resume.resync,
                    received_seq=resume.received_seq,
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
            return SessionStart(
                resume.received_seq, labels_changed, resume.resync, int(snapshot_rv or 0)
            )

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
            node["assignments"] = live_assignments(
                conn, assignments.c.node == name, assignments.c.res
            )
            return node

    def delete_node(self, name: str) -> None:
        with self._tx(f"delete node {name}") as conn:
            if conn.execute(sa.delete(nodes).where(nodes.c.name == name)).rowcount == 0:
                raise NotFound(f"node {name!r} not found")
            conn.execute(sa.delete(desired).where(desired.c.node == name))
            conn.execute(sa.delete(assignments).where(assignments.c.node == name))
            conn.execute(sa.delete(heartbeat_history).where(heartbeat_history.c.node == name))
