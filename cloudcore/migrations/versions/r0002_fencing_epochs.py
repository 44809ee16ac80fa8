"""Real fencing epochs: a cloud-wide `epoch` counter and revoked assignments as tombstones.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("revoked_ms", sa.BigInteger, nullable=True))
    # Start above every epoch already handed out, so a move never reuses one.
    op.execute(
        "INSERT INTO counters (name, value) "
        "SELECT 'epoch', top FROM (SELECT COALESCE(MAX(epoch), 0) AS top FROM assignments) AS a "
        "WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = 'epoch')"
    )


def downgrade() -> None:
    op.execute("DELETE FROM counters WHERE name = 'epoch'")
    op.execute("DELETE FROM assignments WHERE revoked_ms IS NOT NULL")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("revoked_ms")
