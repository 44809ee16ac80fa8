"""edgecore's schema migrations: an ordered list of steps keyed on `meta.schema_version`.

Devices are upgraded in the field, unattended, and a half-migrated store
would strand a node, so:
- every pending step runs in the one transaction `EdgeStore.open` began with
  BEGIN IMMEDIATE (shared/aio/sqlstore.py `_schema_tx`): SQLite DDL is
  transactional, and a failing step leaves the file exactly as it was;
- before a destructive step (one that drops or rebuilds a table) the file is
  copied with SQLite's online backup API to `edge.db.schema-N.bak` beside it,
  N being the version it had: the way back if the new code misbehaves;
- a version above the newest step (a newer edgecore wrote the file) is
  refused before anything is changed.

Steps issue fixed DDL, not `metadata.create_all`: `metadata` in store.py
describes the newest schema, while a step must keep producing the schema of
its own version. tests/integration/test_migrations.py checks that migrating
from nothing gives exactly `metadata`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection

from shared.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the edge schema."""

    version: int
    """The schema version the step produces: one above the previous step's."""
    summary: str
    """What changes, for the log."""
    destructive: bool
    """It drops or rebuilds a table (data could be lost by a bug): back up the file first."""
    apply: Callable[[Connection], None]
    """Runs the step's SQL on the migrating connection; must not commit."""


def _v1_baseline(conn: Connection) -> None:
    """The schema of edgecore before migrations (commit 1f63a07), and the store's identity.

    IF NOT EXISTS: before migrations, the tables were created outside a
    transaction, so a file may hold them without a schema_version.
    """
    for ddl in (
        'CREATE TABLE IF NOT EXISTS meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, '
        'PRIMARY KEY ("key"))',
        "CREATE TABLE IF NOT EXISTS objects (res VARCHAR(200) NOT NULL, rv BIGINT NOT NULL, "
        "body JSON NOT NULL, PRIMARY KEY (res))",
        "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
        "op VARCHAR(16) NOT NULL, res VARCHAR(200) NOT NULL, kind VARCHAR(16) NOT NULL, "
        "body JSON NOT NULL, created_ms BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR(64) NOT NULL, res VARCHAR(200) NOT NULL, "
        "generation BIGINT NOT NULL, epoch BIGINT NOT NULL, phase VARCHAR(16) NOT NULL, "
        "started_ms BIGINT NOT NULL, finished_ms BIGINT, result JSON, PRIMARY KEY (run_id))",
        "CREATE INDEX IF NOT EXISTS ix_runs_res ON runs (res, generation, started_ms)",
    ):
        conn.exec_driver_sql(ddl)
    conn.exec_driver_sql(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?), ('applied_rv', '0')",
        (uuid.uuid4().hex,),
    )


def _v2_outbox_classes(conn: Connection) -> None:
    """Outbox rows get a class and its priority (shared/outbox.py), the row count moves to
    meta.outbox_rows, kept incrementally. The table is rebuilt (SQLite cannot change a
    column in place), keeping every row, its seq, and the AUTOINCREMENT high-water mark
    so acked numbers are never handed out again. 1f63a07's kinds: `result` stays a
    result, `status` (and anything else) becomes the droppable `status` class."""
    top = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").scalar()
    conn.exec_driver_sql(
        "CREATE TABLE outbox_v2 (seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "
        "op VARCHAR(16) NOT NULL, res VARCHAR(200) NOT NULL, cls VARCHAR(16) NOT NULL, "
        "priority INTEGER NOT NULL, body JSON NOT NULL, created_ms BIGINT NOT NULL)"
    )
    conn.exec_driver_sql(
        "INSERT INTO outbox_v2 (seq, op, res, cls, priority, body, created_ms) "
        "SELECT seq, op, res, "
        "CASE kind WHEN 'result' THEN 'result' ELSE 'status' END, "
        "CASE kind WHEN 'result' THEN 3 ELSE 1 END, "
        "body, created_ms FROM outbox ORDER BY seq"
    )
    copied = conn.exec_driver_sql("SELECT COUNT(*), MAX(seq) FROM outbox_v2").one()
    conn.exec_driver_sql("DROP TABLE outbox")
    conn.exec_driver_sql("ALTER TABLE outbox_v2 RENAME TO outbox")
    conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name IN ('outbox', 'outbox_v2')")
    high = max(int(top or 0), int(copied[1] or 0))
    if high:
        conn.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (high,)
        )
    conn.exec_driver_sql("CREATE INDEX ix_outbox_priority_seq ON outbox (priority, seq)")
    conn.exec_driver_sql("CREATE INDEX ix_outbox_cls_res ON outbox (cls, res)")
    conn.exec_driver_sql(
        "INSERT INTO meta (key, value) VALUES ('outbox_rows', ?)", (str(int(copied[0])),)
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline: meta, objects, outbox, runs", False, _v1_baseline),
    Migration(2, "outbox rows get a class and priority; incremental row count", True,
              _v2_outbox_classes),
)  # fmt: skip


def check_steps(steps: Sequence[Migration]) -> int:
    """The newest version of `steps`; ValueError unless they are numbered 1, 2, 3…"""
    if not steps or [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise ValueError(f"edge migrations must be numbered 1..n: {[s.version for s in steps]}")
    return steps[-1].version


NEWEST = check_steps(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    """The file's schema version: 0 for a new (or pre-versioning) file."""
    has_meta = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).first()
    if has_meta is None:
        return 0
    value = conn.exec_driver_sql("SELECT value FROM meta WHERE key = 'schema_version'").scalar()
    try:
        return int(value or 0)
    except ValueError:
        raise StoreError(
            f"meta.schema_version is {value!r}, not a number: the store is damaged; restore a "
            "backup or remove the file (the node then resyncs from the cloud)"
        ) from None


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.schema-{version}.bak")


def backup(path: Path, version: int) -> Path:
    """Copy the committed database (SQLite backup API) beside it; returns the copy's path.

    Call it before the migration writes anything. It reads through a second
    connection: in WAL mode a reader works beside the migrating connection's
    BEGIN IMMEDIATE, whereas a backup from that connection itself never
    finishes (SQLITE_BUSY, retried forever by the stdlib). Written to a
    temporary name, synced, then renamed, so a power cut leaves either the
    old backup or the new one. Mode 0600 like the store.
    """
    target = backup_path(path, version)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(path)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, target)
    return target


def migrate(conn: Connection, path: Path, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the store at `path` to the newest version of `steps`; returns the version before.

    `conn` must be inside the caller's BEGIN IMMEDIATE transaction; the caller
    commits. Raises StoreError, having changed nothing, if the file is newer
    than every step. Any exception means the caller must roll back.
    """
    newest = check_steps(steps)
    current = schema_version(conn)
    if current > newest:
        raise StoreError(
            f"{path} was written by a newer edgecore (schema {current} > {newest}); "
            "upgrade edgecore"
        )
    pending = [s for s in steps if s.version > current]
    if not pending:
        return current
    if current > 0 and any(s.destructive for s in pending):
        copy = backup(path, current)
        log.info("%s: schema %d backed up to %s before migrating", path, current, copy)
    for step in pending:
        step.apply(conn)
        conn.exec_driver_sql(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(step.version),),
        )
        if current > 0:
            log.info("%s: schema %d: %s", path, step.version, step.summary)
    return current
