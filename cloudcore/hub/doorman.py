"""The door of every TLS port: a connection costs a few hundred bytes until its client speaks.

asyncio's TLS layer takes a 256 KiB read buffer per connection at `start_tls`
(and `create_server(ssl=...)` does so at accept), so a scan of idle sockets
costs the cloud ~190 MB per 1,000 that glibc does not give back. A `Doorman`
accepts the TCP connection with reading paused and no task, watches a
duplicate of its descriptor, and only peeks at the first byte; once a TLS
ClientHello is there it hands the transport to its `Gate`, which starts TLS.
A silent client is closed after the gate's `handshake_timeout`, a client that
does not speak TLS at once, and beyond `max_pending` unauthenticated
connections a new one is closed on accept (counted and logged within the
refusal log's budget). The WebSocket hub and the HTTPS API both stand behind
one.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable
from typing import Any, Protocol

from cloudcore.hub.refusals import RefusalLog
from cloudcore.hub.tls import HeapTrimmer

TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of every TLS ClientHello (record type: handshake)."""


class Gate(Protocol):
    """What a doorman answers to: the port's bounds, its refusal log, and who comes next."""

    name: str
    """Shown in refusal log lines: WebSocket, API."""
    refusals: RefusalLog
    handshake_timeout: float
    max_pending: int
    pending: int
    """Connections not yet authenticated: at the door, or in the TLS handshake."""
    doormen: dict[Doorman, None]
    """The connections waiting for their ClientHello, oldest first."""

    def admit(self, transport: asyncio.Transport, peer: str) -> None:
        """The client sent a ClientHello: start TLS. The connection still counts as
        pending; the gate calls `pending -= 1` when its handshake ends."""


class Doorman(asyncio.Protocol):
    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._transport: asyncio.Transport | None = None
        self._dup: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self.peer = "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # not one byte before TLS owns the socket
        self._transport = transport
        addr = transport.get_extra_info("peername")
        self.peer = f"{addr[0]}:{addr[1]}" if addr else "unknown"
        gate = self._gate
        if gate.pending >= gate.max_pending and not self._evict_the_oldest_silent():
            self._refuse(
                "too_many_handshakes",
                f"{gate.pending} connections are already in their TLS handshake "
                "(max_pending_handshakes); a flood? closed at once",
            )
            return
        gate.pending += 1
        self._counted = True
        raw = transport.get_extra_info("socket")
        loop = asyncio.get_running_loop()
        if raw is None:  # not a socket transport (never with create_server): go on at once
            self._admit()
            return
        self._dup = socket.socket(fileno=os.dup(raw.fileno()))
        loop.add_reader(self._dup.fileno(), self._readable)
        self._timer = loop.call_later(gate.handshake_timeout, self._idle)
        gate.doormen[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._uncount()

    def _readable(self) -> None:
        assert self._dup is not None
        try:
            first = self._dup.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return  # spurious wake-up
        except OSError:
            first = b""
        self._release()
        if not first:
            self._refuse("closed_before_tls", "connection closed before the TLS handshake")
        elif first[0] != TLS_HANDSHAKE_RECORD:
            hint = " (plain HTTP?)" if first in b"GPHDOC" else ""
            self._refuse(
                "not_tls", f"the client does not speak TLS: first byte 0x{first[0]:02x}{hint}"
            )
        else:
            self._admit()

    def _evict_the_oldest_silent(self) -> bool:
        """Make room at a full door by closing the connection that has waited longest
        without a word: a client that means it sends its ClientHello at once, so silent
        sockets cannot lock real edges out by filling the door."""
        oldest = next(iter(self._gate.doormen), None)
        if oldest is None:
            return False
        oldest._release()
        oldest._refuse(
            "evicted_silent",
            "closed to make room: the oldest of max_pending_handshakes connections that "
            "never sent a ClientHello (a scan or a flood?)",
        )
        return True

    def _admit(self) -> None:
        assert self._transport is not None
        self._counted = False  # the gate counts it from here until its handshake ends
        self._gate.admit(self._transport, self.peer)

    def _idle(self) -> None:
        self._timer = None
        self._release()
        timeout = self._gate.handshake_timeout
        self._refuse("handshake_timeout", f"no TLS ClientHello within {timeout:g}s (idle socket)")

    def _refuse(self, reason: str, message: str) -> None:
        self._gate.refusals.refuse(self._gate.name, self.peer, reason, message)
        self._uncount()
        if self._transport is not None:
            self._transport.abort()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dup is not None:
            asyncio.get_running_loop().remove_reader(self._dup.fileno())
            self._dup.close()
            self._dup = None
        self._gate.doormen.pop(self, None)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._gate.pending -= 1

    def close(self) -> None:
        """Server shutdown: drop the connection."""
        self._release()
        self._uncount()
        if self._transport is not None:
            self._transport.abort()


class DoorServer:
    """A TLS port behind a Doorman: what the WebSocket hub and the API listener share.

    Subclasses set `name` and implement `admit` (start TLS and serve the connection).
    """

    name = "TLS"

    def __init__(self, refusals: RefusalLog, handshake_timeout: float, max_pending: int) -> None:
        self.refusals = refusals
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        """Connections allowed to be unauthenticated at once (waiting for or in TLS)."""
        self.pending = 0
        self.doormen: dict[Doorman, None] = {}
        self.trimmer = HeapTrimmer()
        """Gives TLS buffers back to the OS after bursts of connections (glibc)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def admit(self, transport: asyncio.Transport, peer: str) -> None:
        raise NotImplementedError

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Doorman(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.trimmer.stop()
        for doorman in list(self.doormen):
            doorman.close()
        for task in list(self._tasks):
            task.cancel()
