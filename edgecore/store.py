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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgecore.migrations import MIGRATIONS, NEWEST, Migration, migrate
from shared.aio.sqlstore import SqlStore
from shared.errors import OutboxFull
from shared.outbox import (
    DROPPABLE,
    RULES,
    Candidate,
    OutboxClass,
    outbox_victims,
    twin_report_supersedes,
)
from shared.protocol.messages import Envelope, Op

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
    sa.Column("cls", sa.String(16), nullable=False),  # shared.outbox.OutboxClass
    sa.Column("priority", sa.Integer, nullable=False),  # RULES[cls].priority: victims by index
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_outbox_priority_seq", "priority", "seq"),
    sa.Index("ix_outbox_cls_res", "cls", "res"),
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

OUTBOX_ROWS = "outbox_rows"
"""meta key: the outbox's row count, kept in the transaction of every change to it."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    op: Op
    res: str
    body: dict[str, Any]
    cls: OutboxClass = OutboxClass.STATUS


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message to queue for the cloud (EdgeStore.enqueue)."""

    op: Op
    res: str
    cls: OutboxClass
    body: dict[str, Any]


@dataclass(slots=True)
class OutboxMetrics:
    """Counters since this store was opened, for the metrics endpoint."""

    dropped: dict[OutboxClass, int] = field(default_factory=dict)
    """Rows deleted unsent at the bound, per class."""
    coalesced: int = 0
    """Twin reports replaced by a newer one that carries everything they did."""
    refused: int = 0
    """Rows refused with OutboxFull (the bound held only rows that may not be dropped)."""


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
        self.outbox_metrics = OutboxMetrics()
        self._migrations = migrations

    def open(self) -> None:
        """Create or migrate the schema (edgecore/migrations.py) in one transaction.

        Raises StoreError, leaving the file untouched, if a newer edgecore
        wrote it or a migration step fails.
        """
        with self._schema_tx("open and migrate the store") as conn:
            migrate(conn, self.path, self._migrations)
            self._check_outbox_count(conn)

    def _check_outbox_count(self, conn: Connection) -> None:
        """One COUNT(*) at start: repair the kept count if the file was edited behind our back."""
        value = conn.execute(
            sa.select(meta.c.value).where(meta.c.key == OUTBOX_ROWS)
        ).scalar_one_or_none()
        if value is None:  # only with a test's own migration list
            return
        kept = int(value)
        actual = int(conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one())
        if kept != actual:
            log.warning(
                "%s: outbox count was %d, the outbox holds %d rows; corrected",
                self.path,
                kept,
                actual,
            )
            self._set(conn, OUTBOX_ROWS, str(actual))

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

    def tasks(self, resources: Collection[str] | None = None) -> list[TaskObject]:
        """The tasks this node holds; only those named in `resources` if given."""
        query = sa.select(objects).where(objects.c.res.like("task/%"))
        if resources is not None:
            query = query.where(objects.c.res.in_(list(resources)))
        with self._tx("read tasks") as conn:
            rows = conn.execute(query).all()
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

    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> None:
        """Queue many messages for the cloud in one transaction (all or none).

        Raises OutboxFull, queueing nothing, if the bound is reached with rows
        that may not be dropped; see `_enqueue` for the rules.
        """
        if not items:
            return
        with self._tx(f"queue {len(items)} outbox rows") as conn:
            effects = self._enqueue(conn, items, now_ms)
        self._count(effects)

    def _enqueue(
        self,
        conn: Connection,
        items: Sequence[OutboxItem],
        now_ms: int,
        *,
        may_exceed: bool = False,
    ) -> tuple[dict[OutboxClass, int], int]:
        """Insert rows, coalesce twin reports, apply the bound; returns (dropped, coalesced).

        The row count lives in meta (updated here, in the caller's
        transaction), so no COUNT(*) per insert. Twin reports: an older unsent
        one for the same resource is deleted if the new one supersedes it
        (shared.outbox.twin_report_supersedes). At the bound, the victims are
        chosen by shared.outbox.outbox_victims; if not enough rows may be
        dropped, OutboxFull is raised and the caller's transaction (with the
        state change the rows belong to) rolls back, unless `may_exceed`: then
        the rows are queued above the bound (recovery at start only, where a
        refusal would keep edgecore from starting and so from draining).
        """
        count = int(self._get(conn, OUTBOX_ROWS))
        coalesced = 0
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if pending:
                conn.execute(sa.insert(outbox), pending)
                pending.clear()

        for item in items:
            rule = RULES[item.cls]
            if rule.coalesces:
                flush()  # a report may supersede one queued earlier in this batch
                older = conn.execute(
                    sa.select(outbox.c.seq, outbox.c.body).where(
                        outbox.c.cls == item.cls.value, outbox.c.res == item.res
                    )
                ).all()
                gone = [int(r.seq) for r in older if twin_report_supersedes(r.body, item.body)]
                if gone:
                    conn.execute(sa.delete(outbox).where(outbox.c.seq.in_(gone)))
                    coalesced += len(gone)
                    count -= len(gone)
            pending.append(
                {
                    "op": item.op.value,
                    "res": item.res,
                    "cls": item.cls.value,
                    "priority": rule.priority,
                    "body": item.body,
                    "created_ms": now_ms,
                }
            )
            count += 1
        flush()
        dropped: dict[OutboxClass, int] = {}
        excess = count - self.outbox_max_rows
        if excess > 0:
            rows = conn.execute(
                sa.select(outbox.c.seq, outbox.c.cls)
                .where(outbox.c.cls.in_([c.value for c in DROPPABLE]))
                .order_by(outbox.c.priority, outbox.c.seq)
                .limit(excess)
            ).all()
            victims = outbox_victims(
                count,
                self.outbox_max_rows,
                [Candidate(int(r.seq), OutboxClass(r.cls)) for r in rows],
            )
            if victims.short and may_exceed:
                log.warning(
                    "outbox above its bound of %d rows: queued %d row(s) that may not be "
                    "dropped anyway (recovery at start)",
                    self.outbox_max_rows,
                    victims.short,
                )
            elif victims.short:
                self.outbox_metrics.refused += len(items)
                raise OutboxFull(
                    f"{self.where}: the outbox is full: {self.outbox_max_rows} rows that are "
                    "never dropped (results, twin reports) wait for the cloud, so "
                    f"{len(items)} new row(s) were not queued. Restore the link to the cloud, "
                    "or raise outbox_max_rows if the disk has room"
                )
            by_seq = {int(r.seq): OutboxClass(r.cls) for r in rows}
            for seq in victims.drop:
                dropped[by_seq[seq]] = dropped.get(by_seq[seq], 0) + 1
            if victims.drop:
                conn.execute(sa.delete(outbox).where(outbox.c.seq.in_(victims.drop)))
                count -= len(victims.drop)
                log.warning(
                    "outbox above %d rows: dropped the %d oldest droppable rows (%s)",
                    self.outbox_max_rows,
                    len(victims.drop),
                    ", ".join(f"{c.value} {n}" for c, n in sorted(dropped.items())),
                )
        self._set(conn, OUTBOX_ROWS, str(count))
        return dropped, coalesced

    def _count(self, effects: tuple[dict[OutboxClass, int], int]) -> None:
        """Add a committed enqueue's drops and coalescings to the metrics."""
        dropped, coalesced = effects
        for cls, n in dropped.items():
            self.outbox_metrics.dropped[cls] = self.outbox_metrics.dropped.get(cls, 0) + n
        self.outbox_metrics.coalesced += coalesced

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
            effects = self._enqueue(
                conn, [OutboxItem(Op.REPORT, task.res, OutboxClass.STATUS, body)], now_ms
            )
        self._count(effects)

    def finish_run(
        self,
        run_id: str,
        result: dict[str, Any],
        now_ms: int,
        report: bool = True,
        *,
        may_exceed: bool = False,
    ) -> None:
        """Record a run's outcome and queue its result (if `report`), atomically.

        Raises OutboxFull (nothing recorded) if the outbox is at its bound with
        rows that may not be dropped, unless `may_exceed` (see `_enqueue`).
        """
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
            effects: tuple[dict[OutboxClass, int], int] = ({}, 0)
            if report:
                effects = self._enqueue(
                    conn,
                    [OutboxItem(Op.RESULT, str(row.res), OutboxClass.RESULT, body)],
                    now_ms,
                    may_exceed=may_exceed,
                )
        self._count(effects)

    def recover_interrupted_runs(self, now_ms: int) -> int:
        """Runs left `running` by a crash or power cut fail with a clear reason (not re-run:
        a command may not be safe to repeat). Their results are queued even above the
        outbox bound: at most one per run that was in progress, and refusing them would
        stop edgecore from starting, and so from ever draining the outbox."""
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
                may_exceed=True,
            )
        return len(ids)

    def run_history(
        self, resources: Collection[str] | None = None
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """(res, generation) -> (number of runs, last start ms): what the scheduler needs."""
        query = sa.select(
            runs.c.res, runs.c.generation, sa.func.count(), sa.func.max(runs.c.started_ms)
        ).group_by(runs.c.res, runs.c.generation)
        if resources is not None:
            query = query.where(runs.c.res.in_(list(resources)))
        with self._tx("read run history") as conn:
            rows = conn.execute(query).all()
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
        return [OutboxRow(int(r.seq), Op(r.op), r.res, r.body, OutboxClass(r.cls)) for r in rows]

    def outbox_acked(self, seq: int) -> None:
        """The cloud durably applied everything up to `seq`: forget it."""
        with self._tx("trim the outbox") as conn:
            deleted = conn.execute(sa.delete(outbox).where(outbox.c.seq <= seq)).rowcount
            if deleted:
                count = int(self._get(conn, OUTBOX_ROWS)) - deleted
                self._set(conn, OUTBOX_ROWS, str(count))

    def outbox_size(self) -> int:
        """Rows in the outbox (the kept count: no table scan)."""
        with self._tx("count the outbox") as conn:
            return int(self._get(conn, OUTBOX_ROWS))
