"""QUIC transport, edge side: mutual TLS 1.3 to the pinned cloud CA, ALPN edgesync/1.

The cloud's certificate is always verified (KubeEdge's QUIC client skips
this). Session tickets from the cloud are kept in memory and used once, so a
reconnect resumes the TLS session (the cloud binds each ticket to the node
whose certificate it verified; see cloudcore/hub/quic.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from shared.aio.quic_channel import ALPN, CLOSE_UNAUTHORIZED, QuicChannel, QuicChannelProtocol
from shared.errors import AuthError, LinkBroken


@dataclass
class TicketCache:
    """The latest session ticket from the cloud (single use; memory only)."""

    ticket: SessionTicket | None = None

    def take(self) -> SessionTicket | None:
        ticket, self.ticket = self.ticket, None
        return ticket if ticket is not None and ticket.is_valid else None


def _parse(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "quic" or not parsed.hostname or not parsed.port:
        raise LinkBroken(f"cloud.quic_url must look like quic://HOST:10001, not {url!r}")
    return parsed.hostname, parsed.port


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0, 0, 0))
    return sock


async def connect_quic(
    url: str,
    cert: Path,
    key: Path,
    ca: Path,
    timeout: float,
    max_frame_bytes: int,
    idle_timeout: float,
    tickets: TicketCache | None = None,
) -> QuicChannel:
    """Open a QUIC link; raises AuthError (fatal) or LinkBroken (retry / fall back)."""
    host, port = _parse(url)
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        server_name=host,
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_cert_chain(str(cert), str(key))
    config.load_verify_locations(cafile=str(ca))
    if tickets is not None:
        config.session_ticket = tickets.take()
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise LinkBroken(f"cannot resolve {host}: {exc}") from None
    addr: Any = infos[0][4]
    if len(addr) == 2:
        addr = ("::ffff:" + str(addr[0]), addr[1], 0, 0)

    def keep(ticket: SessionTicket) -> None:
        if tickets is not None:
            tickets.ticket = ticket

    connection = QuicConnection(configuration=config, session_ticket_handler=keep)
    transport, protocol = await loop.create_datagram_endpoint(
        partial(QuicChannelProtocol, connection, max_frame_bytes=max_frame_bytes),
        sock=_udp_socket(),
    )
    channel = protocol.channel
    channel.on_close = transport.close
    try:
        protocol.connect(addr)
        await asyncio.wait_for(protocol.wait_connected(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        _disarm(protocol)
        transport.close()
        raise LinkBroken(
            f"no QUIC answer from {host}:{port} within {timeout:g}s (UDP blocked?)"
        ) from None
    except ConnectionError:
        _disarm(protocol)
        transport.close()
        raise _handshake_error(connection, url) from None
    channel.open_stream()
    return channel


def _disarm(protocol: QuicChannelProtocol) -> None:
    """Stop aioquic's timer before its socket goes (else it fires on a closed transport)."""
    timer = getattr(protocol, "_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._timer = None


def _handshake_error(connection: object, url: str) -> Exception:
    event = getattr(connection, "_close_event", None)
    code = getattr(event, "error_code", None)
    reason = getattr(event, "reason_phrase", "") or "no reason given"
    if code == CLOSE_UNAUTHORIZED or (isinstance(code, int) and 0x100 <= code <= 0x1FF):
        return AuthError(
            f"QUIC handshake with {url} failed: {reason} (error 0x{code:x}); "
            "is this the cloud this node joined, and is its certificate valid?"
        )
    return LinkBroken(f"QUIC handshake with {url} failed: {reason}")


async def rebind(channel: QuicChannel) -> None:
    """Move the connection to a new local UDP port (what a Wi-Fi → LTE switch looks like).

    QUIC connection migration keeps the session: the cloud validates the new
    path and carries on, with no reconnect and no resync.
    """
    protocol = channel._protocol
    old = protocol._transport
    loop = asyncio.get_running_loop()
    new, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=_udp_socket())
    channel.on_close = new.close
    protocol.change_connection_id()
    protocol.transmit()
    if old is not None:
        old.close()
