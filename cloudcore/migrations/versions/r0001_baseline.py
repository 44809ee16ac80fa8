"""Baseline: the schema of cloudcore before migrations (commit 1f63a07), table for table.

Revision ID: 0001
Revises:
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("capacity", sa.JSON, nullable=False),
        sa.Column("heartbeat", sa.JSON, nullable=False),
        sa.Column("software", sa.String(64), nullable=False),
        sa.Column("store_id", sa.String(64), nullable=True),
        sa.Column("acked_rv", sa.BigInteger, nullable=False),
        sa.Column("received_seq", sa.BigInteger, nullable=False),
        sa.Column("resync_pending", sa.Boolean, nullable=False),
        sa.Column("joined_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("connected_ms", sa.BigInteger, nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(128), nullable=False),
    )
    op.create_table(
        "desired",
        sa.Column("node", sa.String(63), primary_key=True),
        sa.Column("res", sa.String(200), primary_key=True),
        sa.Column("rv", sa.BigInteger, nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=True),
    )
    op.create_index("ix_desired_node_rv", "desired", ["node", "rv"])
    op.create_table(
        "tasks",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("res", sa.String(200), primary_key=True),
        sa.Column("node", sa.String(63), primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("rv", sa.BigInteger, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("last_result", sa.JSON, nullable=True),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_assignments_node_rv", "assignments", ["node", "rv"])
    op.create_table(
        "results",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("res", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("stale", sa.Boolean, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("node", "run_id", name="uq_results_node_run"),
    )
    op.create_index("ix_results_res_node", "results", ["res", "node", "id"])
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("used_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("counters", "join_tokens", "results", "assignments", "tasks", "desired", "nodes"):
        op.drop_table(table)
