"""cloudcore's database: the only package that issues SQL on the cloud side.

SQLAlchemy 2 Core (not ORM) because the hot paths are batch reads of the
per-node desired-state log and batch writes of results; design.md's
measurements put Core at ~1.6x ORM bulk and ~70x ORM merge-per-row.

One module per thing held:
- schema.py: the tables (`metadata`, which the Alembic revisions build);
- base.py: engine, schema migration, the cloud-wide counters;
- tokens.py: join tokens;
- nodes.py: registration, session start (the resume decision is shared/resume.py);
- heartbeats.py: each node's bounded heartbeat history;
- tasks.py: tasks, assignments, placements;
- desired.py: the per-node desired log and its acks;
- progress.py: the hub's batched flush of acks and heartbeats;
- upstream.py: reports and results dispatched by kind to a handler each;
- runs.py: the `task` handler and the results history.

`CloudStore` is all of them, on one engine; each public method is one transaction.
"""

from __future__ import annotations

from cloudcore.store.base import StoreBase
from cloudcore.store.desired import DesiredRow, DesiredStore
from cloudcore.store.heartbeats import HEARTBEAT_HISTORY, HeartbeatSample, HeartbeatStore
from cloudcore.store.nodes import NodeStore, SessionStart
from cloudcore.store.progress import ProgressStore
from cloudcore.store.runs import RunStore, TaskRuns
from cloudcore.store.schema import (
    LIVE,
    TERMINAL_PHASES,
    assignments,
    counters,
    desired,
    heartbeat_history,
    join_tokens,
    metadata,
    nodes,
    results,
    tasks,
)
from cloudcore.store.tasks import Placement, TaskStore
from cloudcore.store.tokens import JoinGrant, TokenStore
from cloudcore.store.upstream import (
    UpstreamContext,
    UpstreamHandler,
    UpstreamOutcome,
    UpstreamRegistry,
    UpstreamStore,
)
from shared.errors import ConfigError

__all__ = [
    "HEARTBEAT_HISTORY",
    "LIVE",
    "TERMINAL_PHASES",
    "CloudStore",
    "DesiredRow",
    "HeartbeatSample",
    "JoinGrant",
    "Placement",
    "SessionStart",
    "TaskRuns",
    "UpstreamContext",
    "UpstreamHandler",
    "UpstreamOutcome",
    "UpstreamRegistry",
    "assignments",
    "counters",
    "desired",
    "heartbeat_history",
    "join_tokens",
    "metadata",
    "nodes",
    "results",
    "tasks",
]


class CloudStore(
    TokenStore,
    NodeStore,
    HeartbeatStore,
    TaskStore,
    DesiredStore,
    ProgressStore,
    UpstreamStore,
    RunStore,
    StoreBase,
):
    """The cloud's repository: every part above on one engine (see StoreBase for errors).

    `heartbeat_history`: heartbeats kept per node (N of heartbeats.py). The
    upstream kinds are in `upstream`; `TaskRuns` is registered.
    """

    def __init__(
        self,
        url: str,
        sqlite_synchronous: str = "FULL",
        *,
        heartbeat_history: int = HEARTBEAT_HISTORY,
    ) -> None:
        if heartbeat_history < 1:
            raise ConfigError(
                f"heartbeat_history must be at least 1 (heartbeats kept per node), "
                f"not {heartbeat_history}"
            )
        super().__init__(url, sqlite_synchronous)
        self.heartbeat_keep = heartbeat_history
        self.upstream = UpstreamRegistry([TaskRuns()])
