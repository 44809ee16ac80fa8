"""WebSocket transport, cloud side: wss with mutual TLS, one `Channel` per edge.

Built on an asyncio Protocol and websockets' sans-I/O `ServerProtocol`
instead of websockets' asyncio server, so that this module owns the TLS
handshake:
- reading is paused the instant TCP connects, and TLS starts before any
  byte is read (the first bytes are only peeked at), so nothing of the
  client's hello can be lost;
- a client with no certificate, or one from another CA, is logged with its
  address and the reason (asyncio's own TLS server drops such failures
  silently);
- the node identity is read from the verified certificate before any
  WebSocket byte is parsed, through the one certificate policy both
  transports share (shared/certpolicy.py);
- nothing TLS-sized is allocated before the client speaks: asyncio's TLS
  layer takes a 256 KiB read buffer per connection at `start_tls`, so the
  hub first waits (cloudcore/hub/doorman.py: no task, on a dup of the socket's
  descriptor, reading nothing) until the ClientHello is there, and a socket that stays
  silent is closed after `handshake_timeout`; a failed handshake's memory is
  freed at once and returned to the OS after a burst (cloudcore/hub/tls.py);
- at most `max_pending` connections may be unauthenticated at once; a new
  one beyond that closes the oldest that never sent a ClientHello, so silent
  sockets cannot lock edges out (counted, and logged within the refusal log's
  budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

from cryptography import x509
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from cloudcore.hub.doorman import DoorServer
from cloudcore.hub.refusals import RefusalLog
from cloudcore.hub.tls import release_handshake
from shared import certpolicy
from shared.errors import CertificateRefused, LinkBroken, LinkClosed, LinkError, PeerClosed
from shared.text import escape_text

log = logging.getLogger(__name__)

PATH = "/edgesync/v1"
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WebSocketChannel(asyncio.Protocol):
    """One edge connection: TLS, then the WebSocket handshake, then frames.

    asyncio calls the Protocol methods; the session driver uses the Channel
    methods (`recv`, `send`, `close`).
    """

    def __init__(self, server: WebSocketServer, transport: asyncio.Transport, peer: str) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = transport
        self._ws: ServerProtocol | None = None
        self.node = ""
        self.peer = peer
        self._frames: asyncio.Queue[bytes | LinkError] = asyncio.Queue()
        self._fragments: list[bytes] = []
        self._early: list[bytes] = []
        self._request: asyncio.Future[Request | None] = self._loop.create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._lost = False
        self._closed_by_us = False
        self._pending = True  # counted by the doorman that handed the connection over

    @property
    def transport(self) -> str:
        return "websocket"

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the TLS transport: start_tls hands it over as its result

    def data_received(self, data: bytes) -> None:
        if self._ws is None or self.node == "":  # nothing is parsed before identity is known
            self._early.append(data)
            return
        self._ws.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._authenticated()
        self._can_write.set()
        if not self._request.done():
            self._request.set_result(None)
        self._frames.put_nowait(self._closed_error(exc))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # ------------------------------------------------------------ handshake

    def _authenticated(self) -> None:
        """This connection no longer counts against the pending-handshake cap."""
        if self._pending:
            self._pending = False
            self._server.pending -= 1

    async def _serve(self) -> None:
        server = self._server
        try:
            await self._open()
        except _Refused as exc:
            server.refusals.refuse("WebSocket", self.peer, exc.reason, str(exc))
            self._abort()
            server.trimmer.note_release()
            return
        finally:
            self._authenticated()
        try:
            await server.handler(self)
        finally:
            await self.close()
            server.trimmer.note_release()

    async def _open(self) -> None:
        server, loop = self._server, self._loop
        assert self._transport is not None
        try:
            tls = await loop.start_tls(
                self._transport,
                self,
                server.ssl_context,
                server_side=True,
                ssl_handshake_timeout=server.handshake_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            release_handshake(exc)
            reason = certpolicy.reason_for_openssl_code(exc.verify_code)
            detail = certpolicy.refused(reason, exc.verify_message or str(exc))
            raise _Refused(reason, f"TLS handshake failed: {detail}") from None
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            release_handshake(exc)
            server.tls_failures += 1
            reason, text = _describe_tls_error(exc)
            raise _Refused(reason, f"TLS handshake failed: {text}") from None
        if tls is None:
            raise _Refused("tls_failed", "connection closed during the TLS handshake")
        self._transport = tls
        ssl_obj = tls.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        try:
            self.node = certpolicy.check_client_der(
                der, server.ca, dt.datetime.now(dt.timezone.utc)
            )
        except CertificateRefused as exc:
            raise _Refused(exc.reason, f"client certificate refused: {exc}") from None
        # Ready before the upgrade request is parsed: it may follow the handshake at once.
        extensions = [ServerPerMessageDeflateFactory()] if server.compression else None
        self._ws = ServerProtocol(max_size=server.max_size, extensions=extensions)
        assert self._ws is not None
        for data in self._early:  # bytes that arrived between TLS and the identity check
            self._ws.receive_data(data)
        self._early.clear()
        self._pump()
        try:
            request = await asyncio.wait_for(self._request, server.handshake_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise _Refused(
                "upgrade_timeout", f"no WebSocket upgrade within {server.handshake_timeout:g}s"
            ) from None
        if request is None:
            raise _Refused(
                "bad_upgrade", f"invalid WebSocket upgrade request ({self._ws.handshake_exc})"
            )
        if request.path != PATH:
            response = self._ws.reject(404, f"edgesync speaks WebSocket on {PATH}\n")
        else:
            response = self._ws.accept(request)
        self._ws.send_response(response)
        self._write_pending()
        if self._ws.state is not State.OPEN:
            raise _Refused(
                "bad_upgrade",
                f"WebSocket upgrade refused: HTTP {response.status_code} "
                f"{escape_text(request.path, 200)} (node {self.node})",
            )

    # ------------------------------------------------------------ frames

    def _pump(self) -> None:
        ws = self._ws
        assert ws is not None
        for event in ws.events_received():
            if isinstance(event, Request):
                if not self._request.done():
                    self._request.set_result(event)
            elif isinstance(event, Frame) and event.opcode in _DATA_OPCODES:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self._frames.put_nowait(b"".join(self._fragments))
                    self._fragments.clear()
        handshake_failed = ws.state is State.CONNECTING and ws.handshake_exc is not None
        if handshake_failed and not self._request.done():
            self._request.set_result(None)
        self._write_pending()  # pongs and close replies go out at once

    def _write_pending(self) -> None:
        ws, transport = self._ws, self._transport
        if ws is None or transport is None:
            return
        chunks = ws.data_to_send()
        # One write per batch: one TLS record instead of one per frame.
        payload = b"".join(chunks)
        if payload:
            transport.write(payload)
        if chunks and not chunks[-1]:  # websockets asks for EOF: TLS cannot half-close
            transport.close()
        if ws.state is State.CLOSED and not transport.is_closing():
            transport.close()

    def _closed_error(self, exc: Exception | None) -> LinkError:
        if self._closed_by_us:
            return LinkClosed(f"connection from {self.peer} closed")
        ws = self._ws
        received = ws.close_rcvd if ws is not None else None
        sent = ws.close_sent if ws is not None else None
        if sent is not None and sent.code == 1009:
            return LinkBroken(f"{self.peer} sent a frame above the size limit; closed (1009)")
        if received is not None:
            why = received.reason or "no reason"
            cls = PeerClosed if received.code in (1000, 1001) else LinkBroken
            return cls(f"{self.peer} closed the connection (code {received.code}, {why})")
        detail = f": {exc}" if exc else ""
        return LinkBroken(f"connection from {self.peer} lost{detail}")

    # ------------------------------------------------------------ Channel

    async def recv(self) -> bytes:
        item = await self._frames.get()
        if isinstance(item, LinkError):
            self._frames.put_nowait(item)
            raise item
        return item

    async def send(self, frames: Sequence[bytes]) -> None:
        ws = self._ws
        if self._lost or ws is None:
            raise self._closed_error(None)
        try:
            for frame in frames:
                ws.send_text(frame)
        except InvalidState:
            raise self._closed_error(None) from None
        self._write_pending()
        await self._can_write.wait()
        if self._lost:
            raise self._closed_error(None)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed_by_us:
            return
        self._closed_by_us = True
        ws = self._ws
        if ws is not None and ws.state is State.OPEN:
            with contextlib.suppress(InvalidState):
                ws.send_close(code, reason[:120])
            self._write_pending()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


ChannelHandler = Callable[[WebSocketChannel], Awaitable[None]]


class WebSocketServer(DoorServer):
    """Accepts edges on wss://HOST:PORT/edgesync/v1 and hands each one to `handler`."""

    name = "WebSocket"

    def __init__(
        self,
        handler: ChannelHandler,
        ssl_context: ssl.SSLContext,
        max_frame_bytes: int,
        handshake_timeout: float,
        compression: bool = False,
        *,
        ca: x509.Certificate,
        refusals: RefusalLog | None = None,
        max_pending: int = 256,
    ) -> None:
        super().__init__(refusals or RefusalLog(), handshake_timeout, max_pending)
        self.handler = handler
        self.ssl_context = ssl_context
        self.ca = ca
        # Frames somewhat above the protocol limit still reach the codec, which
        # answers with a typed `frame_too_large` error; far larger ones are cut
        # off here by websockets (close code 1009) without buffering them.
        self.max_size = max_frame_bytes + 65536
        self.compression = compression
        self.tls_failures = 0

    def admit(self, transport: asyncio.Transport, peer: str) -> None:
        """A ClientHello arrived: TLS, identity, then the session (WebSocketChannel)."""
        self.spawn(WebSocketChannel(self, transport, peer)._serve())


def _describe_tls_error(exc: BaseException) -> tuple[str, str]:
    """(reason, operator text) of a TLS handshake that failed outside certificate checks."""
    text = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
    upper = str(exc).upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in upper:
        return certpolicy.NO_CERTIFICATE, f"{certpolicy.HINTS[certpolicy.NO_CERTIFICATE]} ({text})"
    hints = {
        "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this cloud's CA",
        "HTTP_REQUEST": "plain HTTP was sent to the TLS port",
        "WRONG_VERSION_NUMBER": "the client does not speak TLS",
        "NO_SHARED_CIPHER": "no cipher in common (a scanner, or a very old client)",
        "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions below 1.2",
    }
    for key, hint in hints.items():
        if key in upper:
            return "tls_failed", f"{hint} ({text})"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "handshake_timeout", "no TLS handshake in time"
    return "tls_failed", escape_text(text, 200)
