"""cloudcore's tables: the model the Alembic revisions in cloudcore/migrations/ build.

`metadata` is the model; the schema itself is made by the revisions, and
tests/integration/test_migrations.py keeps the two equal (cloudcore/migrations/env.py
imports `metadata` from here). docs/protocol.md §6 explains the cursors.

- nodes: identity, labels, capacity, health, and the two cursors:
  `acked_rv` (highest desired-state rv the edge applied) and
  `received_seq` (highest outbox seq the cloud applied from the edge).
- heartbeat_history: the last heartbeats of each node, a ring of slots (for the
  load-aware scheduler's EWMA and slopes; cloudcore/store/heartbeats.py).
- desired: the per-node desired-state log, compacted: one row per
  (node, resource) holding its latest rv; deletes are tombstones.
- tasks / assignments / results: what operators asked for, where it was
  placed (with an epoch for fencing, from the cloud-wide `epoch` counter;
  revoked assignments stay as tombstones), and what happened.
- join_tokens: hashed single-use join secrets.
- counters: the cloud-wide sequences (rv, generation, epoch).
"""

from __future__ import annotations

import sqlalchemy as sa

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
    # Heartbeats recorded so far; the newest is in heartbeat_history slot (this % N).
    sa.Column("heartbeat_seq", sa.BigInteger, nullable=False, default=0, server_default="0"),
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

heartbeat_history = sa.Table(
    "heartbeat_history",
    metadata,
    sa.Column("node", sa.String(63), primary_key=True),
    # seq % N: a node's ring of N rows is overwritten in place, so keeping it bounded
    # costs no delete and no scan (cloudcore/store/heartbeats.py).
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
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
