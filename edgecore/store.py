"""edgecore's SQLite store: the only module that issues SQL on the edge.

One transaction per state change together with its outbox row, so a crash
at any instant leaves either both or neither (docs/protocol.md §6):
- applying a batch of desired state and advancing `applied_rv`;
- starting a run and queueing its `running` report;
- finishing a run and queueing its result.

The schema is made and upgraded by edgecore/migrations.py; `metadata` below is
its newest version, and a test keeps the two equal.

WAL mode with `synchronous=FULL`: a committed transaction survives power
loss, which is what lets the edge ack the cloud right after commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgecore.migrations import MIGRATIONS, NEWEST, Migration, migrate
from shared.protocol.messages import Envelope, Op
from shared.sqlstore import SqlStore

log = logging.getLogger(__name__)

SCHEMA_VERSION = NEWEST
"""The schema this edgecore writes (`meta.schema_version`); see edgecore/migrations.py."""

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("res", sa.String(200), primary_key=True),
    sa.Column("rv", sa.BigInteger, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("res", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,  # never reuse a seq, even after the newest rows are deleted
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("res", sa.String(200), nullable=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("started_ms", sa.BigInteger, nullable=False),
    sa.Column("finished_ms", sa.BigInteger, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Index("ix_runs_res", "res", "generation", "started_ms"),
)

# Outbox kinds: results and reports are never dropped; status rows may be.
KIND_RESULT = "result"
KIND_STATUS = "status"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    op: Op
    res: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskObject:
    res: str
    rv: int
    document: dict[str, Any]
    generation: int
    epoch: int


class EdgeStore(SqlStore):
    """Synchronous repository; edgecore calls it from one dedicated DB thread."""

    def __init__(
        self,
        path: Path,
        outbox_max_rows: int = 100_000,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        super().__init__(f"sqlite:///{path}", f"local store {path}", "FULL")
        self.path = path
        self.outbox_max_rows = outbox_max_rows
        self._migrations = migrations

    def open(self) -> None:
        """Create or migrate the schema (edgecore/migrations.py) in one transaction.

        Raises StoreError, leaving the file untouched, if a newer edgecore
        wrote it or a migration step fails.
        """
        with self._schema_tx("open and migrate the store") as conn:
            migrate(conn, self.path, self._migrations)

    def _get(self, conn: Connection, key: str) -> str:
        return str(conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar_one())

    def _set(self, conn: Connection, key: str, value: str) -> None:
        conn.execute(sa.update(meta).where(meta.c.key == key).values(value=value))

    def identity(self) -> tuple[str, int]:
        """(store_id, applied_rv): what the hello announces."""
        with self._tx("read the cursors") as conn:
            return self._get(conn, "store_id"), int(self._get(conn, "applied_rv"))

    # ------------------------------------------------------------ desired state

    def apply_batch(self, envelopes: Sequence[Envelope]) -> list[str]:
        """Apply desired-state messages in one transaction; returns the resources changed.

        Idempotent: a message at or below `applied_rv` was applied before
        (redelivery after a crash between commit and ack) and is skipped.
        """
        changed: list[str] = []
        with self._tx("apply desired state") as conn:
            applied = int(self._get(conn, "applied_rv"))
            top = applied
            for env in envelopes:
                assert env.rv is not None and env.res is not None
                if env.rv <= top:
                    continue
                top = env.rv
                if env.op is Op.DELETE:
                    conn.execute(sa.delete(objects).where(objects.c.res == env.res))
                else:
                    body = env.body or {}
                    updated = conn.execute(
                        sa.update(objects)
                        .where(objects.c.res == env.res)
                        .values(rv=env.rv, body=body)
                    ).rowcount
                    if not updated:
                        conn.execute(sa.insert(objects).values(res=env.res, rv=env.rv, body=body))
                changed.append(env.res)
            if top > applied:
                self._set(conn, "applied_rv", str(top))
        return changed

    def reset_desired(self) -> None:
        """Forget all desired state before a full snapshot from the cloud (a resync)."""
        with self._tx("reset desired state for a resync") as conn:
            conn.execute(sa.delete(objects))
            self._set(conn, "applied_rv", "0")

    def tasks(self) -> list[TaskObject]:
        with self._tx("read tasks") as conn:
            rows = conn.execute(sa.select(objects).where(objects.c.res.like("task/%"))).all()
        result = []
        for r in rows:
            body = r.body or {}
            result.append(
                TaskObject(
                    res=r.res,
                    rv=int(r.rv),
                    document=body.get("document", {}),
                    generation=int(body.get("generation", 0)),
                    epoch=int(body.get("epoch", 0)),
                )
            )
        return result

    # ------------------------------------------------------------ runs + outbox

    def _enqueue(
        self, conn: Connection, op: Op, res: str, kind: str, body: dict[str, Any], now_ms: int
    ) -> None:
        conn.execute(
            sa.insert(outbox).values(op=op.value, res=res, kind=kind, body=body, created_ms=now_ms)
        )
        count = conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
        excess = int(count) - self.outbox_max_rows
        if excess > 0:
            oldest = (
                sa.select(outbox.c.seq)
                .where(outbox.c.kind == KIND_STATUS)
                .order_by(outbox.c.seq)
                .limit(excess)
            )
            dropped = conn.execute(sa.delete(outbox).where(outbox.c.seq.in_(oldest))).rowcount
            if dropped:
                log.warning(
                    "outbox above %d rows: dropped the %d oldest status reports",
                    self.outbox_max_rows,
                    dropped,
                )

    def start_run(self, task: TaskObject, run_id: str, now_ms: int) -> None:
        """Record a run as started and queue its `running` report, atomically."""
        body = {
            "run_id": run_id,
            "generation": task.generation,
            "epoch": task.epoch,
            "phase": "running",
            "started_ms": now_ms,
        }
        with self._tx("record a run start") as conn:
            conn.execute(
                sa.insert(runs).values(
                    run_id=run_id,
                    res=task.res,
                    generation=task.generation,
                    epoch=task.epoch,
                    phase="running",
                    started_ms=now_ms,
                )
            )
            self._enqueue(conn, Op.REPORT, task.res, KIND_STATUS, body, now_ms)

    def finish_run(
        self, run_id: str, result: dict[str, Any], now_ms: int, report: bool = True
    ) -> None:
        """Record a run's outcome and queue its result (if `report`), atomically."""
        with self._tx("record a run result") as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).one()
            body = {
                "run_id": run_id,
                "generation": int(row.generation),
                "epoch": int(row.epoch),
                "started_ms": int(row.started_ms),
                "finished_ms": now_ms,
                **result,
            }
            conn.execute(
                sa.update(runs)
                .where(runs.c.run_id == run_id)
                .values(phase=body["phase"], finished_ms=now_ms, result=body)
            )
            if report:
                self._enqueue(conn, Op.RESULT, str(row.res), KIND_RESULT, body, now_ms)

    def recover_interrupted_runs(self, now_ms: int) -> int:
        """Runs left `running` by a crash or power cut fail with a clear reason (not re-run:
        a command may not be safe to repeat)."""
        with self._tx("list interrupted runs") as conn:
            ids = [
                r.run_id
                for r in conn.execute(sa.select(runs.c.run_id).where(runs.c.phase == "running"))
            ]
        for run_id in ids:
            self.finish_run(
                run_id,
                {
                    "phase": "failed",
                    "exit_code": None,
                    "error": "edgecore stopped while the task was running",
                    "stdout_tail": "",
                    "stderr_tail": "",
                },
                now_ms,
            )
        return len(ids)

    def run_history(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(res, generation) -> (number of runs, last start ms): what the scheduler needs."""
        with self._tx("read run history") as conn:
            rows = conn.execute(
                sa.select(
                    runs.c.res, runs.c.generation, sa.func.count(), sa.func.max(runs.c.started_ms)
                ).group_by(runs.c.res, runs.c.generation)
            ).all()
        return {(r[0], int(r[1])): (int(r[2]), int(r[3])) for r in rows}

    def runs_for(self, res: str) -> list[dict[str, Any]]:
        with self._tx("read runs") as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(runs).where(runs.c.res == res).order_by(runs.c.started_ms)
                ).mappings()
            ]

    def prune_runs(self, keep: int) -> None:
        """Keep the newest `keep` finished runs per task (results already live in the cloud)."""
        with self._tx("prune run history") as conn:
            for (res,) in conn.execute(sa.select(runs.c.res).distinct()).all():
                cutoff = conn.execute(
                    sa.select(runs.c.started_ms)
                    .where(runs.c.res == res)
                    .order_by(runs.c.started_ms.desc())
                    .offset(keep)
                    .limit(1)
                ).scalar_one_or_none()
                if cutoff is not None:
                    conn.execute(
                        sa.delete(runs).where(
                            runs.c.res == res,
                            runs.c.started_ms <= cutoff,
                            runs.c.phase != "running",
                        )
                    )

    def outbox_after(self, seq: int, limit: int) -> list[OutboxRow]:
        with self._tx("read the outbox") as conn:
            rows = conn.execute(
                sa.select(outbox).where(outbox.c.seq > seq).order_by(outbox.c.seq).limit(limit)
            ).all()
        return [OutboxRow(int(r.seq), Op(r.op), r.res, r.body) for r in rows]

    def outbox_acked(self, seq: int) -> None:
        """The cloud durably applied everything up to `seq`: forget it."""
        with self._tx("trim the outbox") as conn:
            conn.execute(sa.delete(outbox).where(outbox.c.seq <= seq))

    def outbox_size(self) -> int:
        with self._tx("count the outbox") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one())
