"""Node-supplied text at every sink: edgectl tables (run as a process against a real
cloud), -o json / -o yaml, and the cloud's log lines; and the bounds on what a node
may report about itself (hello and heartbeat bodies)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.protocol import codec
from shared.protocol.events import AckReceived, WelcomeReceived
from shared.protocol.messages import Envelope, Op
from shared.text import LABEL_MAX, SOFTWARE_MAX_CHARS, ReportLimits, encoded_size
from tests.integration.harness import (
    Cloud,
    RawEdge,
    eventually,
    now_ms,
    task_document,
    warnings_naming,
)

FORGED_ROW = "\r\nmallory  Ready      websocket  1s  64  x86_64  trusted  zone=vault"
ESCAPE = "\x1b[2J\x1b[31m"
RAW_CONTROLS = ("\x1b", "\r", "\x9b", "\u202e")


@pytest.fixture(autouse=True)
def _capture_cloud_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


async def edgectl(cloud: Cloud, *args: str) -> str:
    """Run the real edgectl CLI as a process (the cloud keeps running on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cloudcore.edgectl",
        "--config",
        str(cloud.data_dir / "edgectl.yaml"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def hostile_edge(cloud: Cloud, tmp_path: Path, name: str, body: dict[str, Any]) -> RawEdge:
    """A joined node whose hello carries `body` (software, labels, capacity) as given."""
    ident = await cloud.join(name, tmp_path / name)
    edge = await cloud.edge(ident, hello=False)
    edge.session.send_hello(0, {"store_id": uuid.uuid4().hex, **body}, time.monotonic())
    await edge.flush()
    await edge.wait_event(WelcomeReceived)
    return edge


def assert_no_raw_controls(text: str) -> None:
    for ch in RAW_CONTROLS:
        assert ch not in text, f"raw {ch!r} in output: {text!r}"


async def test_node_list_table_escapes_what_a_node_reports(cloud: Cloud, tmp_path: Path) -> None:
    await hostile_edge(
        cloud,
        tmp_path,
        "hostile",
        {
            "software": f"edgecore/1.0{ESCAPE}{FORGED_ROW}",
            "labels": {"zone": f"a{FORGED_ROW}"},
            "capacity": {"cpus": 2, "arch": f"arm64{FORGED_ROW}\u202e"},
        },
    )

    table = await edgectl(cloud, "node", "list")

    assert_no_raw_controls(table)
    lines = table.rstrip("\n").split("\n")
    assert len(lines) == 2, lines  # the header and one node: no forged row
    assert lines[1].startswith("hostile ")
    assert "edgecore/1.0\\x1b[2J\\x1b[31m\\r\\nmallory" in lines[1]
    assert "arm64\\r\\nmallory" in lines[1]


async def test_node_list_json_and_yaml_stay_faithful_and_escaped(
    cloud: Cloud, tmp_path: Path
) -> None:
    software = f"edgecore/1.0{ESCAPE}\r\nmallory  Ready\u202e"
    assert len(software) < SOFTWARE_MAX_CHARS
    await hostile_edge(cloud, tmp_path, "hostile", {"software": software, "capacity": {}})

    as_json = await edgectl(cloud, "node", "list", "-o", "json")
    as_yaml = await edgectl(cloud, "node", "list", "-o", "yaml")

    for text in (as_json, as_yaml):
        assert_no_raw_controls(text)
        assert "mallory" not in [line.split(" ")[0] for line in text.splitlines()]
    [node_j] = json.loads(as_json)
    [node_y] = yaml.safe_load(as_yaml)
    assert node_j["software"] == node_y["software"] == software  # the value itself, intact


async def test_task_get_table_escapes_task_output(cloud: Cloud, tmp_path: Path) -> None:
    edge = await hostile_edge(cloud, tmp_path, "worker", {"software": "w/1"})
    await cloud.apply_task(task_document("job", ["worker"]))
    await edge.wait_frame(lambda f: f.res == "task/default/job")
    result = {
        "run_id": "run-1",
        "generation": 1,
        "epoch": 1,
        "phase": "succeeded",
        "exit_code": 0,
        "stdout_tail": f"done{ESCAPE}\r\nmallory  succeeded",
    }
    edge.session.send(Op.RESULT, "task/default/job", 1, result, time.monotonic())
    await edge.flush()
    await edge.wait_event(AckReceived, lambda e: e.cursor == 1)

    table = await edgectl(cloud, "task", "get", "job")

    assert_no_raw_controls(table)
    lines = table.rstrip("\n").split("\n")
    assert len(lines) == 3, lines  # title, header, one assignment
    assert lines[2].startswith("worker ")
    assert "\\x1b[2J\\x1b[31m\\r\\nmallory" in lines[2]


async def test_an_error_reason_from_a_node_stays_one_log_line(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edge = await hostile_edge(cloud, tmp_path, "liar", {"software": "l/1"})
    forged = "oops\n2026-01-01 00:00:00 INFO cloudcore node root connected\x1b[2K"

    edge.session.send_error("bad\rcode", forged, "parent\nid", time.monotonic())
    await edge.flush()

    logged = await eventually(
        lambda: warnings_naming(caplog, "node liar reported an error"), what="error logged"
    )
    message = logged[0]
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert "oops\\n2026-01-01 00:00:00 INFO cloudcore node root connected\\x1b[2K" in message
    assert "bad\\rcode" in message and "parent\\nid" in message


async def test_a_close_reason_from_a_node_stays_one_log_line(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edge = await hostile_edge(cloud, tmp_path, "leaver", {"software": "l/1"})

    edge.session.close("closing", "bye\nERROR forged line", time.monotonic())
    await edge.flush()

    await eventually(lambda: "leaver" not in cloud.hub.sessions, what="session gone")
    records = [r.getMessage() for r in caplog.records if "node leaver" in r.getMessage()]
    closed = [m for m in records if "closed its session" in m]
    assert closed, records
    assert all("\n" not in m for m in records), records
    assert "bye\\nERROR forged line" in closed[0]


async def test_a_huge_heartbeat_is_stored_and_served_within_the_report_limits(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edge = await hostile_edge(cloud, tmp_path, "chatty", {"software": "c/1"})
    body: dict[str, Any] = {"cpu": 0.5, "memory": 0.25}
    body.update({f"pad{i}": "x" * 9_000 for i in range(100)})  # ~0.9 MB, like the attack
    frame = codec.encode(Envelope(op=Op.PING, id="hb-1", ts=now_ms(), body=body))
    assert len(frame) > 850_000

    for _ in range(3):
        await edge.send_raw(frame.decode())
    await edge.wait_frame(lambda f: f.op is Op.PONG and f.parent == "hb-1")

    async def stored() -> Any:
        status, node = await cloud.request("GET", "/api/v1/nodes/chatty")
        assert status == 200
        return node["heartbeat"] if node["heartbeat"].get("cpu") == 0.5 else None

    heartbeat = await eventually(stored, what="heartbeat stored")
    assert encoded_size(heartbeat) <= ReportLimits().max_total_bytes
    assert heartbeat["memory"] == 0.25  # the real metrics come first and survive
    assert all(
        len(v) <= ReportLimits().max_string_chars + 1
        for v in heartbeat.values()
        if isinstance(v, str)
    )
    trimmed = warnings_naming(caplog, "node chatty", "heartbeat trimmed to the report limits")
    assert len(trimmed) == 1, trimmed  # once per session, not once per heartbeat
    assert cloud.hub.stats.reports_trimmed == 3


async def test_a_hello_is_bounded_per_field(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await hostile_edge(
        cloud,
        tmp_path,
        "boastful",
        {
            "software": "v" * 10_000,
            "labels": {f"l{i}": "x" * 1000 for i in range(LABEL_MAX * 3)},
            "capacity": {f"c{i}": i for i in range(1000)},
        },
    )

    status, node = await cloud.request("GET", "/api/v1/nodes/boastful")
    assert status == 200
    assert len(node["software"]) == SOFTWARE_MAX_CHARS + 1  # cut, with its "…"
    assert len(node["capacity"]) == ReportLimits().max_keys
    assert len(node["labels"]) <= LABEL_MAX
    assert all(len(v) <= 257 for v in node["labels"].values())
    assert warnings_naming(caplog, "node boastful", "hello trimmed to the report limits")
    assert cloud.hub.stats.reports_trimmed == 1
