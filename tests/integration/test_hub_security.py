"""The edge-facing hub against misbehaving peers, over real mutual TLS on loopback.

Each test connects a well-behaved node first, lets a bad peer do its thing, checks that
the bad peer was refused or closed with a clear reason and that the cloud logged a
warning naming the peer and the reason, and finally checks that the good node still
works (answers a ping and receives a task applied afterwards).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from edgecore.link.websocket import client_context, connect_websocket
from shared import pki
from shared.aio.quic_channel import CLOSE_UNAUTHORIZED
from shared.protocol.events import AckReceived, ErrorReceived
from shared.protocol.messages import Op
from tests.helpers import certs
from tests.helpers.quic_client import raw_quic_client
from tests.integration.harness import (
    Cloud,
    EdgeIdentity,
    RawEdge,
    assert_node_works,
    connected_socket,
    eventually,
    now_ms,
    peer_of,
    task_document,
    tls_ready_socket,
    warnings_naming,
)

REFUSED_BY_CLIENT = (InvalidHandshake, ConnectionClosed, ssl.SSLError, OSError, EOFError)


@pytest.fixture(autouse=True)
def _capture_cloud_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


async def good_node(cloud: Cloud, tmp_path: Path) -> RawEdge:
    ident = await cloud.join("good", tmp_path / "good")
    edge = await cloud.edge(ident)
    await assert_node_works(cloud, edge)
    return edge


# ---------------------------------------------------------------- TLS


async def test_client_sending_client_hello_immediately_is_served(
    cloud: Cloud, tmp_path: Path
) -> None:
    """The real edge client (like every TLS client) sends its ClientHello right after connect.

    WebSocketServer._on_connect wraps _open() in asyncio.wait_for, which on Python 3.11
    runs it as a new task: the event loop reads the ClientHello into the plain
    StreamReader before _open() reaches writer.start_tls(), and the TLS layer never sees
    it. Against an in-process cloud this happens on every connection; across processes
    on some of them (each costs the edge a handshake timeout and a reconnect).
    """
    ident = await cloud.join("edge-a", tmp_path / "edge-a")
    channel = await connect_websocket(
        cloud.ws_url, client_context(ident.cert, ident.key, ident.ca), 5.0, 1 << 20
    )
    await channel.close()


async def test_client_without_certificate_is_refused(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    sock = await tls_ready_socket(cloud.ws_port)
    peer = peer_of(sock)

    with pytest.raises(REFUSED_BY_CLIENT):
        ws = await cloud.open_ws(cloud.ca_path, None, None, sock=sock)
        await ws.recv()  # TLS 1.3: the refusal may only show on the first read

    logged = await eventually(
        lambda: warnings_naming(caplog, peer, "TLS handshake failed"), what="TLS warning"
    )
    assert "no certificate" in logged[0], logged
    assert set(cloud.hub.sessions) == {"good"}
    await assert_node_works(cloud, good)


async def test_client_certificate_from_another_ca_is_refused(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    good_session = cloud.hub.sessions["good"]
    # An impostor with a certificate for the good node's name, from its own CA.
    now = dt.datetime.now(dt.timezone.utc)
    other_key, other_ca = pki.create_ca("impostor CA", now)
    key = pki.generate_key()
    cert = pki.sign_node_csr(other_key, other_ca, pki.create_csr(key, "good"), "good", now)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "node.key").write_bytes(pki.key_to_pem(key))
    (impostor / "node.crt").write_bytes(pki.cert_to_pem(cert))
    sock = await tls_ready_socket(cloud.ws_port)
    peer = peer_of(sock)

    with pytest.raises(REFUSED_BY_CLIENT):
        ws = await cloud.open_ws(
            cloud.ca_path, impostor / "node.crt", impostor / "node.key", sock=sock
        )
        await ws.recv()

    logged = await eventually(
        lambda: warnings_naming(caplog, peer, "TLS handshake failed"), what="TLS warning"
    )
    assert "not signed by this cloud's CA" in logged[0], logged
    # The impostor did not displace the real node's session.
    assert cloud.hub.sessions["good"] is good_session
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- frames


async def bad_node(cloud: Cloud, tmp_path: Path, name: str = "bad") -> RawEdge:
    ident = await cloud.join(name, tmp_path / name)
    return await cloud.edge(ident)


async def expect_protocol_close(
    cloud: Cloud, bad: RawEdge, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The cloud closed `bad`'s session with a fatal `error` of `code` and logged why."""
    await bad.wait_closed()
    closed = bad.fatal_error()
    assert closed is not None, f"no fatal error frame; frames: {bad.frames!r}"
    assert closed.code == code, closed
    errors = [f for f in bad.frames if f.op is Op.ERROR]
    assert errors and errors[-1].body is not None and errors[-1].body.get("fatal") is True
    assert bad.close_code == 1000, (bad.close_code, bad.close_reason)
    assert code in (bad.close_reason or ""), bad.close_reason
    logged = warnings_naming(caplog, f"node {bad.node} ({bad.peer})", code)
    assert logged, [r.getMessage() for r in caplog.records]
    await eventually(lambda: bad.node not in cloud.hub.sessions, what="bad session gone")
    node = await cloud.db(cloud.store.get_node, bad.node)
    assert node["state"] == "NotReady"
    assert code in node["reason"]


