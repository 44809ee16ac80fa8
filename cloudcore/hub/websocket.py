"""WebSocket transport, cloud side: wss with mutual TLS, one `Channel` per edge.

Built on asyncio streams and websockets' sans-I/O `ServerProtocol` rather
than its asyncio server so that this module owns the TLS handshake: a client
with no certificate or one from another CA is logged with its address and
the reason (asyncio's own TLS server drops such failures silently), and the
node identity is read from the verified certificate before any WebSocket
byte is parsed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

from websockets.exceptions import InvalidState, PayloadTooBig, ProtocolError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from shared.errors import LinkBroken, LinkClosed, PKIError
from shared.pki import node_name_from_der

log = logging.getLogger(__name__)

PATH = "/edgesync/v1"
READ_CHUNK = 65536
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class WebSocketChannel:
    """A server-side WebSocket connection from one authenticated edge."""

    transport = "websocket"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ServerProtocol,
        node: str,
        peer: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._protocol = protocol
        self.node = node
        self.peer = peer
        self._frames: list[bytes] = []
        self._fragments: list[bytes] = []
        self._closed_by_us = False

    async def recv(self) -> bytes:
        while not self._frames:
            if self._protocol.state is State.CLOSED or self._reader.at_eof():
                raise self._closed_error()
            try:
                data = await self._reader.read(READ_CHUNK)
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                raise LinkBroken(f"connection from {self.peer} failed: {exc}") from None
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            self._collect()
            await self._flush()
        return self._frames.pop(0)

    def _collect(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Frame) and event.opcode in (
                Opcode.TEXT,
                Opcode.BINARY,
                Opcode.CONT,
            ):
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self._frames.append(b"".join(self._fragments))
                    self._fragments.clear()

    def _closed_error(self) -> Exception:
        if self._closed_by_us:
            return LinkClosed(f"connection from {self.peer} closed")
        exc = self._protocol.close_exc
        if isinstance(exc, (PayloadTooBig,)):
            return LinkBroken(f"{self.peer} sent a frame larger than the limit; closed (1009)")
        code = self._protocol.close_code
        reason = self._protocol.close_reason
        return LinkBroken(
            f"connection from {self.peer} closed (code {code}, {reason or 'no reason'})"
        )

    async def send(self, frames: Sequence[bytes]) -> None:
        try:
            for frame in frames:
                self._protocol.send_text(frame)
        except InvalidState:
            raise self._closed_error() from None
        await self._flush()

    async def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._writer.write(data)
            elif self._writer.can_write_eof():
                self._writer.write_eof()
        try:
            await self._writer.drain()
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise LinkBroken(f"writing to {self.peer} failed: {exc}") from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed_by_us:
            return
        self._closed_by_us = True
        try:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code, reason[:120])
            await self._flush()
        except (LinkBroken, InvalidState, ProtocolError):
            pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass


ChannelHandler = Callable[[WebSocketChannel], Awaitable[None]]


class WebSocketServer:
    """Accepts edges on wss://HOST:PORT/edgesync/v1 and hands each one to `handler`."""

    def __init__(
        self,
        handler: ChannelHandler,
        ssl_context: ssl.SSLContext,
        max_frame_bytes: int,
        handshake_timeout: float,
        compression: bool = False,
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        # Frames somewhat above the protocol limit still reach the codec, which
        # answers with a typed `frame_too_large` error; far larger ones are cut
        # off here by websockets (close code 1009) without buffering them.
        self._max_size = max_frame_bytes + 65536
        self._handshake_timeout = handshake_timeout
        self._compression = compression
        self._server: asyncio.Server | None = None
        self.tls_failures = 0

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._on_connect, host, port, limit=READ_CHUNK)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if addr else "unknown"
        try:
            channel = await asyncio.wait_for(
                self._open(reader, writer, peer), self._handshake_timeout
            )
        except (TimeoutError, asyncio.TimeoutError):
            log.warning(
                "edge connection from %s: no TLS/WebSocket handshake within %.0fs",
                peer,
                self._handshake_timeout,
            )
            writer.close()
            return
        except _Refused as exc:
            log.warning("edge connection from %s refused: %s", peer, exc)
            writer.close()
            return
        if channel is None:
            return
        try:
            await self._handler(channel)
        finally:
            await channel.close()

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> WebSocketChannel | None:
        try:
            await writer.start_tls(self._ssl)
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self.tls_failures += 1
            raise _Refused(f"TLS handshake failed: {_describe_tls_error(exc)}") from None
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        if not der:
            raise _Refused("no client certificate")
        try:
            node = node_name_from_der(der)
        except PKIError as exc:
            raise _Refused(f"client certificate has no usable node name: {exc}") from None
        extensions = [ServerPerMessageDeflateFactory()] if self._compression else None
        protocol = ServerProtocol(max_size=self._max_size, extensions=extensions)
        request = await self._read_request(reader, protocol, peer)
        if request is None:
            writer.close()
            return None
        if request.path != PATH:
            response = protocol.reject(404, f"edgesync speaks WebSocket on {PATH}\n")
        else:
            response = protocol.accept(request)
        protocol.send_response(response)
        for data in protocol.data_to_send():
            if data:
                writer.write(data)
        await writer.drain()
        if protocol.state is not State.OPEN:
            writer.close()
            raise _Refused(
                f"WebSocket handshake failed: HTTP {response.status_code} {request.path}"
            )
        return WebSocketChannel(reader, writer, protocol, node, peer)

    async def _read_request(
        self, reader: asyncio.StreamReader, protocol: ServerProtocol, peer: str
    ) -> Request | None:
        while True:
            data = await reader.read(READ_CHUNK)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Request):
                    return event
            if not data or protocol.state is State.CLOSED:
                log.warning(
                    "edge connection from %s: invalid WebSocket upgrade request (%s)",
                    peer,
                    protocol.handshake_exc,
                )
                return None


class _Refused(Exception):
    pass


def _describe_tls_error(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or str(exc)
    hints = {
        "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
        "CERTIFICATE_VERIFY_FAILED": "the client certificate is not signed by this cloud's CA",
        "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this cloud's CA",
        "HTTP_REQUEST": "plain HTTP was sent to the TLS port",
        "WRONG_VERSION_NUMBER": "the client does not speak TLS",
    }
    for key, hint in hints.items():
        if key in str(text).upper():
            return f"{hint} ({text})"
    return str(text)
