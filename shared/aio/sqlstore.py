"""What both daemons' stores share: the SQLAlchemy engine with SQLite tuned for
a crash-safe write-ahead log, and one transaction per state change with
database errors translated into StoreError at this boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from shared.errors import StoreError

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=5000")
        cur.close()

    return on_connect


class SqlStore:
    """Base of CloudStore and EdgeStore. `where` names the database in every error."""

    def __init__(self, url: str, where: str, sqlite_synchronous: str = "FULL") -> None:
        synchronous = sqlite_synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise StoreError(
                f"sqlite_synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"not {sqlite_synchronous!r}"
            )
        self.where = where
        self.engine: Engine = sa.create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas(synchronous))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        """One transaction: committed if the block ends normally, rolled back otherwise."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            first = str(exc).splitlines()[0][:300]
            hint = " (disk full?)" if "full" in first.lower() else ""
            raise StoreError(f"{self.where}: cannot {what}{hint}: {first}") from exc

    @contextmanager
    def _schema_tx(self, what: str) -> Iterator[Connection]:
        """Like `_tx`, for schema changes: all or nothing on SQLite too.

        pysqlite's default (legacy) transaction control opens a transaction
        only before INSERT/UPDATE/DELETE, so DDL issued first would commit
        statement by statement. An explicit BEGIN IMMEDIATE (the driver then
        sees the transaction and commits or rolls it back) makes every
        statement of a migration part of one transaction, and takes the write
        lock before anything is read.
        """
        with self._tx(what) as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
