"""Operator-owned node labels: what a node reports about itself is kept apart.

`nodes.labels` becomes the operator's (token creation, `edgectl node label`);
`nodes.reported_labels` holds what the node's hello said; `join_tokens.labels`
carries the labels an operator gave a token to the node it joins. Existing
labels were reported by nodes: they move to `reported_labels`, and stay the
placement labels too, so an upgrade does not move any task (operators
re-label at leisure).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("reported_labels", sa.JSON, nullable=False, server_default="{}"))
    op.execute("UPDATE nodes SET reported_labels = labels")
    with op.batch_alter_table("join_tokens") as batch:
        batch.add_column(sa.Column("labels", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("join_tokens") as batch:
        batch.drop_column("labels")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("reported_labels")