@pytest.mark.cloud_config(hub={"max_frame_bytes": 4096})
async def test_frame_above_max_frame_bytes_closes_the_session(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    bad = await bad_node(cloud, tmp_path)
    frame = json.dumps(
        {
            "v": 1,
            "id": "big-1",
            "ts": now_ms(),
            "op": "report",
            "res": "task/default/x",
            "seq": 1,
            "body": {"pad": "x" * 10_000},
        }
    )
    assert len(frame) > 10_000

    await bad.send_raw(frame)

    await expect_protocol_close(cloud, bad, "frame_too_large", caplog)
    await assert_node_works(cloud, good)


CLOSING_BUG = (
    "cloudcore/hub/websocket.py WebSocketChannel._closed_error() reads protocol.close_exc "
    "while the websockets protocol is still CLOSING (websockets asserts CLOSED), so a send "
    "in that window (the periodic ping) raises AssertionError instead of LinkBroken; it "
    "escapes NodeSession as an ExceptionGroup ('Unhandled exception in client_connected_cb')"
)


@pytest.mark.cloud_config(hub={"max_frame_bytes": 4096})
async def test_frame_far_above_the_limit_is_cut_off_by_websocket_1009(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Above max_frame_bytes + 64 KiB websockets refuses the frame before buffering it."""
    good = await good_node(cloud, tmp_path)
    bad = await bad_node(cloud, tmp_path)

    await bad.send_raw(b"x" * 200_000)

    await bad.wait_closed()
    assert bad.close_code == 1009, (bad.close_code, bad.close_reason)
    await eventually(lambda: "bad" not in cloud.hub.sessions, what="bad session gone")
    await assert_node_works(cloud, good)
    assert not errors_logged(caplog)
    assert warnings_naming(caplog, "bad", bad.peer, "1009"), [
        r.getMessage() for r in caplog.records
    ]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_edge_closing_its_websocket_is_recorded_cleanly(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An edge sends a normal WebSocket close (1000) while the cloud keeps pinging.

    The hub answers the close frame but does not close the TLS connection itself (the
    b"" end-of-data marker from websockets is dropped for TLS), so the protocol stays
    CLOSING until the client gives up waiting, and the next ping hits the bug.
    """
    good = await good_node(cloud, tmp_path)
    leaver = await bad_node(cloud, tmp_path, "leaver")

    await leaver.close()

    await eventually(lambda: "leaver" not in cloud.hub.sessions, what="session gone")
    node = await cloud.db(cloud.store.get_node, "leaver")
    assert node["state"] == "NotReady"
    await assert_node_works(cloud, good)
    assert not errors_logged(caplog)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param('{"v": 1, "id": "m1", "op": "report", "seq": ', "malformed", id="not-json"),
        pytest.param(
            json.dumps(
                {"v": 1, "id": "m2", "ts": 1, "op": "apply", "res": "task/default/a", "rv": "x"}
            ),
            "malformed",
            id="rv-is-a-string",
        ),
        pytest.param(
            json.dumps({"v": 1, "id": "m3", "ts": "yesterday", "op": "ping"}),
            "malformed",
            id="ts-is-a-string",
        ),
        pytest.param(
            json.dumps({"v": 1, "id": "m4", "ts": 1, "op": "teleport"}),
            "unknown_op",
            id="unknown-op",
        ),
    ],
)
async def test_bad_frame_closes_the_session_with_its_code(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture, frame: str, code: str
) -> None:
    good = await good_node(cloud, tmp_path)
    bad = await bad_node(cloud, tmp_path)

    await bad.send_raw(frame)

    await expect_protocol_close(cloud, bad, code, caplog)
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- authorization


