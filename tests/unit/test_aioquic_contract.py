"""The aioquic internals edgesync relies on, one test per private use.

aioquic has no public API for what the QUIC hub and link need (asking for a client
certificate, reading it, ticket callbacks on a server connection, the close event,
the peer address, the protocol's timer and transport), so the code reaches into
private attributes. pyproject.toml pins the aioquic range these tests passed on; when
a new aioquic breaks one of them, the failure names the attribute and the code that
uses it, instead of an AttributeError deep in a handshake.

Connections are driven in memory (two QuicConnection objects exchanging datagrams,
as in aioquic's own tests); the protocol-level attributes use a real UDP socket on
loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.tls import SessionTicket
from cryptography import x509

from cloudcore.hub.quic import _request_client_certificate
from shared import pki
from shared.aio.quic_channel import ALPN

VERSION = importlib.metadata.version("aioquic")
NOW = dt.datetime.now(dt.timezone.utc)
CA_KEY, CA = pki.create_ca("contract CA", NOW)
SERVER_KEY, SERVER_CERT = pki.create_server_cert(CA_KEY, CA, ["127.0.0.1"], NOW)
NODE_KEY = pki.generate_key()
NODE_CERT = pki.sign_node_csr(CA_KEY, CA, pki.create_csr(NODE_KEY, "node-1"), "node-1", NOW)
CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("2.3.4.5", 4433)


def require(obj: object, name: str, used_in: str) -> Any:
    """obj.name, or a failure that says what changed in aioquic and where edgesync cares."""
    if not hasattr(obj, name):
        pytest.fail(
            f"aioquic {VERSION}: {type(obj).__name__}.{name} no longer exists; edgesync uses "
            f"it in {used_in}. Adapt that code, then the aioquic range in pyproject.toml."
        )
    return getattr(obj, name)


def client_config(ticket: SessionTicket | None = None) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="127.0.0.1")
    config.load_verify_locations(cadata=pki.cert_to_pem(CA))
    config.certificate = NODE_CERT
    config.private_key = NODE_KEY
    config.session_ticket = ticket
    return config


def server_config() -> QuicConfiguration:
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.certificate = SERVER_CERT
    config.private_key = SERVER_KEY
    return config


CLOCK = [0.0]
"""The connections' time: advanced by each exchange (aioquic paces what it sends)."""


def transfer(sender: QuicConnection, receiver: QuicConnection, addr: tuple[str, int]) -> int:
    CLOCK[0] += 0.05
    count = 0
    for data, _ in sender.datagrams_to_send(now=CLOCK[0]):
        receiver.receive_datagram(data, addr, now=CLOCK[0])
        count += 1
    return count


def handshake(client: QuicConnection, server: QuicConnection) -> None:
    client.connect(SERVER_ADDR, now=CLOCK[0])
    idle = 0
    for _ in range(40):
        moved = transfer(client, server, CLIENT_ADDR) + transfer(server, client, SERVER_ADDR)
        idle = 0 if moved else idle + 1
        if idle >= 3:
            return


