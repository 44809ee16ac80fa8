"""An in-memory `Channel` pair: the third transport of style.md principle 4, for tests.

`channel_pair()` returns two connected ends (cloud side, edge side) that
behave like the real transports where the session driver can tell: frames
arrive in order; `send` waits while the peer's inbound queue is full
(backpressure bounded by `queue_size` frames); frames sent before a close
are still delivered, then the peer's `recv` raises `PeerClosed` (codes
1000/1001) or `LinkBroken` (any other code); after this side's own
`close()`, `recv` and `send` raise `LinkClosed`. `MemoryLink.break_link()`
fails both ends as a network failure would, and `black_hole()` silently
drops every frame from then on while both ends stay open (a dead link that
only keepalive can detect).

Error handling: only LinkClosed, PeerClosed and LinkBroken are raised, as
shared/transport.py requires of a transport.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from shared.errors import LinkBroken, LinkClosed, LinkError, PeerClosed
from shared.transport import Channel

CLEAN_CLOSE_CODES = frozenset({1000, 1001})
"""Close codes that the peer sees as a clean close (PeerClosed), as on WebSocket."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How one end closed its side of the link."""

    code: int
    reason: str


class _Pipe:
    """One direction of the link: a bounded FIFO of frames with its writer's close state."""

    def __init__(self, maxsize: int) -> None:
        self.frames: deque[bytes] = deque()
        self.maxsize = maxsize
        self.writer_closed: CloseInfo | None = None
        """Set when the sending end closed; the reader drains what is queued, then fails."""
        self.reader_closed = False
        """Set when the receiving end closed; the writer fails at once."""
        self.broken: LinkBroken | None = None
        self.black_hole = False
        self.changed = asyncio.Event()
        """Set on every change; waiters clear it and re-check their condition."""

    def notify(self) -> None:
        self.changed.set()


class MemoryChannel:
    """One end of an in-memory link; implements shared.transport.Channel."""

    transport = "memory"

    def __init__(self, inbound: _Pipe, outbound: _Pipe, peer: str, node: str) -> None:
        self._in = inbound
        self._out = outbound
        self.peer = peer
        self.node = node
        self.closed: CloseInfo | None = None
        """How this end closed, once it has (for tests' assertions)."""
        self.frames_sent = 0
        # Concurrent sends (the driver's reader answering a ping while its worker
        # flushes) must not interleave their frames when one waits for room.
        self._send_lock = asyncio.Lock()

    @property
    def peer_closed(self) -> CloseInfo | None:
        """How the other end closed, once it has."""
        return self._in.writer_closed

    @property
    def queued(self) -> int:
        """Frames waiting in this end's inbound queue."""
        return len(self._in.frames)

    async def recv(self) -> bytes:
        """The next frame; raises LinkClosed after our close, then PeerClosed/LinkBroken."""
        pipe = self._in
        while True:
            if self.closed is not None:
                raise LinkClosed("link closed")
            if pipe.broken is not None:
                raise pipe.broken
            if pipe.frames:
                frame = pipe.frames.popleft()
                pipe.notify()  # room for a writer waiting on a full queue
                return frame
            if pipe.writer_closed is not None:
                raise _peer_closed_error(self.peer, pipe.writer_closed)
            pipe.changed.clear()
            await pipe.changed.wait()

    async def send(self, frames: Sequence[bytes]) -> None:
        """Queue frames for the peer in order, waiting while its queue holds `queue_size`."""
        pipe = self._out
        async with self._send_lock:
            await self._send_in_order(pipe, frames)

    async def _send_in_order(self, pipe: _Pipe, frames: Sequence[bytes]) -> None:
        for frame in frames:
            while True:
                self._check_writable()
                if pipe.black_hole:
                    break
                if len(pipe.frames) < pipe.maxsize:
                    pipe.frames.append(bytes(frame))
                    pipe.notify()
                    break
                pipe.changed.clear()
                await pipe.changed.wait()
            self.frames_sent += 1

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close both directions from this end; the peer still gets what was queued. Idempotent."""
        if self.closed is not None:
            return
        self.closed = CloseInfo(code, reason)
        self._out.writer_closed = self.closed
        self._in.reader_closed = True
        self._in.frames.clear()
        self._out.notify()
        self._in.notify()

    def _check_writable(self) -> None:
        if self.closed is not None:
            raise LinkClosed("link closed")
        pipe = self._out
        if pipe.broken is not None:
            raise pipe.broken
        if pipe.reader_closed:
            peer_close = self._in.writer_closed or CloseInfo(1006, "")
            raise _peer_closed_error(self.peer, peer_close)


def _peer_closed_error(peer: str, info: CloseInfo) -> LinkError:
    detail = f"code {info.code}{', ' + info.reason if info.reason else ''}"
    if info.code in CLEAN_CLOSE_CODES:
        return PeerClosed(f"peer {peer} closed the link: {detail}")
    return LinkBroken(f"peer {peer} closed the link: {detail}")


class MemoryLink:
    """Both ends of an in-memory link, plus the faults a network can inject."""

    def __init__(self, node: str, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        up, down = _Pipe(queue_size), _Pipe(queue_size)
        self.cloud = MemoryChannel(inbound=up, outbound=down, peer="memory:edge", node=node)
        """The cloud's end: `node` is the edge's authenticated name, as from its certificate."""
        self.edge = MemoryChannel(inbound=down, outbound=up, peer="memory:cloud", node="")
        """The edge's end: `node` is "" as on the real client transports."""
        self._pipes = (up, down)

    def break_link(self, reason: str = "network unreachable") -> None:
        """Fail both ends at once (reset, cable pulled): every later recv/send raises LinkBroken."""
        for pipe in self._pipes:
            if pipe.broken is None:
                pipe.broken = LinkBroken(f"in-memory link broken: {reason}")
            pipe.frames.clear()
            pipe.notify()

    def black_hole(self) -> None:
        """Drop every frame from now on, both ways, keeping both ends open (a silent dead link)."""
        for pipe in self._pipes:
            pipe.black_hole = True
            pipe.frames.clear()
            pipe.notify()


def channel_pair(node: str = "edge-1", queue_size: int = 64) -> MemoryLink:
    """A connected in-memory link; use `.cloud` and `.edge` as the two Channels.

    `queue_size` bounds each direction's queue in frames (a sender waits when it is full).
    """
    return MemoryLink(node, queue_size)


def _is_a_channel(channel: MemoryChannel) -> Channel:
    """Never called: mypy checks here that MemoryChannel implements the Channel protocol."""
    return channel
