"""The one driver shape for a sans-I/O `Session` over a `Channel` (style.md, principle 4).

Two tasks per connection:
- the reader feeds each frame to the session and reacts at once to what
  needs no storage (answering pings, noting acks), via `handle_events`;
- the worker does everything that touches storage (`work`: apply what
  arrived, persist cursors, pump what is due) and sleeps until woken or
  until the session's next deadline (pings, liveness).
cloudcore's NodeSession and edgecore's link connection are the two subclasses.

With the `shared.aio.driver` logger at DEBUG when a driver is made, it sets the
session's trace hook and logs every message in and out and every event,
tagged with a per-connection id (`conn_id`). Bodies are left out (task
bodies carry env values) and peer-chosen text is repr-escaped; at any other
level the hook stays None and costs nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from shared.aio.structured import run_together
from shared.clock import Clock
from shared.errors import LinkError
from shared.protocol.events import (
    AckReceived,
    ErrorReceived,
    Event,
    HelloReceived,
    MessageReceived,
    SessionClosed,
    WelcomeReceived,
)
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, TraceDirection
from shared.protocol.states import State
from shared.transport import Channel

log = logging.getLogger(__name__)

_HANDSHAKE_STATES = (State.AWAIT_HELLO, State.HELLO_SENT)

_connection_numbers = itertools.count(1)


class SessionDriver:
    def __init__(self, session: Session, channel: Channel, clock: Clock, name: str) -> None:
        self.session = session
        self.channel = channel
        self.clock = clock
        self.name = name
        self.conn_id = f"{name}#{next(_connection_numbers)}"
        """Tags this connection's DEBUG trace lines (unique within the process)."""
        self._wake = asyncio.Event()
        if session.trace is None and log.isEnabledFor(logging.DEBUG):
            session.trace = self._trace

    # ------------------------------------------------------------ for subclasses

    def handle_events(self) -> None:
        """Consume `session.events_received()`; must not block."""
        raise NotImplementedError

    async def work(self) -> None:
        """One pass of storage work; called after every wake-up and timer."""
        raise NotImplementedError

    def link_lost(self, exc: LinkError) -> None:
        """The channel failed (logged by the subclass)."""

    def handshake_event(self, event: Event) -> None:
        """An event of the handshake other than the peer's hello/welcome (an error, the
        close); the subclass logs or records it."""

    # ------------------------------------------------------------ the handshake

    async def handshake(self) -> HelloReceived | WelcomeReceived | None:
        """Read frames until the session leaves its handshake state; returns the peer's
        hello (cloud role) or welcome (edge role), or None if the session closed instead
        (a refusal, a violation, the handshake timeout on the session's own deadline).

        Every other event goes to `handshake_event`. A broken link raises LinkError:
        what it means differs (a cloud forgets the connection, an edge reconnects).
        """
        session, clock = self.session, self.clock
        while session.state in _HANDSHAKE_STATES:
            deadline = session.next_deadline()
            timeout = max(0.0, (deadline or clock.monotonic()) - clock.monotonic())
            try:
                frame = await asyncio.wait_for(self.channel.recv(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                session.handle_timer(clock.monotonic())
                continue
            session.receive_frame(frame, clock.monotonic())
        opened: HelloReceived | WelcomeReceived | None = None
        for event in session.events_received():
            if opened is None and isinstance(event, (HelloReceived, WelcomeReceived)):
                opened = event
            else:
                self.handshake_event(event)
        if opened is None:
            await self.flush_quietly()  # the error that closed it, if any
        return opened

    # ------------------------------------------------------------ machinery

    def wake(self) -> None:
        self._wake.set()

    async def run_loops(self) -> None:
        """Run reader and worker until the session closes or the link fails."""
        reader = asyncio.ensure_future(self._read_loop())
        await run_together(
            _wait_for(reader),
            self._work_loop(reader),
            names=[f"read:{self.name}", f"work:{self.name}"],
        )

    async def _read_loop(self) -> None:
        session = self.session
        while not session.closed:
            try:
                frame = await self.channel.recv()
            except LinkError as exc:
                self.link_lost(exc)
                session.close("link_lost", str(exc), self.clock.monotonic())
                session.events_received()
                break
            session.receive_frame(frame, self.clock.monotonic())
            self.handle_events()
            await self.flush_quietly()
        self._wake.set()

    async def _work_loop(self, reader: asyncio.Task[None]) -> None:
        session, clock = self.session, self.clock
        try:
            while not session.closed:
                self._wake.clear()
                session.handle_timer(clock.monotonic())
                self.handle_events()
                await self.work()
                await self.flush()
                if self._wake.is_set() or session.closed:
                    continue
                # Sleep until woken or the session's next deadline. A timer that sets
                # the event costs far less than asyncio.wait_for's task per sleep.
                deadline = session.next_deadline()
                timer = None
                if deadline is not None:
                    delay = max(0.0, deadline - clock.monotonic())
                    timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except LinkError as exc:
            self.link_lost(exc)
        finally:
            reader.cancel()

    async def flush(self) -> None:
        """Write what the session has queued."""
        frames = self.session.data_to_send()
        if frames:
            await self.channel.send(frames)

    async def flush_quietly(self) -> None:
        """Flush; a broken link shows up in the reader, so ignore it here."""
        try:
            await self.flush()
        except LinkError:
            pass

    def _trace(self, direction: TraceDirection, item: Envelope | Event) -> None:
        log.debug("%s %s %s", self.conn_id, direction, describe(item))


def describe(item: Envelope | Event) -> str:
    """One log-safe line for a traced message or event: no bodies, peer text escaped."""
    if isinstance(item, Envelope):
        parts = [item.op.value, f"id={item.id!r}"]
        if item.parent is not None:
            parts.append(f"parent={item.parent!r}")
        if item.res is not None:
            parts.append(f"res={item.res}")  # the codec allows only [A-Za-z0-9._-/]
        if item.rv is not None:
            parts.append(f"rv={item.rv}")
        if item.seq is not None:
            parts.append(f"seq={item.seq}")
        if item.op is Op.ERROR and item.body is not None:
            parts.append(f"code={str(item.body.get('code'))[:64]!r}")
            parts.append(f"fatal={item.body.get('fatal') is True}")
        return " ".join(parts)
    name = type(item).__name__
    if isinstance(item, MessageReceived):
        return f"{name} {item.envelope.op.value} res={item.envelope.res} cursor={item.cursor}"
    if isinstance(item, AckReceived):
        return f"{name} cursor={item.cursor}"
    if isinstance(item, HelloReceived):
        return f"{name} version={item.version} applied_rv={item.applied_rv}"
    if isinstance(item, WelcomeReceived):
        return (
            f"{name} version={item.version} received_seq={item.received_seq} resync={item.resync}"
        )
    if isinstance(item, (ErrorReceived, SessionClosed)):
        return f"{name} code={item.code!r} reason={item.reason!r}"
    return name


async def _wait_for(task: asyncio.Task[None]) -> None:
    await task
