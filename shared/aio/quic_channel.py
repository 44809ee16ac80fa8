"""QUIC transport channel (both daemons): one bidirectional stream of length-prefixed frames.

This is an I/O module living beside the sans-I/O protocol so that cloud and
edge share one implementation of the QUIC side of `shared.transport.Channel`
(shared/protocol/ itself stays free of asyncio and aioquic). aioquic
exceptions and connection events are translated here into LinkBroken /
LinkClosed / FrameTooLarge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)

from shared.errors import (
    FrameTooLarge,
    IdentityRefused,
    LinkBroken,
    LinkClosed,
    LinkError,
    PeerClosed,
)
from shared.protocol.framing import FrameDecoder, encode_frames

ALPN = "edgesync/1"
# Application error codes on CONNECTION_CLOSE (QUIC leaves them to the application).
CLOSE_NORMAL = 0x0
CLOSE_PROTOCOL_ERROR = 0x1
CLOSE_FRAME_TOO_LARGE = 0x2
CLOSE_UNAUTHORIZED = 0x3
CLOSE_GRACE = 0.02
"""Seconds close() waits for the peer to confirm; the close frame is already sent."""


class QuicChannel:
    """The `Channel` face of a QUIC connection (see QuicChannelProtocol)."""

    transport = "quic"

    def __init__(self, protocol: QuicChannelProtocol, max_frame_bytes: int) -> None:
        self._protocol = protocol
        self.node = ""
        self.max_frame_bytes = max_frame_bytes
        self._decoder = FrameDecoder(max_frame_bytes)
        self._frames: asyncio.Queue[bytes | LinkError] = asyncio.Queue()
        self._stream_id: int | None = None
        self._failed: LinkError | None = None
        self._closing = False
        self.failure_cause: Exception | None = None
        self.on_close: Callable[[], None] | None = None
        """Called once the connection is closed (the client closes its UDP socket)."""

    @property
    def peer(self) -> str:
        paths = getattr(self._protocol._quic, "_network_paths", None)
        if paths:
            addr = paths[0].addr
            return f"{str(addr[0]).removeprefix('::ffff:')}:{addr[1]}"
        return "unknown"

    @property
    def quic(self) -> QuicConnection:
        return self._protocol._quic

    @property
    def resumed(self) -> bool:
        """True if this connection resumed an earlier TLS session (a session ticket)."""
        tls = getattr(self.quic, "tls", None)
        return bool(getattr(tls, "session_resumed", False))

    def open_stream(self) -> None:
        """Client side: choose the stream this channel speaks on."""
        self._stream_id = self.quic.get_next_available_stream_id()

    async def recv(self) -> bytes:
        item = await self._frames.get()
        if isinstance(item, LinkError):
            self._frames.put_nowait(item)  # every later recv fails the same way
            raise item
        return item

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._failed is not None:
            raise self._failed
        if self._stream_id is None:
            raise LinkBroken(f"QUIC peer {self.peer} has not opened its stream yet")
        # One stream write per batch: per-write cost dominates on QUIC (design.md).
        data = encode_frames(list(frames), self.max_frame_bytes)
        self.quic.send_stream_data(self._stream_id, data)
        self._protocol.transmit()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        self._fail(LinkClosed("link closed"))
        error = CLOSE_NORMAL if code == 1000 else CLOSE_PROTOCOL_ERROR
        self._protocol.close(error_code=error, reason_phrase=reason[:100])  # sent at once
        # Do not wait out QUIC's draining period (3 PTOs): when the peer is gone that
        # is seconds, and a session being replaced by the peer's new connection would
        # hold the new one up that long (measured in bench/: 2 s reconnects).
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._protocol.wait_closed(), CLOSE_GRACE)
        if self.on_close is not None:
            self.on_close()

    def abort(self, error_code: int, reason: str, cause: Exception | None = None) -> None:
        """Close the connection at once with an application error code."""
        self._fail(LinkBroken(f"QUIC connection with {self.peer} aborted: {reason}"))
        self._closing = True
        self.failure_cause = cause
        self._protocol.close(error_code=error_code, reason_phrase=reason[:100])

    # ------------------------------------------------------------ fed by the protocol

    def stream_data(self, event: StreamDataReceived) -> None:
        if self._failed is not None:
            return
        if self._stream_id is None:
            self._stream_id = event.stream_id
        elif event.stream_id != self._stream_id:
            self.abort(CLOSE_PROTOCOL_ERROR, "edgesync uses a single stream per connection")
            return
        try:
            frames = self._decoder.feed(event.data)
        except FrameTooLarge as exc:
            self.abort(CLOSE_FRAME_TOO_LARGE, str(exc), exc)
            return
        for frame in frames:
            self._frames.put_nowait(frame)
        if event.end_stream:
            self._fail(LinkBroken(f"QUIC peer {self.peer} ended its stream"))

    def terminated(self, event: ConnectionTerminated) -> None:
        reason = event.reason_phrase or "no reason"
        if event.error_code == CLOSE_UNAUTHORIZED:
            self._fail(IdentityRefused(f"QUIC peer {self.peer} refused this node: {reason}"))
            return
        if event.error_code == CLOSE_NORMAL and not self._closing:
            self._fail(PeerClosed(f"QUIC peer {self.peer} closed the connection"))
            return
        self._fail(
            LinkBroken(
                f"QUIC connection with {self.peer} closed (error 0x{event.error_code:x}: {reason})"
            )
        )

    def _fail(self, exc: LinkError) -> None:
        if self._failed is None:
            self._failed = exc
            self._frames.put_nowait(exc)


class QuicChannelProtocol(QuicConnectionProtocol):
    """aioquic protocol feeding a QuicChannel. `on_handshake(channel, resumed)` (server
    side) authenticates the peer when TLS completes, then starts the session or aborts."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        max_frame_bytes: int,
        on_handshake: Callable[[QuicChannel, bool], None] | None = None,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.channel = QuicChannel(self, max_frame_bytes)
        self._on_handshake = on_handshake

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            if self._on_handshake is not None:
                self._on_handshake(self.channel, event.session_resumed)
        elif isinstance(event, StreamDataReceived):
            self.channel.stream_data(event)
        elif isinstance(event, ConnectionTerminated):
            self.channel.terminated(event)
