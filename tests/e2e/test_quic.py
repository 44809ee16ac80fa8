"""QUIC specifics against a real cloudcore process: identity, ALPN, framing
limits, fallback when UDP is blocked, loss and reordering, migration."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration

from cloudcore.fleet import LocalFleet
from edgecore.link.quic import connect_quic
from shared import pki
from shared.aio.quic_channel import (
    ALPN,
    CLOSE_FRAME_TOO_LARGE,
    CLOSE_UNAUTHORIZED,
    QuicChannel,
    QuicChannelProtocol,
)
from shared.errors import AuthError
from shared.protocol import codec
from tests.e2e.conftest import FAST_CLOUD, FAST_EDGE, all_succeeded, assert_exactly_once
from tests.e2e.test_fleet import apply, wait_ready
from tests.helpers.udp_proxy import UdpProxy

pytestmark = pytest.mark.slow
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def quic_cloud(tmp_path: Path) -> Iterator[LocalFleet]:
    """A running cloud whose edges will use QUIC only."""
    edge = {"link": {**FAST_EDGE["link"], "transport": "quic"}}
    fleet = LocalFleet(tmp_path, cloud_config=FAST_CLOUD, edge_config=edge)
    try:
        fleet.start_cloud()
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture
def quic_fleet(quic_cloud: LocalFleet) -> LocalFleet:
    """The QUIC cloud with one joined node, "good", whose certificates the tests borrow."""
    quic_cloud.join("good")
    return quic_cloud


def join_behind(fleet: LocalFleet, proxy: UdpProxy, name: str) -> None:
    """Join a node whose QUIC traffic goes through `proxy`."""
    fleet.join(name)
    fleet.set_edge_url(name, quic_url=f"quic://127.0.0.1:{proxy.port}")


def _other_ca_material(tmp: Path) -> tuple[Path, Path, Path]:
    """A node certificate for 'good' from a CA this cloud never saw."""
    ca_key, ca_cert = pki.create_ca("rogue CA", NOW)
    key = pki.generate_key()
    cert = pki.sign_node_csr(ca_key, ca_cert, pki.create_csr(key, "good"), "good", NOW)
    paths = tmp / "rogue.crt", tmp / "rogue.key", tmp / "rogue-ca.crt"
    paths[0].write_bytes(pki.cert_to_pem(cert))
    paths[1].write_bytes(pki.key_to_pem(key))
    paths[2].write_bytes(pki.cert_to_pem(ca_cert))
    return paths


async def _raw_client(
    fleet: LocalFleet,
    *,
    alpn: str = ALPN,
    cert: Path | None = None,
    key: Path | None = None,
    payload: bytes | None = None,
    wait: float = 3.0,
) -> dict[str, Any]:
    """Connect with a hand-made configuration, optionally write raw stream bytes, and
    report how the connection ended: {"connected", "error_code", "reason", "frames"}."""
    edge_dir = fleet.edge_dir("good")
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        server_name="127.0.0.1",
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(cafile=str(edge_dir / "ca.crt"))
    if cert is not None and key is not None:
        config.load_cert_chain(str(cert), str(key))
    outcome: dict[str, Any] = {"connected": False, "error_code": None, "reason": "", "frames": []}
    try:
        async with connect(
            "127.0.0.1",
            fleet.runtime["quic_port"],
            configuration=config,
            create_protocol=partial(QuicChannelProtocol, max_frame_bytes=1 << 20),
        ) as proto:
            outcome["connected"] = True
            channel: QuicChannel = proto.channel
            if payload is not None:
                channel.open_stream()
                channel.quic.send_stream_data(channel._stream_id, payload)
                proto.transmit()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    frame = await asyncio.wait_for(channel.recv(), deadline - time.monotonic())
                    outcome["frames"].append(codec.decode(frame))
                except Exception:
                    break
            event = getattr(proto._quic, "_close_event", None)
            if event is not None:
                outcome["error_code"] = event.error_code
                outcome["reason"] = event.reason_phrase
    except ConnectionError:
        pass
    return outcome


def test_wrong_alpn_is_refused(quic_fleet: LocalFleet) -> None:
    d = quic_fleet.edge_dir("good")
    right = asyncio.run(_raw_client(quic_fleet, cert=d / "node.crt", key=d / "node.key", wait=0.2))
    assert right["connected"] is True  # the control: same client, the right ALPN
    wrong = asyncio.run(
        _raw_client(quic_fleet, alpn="h3", cert=d / "node.crt", key=d / "node.key", wait=0.2)
    )
    assert wrong["connected"] is False


def test_client_without_certificate_is_refused(quic_fleet: LocalFleet) -> None:
    outcome = asyncio.run(_raw_client(quic_fleet, payload=b"\x00\x00\x00\x02{}"))
    assert outcome["error_code"] == CLOSE_UNAUTHORIZED
    assert "no certificate" in outcome["reason"]
    assert "QUIC connection from 127.0.0.1" in (quic_fleet.root / "cloudcore.log").read_text()


def test_client_certificate_from_another_ca_is_refused(
    quic_fleet: LocalFleet, tmp_path: Path
) -> None:
    cert, key, _ = _other_ca_material(tmp_path)
    outcome = asyncio.run(
        _raw_client(quic_fleet, cert=cert, key=key, payload=b"\x00\x00\x00\x02{}")
    )
    assert outcome["error_code"] == CLOSE_UNAUTHORIZED
    assert "not signed by this cloud's CA" in outcome["reason"]


def test_edge_rejects_a_server_it_cannot_verify(quic_fleet: LocalFleet, tmp_path: Path) -> None:
    _, _, rogue_ca = _other_ca_material(tmp_path)
    d = quic_fleet.edge_dir("good")
    with pytest.raises(AuthError, match="QUIC handshake"):
        asyncio.run(
            connect_quic(
                f"quic://127.0.0.1:{quic_fleet.runtime['quic_port']}",
                d / "node.crt",
                d / "node.key",
                rogue_ca,
                5.0,
                1 << 20,
                10.0,
            )
        )


def test_oversized_length_prefix_closes_before_allocating(quic_fleet: LocalFleet) -> None:
    d = quic_fleet.edge_dir("good")
    outcome = asyncio.run(
        _raw_client(
            quic_fleet, cert=d / "node.crt", key=d / "node.key", payload=b"\xff\xff\xff\xf0"
        )
    )
    assert outcome["error_code"] == CLOSE_FRAME_TOO_LARGE
    assert "declared a frame of 4294967280 bytes" in outcome["reason"]


def test_garbage_stream_bytes_get_a_clear_error(quic_fleet: LocalFleet) -> None:
    d = quic_fleet.edge_dir("good")
    outcome = asyncio.run(
        _raw_client(
            quic_fleet,
            cert=d / "node.crt",
            key=d / "node.key",
            payload=b"\x00\x00\x00\x0bhello world",
        )
    )
    errors = [f for f in outcome["frames"] if f.op.value == "error"]
    assert errors and errors[0].body["code"] == "malformed"
    assert "not valid JSON" in errors[0].body["reason"]


def test_auto_falls_back_to_websocket_when_udp_is_blocked(tmp_path: Path) -> None:
    edge = {"link": {**FAST_EDGE["link"], "transport": "auto", "quic_probe_timeout": 1.0}}
    fleet = LocalFleet(tmp_path, cloud_config=FAST_CLOUD, edge_config=edge)
    try:
        fleet.start_cloud()
        with UdpProxy("127.0.0.1", fleet.runtime["quic_port"]) as proxy:
            proxy.blocked = True  # every datagram vanishes, as behind a UDP-hostile firewall
            join_behind(fleet, proxy, "edge-1")
            edge_proc = fleet.start_edge("edge-1")
            wait_ready(fleet, ["edge-1"])
            assert fleet.nodes()["edge-1"]["transport"] == "websocket"
            apply(fleet, ["fallback"], ["edge-1"])
            fleet.wait_until(
                lambda: all_succeeded(fleet, ["fallback"], ["edge-1"]),
                30,
                "the task to succeed over the fallback",
            )
            assert proxy.dropped > 0
            assert "QUIC unavailable" in edge_proc.log_text()
    finally:
        fleet.stop_all()


def test_loss_and_reordering_lose_and_duplicate_nothing(quic_cloud: LocalFleet) -> None:
    fleet = quic_cloud
    with UdpProxy("127.0.0.1", fleet.runtime["quic_port"], loss=0.05, reorder=0.1) as proxy:
        nodes = ["edge-1", "edge-2"]
        for name in nodes:
            join_behind(fleet, proxy, name)
            fleet.start_edge(name)
        wait_ready(fleet, nodes)
        names = [f"lossy{i}" for i in range(20)]
        apply(fleet, names, nodes)
        fleet.wait_until(lambda: all_succeeded(fleet, names, nodes), 90, "every task")
        assert proxy.dropped > 0
    time.sleep(0.5)
    assert_exactly_once(fleet, names, nodes)


def test_address_change_keeps_the_session(quic_cloud: LocalFleet) -> None:
    fleet = quic_cloud
    with UdpProxy("127.0.0.1", fleet.runtime["quic_port"]) as proxy:
        join_behind(fleet, proxy, "edge-1")
        fleet.start_edge("edge-1")
        wait_ready(fleet, ["edge-1"])
        before = fleet.nodes()["edge-1"]["peer"]
        proxy.rebind_clients()  # the cloud now sees the edge from a new address
        apply(fleet, ["moved"], ["edge-1"])
        fleet.wait_until(
            lambda: all_succeeded(fleet, ["moved"], ["edge-1"]),
            30,
            "the task to succeed after the address change",
        )
    log = (fleet.root / "cloudcore.log").read_text()
    assert log.count("node edge-1 connected") == 1, "the session was re-established"
    assert before  # the session survived: same session, no resync
    assert_exactly_once(fleet, ["moved"], ["edge-1"])


def test_reconnect_resumes_the_tls_session_and_keeps_the_identity(quic_cloud: LocalFleet) -> None:
    fleet = quic_cloud
    with UdpProxy("127.0.0.1", fleet.runtime["quic_port"]) as proxy:
        join_behind(fleet, proxy, "edge-1")
        edge_proc = fleet.start_edge("edge-1")
        wait_ready(fleet, ["edge-1"])
        proxy.blocked = True  # the link dies; the edge reconnects with its ticket
        time.sleep(3.5)
        proxy.blocked = False
        fleet.wait_until(
            lambda: "(resumed TLS session)" in edge_proc.log_text(), 30, "a resumed reconnect"
        )
        wait_ready(fleet, ["edge-1"])
        apply(fleet, ["after"], ["edge-1"])
        fleet.wait_until(
            lambda: all_succeeded(fleet, ["after"], ["edge-1"]),
            30,
            "the task over the resumed session",
        )
    cloud_log = (fleet.root / "cloudcore.log").read_text()
    assert "node edge-1 connected from" in cloud_log
    assert "over quic (resumed TLS session)" in cloud_log  # same node name, via the ticket
