"""Heartbeat history: each node's last N heartbeats, a ring of slots, for the load-aware
scheduler (EWMA, slopes). `nodes.heartbeat_seq` counts a node's heartbeats; heartbeat
number `seq` lives in slot `seq % N` (cloudcore/store/heartbeats.py). Existing nodes
start at 0 with an empty history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("heartbeat_seq", sa.BigInteger, nullable=False, server_default="0")
        )
    op.create_table(
        "heartbeat_history",
        sa.Column("node", sa.String(63), primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("heartbeat_history")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("heartbeat_seq")
