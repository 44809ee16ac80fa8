"""QUIC transport, cloud side (UDP, default port 10001), mutual TLS 1.3, ALPN edgesync/1.

aioquic's server never asks for a client certificate except in its own
tests, and when it gets one it checks only possession of the key, not who
issued it. So this module turns the request on for every connection and
applies the certificate policy both transports share (shared/certpolicy.py:
chain to the cloud CA, validity, clientAuth, node name) before any frame is
read; a connection without a valid node certificate is closed with an error
the edge can read. Address validation (Retry) is on, so unvalidated
addresses cost the cloud no connection state.

Session tickets make reconnects cheaper (no certificate exchange, one round
trip less work), but a resumed TLS 1.3 session carries no certificate. So a
ticket is remembered only for a connection whose certificate verified, is
bound to that node, is single use, lives in memory for `TICKET_TTL` and
never beyond the certificate's expiry; a resumed connection takes its
identity from the ticket it used.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from cloudcore.hub.refusals import RefusalLog
from shared import certpolicy, pki
from shared.aio.quic_channel import ALPN, CLOSE_UNAUTHORIZED, QuicChannel, QuicChannelProtocol
from shared.errors import CertificateRefused

log = logging.getLogger(__name__)

ChannelHandler = Callable[[QuicChannel], Awaitable[None]]
MAX_TICKETS = 100_000
RECEIVE_BUFFER = 4 << 20
"""Bytes of UDP receive buffer asked for (the kernel caps it at net.core.rmem_max)."""
TICKET_TTL = 3600.0
"""Seconds a session ticket may be used (aioquic advertises a day; we honour less)."""


@dataclass
class _Ticket:
    ticket: SessionTicket
    node: str
    expires: float
    """time.monotonic() deadline."""


@dataclass
class _ConnectionTickets:
    """Ticket traffic of one connection: the ticket issued to it, the one it resumed."""

    issued: SessionTicket | None = None
    resumed: _Ticket | None = None


class QuicHubServer:
    def __init__(
        self,
        handler: ChannelHandler,
        cert: Path,
        key: Path,
        ca: Path,
        max_frame_bytes: int,
        idle_timeout: float,
        *,
        refusals: RefusalLog | None = None,
        retry: bool = True,
    ) -> None:
        self._handler = handler
        self.refusals = refusals or RefusalLog()
        self._retry = retry
        self._ca = pki.load_cert_pem(ca.read_bytes())
        self._max_frame_bytes = max_frame_bytes
        self._config = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN],
            idle_timeout=idle_timeout,
            max_datagram_frame_size=None,
        )
        self._config.load_cert_chain(str(cert), str(key))
        self._server: QuicServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._tickets: dict[bytes, _Ticket] = {}
        self.refused = 0

    async def start(self, host: str, port: int) -> int:
        # aioquic logs 1-4 INFO lines per connection attempt under "quic", unbounded and
        # outside the refusal log's budget: only its warnings and errors reach our log.
        logging.getLogger("quic").setLevel(logging.WARNING)
        # retry=True: address validation. A bare Initial gets a stateless Retry and no
        # connection state; only a client that echoes the token from its own address
        # costs the cloud a connection (2,000 spoofable Initials cost +177 MB without it).
        self._server = await serve(
            host,
            port,
            configuration=self._config,
            create_protocol=self._create_protocol,
            retry=self._retry,
        )
        transport = self._server._transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # one socket serves every edge: the default buffer overflows
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        return int(transport.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()

    def _create_protocol(
        self, quic: QuicConnection, stream_handler: Any = None
    ) -> QuicChannelProtocol:
        _request_client_certificate(quic)
        tickets = _ConnectionTickets()

        def issued(ticket: SessionTicket) -> None:
            tickets.issued = ticket  # kept only once the certificate has verified

        def fetch(label: bytes) -> SessionTicket | None:
            entry = self._tickets.pop(label, None)  # single use
            if entry is None or entry.expires < time.monotonic():
                return None
            tickets.resumed = entry
            # A resumed handshake has no certificate exchange; without this, aioquic's
            # server would wait for a client Certificate that never comes.
            quic.tls._request_client_certificate = False
            return entry.ticket

        quic._session_ticket_handler = issued
        quic._session_ticket_fetcher = fetch
        return QuicChannelProtocol(
            quic,
            stream_handler,
            max_frame_bytes=self._max_frame_bytes,
            on_handshake=lambda channel, resumed: self._on_handshake(channel, resumed, tickets),
        )

    def _on_handshake(
        self, channel: QuicChannel, resumed: bool, tickets: _ConnectionTickets
    ) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        if resumed and tickets.resumed is not None:
            channel.node = tickets.resumed.node
            expires = tickets.resumed.expires
        else:
            peer_cert = getattr(channel.quic.tls, "_peer_certificate", None)
            try:
                channel.node = certpolicy.check_client_certificate(peer_cert, self._ca, now)
            except CertificateRefused as exc:
                self.refused += 1
                self.refusals.refuse(
                    "QUIC", channel.peer, exc.reason, f"client certificate refused: {exc}"
                )
                channel.abort(CLOSE_UNAUTHORIZED, f"unauthorized: {exc}")
                return
            assert peer_cert is not None
            left = (peer_cert.not_valid_after_utc - now).total_seconds()
            expires = time.monotonic() + min(TICKET_TTL, max(0.0, left))
        if tickets.issued is not None:
            self._remember(tickets.issued, channel.node, expires)
        task = asyncio.get_running_loop().create_task(
            self._run(channel), name=f"quic:{channel.node}"
        )
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    def _remember(self, ticket: SessionTicket, node: str, expires: float) -> None:
        now = time.monotonic()
        if len(self._tickets) >= MAX_TICKETS:  # drop the expired ones, then the oldest
            for label in [k for k, t in self._tickets.items() if t.expires < now]:
                del self._tickets[label]
            while len(self._tickets) >= MAX_TICKETS:
                del self._tickets[next(iter(self._tickets))]
        self._tickets[ticket.ticket] = _Ticket(ticket, node, expires)

    async def _run(self, channel: QuicChannel) -> None:
        try:
            await self._handler(channel)
        finally:
            await channel.close()


def _request_client_certificate(quic: QuicConnection) -> None:
    """Make aioquic's TLS server send a CertificateRequest (its flag is test-only upstream)."""
    initialize = quic._initialize

    def initialize_and_request(peer_cid: bytes) -> None:
        initialize(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = initialize_and_request  # type: ignore[method-assign]
