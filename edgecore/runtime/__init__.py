"""Task runtimes: one per task kind, behind one interface, found through a registry.

The local scheduler decides *when* a task runs; a runtime decides *how*. A
runtime may keep long-lived state between runs (an inference runtime keeps
its interpreter loaded): `prepare` is called once per task generation before
its first run, `release` when that generation leaves the node, `close` at
shutdown. Adding a task kind is one class registered in edgecore/app.py.

Error handling: `prepare` and `run` raise RunRefused (or anything else) for
a run that cannot happen; the scheduler ends that run `failed` with the
reason, reported once. Only cancellation must propagate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgecore.runtime.command import RunOutcome
from shared.resources import Task


@dataclass(frozen=True, slots=True)
class RunContext:
    """What one run needs from the node besides the task."""

    run_id: str
    data_dir: Path
    task_dir: tuple[str, ...]
    """The task's own directory below the data dir: ("work", namespace, name)."""
    env: dict[str, str]
    """EDGESYNC_NODE, EDGESYNC_TASK, EDGESYNC_RUN_ID (docs/operations.md)."""


class Runtime(Protocol):
    kind: str
    """The `spec.kind` this runtime runs."""

    async def prepare(self, task: Task) -> None:
        """Get ready to run this generation of `task` (load, check); called before its first run."""

    async def run(self, task: Task, context: RunContext) -> RunOutcome:
        """One run to its end. Cancellation stops it (and what it started)."""

    async def release(self, task: Task) -> None:
        """This generation of `task` left the node (removed or updated): drop its state."""

    async def close(self) -> None:
        """edgecore stops: release everything."""


class RuntimeRegistry:
    """Runtimes by task kind."""

    def __init__(self, runtimes: Iterable[Runtime]) -> None:
        self._by_kind: dict[str, Runtime] = {}
        for runtime in runtimes:
            if runtime.kind in self._by_kind:
                raise ValueError(f"two runtimes for task kind {runtime.kind!r}")
            self._by_kind[runtime.kind] = runtime

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_kind))

    def get(self, kind: str) -> Runtime | None:
        return self._by_kind.get(kind)

    async def close(self) -> None:
        for runtime in self._by_kind.values():
            await runtime.close()


__all__ = ["RunContext", "RunOutcome", "Runtime", "RuntimeRegistry"]