async def test_result_for_another_nodes_task_is_refused_and_not_stored(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    bad = await bad_node(cloud, tmp_path)
    await cloud.apply_task(task_document("goods-task", ["good"]))
    await cloud.apply_task(task_document("bads-task", ["bad"]))
    await good.wait_frame(lambda f: f.res == "task/default/goods-task")
    await bad.wait_frame(lambda f: f.res == "task/default/bads-task")
    result = {
        "run_id": "run-1",
        "generation": 1,
        "epoch": 1,
        "phase": "succeeded",
        "exit_code": 0,
        "stdout_tail": "forged",
    }

    msg_id = bad.session.send(Op.RESULT, "task/default/goods-task", 1, result, time.monotonic())
    await bad.flush()

    refused = await bad.wait_event(ErrorReceived, lambda e: e.parent == msg_id)
    assert (refused.code, refused.fatal) == ("forbidden", False), refused
    assert "not assigned to node bad" in refused.reason
    # Consumed (acked) so the edge's outbox does not jam, yet nothing was recorded.
    await bad.wait_event(AckReceived, lambda e: e.cursor == 1)
    assert await cloud.db(cloud.store.results_for, "task/default/goods-task") == []
    status, task = await cloud.request("GET", "/api/v1/tasks/default/goods-task")
    assert status == 200
    assert task["results"] == []
    [assignment] = task["assignments"]
    assert assignment["node"] == "good"
    assert (assignment["runs"], assignment["last_result"]) == (0, None)
    assert assignment["phase"] != "succeeded"
    assert warnings_naming(caplog, "node bad", bad.peer, "refused result", "goods-task")

    # The session stays open and the same node's own results are still accepted.
    assert not bad.closed.is_set()
    await bad.ping()
    own_id = bad.session.send(Op.RESULT, "task/default/bads-task", 2, result, time.monotonic())
    await bad.flush()
    await bad.wait_event(AckReceived, lambda e: e.cursor == 2)
    assert not [e for e in bad.events if isinstance(e, ErrorReceived) and e.parent == own_id]
    stored = await cloud.db(cloud.store.results_for, "task/default/bads-task")
    assert [(r["node"], r["seq"], r["phase"]) for r in stored] == [("bad", 2, "succeeded")]
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- sessions


async def test_second_connection_for_a_node_replaces_the_first(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    ident: EdgeIdentity = await cloud.join("twin", tmp_path / "twin")
    first = await cloud.edge(ident)
    first_session = cloud.hub.sessions["twin"]

    second = await cloud.edge(ident)

    await first.wait_closed()
    closed = first.fatal_error()
    assert closed is not None and closed.code == "closing", first.events
    assert f"replaced by a new connection from {second.peer}" in closed.reason
    await eventually(lambda: first_session._done.is_set(), what="old session finished")
    current = cloud.hub.sessions["twin"]
    assert current is not first_session
    assert current.channel.peer == second.peer
    await second.ping()  # the cloud has settled the handover by now
    node = await cloud.db(cloud.store.get_node, "twin")
    assert (node["state"], node["peer"]) == ("Ready", second.peer), node
    status, view = await cloud.request("GET", "/api/v1/nodes/twin")
    assert status == 200 and view["connected"] is True and view["state"] == "Ready"
    assert cloud.hub.stats.sessions_replaced == 1
    await assert_node_works(cloud, second)
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- one certificate policy

DEFECTS = [
    pytest.param("not_yet_valid", "not valid yet", id="not-yet-valid"),
    pytest.param("expired", "has expired", id="expired"),
    pytest.param("missing_eku", "has no extended key usage", id="no-eku"),
    pytest.param("wrong_eku", "not for client authentication", id="server-auth-eku"),
    pytest.param("foreign_ca", "not signed by this cloud's CA", id="foreign-ca"),
]


async def test_a_certificate_issued_by_the_test_helper_is_accepted_on_both_transports(
    cloud: Cloud, tmp_path: Path
) -> None:
    """The control for the defect tests: the helper's certificates differ only by the defect."""
    await cloud.join("spare", tmp_path / "spare")
    files = certs.defective(cloud.pki_dir, tmp_path / "certs", "spare", "ok")

    ws = await cloud.open_ws(cloud.ca_path, files.cert, files.key)
    edge = RawEdge(ws, "spare")
    cloud.edges.append(edge)
    edge.start()
    await edge.hello()
    await edge.close()
    outcome = await raw_quic_client(
        quic_port(cloud), cloud.ca_path, cert=files.cert, key=files.key, wait=0.3
    )
    assert outcome.connected and outcome.error_code != CLOSE_UNAUTHORIZED, outcome
    assert cloud.hub.stats.connections_refused == {}


def quic_port(cloud: Cloud) -> int:
    port = cloud.app.quic_port
    assert port, "the integration cloud runs QUIC on an ephemeral port"
    return port


@pytest.mark.parametrize(("defect", "words"), DEFECTS)
async def test_websocket_refuses_a_defective_certificate_naming_the_real_reason(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture, defect: str, words: str
) -> None:
    good = await good_node(cloud, tmp_path)
    good_session = cloud.hub.sessions["good"]
    files = certs.defective(cloud.pki_dir, tmp_path / "certs", "good", defect)
    sock = await tls_ready_socket(cloud.ws_port)
    peer = peer_of(sock)

    with pytest.raises(REFUSED_BY_CLIENT):
        ws = await cloud.open_ws(cloud.ca_path, files.cert, files.key, sock=sock)
        await ws.recv()

    logged = await eventually(
        lambda: warnings_naming(caplog, "WebSocket connection from", peer), what="refusal"
    )
    assert words in logged[0], logged
    if defect != "foreign_ca":
        assert "not signed by this cloud's CA" not in logged[0], logged
    assert cloud.hub.stats.connections_refused == {defect: 1}
    assert cloud.hub.sessions["good"] is good_session
    await assert_node_works(cloud, good)


@pytest.mark.parametrize(("defect", "words"), DEFECTS)
async def test_quic_refuses_a_defective_certificate_naming_the_real_reason(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture, defect: str, words: str
) -> None:
    good = await good_node(cloud, tmp_path)
    files = certs.defective(cloud.pki_dir, tmp_path / "certs", "good", defect)

    outcome = await raw_quic_client(
        quic_port(cloud),
        cloud.ca_path,
        cert=files.cert,
        key=files.key,
        payload=b"\x00\x00\x00\x02{}",
    )

    assert outcome.error_code == CLOSE_UNAUTHORIZED, outcome
    assert words in outcome.reason, outcome  # what the edge reads
    logged = warnings_naming(caplog, "QUIC connection from 127.0.0.1", words)
    assert logged, [r.getMessage() for r in caplog.records]
    assert cloud.hub.stats.connections_refused == {defect: 1}
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- refusals: budget and counts


async def test_refusals_are_counted_by_reason_and_logged_within_a_budget(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst of certificate-less connections (a scan): the first BURST are logged one by
    one, the rest only counted, then one summary line carries their number."""
    good = await good_node(cloud, tmp_path)
    refusals = cloud.app.refusals
    fake_now = [1000.0]  # the log budget's clock stands still during the burst
    refusals.clock = lambda: fake_now[0]
    refusals.throttle.interval = 2.0  # the production window is 10 s
    burst = refusals.throttle.burst
    attempts = burst + 15

    for _ in range(attempts):
        with pytest.raises(REFUSED_BY_CLIENT):
            ws = await cloud.open_ws(cloud.ca_path, None, None)
            await ws.recv()

    counts = cloud.hub.stats.connections_refused
    await eventually(lambda: counts.get("no_certificate") == attempts, what="all counted")
    one_by_one = warnings_naming(caplog, "WebSocket connection from", "no certificate")
    assert len(one_by_one) == burst, one_by_one
    assert not warnings_naming(caplog, "more edge connections refused")
    fake_now[0] += 2.0  # the window ends; the summary timer (real time) reports it
    summary = await eventually(
        lambda: warnings_naming(caplog, "more edge connections refused"), timeout=5
    )
    assert summary[0].startswith(f"{attempts - burst} more edge connections refused"), summary
    assert "no_certificate 15" in summary[0], summary
    await assert_node_works(cloud, good)


# ---------------------------------------------------------------- pre-authentication cost


@pytest.mark.cloud_config(hub={"handshake_timeout": 1.0})
async def test_a_socket_that_never_starts_tls_is_closed_after_the_handshake_timeout(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    loop = asyncio.get_running_loop()
    sock = await connected_socket(cloud.ws_port)
    peer = peer_of(sock)
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
    except ConnectionResetError:
        data = b""
    finally:
        sock.close()

    assert data == b""  # closed by the cloud, nothing sent
    assert 0.9 <= time.monotonic() - started < 4, time.monotonic() - started
    assert cloud.hub.stats.connections_refused == {"handshake_timeout": 1}
    assert warnings_naming(caplog, peer, "no TLS ClientHello within 1s")
    await assert_node_works(cloud, good)


def ws_pending(cloud: Cloud) -> int:
    server = cloud.app.websocket_server
    assert server is not None
    return server.pending


@pytest.mark.cloud_config(hub={"max_pending_handshakes": 3})
async def test_silent_sockets_filling_the_door_cannot_lock_an_edge_out(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    ident = await cloud.join("late", tmp_path / "late")
    loop = asyncio.get_running_loop()
    idle = [await connected_socket(cloud.ws_port) for _ in range(3)]
    try:
        await eventually(lambda: ws_pending(cloud) == 3, what="3 pending")
        oldest = peer_of(idle[0])
        # The door is full of silent sockets, and still a real edge gets in: the oldest
        # silent one makes room.
        late = await cloud.edge(ident)
        await assert_node_works(cloud, late)
        try:
            data = await asyncio.wait_for(loop.sock_recv(idle[0], 1024), 2)
        except ConnectionResetError:
            data = b""
        assert data == b""
        assert cloud.hub.stats.connections_refused == {"evicted_silent": 1}
        assert warnings_naming(caplog, oldest, "never sent a ClientHello")
    finally:
        for sock in idle:
            sock.close()
    await eventually(lambda: ws_pending(cloud) == 0, what="pending back to 0")
    await assert_node_works(cloud, good)


async def test_plain_http_to_the_tls_port_is_refused_before_tls_starts(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = await good_node(cloud, tmp_path)
    loop = asyncio.get_running_loop()
    sock = await connected_socket(cloud.ws_port)
    peer = peer_of(sock)
    try:
        await loop.sock_sendall(sock, b"GET /edgesync/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
        except ConnectionResetError:
            data = b""
    finally:
        sock.close()

    assert data == b""
    assert cloud.hub.stats.connections_refused == {"not_tls": 1}
    assert warnings_naming(caplog, peer, "does not speak TLS: first byte 0x47 (plain HTTP?)")
    await assert_node_works(cloud, good)


async def test_a_client_that_connects_and_leaves_is_counted_without_tls(
    cloud: Cloud, tmp_path: Path
) -> None:
    good = await good_node(cloud, tmp_path)
    sock = await connected_socket(cloud.ws_port)
    sock.close()

    counts = cloud.hub.stats.connections_refused
    await eventually(lambda: counts.get("closed_before_tls") == 1, what="counted")
    await eventually(lambda: ws_pending(cloud) == 0, what="not pending any more")
    await assert_node_works(cloud, good)


async def test_a_resent_upstream_message_is_skipped_and_acked_not_a_protocol_error(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/protocol.md §6.2/§6.4 (the tolerant rule): a resent seq at or below what the
    cloud received is skipped and acked again; the session stays open, nothing is stored
    twice."""
    edge = await bad_node(cloud, tmp_path, "resender")
    await cloud.apply_task(task_document("job", ["resender"]))
    await edge.wait_frame(lambda f: f.res == "task/default/job")
    result = {
        "run_id": "run-1",
        "generation": 1,
        "epoch": 1,
        "phase": "succeeded",
        "exit_code": 0,
        "stdout_tail": "once",
    }
    edge.session.send(Op.RESULT, "task/default/job", 1, result, time.monotonic())
    await edge.flush()
    await edge.wait_event(AckReceived, lambda e: e.cursor == 1)
    acks_before = len([f for f in edge.frames if f.op is Op.ACK and f.seq == 1])

    resent = json.dumps(
        {
            "v": 1,
            "id": "resend-1",
            "ts": now_ms(),
            "op": "result",
            "res": "task/default/job",
            "seq": 1,
            "body": result,
        }
    )
    await edge.send_raw(resent)

    await edge.wait_frame(
        lambda f: (
            f.op is Op.ACK
            and f.seq == 1
            and len([g for g in edge.frames if g.op is Op.ACK and g.seq == 1]) > acks_before
        )
    )
    await edge.ping()
    assert not edge.closed.is_set()
    assert edge.fatal_error() is None
    stored = await cloud.db(cloud.store.results_for, "task/default/job")
    assert [(r["seq"], r["run_id"]) for r in stored] == [(1, "run-1")]
    assert cloud.hub.sessions["resender"].session.duplicates_skipped == 1
    assert not warnings_naming(caplog, "protocol violation")
