"""Local admission: may a run start now, given what already runs and what the node has?

Pure, so the edge scheduler's decision is testable without processes. A task
that declares no resources is admitted by this check (the scheduler's
`max_concurrent` still bounds it); one that declares more than the node has in
all is never admitted, and `never_fits` says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.resources.task import Resources

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Capacity:
    cpu_millicores: int
    memory_mb: int
    """0: unknown, not checked."""

    @classmethod
    def from_report(cls, capacity: dict[str, object]) -> Capacity:
        """From what edgecore reports in hello (edgecore/sysinfo.py)."""
        cpus = capacity.get("cpus")
        memory = capacity.get("memory_bytes")
        return cls(
            cpu_millicores=cpus * 1000 if isinstance(cpus, int) else 0,
            memory_mb=memory // MIB if isinstance(memory, int) else 0,
        )


def admits(capacity: Capacity, running: Iterable[Resources], wanted: Resources) -> bool:
    """True if `wanted` fits beside `running` (each dimension that is known)."""
    running = list(running)
    if capacity.cpu_millicores and wanted.cpu_millicores:
        used = sum(r.cpu_millicores for r in running)
        if used + wanted.cpu_millicores > capacity.cpu_millicores:
            return False
    if capacity.memory_mb and wanted.memory_mb:
        used = sum(r.memory_mb for r in running)
        if used + wanted.memory_mb > capacity.memory_mb:
            return False
    return True


def never_fits(capacity: Capacity, wanted: Resources) -> str | None:
    """Why `wanted` cannot run here even alone, or None."""
    if capacity.cpu_millicores and wanted.cpu_millicores > capacity.cpu_millicores:
        return (
            f"the task requests {wanted.cpu_millicores}m CPU and this node has "
            f"{capacity.cpu_millicores}m in all"
        )
    if capacity.memory_mb and wanted.memory_mb > capacity.memory_mb:
        return (
            f"the task requests {wanted.memory_mb} MiB memory and this node has "
            f"{capacity.memory_mb} MiB in all"
        )
    return None
