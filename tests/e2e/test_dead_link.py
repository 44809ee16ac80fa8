"""A silent dead TCP link (no FIN, no RST: a black-holed route) is detected by the
protocol's keepalive within missed_pings * ping_interval, on both sides, over
WebSocket, and the edge comes back once the route does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudcore.fleet import LocalFleet
from tests.e2e.conftest import FAST_CLOUD, FAST_EDGE
from tests.e2e.test_fleet import wait_ready
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

PING_INTERVAL = FAST_CLOUD["hub"]["ping_interval"]
MISSED_PINGS = FAST_CLOUD["hub"]["missed_pings"]
DEADLINE = PING_INTERVAL * MISSED_PINGS
SLACK = 1.5
"""Seconds of scheduling and polling noise allowed beyond the protocol deadline."""


def test_a_black_holed_websocket_link_is_detected_on_both_sides_in_time(
    tmp_path: Path,
) -> None:
    assert FAST_EDGE["link"]["ping_interval"] == PING_INTERVAL
    assert FAST_EDGE["link"]["missed_pings"] == MISSED_PINGS
    edge_cfg = {"link": {**FAST_EDGE["link"], "transport": "websocket"}}
    fleet = LocalFleet(tmp_path, cloud_config=FAST_CLOUD, edge_config=edge_cfg)
    try:
        fleet.start_cloud()
        with TcpProxy("127.0.0.1", fleet.runtime["websocket_port"]) as proxy:
            fleet.join("edge-1")
            fleet.set_edge_url("edge-1", websocket_url=f"wss://127.0.0.1:{proxy.port}/edgesync/v1")
            edge = fleet.start_edge("edge-1")
            wait_ready(fleet, ["edge-1"])
            edge_log_before = edge.log_text().count("session closed")

            proxy.blackhole()
            started = time.monotonic()
            cloud_seen = edge_seen = None
            while time.monotonic() - started < DEADLINE + SLACK + 5:
                now = time.monotonic() - started
                if cloud_seen is None and fleet.nodes()["edge-1"]["state"] == "NotReady":
                    cloud_seen = now
                if edge_seen is None and edge.log_text().count("session closed") > edge_log_before:
                    edge_seen = now
                if cloud_seen is not None and edge_seen is not None:
                    break
                time.sleep(0.1)

            print(
                f"\nblack hole seen: cloud {cloud_seen}s, edge {edge_seen}s, deadline {DEADLINE}s"
            )
            assert proxy.swallowed > 0, "nothing was sent into the black hole"
            assert cloud_seen is not None and cloud_seen <= DEADLINE + SLACK, cloud_seen
            assert edge_seen is not None and edge_seen <= DEADLINE + SLACK, edge_seen
            assert cloud_seen >= DEADLINE - PING_INTERVAL, "detected before pings could be missed"
            reason = fleet.nodes()["edge-1"]["reason"]
            assert "timeout" in reason or "nothing received" in reason, reason
            edge_log = edge.log_text()
            assert "timeout" in edge_log.split("session closed")[-1].splitlines()[0], edge_log

            proxy.restore()  # the old sockets are dead to both sides; the edge reconnects
            wait_ready(fleet, ["edge-1"], timeout=30)
    finally:
        fleet.stop_all()
