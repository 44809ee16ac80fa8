"""What unauthenticated peers cost a real cloudcore process, and that it is returned.

The cloud runs as its own process; the test reads its RSS from /proc. Two kinds of
pre-authentication load, as in the hardening issue:
- TCP connections to the WebSocket port, and to the API port, that never start TLS
  (two rounds of 1,000 each);
- connections that send a real ClientHello and then stall (two rounds of 1,000): these
  do cost a TLS handshake's memory while they last, and it must be given back;
- bare QUIC Initial packets (2,000, each from a new connection id), which with address
  validation (Retry) must create no connection state at all.
Run with `-s` to see the figures.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from cloudcore.fleet import LocalFleet
from cloudcore.hub.tls import HeapTrimmer
from shared.aio.quic_channel import ALPN
from tests.e2e.conftest import FAST_CLOUD

pytestmark = pytest.mark.slow

ROUNDS = 2
PER_ROUND = 1000
QUIC_INITIALS = 2000
TOLERANCE = 1.10
STALLED_TOLERANCE = 1.20
"""Handshakes that really started: the allocator's high-water mark stays (see the test)."""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it has stopped moving for `seconds` (the cloud finished closing)."""
    last = rss_kib(pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = rss_kib(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[LocalFleet]:
    """A cloud process that holds every connection of a round (the pending cap, 256 by
    default, would close most of them at once: cheap, but then nothing is measured)."""
    hub = {**FAST_CLOUD["hub"], "handshake_timeout": 30, "max_pending_handshakes": 4096}
    fleet = LocalFleet(tmp_path, cloud_config={"hub": hub})
    fleet.start_cloud()
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("port_name", ["websocket_port", "api_port"])
def test_idle_tcp_connections_that_never_start_tls_leave_no_memory_behind(
    cloud: LocalFleet, port_name: str
) -> None:
    """Both TLS ports: the hub, and the HTTPS join endpoint and API (before its doorman,
    1,000 idle sockets to the API port cost +190 MB that stayed)."""
    pid, port = cloud.runtime["pid"], cloud.runtime[port_name]
    start = settled_rss(pid)
    peaks = []
    for _ in range(ROUNDS):
        socks = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(PER_ROUND)
        ]
        time.sleep(1.0)  # every connection accepted and waiting for its ClientHello
        peaks.append(rss_kib(pid))
        for sock in socks:
            sock.close()
    after = settled_rss(pid)
    print(
        f"\n{port_name}, {ROUNDS}x{PER_ROUND} idle TCP: start {start} KiB, peaks {peaks} KiB, "
        f"after close {after} KiB ({(after - start) / start:+.1%}); "
        f"held per connection ~{(max(peaks) - start) / PER_ROUND:.1f} KiB"
    )
    assert after <= start * TOLERANCE
    assert max(peaks) - start < PER_ROUND * 64, "an idle pre-TLS socket costs more than 64 KiB"
    assert (
        "connection closed before the TLS handshake" in (cloud.root / "cloudcore.log").read_text()
    )


def client_hello() -> bytes:
    """The first flight of a real TLS client (a ClientHello), without a connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="cloud")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_handshakes_that_stall_after_the_client_hello_give_their_memory_back(
    cloud: LocalFleet,
) -> None:
    """Each such connection holds ~300 KiB while it lasts (asyncio's TLS buffer and
    OpenSSL); after the burst the hub hands the heap back to the OS. What stays is a
    one-time high-water mark of Python's own allocator (~10 MB here), which does not
    grow from one round to the next."""
    pid, port = cloud.runtime["pid"], cloud.runtime["websocket_port"]
    start = settled_rss(pid)
    trimmer = HeapTrimmer()
    peaks, afters = [], []
    for _ in range(ROUNDS):
        socks = []
        for _ in range(PER_ROUND):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(client_hello())
            socks.append(sock)
        time.sleep(1.5)  # every handshake started: the cloud answered and waits for more
        peaks.append(rss_kib(pid))
        for sock in socks:
            sock.close()
        time.sleep(trimmer.min_interval + trimmer.delay + 1)  # the hub gives the heap back
        afters.append(settled_rss(pid))
    print(
        f"\nWebSocket, {ROUNDS}x{PER_ROUND} ClientHello then silence: start {start} KiB, "
        f"peaks {peaks} KiB, after each round {afters} KiB "
        f"({(afters[-1] - start) / start:+.1%})"
    )
    assert max(peaks) - start > PER_ROUND * 100, "the handshakes did not start (nothing measured)"
    assert afters[-1] - afters[0] < 4096, "memory grows from round to round"
    assert afters[-1] <= start * STALLED_TOLERANCE


def test_bare_quic_initials_create_no_connection_state(cloud: LocalFleet) -> None:
    pid, port = cloud.runtime["pid"], cloud.runtime["quic_port"]
    start = settled_rss(pid)
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="127.0.0.1")
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.0)
        for i in range(QUIC_INITIALS):
            client = QuicConnection(configuration=config)
            client.connect(("127.0.0.1", port), now=time.monotonic())
            for data, _ in client.datagrams_to_send(now=time.monotonic()):
                sock.sendto(data, ("127.0.0.1", port))
            if i % 50 == 0:
                time.sleep(0.01)  # let the cloud keep up: we measure state, not a UDP drop
            try:
                while sock.recv(65536):
                    answers += 1
            except BlockingIOError:
                pass
        time.sleep(1.0)
        try:
            while sock.recv(65536):
                answers += 1
        except BlockingIOError:
            pass
    peak = rss_kib(pid)
    after = settled_rss(pid)
    print(
        f"\nQUIC, {QUIC_INITIALS} bare Initials: start {start} KiB, peak {peak} KiB, "
        f"after {after} KiB ({(after - start) / start:+.1%}); {answers} answers (Retry)"
    )
    assert answers > QUIC_INITIALS // 2  # the cloud answered them: with Retry packets
    assert peak <= start * TOLERANCE
    assert after <= start * TOLERANCE
