"""`python -m cloudcore.demo`: a local cloud and two edges on loopback, end to end.

Starts cloudcore, joins edge-1 and edge-2 with single-use tokens, applies a
sample task to both, and shows live status. With `--duration SECONDS` it
stops by itself and exits 0 only if every node ran the task and its result
reached the cloud.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloudcore.edgectl import CtlError, _table
from cloudcore.fleet import FleetError, LocalFleet

SAMPLE_TASK: dict[str, Any] = {
    "apiVersion": "edgesync.io/v1",
    "kind": "Task",
    "metadata": {"name": "hello", "namespace": "default"},
    "spec": {
        "kind": "command",
        "command": {
            "argv": [
                sys.executable,
                "-c",
                "import os, platform; print('hello from', os.environ['EDGESYNC_NODE'], "
                "'on', platform.machine(), 'run', os.environ['EDGESYNC_RUN_ID'])",
            ],
            "timeout": 20,
        },
        "trigger": {"type": "interval", "every": 5},
        "placement": {"selector": {"demo": "true"}},
    },
}


def _status(fleet: LocalFleet) -> tuple[str, bool]:
    nodes = fleet.nodes()
    task = fleet.task("hello")
    node_rows = [
        [
            n["name"],
            n["state"],
            n["transport"] or "-",
            str(n["acked_rv"]),
            str(n["received_seq"]),
            f"{n['rtt_ms']} ms" if n["rtt_ms"] is not None else "-",
        ]
        for n in nodes.values()
    ]
    task_rows = []
    complete = bool(task["assignments"]) and len(task["assignments"]) == len(nodes)
    for a in task["assignments"]:
        last = a.get("last_result") or {}
        task_rows.append(
            [
                a["node"],
                a["phase"],
                str(a["runs"]),
                str(last.get("exit_code", "-")),
                (last.get("stdout_tail") or "").strip()[:60],
            ]
        )
        complete = complete and a["runs"] >= 1 and last.get("phase") == "succeeded"
    text = (
        _table(node_rows, ["NODE", "STATE", "TRANSPORT", "ACKED RV", "RECEIVED SEQ", "RTT"])
        + "\n\n"
        + _table(task_rows, ["NODE", "PHASE", "RUNS", "EXIT", "LAST OUTPUT"])
    )
    return text, complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloudcore.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds and report (default: until Ctrl-C)",
    )
    parser.add_argument("--nodes", type=int, default=2, help="number of edges (default 2)")
    parser.add_argument(
        "--dir", type=Path, help="keep all state and logs here (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="edgesync-demo-"))
    if args.dir and root.exists():
        shutil.rmtree(root)
    fleet = LocalFleet(root)
    ok = False
    try:
        print(f"edgesync demo: state and logs in {root}")
        fleet.start_cloud()
        print(
            f"cloudcore up: API {fleet.runtime['api']}, wss port {fleet.runtime['websocket_port']}"
        )
        names = [f"edge-{i + 1}" for i in range(args.nodes)]
        for name in names:
            fleet.join(name, labels={"demo": "true"})
            fleet.start_edge(name)
            print(f"{name} joined with a single-use token and started")
        fleet.wait_until(
            lambda: (
                all(n["state"] == "Ready" for n in fleet.nodes().values())
                and len(fleet.nodes()) == len(names)
            ),
            30,
            "the edges to connect",
        )
        fleet.api("POST", "/api/v1/tasks", SAMPLE_TASK)
        print("applied task default/hello (every 5 s) to every node labelled demo=true\n")
        started = time.monotonic()
        while True:
            text, ok = _status(fleet)
            elapsed = time.monotonic() - started
            print(f"--- {elapsed:5.1f}s ---\n{text}\n", flush=True)
            if args.duration and elapsed >= args.duration:
                break
            time.sleep(2.0)
    except KeyboardInterrupt:
        print("interrupted")
    except (FleetError, CtlError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        ok = False
    finally:
        codes = fleet.stop_all()
        print("stopped:", ", ".join(f"{k} exit {v}" for k, v in codes.items()))
    if args.duration:
        verdict = (
            "every node ran the task and its result reached the cloud"
            if ok
            else "NOT every node reported a successful result"
        )
        print(f"demo {'passed' if ok else 'FAILED'}: {verdict} (logs in {root})")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