def pair(
    ticket: SessionTicket | None = None, fetcher: Any = None, handler: Any = None
) -> tuple[QuicConnection, QuicConnection]:
    client = QuicConnection(configuration=client_config(ticket), session_ticket_handler=handler)
    server = QuicConnection(
        configuration=server_config(),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    _request_client_certificate(server)
    if fetcher is not None:
        server._session_ticket_fetcher = fetcher
    return client, server


# ---------------------------------------------------------------- QuicConnection / tls.Context


def test_initialize_can_be_wrapped_to_request_a_client_certificate() -> None:
    """cloudcore/hub/quic.py _request_client_certificate: QuicConnection._initialize(peer_cid)
    creates `tls`; the wrapper then sets tls._request_client_certificate."""
    client, server = pair()
    require(server, "_initialize", "cloudcore/hub/quic.py _request_client_certificate")
    handshake(client, server)
    tls = require(server, "tls", "cloudcore/hub/quic.py, shared/aio/quic_channel.py")
    flag = require(tls, "_request_client_certificate", "cloudcore/hub/quic.py (both uses)")
    assert flag is True


def test_the_server_sees_the_client_certificate_as_peer_certificate() -> None:
    """cloudcore/hub/quic.py _on_handshake reads tls._peer_certificate."""
    client, server = pair()
    handshake(client, server)
    peer = require(server.tls, "_peer_certificate", "cloudcore/hub/quic.py _on_handshake")
    assert isinstance(peer, x509.Certificate), (
        f"aioquic {VERSION}: tls._peer_certificate is {type(peer).__name__}, not the client's "
        "x509.Certificate: the QUIC hub could not authenticate any node"
    )
    assert peer == NODE_CERT


def test_ticket_callbacks_set_after_construction_are_used() -> None:
    """cloudcore/hub/quic.py sets _session_ticket_handler / _session_ticket_fetcher on the
    connection aioquic's server created, and clears tls._request_client_certificate on
    resumption; shared/aio/quic_channel.py reads tls.session_resumed."""
    issued: list[SessionTicket] = []
    client_tickets: list[SessionTicket] = []
    client, server = pair(handler=client_tickets.append)
    require(server, "_session_ticket_handler", "cloudcore/hub/quic.py _create_protocol")
    server._session_ticket_handler = issued.append
    handshake(client, server)
    assert issued and client_tickets, f"aioquic {VERSION}: no ticket issued through the handler"

    store = {issued[0].ticket: issued[0]}
    fetched: list[bytes] = []

    def fetch(label: bytes) -> SessionTicket | None:
        fetched.append(label)
        server2.tls._request_client_certificate = False
        return store.pop(label, None)

    client2, server2 = pair(ticket=client_tickets[0], fetcher=fetch)
    require(server2, "_session_ticket_fetcher", "cloudcore/hub/quic.py _create_protocol")
    handshake(client2, server2)
    assert fetched == [issued[0].ticket], f"aioquic {VERSION}: the fetcher was not consulted"
    resumed = require(
        server2.tls, "session_resumed", "shared/aio/quic_channel.py QuicChannel.resumed"
    )
    assert resumed is True


def test_the_close_event_records_the_application_error() -> None:
    """edgecore/link/quic.py _handshake_error and tests read QuicConnection._close_event."""
    client, server = pair()
    handshake(client, server)
    server.close(error_code=0x3, reason_phrase="unauthorized: test")
    transfer(server, client, SERVER_ADDR)
    event = require(client, "_close_event", "edgecore/link/quic.py _handshake_error")
    assert isinstance(event, ConnectionTerminated), event
    assert (event.error_code, event.reason_phrase) == (0x3, "unauthorized: test")


def test_network_paths_hold_the_peer_address() -> None:
    """shared/aio/quic_channel.py QuicChannel.peer reads _network_paths[0].addr."""
    client, server = pair()
    handshake(client, server)
    paths = require(server, "_network_paths", "shared/aio/quic_channel.py QuicChannel.peer")
    assert paths, "no network path"
    addr = require(paths[0], "addr", "shared/aio/quic_channel.py QuicChannel.peer")
    assert tuple(addr) == CLIENT_ADDR


# ---------------------------------------------------------------- asyncio layer


async def _protocol_and_server() -> None:
    loop = asyncio.get_running_loop()
    server = await serve("127.0.0.1", 0, configuration=server_config(), retry=True)
    try:
        transport = require(server, "_transport", "cloudcore/hub/quic.py QuicHubServer.start")
        assert transport is not None and transport.get_extra_info("sockname")[1] > 0
        client = QuicConnection(configuration=client_config())
        udp, protocol = await loop.create_datagram_endpoint(
            lambda: QuicConnectionProtocol(client), local_addr=("127.0.0.1", 0)
        )
        try:
            quic = require(protocol, "_quic", "shared/aio/quic_channel.py QuicChannel.quic")
            assert quic is client
            own = require(protocol, "_transport", "edgecore/link/quic.py rebind")
            assert own is udp
            require(protocol, "_timer", "edgecore/link/quic.py _disarm")
            protocol.connect(transport.get_extra_info("sockname"))
            assert protocol._timer is not None, (
                f"aioquic {VERSION}: QuicConnectionProtocol._timer is not the armed timer "
                "handle; edgecore/link/quic.py _disarm cannot stop it"
            )
            await asyncio.wait_for(protocol.wait_connected(), 5)
        finally:
            protocol.close()
            udp.close()
    finally:
        server.close()


def test_protocol_timer_transport_and_quic_and_server_transport() -> None:
    """QuicConnectionProtocol._quic / _transport / _timer and QuicServer._transport, on a
    real loopback handshake (with Retry, as the hub runs it)."""
    asyncio.run(_protocol_and_server())
