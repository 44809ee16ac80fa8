"""The HTTPS listener of the join endpoint and operator API, behind a Doorman.

aiohttp's own `TCPSite(ssl_context=...)` lets asyncio start TLS at accept,
~190 MB per 1,000 idle sockets that is never returned (measured:
tests/e2e/test_preauth_memory.py). Here the port accepts plain TCP behind
the same door as the WebSocket hub (cloudcore/hub/doorman.py), and only a
client that sends a ClientHello gets TLS and then aiohttp's request handler.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from cloudcore.hub.doorman import DoorServer
from cloudcore.hub.refusals import RefusalLog
from cloudcore.hub.tls import release_handshake


class _Early(asyncio.Protocol):
    """Holds what TLS delivers between the handshake and the real protocol's start:
    start_tls reads (and may deliver a request) before its caller runs again."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return True  # keep the transport open until the real protocol has seen it

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for chunk in self.data:
            protocol.data_received(chunk)
        self.data.clear()
        if self.eof:
            protocol.eof_received()


class ApiListener(DoorServer):
    """Serves `protocol_factory` (aiohttp's `web.Server`) over TLS on HOST:PORT."""

    name = "API"

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext,
        refusals: RefusalLog,
        handshake_timeout: float,
        max_pending: int,
    ) -> None:
        super().__init__(refusals, handshake_timeout, max_pending)
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context

    def admit(self, transport: asyncio.Transport, peer: str) -> None:
        self.spawn(self._serve(transport, peer))

    async def _serve(self, transport: asyncio.Transport, peer: str) -> None:
        loop = asyncio.get_running_loop()
        early = _Early()
        try:
            tls = await loop.start_tls(
                transport,
                early,
                self.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            release_handshake(exc)
            reason = "handshake_timeout" if isinstance(exc, asyncio.TimeoutError) else "tls_failed"
            text = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
            self.refusals.refuse(self.name, peer, reason, f"TLS handshake failed: {text}")
            transport.abort()
            self.trimmer.note_release()
            return
        finally:
            self.pending -= 1
        if tls is None or early.lost:  # closed during the handshake
            transport.abort()
            return
        protocol = self.protocol_factory()
        protocol.connection_made(tls)  # start_tls leaves that to its caller
        tls.set_protocol(protocol)
        early.hand_over(protocol)
