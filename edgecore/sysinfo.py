"""What the node is and how loaded it is, read from /proc (the hardware probe boundary).

`root` is injectable so tests use fake probe files.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _meminfo(root: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def capacity(root: Path = Path("/")) -> dict[str, Any]:
    """Static facts reported in hello: CPUs, memory, architecture, hostname."""
    mem = _meminfo(root)
    return {
        "cpus": os.cpu_count() or 1,
        "memory_bytes": mem.get("MemTotal", 0),
        "arch": platform.machine(),
        "hostname": platform.node(),
        "os": platform.system().lower(),
        "python": platform.python_version(),
    }


def load(root: Path = Path("/")) -> dict[str, Any]:
    """Heartbeat metrics: load average per CPU and memory in use, both in [0, 1]."""
    cpus = os.cpu_count() or 1
    try:
        load1 = float((root / "proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        load1 = 0.0
    mem = _meminfo(root)
    total = mem.get("MemTotal", 0)
    available = mem.get("MemAvailable", total)
    return {
        "cpu": round(min(1.0, load1 / cpus), 4),
        "memory": round(1 - available / total, 4) if total else 0.0,
    }
