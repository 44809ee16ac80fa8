"""Task runs reported by nodes: the `task` upstream handler and the results history.

Authorisation: a node writes only the runs of tasks assigned to it, i.e. a
(task, node) assignment row exists, live or a tombstone. What a run's message
then does is decided by its epoch (shared/fencing.py): applied, stale (recorded,
never overwriting the current state) or forbidden (an epoch never issued).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudcore.store.base import StoreBase
from cloudcore.store.schema import assignments, results
from cloudcore.store.upstream import INVALID, UpstreamContext, UpstreamHandler, UpstreamOutcome
from shared.errors import Forbidden
from shared.fencing import Assignment, Verdict, upstream_verdict
from shared.protocol.messages import Envelope, Op
from shared.text import bound_run_report


class TaskRuns(UpstreamHandler[Assignment]):
    """`report` (a run's phase) and `result` (a finished run) for `task/NS/NAME`."""

    kind = "task"

    def authorize(self, conn: Connection, ctx: UpstreamContext, env: Envelope) -> Assignment:
        row = conn.execute(
            sa.select(assignments.c.epoch, assignments.c.revoked_ms).where(
                assignments.c.res == env.res, assignments.c.node == ctx.node
            )
        ).one_or_none()
        if row is None:
            raise Forbidden(f"{env.res} is not assigned to node {ctx.node}")
        return Assignment(int(row.epoch), revoked=row.revoked_ms is not None)

    def apply(
        self, conn: Connection, ctx: UpstreamContext, env: Envelope, grant: Assignment
    ) -> UpstreamOutcome:
        assert env.res is not None and env.seq is not None
        node = ctx.node
        body = env.body or {}
        epoch = body.get("epoch")
        generation = body.get("generation")
        run_id = body.get("run_id")
        phase = body.get("phase")
        if not (
            isinstance(epoch, int)
            and isinstance(generation, int)
            and isinstance(run_id, str)
            and isinstance(phase, str)
        ):
            return UpstreamOutcome(
                env,
                INVALID,
                "report/result needs integer epoch and generation, string run_id and phase",
            )
        verdict, detail = upstream_verdict(grant, epoch)
        if verdict is Verdict.FORBIDDEN:
            return UpstreamOutcome(env, verdict.value, f"{env.res} on node {node}: {detail}")
        body = bound_run_report(body)
        if env.op is Op.RESULT:
            seen = conn.execute(
                sa.select(results.c.id).where(
                    results.c.node == node, results.c.run_id == run_id[:64]
                )
            ).first()
            if seen is not None:
                verdict, _ = upstream_verdict(grant, epoch, duplicate=True)
                return UpstreamOutcome(env, verdict.value, f"run {run_id} was already recorded")
            conn.execute(
                sa.insert(results).values(
                    node=node,
                    seq=env.seq,
                    res=env.res,
                    run_id=run_id[:64],
                    epoch=epoch,
                    generation=generation,
                    phase=phase[:16],
                    stale=verdict is Verdict.STALE,
                    body=body,
                    received_ms=ctx.now_ms,
                )
            )
            _trim_results(conn, env.res, node, ctx.result_history)
        if verdict is Verdict.STALE:
            return UpstreamOutcome(env, verdict.value, detail)
        values: dict[str, Any] = {"phase": phase[:16], "updated_ms": ctx.now_ms}
        if env.op is Op.RESULT:
            values["runs"] = assignments.c.runs + 1
            values["last_result"] = body
        conn.execute(
            sa.update(assignments)
            .where(assignments.c.res == env.res, assignments.c.node == node)
            .values(**values)
        )
        return UpstreamOutcome(env, verdict.value)


def _trim_results(conn: Connection, res: str, node: str, keep: int) -> None:
    """Keep the newest `keep` results of one task on one node (an indexed range delete)."""
    cutoff = conn.execute(
        sa.select(results.c.id)
        .where(results.c.res == res, results.c.node == node)
        .order_by(results.c.id.desc())
        .offset(keep)
        .limit(1)
    ).scalar_one_or_none()
    if cutoff is not None:
        conn.execute(
            sa.delete(results).where(
                results.c.res == res, results.c.node == node, results.c.id <= cutoff
            )
        )


class RunStore(StoreBase):
    """Reads of the results history."""

    def results_for(self, res: str, node: str | None = None) -> list[dict[str, Any]]:
        with self._tx("read results") as conn:
            q = sa.select(results).where(results.c.res == res)
            if node is not None:
                q = q.where(results.c.node == node)
            return [dict(r) for r in conn.execute(q.order_by(results.c.id)).mappings()]
