"""The one driver shape for a sans-I/O `Session` over a `Channel` (style.md, principle 4).

Two tasks per connection:
- the reader feeds each frame to the session and reacts at once to what
  needs no storage (answering pings, noting acks), via `handle_events`;
- the worker does everything that touches storage (`work`: apply what
  arrived, persist cursors, pump what is due) and sleeps until woken or
  until the session's next deadline (pings, liveness).
cloudcore's NodeSession and edgecore's link connection are the two subclasses.
"""

from __future__ import annotations

import asyncio

from shared.aio import run_together
from shared.clock import Clock
from shared.errors import LinkError
from shared.protocol.session import Session
from shared.transport import Channel


class SessionDriver:
    def __init__(self, session: Session, channel: Channel, clock: Clock, name: str) -> None:
        self.session = session
        self.channel = channel
        self.clock = clock
        self.name = name
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ for subclasses

    def handle_events(self) -> None:
        """Consume `session.events_received()`; must not block."""
        raise NotImplementedError

    async def work(self) -> None:
        """One pass of storage work; called after every wake-up and timer."""
        raise NotImplementedError

    def link_lost(self, exc: LinkError) -> None:
        """The channel failed (logged by the subclass)."""

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


async def _wait_for(task: asyncio.Task[None]) -> None:
    await task
