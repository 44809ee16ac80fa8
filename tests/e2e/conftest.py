"""Whole daemons as processes: one cloudcore and edgecores, real everything."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcore.fleet import LocalFleet

# Short timers so link failures are noticed in seconds, not the production 45 s.
FAST_CLOUD = {
    "hub": {
        "websocket_port": 0,
        "quic_port": 0,
        "listen": "127.0.0.1",
        "ping_interval": 1.0,
        "missed_pings": 3,
        "handshake_timeout": 5.0,
    }
}
FAST_EDGE = {
    "link": {
        "ping_interval": 1.0,
        "missed_pings": 3,
        "backoff_initial": 0.2,
        "backoff_cap": 1.0,
        "connect_timeout": 5.0,
    }
}


@pytest.fixture(params=["websocket", "quic"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every end-to-end test runs over both transports."""
    return str(request.param)


@pytest.fixture
def fleet(tmp_path: Path, transport: str) -> Iterator[LocalFleet]:
    edge = {"link": {**FAST_EDGE["link"], "transport": transport}}
    fleet = LocalFleet(tmp_path, cloud_config=FAST_CLOUD, edge_config=edge)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def once_task(name: str, nodes: list[str], argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "command": {"argv": argv or ["echo", name], "timeout": 20},
            "trigger": {"type": "once"},
            "placement": {"nodes": nodes},
        },
    }


def edge_runs(fleet: LocalFleet, node: str) -> list[tuple[str, int, str]]:
    """(res, generation, run_id) of every run the edge recorded, from its SQLite file."""
    db = fleet.edge_dir(node) / "edge.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute("SELECT res, generation, run_id FROM runs ORDER BY started_ms")
        ]


def cloud_results(fleet: LocalFleet, task: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = fleet.task(task)["results"]
    return results


def all_succeeded(fleet: LocalFleet, tasks: list[str], nodes: list[str]) -> bool:
    for name in tasks:
        assignments = {a["node"]: a for a in fleet.task(name)["assignments"]}
        for node in nodes:
            a = assignments.get(node)
            if a is None or a["phase"] != "succeeded":
                return False
    return True


def assert_exactly_once(fleet: LocalFleet, tasks: list[str], nodes: list[str]) -> None:
    """Each once-task ran exactly once per node, and its result reached the cloud exactly once."""
    for node in nodes:
        runs = edge_runs(fleet, node)
        per_task = {name: [r for r in runs if r[0] == f"task/default/{name}"] for name in tasks}
        for name, task_runs in per_task.items():
            assert len(task_runs) == 1, f"{node} ran {name} {len(task_runs)} times: {task_runs}"
    for name in tasks:
        results = cloud_results(fleet, name)
        for node in nodes:
            mine = [r for r in results if r["node"] == node]
            assert len(mine) == 1, f"cloud holds {len(mine)} results of {name} from {node}"
            assert len({r["run_id"] for r in mine}) == 1
            assert mine[0]["phase"] == "succeeded"
