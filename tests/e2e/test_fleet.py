"""End to end with real processes: join, dispatch, crashes at every step, link cuts.

Each test checks the exactly-once claim of docs/protocol.md §6 from both
ends: the edge's own SQLite (how many times it ran each task) and the
cloud's API (how many results it holds per task and node).
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloudcore.edgectl import CtlError
from cloudcore.fleet import LocalFleet
from shared import pki
from shared.faults import CRASH_EXIT_CODE
from tests.e2e.conftest import (
    FAST_CLOUD,
    FAST_EDGE,
    all_succeeded,
    assert_exactly_once,
    edge_runs,
    once_task,
)
from tests.helpers.tcp_proxy import TcpProxy
from tests.helpers.udp_proxy import UdpProxy

pytestmark = pytest.mark.slow

SLOW_ECHO = [sys.executable, "-c", "import time; time.sleep(0.4); print('done')"]


def apply(
    fleet: LocalFleet, names: list[str], nodes: list[str], argv: list[str] | None = None
) -> None:
    for name in names:
        fleet.api("POST", "/api/v1/tasks", once_task(name, nodes, argv))


def apply_until_crash(
    fleet: LocalFleet, names: list[str], nodes: list[str], argv: list[str] | None = None
) -> None:
    """Apply tasks one by one; the cloud may die under a request (the point of the test)."""
    for name in names:
        try:
            apply(fleet, [name], nodes, argv)
        except CtlError:
            return


def wait_ready(fleet: LocalFleet, nodes: list[str], timeout: float = 30) -> None:
    fleet.wait_until(
        lambda: all(fleet.nodes().get(n, {}).get("state") == "Ready" for n in nodes),
        timeout,
        f"{nodes} Ready",
    )


def test_join_dispatch_result_on_two_nodes(fleet: LocalFleet, transport: str) -> None:
    fleet.start_cloud()
    for name in ("edge-a", "edge-b"):
        fleet.join(name, labels={"zone": "lab"})
        fleet.start_edge(name)
    wait_ready(fleet, ["edge-a", "edge-b"])
    fleet.api(
        "POST",
        "/api/v1/tasks",
        {
            "metadata": {"name": "hello"},
            "spec": {
                "command": {"argv": ["echo", "hi"]},
                "placement": {"selector": {"zone": "lab"}},
            },
        },
    )
    fleet.wait_until(
        lambda: all_succeeded(fleet, ["hello"], ["edge-a", "edge-b"]),
        30,
        "hello to succeed on both nodes",
    )
    assert_exactly_once(fleet, ["hello"], ["edge-a", "edge-b"])
    result = fleet.task("hello")["results"][0]
    assert result["body"]["stdout_tail"] == "hi\n" and result["body"]["exit_code"] == 0
    node = fleet.nodes()["edge-a"]
    assert node["capacity"]["cpus"] >= 1 and node["labels"] == {"zone": "lab"}
    assert node["software"].startswith("edgecore/")
    assert node["transport"] == transport
    # edgectl, as an operator runs it
    env_config = str(fleet.cloud_dir / "edgectl.yaml")
    out = subprocess.run(
        [sys.executable, "-m", "cloudcore.edgectl", "--config", env_config, "node", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "edge-a" in out and "edge-b" in out and "Ready" in out
    # orderly shutdown: every daemon exits 0 on SIGTERM
    assert set(fleet.stop_all().values()) == {0}


def test_cloud_crash_mid_dispatch_then_restart(fleet: LocalFleet) -> None:
    fleet.start_cloud(env={"EDGESYNC_CRASH_AT": "cloud.after_desired_sent:3"})
    fleet.join("edge-1")
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    names = [f"t{i}" for i in range(12)]
    apply_until_crash(fleet, names[:6], ["edge-1"])
    assert fleet.cloud is not None
    assert fleet.cloud.wait(20) == CRASH_EXIT_CODE, "cloudcore did not reach its crash point"
    fleet.start_cloud()
    apply(fleet, names, ["edge-1"])  # re-applying an unchanged task is a no-op
    fleet.wait_until(lambda: all_succeeded(fleet, names, ["edge-1"]), 60, "all tasks to succeed")
    assert_exactly_once(fleet, names, ["edge-1"])


def test_edge_crash_between_apply_and_ack(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    edge = fleet.start_edge("edge-1", env={"EDGESYNC_CRASH_AT": "edge.after_apply_commit"})
    wait_ready(fleet, ["edge-1"])
    names = ["a", "b", "c"]
    apply(fleet, names, ["edge-1"])
    assert edge.wait(20) == CRASH_EXIT_CODE, "edgecore did not reach its crash point"
    assert "crashing at edge.after_apply_commit" in edge.log_text()
    fleet.start_edge("edge-1")
    fleet.wait_until(lambda: all_succeeded(fleet, names, ["edge-1"]), 30, "tasks to succeed")
    assert_exactly_once(fleet, names, ["edge-1"])


def test_edge_crash_after_result_sent_before_ack(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    # 1st outbox send: the `running` report; 2nd: the result. Crash right after it.
    edge = fleet.start_edge("edge-1", env={"EDGESYNC_CRASH_AT": "edge.after_outbox_send:2"})
    wait_ready(fleet, ["edge-1"])
    apply(fleet, ["slow"], ["edge-1"], SLOW_ECHO)
    assert edge.wait(20) == CRASH_EXIT_CODE
    fleet.start_edge("edge-1")
    fleet.wait_until(lambda: all_succeeded(fleet, ["slow"], ["edge-1"]), 30, "slow to succeed")
    time.sleep(1.0)  # let any duplicate that would arrive, arrive
    assert_exactly_once(fleet, ["slow"], ["edge-1"])


def test_cloud_crash_between_task_write_and_placement(fleet: LocalFleet) -> None:
    """The task is committed but never placed before the crash: the restarted cloud's
    reconciler places it, and it runs exactly once, with no operator re-applying it."""
    fleet.start_cloud(env={"EDGESYNC_CRASH_AT": "cloud.after_task_write"})
    fleet.join("edge-1")
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    apply_until_crash(fleet, ["gap"], ["edge-1"])
    assert fleet.cloud is not None
    assert fleet.cloud.wait(20) == CRASH_EXIT_CODE, "cloudcore did not reach its crash point"
    assert "crashing at cloud.after_task_write" in fleet.cloud.log_text()
    fleet.start_cloud()
    fleet.wait_until(lambda: all_succeeded(fleet, ["gap"], ["edge-1"]), 30, "gap to succeed")
    assert_exactly_once(fleet, ["gap"], ["edge-1"])


def test_cloud_crash_after_result_commit_before_ack(fleet: LocalFleet) -> None:
    # The cloud commits the first upstream batch (the `running` report), then dies
    # before acking; the edge resends it after the restart and the cloud must dedupe.
    fleet.start_cloud(env={"EDGESYNC_CRASH_AT": "cloud.after_upstream_commit"})
    fleet.join("edge-1")
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    apply_until_crash(fleet, ["r1", "r2"], ["edge-1"], SLOW_ECHO)
    assert fleet.cloud is not None and fleet.cloud.wait(20) == CRASH_EXIT_CODE
    fleet.start_cloud()
    apply(fleet, ["r1", "r2"], ["edge-1"], SLOW_ECHO)  # no-op for what was applied before
    fleet.wait_until(lambda: all_succeeded(fleet, ["r1", "r2"], ["edge-1"]), 30, "tasks to succeed")
    time.sleep(1.0)
    assert_exactly_once(fleet, ["r1", "r2"], ["edge-1"])


def test_link_cuts_while_tasks_are_created(fleet: LocalFleet, transport: str) -> None:
    fleet.start_cloud()
    nodes = ["edge-1", "edge-2"]
    names = [f"cut{i}" for i in range(16)]
    if transport == "websocket":
        proxy: TcpProxy | UdpProxy = TcpProxy("127.0.0.1", fleet.runtime["websocket_port"])
    else:
        proxy = UdpProxy("127.0.0.1", fleet.runtime["quic_port"])
    with proxy:
        for name in nodes:
            fleet.join(name)
            if transport == "websocket":
                fleet.set_edge_url(name, websocket_url=f"wss://127.0.0.1:{proxy.port}/edgesync/v1")
            else:
                fleet.set_edge_url(name, quic_url=f"quic://127.0.0.1:{proxy.port}")
            fleet.start_edge(name)
        wait_ready(fleet, nodes)
        assert {n["transport"] for n in fleet.nodes().values()} == {transport}
        for i, name in enumerate(names):
            apply(fleet, [name], nodes)
            if isinstance(proxy, TcpProxy):
                if i % 4 == 1:
                    proxy.cut()
                if i == 8:
                    proxy.block()
                if i == 12:
                    proxy.unblock()
            elif i in (3, 10):
                # UDP has no connection to cut: black-hole it past the 3 s dead-link deadline.
                proxy.blocked = True
                time.sleep(3.5)
                proxy.blocked = False
            time.sleep(0.15)
        fleet.wait_until(lambda: all_succeeded(fleet, names, nodes), 60, "all tasks to succeed")
        if isinstance(proxy, TcpProxy):
            assert proxy.connections > len(nodes), "the link was never actually cut"
        else:
            assert proxy.dropped > 0, "no datagram was ever dropped"
    time.sleep(0.5)
    assert_exactly_once(fleet, names, nodes)
    for node in nodes:
        assert len(edge_runs(fleet, node)) == len(names)


def test_node_goes_not_ready_when_frozen_and_recovers(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    edge = fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    edge.signal(signal.SIGSTOP)  # alive but silent: no pings, no FIN
    try:
        fleet.wait_until(
            lambda: fleet.nodes()["edge-1"]["state"] == "NotReady",
            15,
            "edge-1 to be NotReady after missed pings",
        )
        node = fleet.nodes()["edge-1"]
        assert "timeout" in node["reason"] or "nothing received" in node["reason"]
    finally:
        edge.signal(signal.SIGCONT)
    wait_ready(fleet, ["edge-1"], timeout=45)


def test_task_update_reruns_and_delete_stops(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    apply(fleet, ["job"], ["edge-1"], ["echo", "v1"])
    fleet.wait_until(lambda: all_succeeded(fleet, ["job"], ["edge-1"]), 30, "v1 to succeed")
    apply(fleet, ["job"], ["edge-1"], ["echo", "v2"])  # a new generation runs again
    fleet.wait_until(lambda: fleet.task("job")["assignments"][0]["runs"] == 2, 30, "v2 run")
    outputs = sorted(r["body"]["stdout_tail"] for r in fleet.task("job")["results"])
    assert outputs == ["v1\n", "v2\n"]
    generations = [g for _, g, _ in edge_runs(fleet, "edge-1")]
    assert len(generations) == 2 and generations[0] < generations[1]
    long_run = [sys.executable, "-c", "import time; time.sleep(60)"]
    apply(fleet, ["sleeper"], ["edge-1"], long_run)
    fleet.wait_until(
        lambda: fleet.task("sleeper")["assignments"][0]["phase"] == "running",
        30,
        "sleeper to start",
    )
    fleet.api("DELETE", "/api/v1/tasks/default/sleeper")

    def sleeper_stopped() -> bool:
        db = fleet.edge_dir("edge-1") / "edge.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT phase FROM runs WHERE res='task/default/sleeper'").fetchone()
            objects = conn.execute(
                "SELECT count(*) FROM objects WHERE res LIKE '%sleeper'"
            ).fetchone()
        return row is not None and row[0] == "failed" and objects[0] == 0

    fleet.wait_until(sleeper_stopped, 20, "the deleted task's process to be stopped on the edge")


def test_edge_keeps_running_tasks_while_cloud_is_down(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    fleet.api(
        "POST",
        "/api/v1/tasks",
        {
            "metadata": {"name": "tick"},
            "spec": {
                "command": {"argv": ["echo", "tick"]},
                "trigger": {"type": "interval", "every": 0.5},
                "placement": {"nodes": ["edge-1"]},
            },
        },
    )
    fleet.wait_until(lambda: fleet.task("tick")["assignments"][0]["runs"] >= 1, 30, "first tick")
    assert fleet.cloud is not None
    fleet.cloud.kill()
    runs_at_outage = len(edge_runs(fleet, "edge-1"))
    time.sleep(3.0)
    runs_offline = len(edge_runs(fleet, "edge-1")) - runs_at_outage
    assert runs_offline >= 3, f"only {runs_offline} runs while the cloud was down"
    fleet.start_cloud()

    def all_results_arrived() -> bool:
        # `runs` counts results applied by the cloud (its result history is trimmed to 20)
        ran = len(edge_runs(fleet, "edge-1"))
        return int(fleet.task("tick")["assignments"][0]["runs"]) >= ran - 1  # one in flight

    fleet.wait_until(all_results_arrived, 30, "offline results to reach the cloud")
    results = fleet.task("tick")["results"]
    run_ids = [r["run_id"] for r in results]
    assert len(run_ids) == len(set(run_ids)), "a result arrived twice"


def test_refused_certificate_is_fatal_not_a_fast_retry(fleet: LocalFleet, transport: str) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    # Swap in a certificate for the same name from a CA this cloud never saw.
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, ca_cert = pki.create_ca("rogue", now)
    key = pki.load_key_pem((fleet.edge_dir("edge-1") / "node.key").read_bytes())
    cert = pki.sign_node_csr(ca_key, ca_cert, pki.create_csr(key, "edge-1"), "edge-1", now)
    (fleet.edge_dir("edge-1") / "node.crt").write_bytes(pki.cert_to_pem(cert))
    edge = fleet.start_edge("edge-1")
    fleet.wait_until(
        lambda: "retrying in 60s" in edge.log_text(), 30, "the edge to give up fast retries"
    )
    assert "refused this node" in edge.log_text()
    assert fleet.nodes()["edge-1"]["state"] != "Ready"
    cloud_log = (fleet.root / "cloudcore.log").read_text()
    assert "refused" in cloud_log and "not signed by this cloud's CA" in cloud_log


def test_rejoin_after_delete_resyncs_and_forgets_old_tasks(fleet: LocalFleet) -> None:
    fleet.start_cloud()
    fleet.join("edge-1")
    edge = fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    fleet.api(
        "POST",
        "/api/v1/tasks",
        {
            "metadata": {"name": "old"},
            "spec": {
                "command": {"argv": ["echo", "old"]},
                "trigger": {"type": "interval", "every": 0.3},
                "placement": {"nodes": ["edge-1"]},
            },
        },
    )
    fleet.wait_until(lambda: fleet.task("old")["assignments"][0]["runs"] >= 1, 30, "old runs")
    edge.stop()
    fleet.api("DELETE", "/api/v1/nodes/edge-1")
    fleet.api("DELETE", "/api/v1/tasks/default/old")
    old_runs = len(edge_runs(fleet, "edge-1"))
    fleet.join("edge-1")  # same data dir: edge.db (and its outbox) is kept
    fleet.start_edge("edge-1")
    wait_ready(fleet, ["edge-1"])
    apply(fleet, ["new"], ["edge-1"])
    fleet.wait_until(lambda: all_succeeded(fleet, ["new"], ["edge-1"]), 30, "new to succeed")
    time.sleep(1.0)  # the old interval task would have run 3 more times by now
    runs = [r[0] for r in edge_runs(fleet, "edge-1")]
    # Offline autonomy: until its first contact the edge runs what it last knew, so one
    # more run may start before the resync; without the resync it would run every 0.3 s.
    assert runs.count("task/default/old") <= old_runs + 1, "the deleted node's task kept running"
    assert runs.count("task/default/new") == 1


def test_a_task_moved_off_a_cut_off_node_is_fenced(tmp_path: Path) -> None:
    """Real fencing, end to end: edge-a is cut off mid-run, the operator re-pins the task to
    edge-b, edge-a finishes offline and reports on reconnect. Its late result is recorded
    as stale, never as the task's state; edge-a drops the task and does not run it again."""
    edge_config = {"link": {**FAST_EDGE["link"], "transport": "websocket"}}
    fleet = LocalFleet(tmp_path, cloud_config=FAST_CLOUD, edge_config=edge_config)
    slow = [sys.executable, "-c", "import time; time.sleep(3); print('a done')"]
    try:
        fleet.start_cloud()
        with TcpProxy("127.0.0.1", fleet.runtime["websocket_port"]) as proxy:
            fleet.join("edge-a")
            fleet.set_edge_url("edge-a", websocket_url=f"wss://127.0.0.1:{proxy.port}/edgesync/v1")
            fleet.start_edge("edge-a")
            fleet.join("edge-b")
            fleet.start_edge("edge-b")
            wait_ready(fleet, ["edge-a", "edge-b"])
            fleet.api("POST", "/api/v1/tasks", once_task("mover", ["edge-a"], slow))
            fleet.wait_until(lambda: edge_runs(fleet, "edge-a"), 20, "edge-a to start the run")
            proxy.blackhole()  # silently cut off; the run goes on autonomously
            fleet.api("POST", "/api/v1/tasks", once_task("mover", ["edge-b"], slow))
            fleet.wait_until(
                lambda: all_succeeded(fleet, ["mover"], ["edge-b"]), 30, "edge-b to run it"
            )
            proxy.restore()

            def stale_from_a() -> list[dict[str, Any]]:
                results = fleet.task("mover")["results"]
                return [r for r in results if r["node"] == "edge-a"]

            fleet.wait_until(stale_from_a, 30, "edge-a's late result to arrive")
            [late] = stale_from_a()
            assert late["stale"] is True and late["phase"] == "succeeded", late
            task = fleet.task("mover")
            assert [(a["node"], a["phase"]) for a in task["assignments"]] == [
                ("edge-b", "succeeded")
            ]
            fresh = [r for r in task["results"] if r["node"] == "edge-b"]
            assert len(fresh) == 1 and fresh[0]["stale"] is False
            assert fresh[0]["epoch"] > late["epoch"]
            # edge-a let the task go: no second run, and no longer in its desired state.
            time.sleep(1.0)
            assert len(edge_runs(fleet, "edge-a")) == 1
            db = fleet.edge_dir("edge-a") / "edge.db"
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                held = [r[0] for r in conn.execute("SELECT res FROM objects")]
            assert "task/default/mover" not in held
    finally:
        fleet.stop_all()
