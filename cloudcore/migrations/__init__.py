"""cloudcore's schema migrations (Alembic), run by the store at start on its own connection.

No alembic.ini is needed at run time: `alembic_config()` points Alembic at the
scripts inside this package (installed as package data), and `env.py` takes
the connection from the config's attributes, so the migration runs in the
store's transaction (on SQLite in batch mode).

Adding a schema change: edit `metadata` in cloudcore/store/schema.py, then add a
revision under `versions/` (copy `script.py.mako`, or run Alembic against a
scratch database: `alembic -x url=sqlite:///scratch.db revision --autogenerate`
with `script_location = cloudcore:migrations` in a throwaway ini).
tests/integration/test_migrations.py fails while the migrated schema and
`metadata` differ.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from shared.errors import StoreError

log = logging.getLogger(__name__)

SCRIPT_LOCATION = "cloudcore:migrations"

BASELINE = "0001"
"""The schema of every cloudcore before migrations existed (commit 1f63a07)."""

BASELINE_TABLES = frozenset(
    {"nodes", "desired", "tasks", "assignments", "results", "join_tokens", "counters"}
)

_PG_LOCK_KEY = 0x65647379  # "edsy": one migrating replica at a time


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged scripts; `connection` is what env.py migrates."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this cloudcore knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "cloudcore/migrations/versions has no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database (None: no `alembic_version` table or row)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, where: str) -> tuple[str | None, str]:
    """Bring the database to the head revision inside the caller's transaction.

    Returns (revision before, revision after). A database written before
    migrations existed (today's tables, no `alembic_version`) is stamped
    `0001` first, then upgraded. Raises StoreError, before changing
    anything, for a revision this cloudcore does not know (a newer
    cloudcore wrote it) and for a database holding only part of the
    baseline tables. The caller commits; an exception rolls everything back.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    head = head_revision()
    known = {s.revision for s in script.walk_revisions()}
    current = current_revision(connection)
    if current is None:
        present = set(sa.inspect(connection).get_table_names()) & BASELINE_TABLES
        if present == BASELINE_TABLES:
            log.warning(
                "%s predates schema migrations: recording it as revision %s, then upgrading",
                where,
                BASELINE,
            )
            command.stamp(config, BASELINE)
        elif present:
            raise StoreError(
                f"{where} has some of cloudcore's tables ({', '.join(sorted(present))}) but "
                f"not all, and no schema revision: it is not a cloudcore database this "
                "version can upgrade; restore a backup or point database_url at an empty one"
            )
    elif current not in known:
        raise StoreError(
            f"{where} has schema revision {current!r}, which this cloudcore does not know "
            f"(its newest is {head!r}): a newer cloudcore wrote it; upgrade cloudcore "
            "(the database was left untouched)"
        )
    before = current_revision(connection)
    if before != head:
        command.upgrade(config, "head")
        log.info("%s: schema upgraded from revision %s to %s", where, before or "none", head)
    return before, head
