"""What every part of the cloud store shares: the engine, the schema migration, and
the cloud-wide counters (rv, generation, epoch) the parts allocate from."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudcore import migrations
from cloudcore.store.schema import counters
from shared.aio.sqlstore import SqlStore

log = logging.getLogger("cloudcore.store")
"""One logger for the whole package: docs/operations.md quotes its lines as `cloudcore.store`."""

COUNTERS = ("rv", "generation", "epoch")


class StoreBase(SqlStore):
    """Synchronous repository; the daemon runs it on one dedicated DB thread.

    Error handling: every SQLAlchemy error is translated to StoreError with
    the failing operation named; nothing half-done is committed. Each public
    method of a part is one transaction (`_tx`); helpers that take a
    `Connection` run inside the caller's.
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
            for name in COUNTERS:
                if name not in present:
                    conn.execute(sa.insert(counters).values(name=name, value=0))


def next_values(conn: Connection, counter: str, count: int) -> int:
    """Reserve `count` values of a cloud-wide sequence; returns the first.

    The row lock on the counter orders commits: for `rv` a reader that has
    seen rv N never later finds a new row below N (docs/protocol.md §6.1).
    """
    value = conn.execute(
        sa.update(counters)
        .where(counters.c.name == counter)
        .values(value=counters.c.value + count)
        .returning(counters.c.value)
    ).scalar_one()
    return int(value) - count + 1


def issued_rv(conn: Connection) -> int:
    """The highest rv this cloud ever issued (the counter's value)."""
    return int(
        conn.execute(sa.select(counters.c.value).where(counters.c.name == "rv")).scalar_one()
    )
