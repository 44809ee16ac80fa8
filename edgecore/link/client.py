"""The edge's link to the cloud: reconnect forever, resume from cursors.

Per connection: hello with `applied_rv` → welcome with `received_seq` →
drop acked outbox rows → then concurrently apply desired state (one
transaction per batch, then a cumulative ack) and drain the outbox in a
window (docs/protocol.md §6). Between connections: full-jitter backoff;
fatal errors (certificate refused, version mismatch) are logged with what
to do, and retried slowly rather than exiting, because a Pi in a field has
no operator watching its exit code.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from edgecore import sysinfo
from edgecore.config import EdgeConfig
from edgecore.link.quic import TicketCache, connect_quic
from edgecore.link.websocket import connect_websocket
from edgecore.store import EdgeStore
from shared.aio.dbthread import DbThread
from shared.aio.driver import SessionDriver
from shared.backoff import backoff, is_retryable
from shared.clock import Clock
from shared.errors import AuthError, EdgesyncError, LinkBroken, LinkError, UnsupportedVersion
from shared.faults import crash_point
from shared.protocol.events import (
    AckReceived,
    ErrorReceived,
    Event,
    MessageReceived,
    SessionClosed,
    WelcomeReceived,
)
from shared.protocol.messages import Envelope
from shared.protocol.session import Session
from shared.protocol.states import Role
from shared.transport import Channel

log = logging.getLogger(__name__)

SOFTWARE = "edgecore/0.1.0"
FATAL_RETRY_DELAY = 60.0
Connector = Callable[[], Awaitable[Channel]]


class Link:
    def __init__(
        self,
        config: EdgeConfig,
        store: EdgeStore,
        db: DbThread,
        clock: Clock,
        ssl_context: ssl.SSLContext,
        on_desired: Callable[[list[str]], None],
        heartbeat: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.store = store
        self.db = db
        self.clock = clock
        self.ssl_context = ssl_context
        self.on_desired = on_desired
        self.heartbeat = heartbeat
        self.connected = asyncio.Event()
        self.connects = 0
        self.fallbacks = 0
        self._quic_tickets = TicketCache()
        self._websocket_until = 0.0
        self._connection: _Connection | None = None
        self._stopping = False

    def outbox_changed(self) -> None:
        """New outbox rows exist: wake the live connection, if any."""
        if self._connection is not None:
            self._connection.wake(more_outbox=True)

    async def _connect(self) -> Channel:
        """Open a channel with the configured transport (docs/operations.md, "Transports")."""
        link, cloud = self.config.link, self.config.cloud
        mode = link.transport
        if mode == "auto" and not cloud.quic_url:
            mode = "websocket"
        if mode == "auto" and self.clock.monotonic() < self._websocket_until:
            mode = "websocket"
        if mode == "websocket":
            return await connect_websocket(
                cloud.websocket_url, self.ssl_context, link.connect_timeout, link.max_frame_bytes
            )
        timeout = link.quic_probe_timeout if mode == "auto" else link.connect_timeout
        d = self.config.data_path
        try:
            return await connect_quic(
                cloud.quic_url,
                d / "node.crt",
                d / "node.key",
                d / "ca.crt",
                timeout,
                link.max_frame_bytes,
                link.ping_interval * (link.missed_pings + 1),
                tickets=self._quic_tickets,
            )
        except LinkBroken as exc:
            if mode != "auto":
                raise
            self._websocket_until = self.clock.monotonic() + link.auto_remember
            log.warning(
                "QUIC unavailable (%s); using WebSocket for the next %.0fs", exc, link.auto_remember
            )
            self.fallbacks += 1
            return await connect_websocket(
                cloud.websocket_url, self.ssl_context, link.connect_timeout, link.max_frame_bytes
            )

    async def run(self) -> None:
        """Keep a session with the cloud until cancelled."""
        delays = backoff(self.config.link.backoff_policy())
        while not self._stopping:
            try:
                channel = await self._connect()
            except EdgesyncError as exc:
                await self._pause(exc, delays)
                continue
            connection = _Connection(self, channel)
            self._connection = connection
            try:
                opened = await connection.run()
            except EdgesyncError as exc:
                opened = connection.opened
                if is_retryable(exc):
                    log.warning("link error: %s", exc)
                else:
                    connection.fatal = exc
            finally:
                self._connection = None
                self.connected.clear()
                await channel.close(1000, "bye")
            if opened:
                delays = backoff(self.config.link.backoff_policy())  # healthy session: reset
            if connection.fatal is not None:
                await self._pause(connection.fatal, delays)
            else:
                await asyncio.sleep(next(delays))

    async def _pause(self, exc: Exception, delays: Any) -> None:
        if is_retryable(exc):
            delay = next(delays)
            log.info("cloud unreachable (%s); retrying in %.1fs", exc, delay)
        else:
            delay = FATAL_RETRY_DELAY
            log.error("cannot connect to the cloud: %s (retrying in %.0fs)", exc, delay)
        await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        if self._connection is not None:
            await self._connection.shut("edgecore is stopping")


class _Connection(SessionDriver):
    def __init__(self, link: Link, channel: Channel) -> None:
        clock = link.clock
        session = Session(
            Role.EDGE, link.config.link.session_config(), clock.monotonic(), clock.time_ms()
        )
        super().__init__(session, channel, clock, "link")
        self.link = link
        self.opened = False
        self.fatal: EdgesyncError | None = None
        self._more_outbox = True
        self._next_heartbeat = 0.0
        self._downstream: list[Envelope] = []
        self._acked_to_trim = 0
        self._acked_trimmed = 0
        self._hold_until_rv = 0

    def wake(self, more_outbox: bool = False) -> None:
        if more_outbox:
            self._more_outbox = True
        self._wake.set()

    async def shut(self, reason: str) -> None:
        self.session.close("closing", reason, self.link.clock.monotonic())
        await self.flush_quietly()
        self._wake.set()

    async def run(self) -> bool:
        link, session, clock = self.link, self.session, self.link.clock
        store_id, applied_rv = await link.db.run(link.store.identity)
        session.update_heartbeat(link.heartbeat())
        session.send_hello(
            applied_rv,
            {
                "software": SOFTWARE,
                "store_id": store_id,
                "labels": dict(link.config.labels),
                "capacity": sysinfo.capacity(),
            },
            clock.monotonic(),
        )
        await self.flush()
        welcome = await self._await_welcome()
        if welcome is None:
            return False
        if welcome.resync:
            log.warning(
                "the cloud cannot vouch for this node's desired state (re-joined, or its "
                "database is older): taking a full snapshot up to rv %d",
                welcome.snapshot_rv,
            )
            await link.db.run(link.store.reset_desired)
            self._hold_until_rv = welcome.snapshot_rv
            if not welcome.snapshot_rv:
                link.on_desired(["*"])  # the snapshot is empty: nothing should run
        await link.db.run(link.store.outbox_acked, welcome.received_seq)
        self._acked_trimmed = welcome.received_seq
        self.opened = True
        link.connects += 1
        link.connected.set()
        log.info(
            "connected to the cloud %s over %s%s (applied rv %d, cloud has seq %d)",
            self.channel.peer,
            self.channel.transport,
            " (resumed TLS session)" if getattr(self.channel, "resumed", False) else "",
            applied_rv,
            welcome.received_seq,
        )
        await self.run_loops()
        return True

    async def _await_welcome(self) -> WelcomeReceived | None:
        welcome = await self.handshake()
        return welcome if isinstance(welcome, WelcomeReceived) else None

    def handshake_event(self, event: Event) -> None:
        if isinstance(event, ErrorReceived):
            log.error("the cloud refused this node: %s: %s", event.code, event.reason)
        elif isinstance(event, SessionClosed):
            self._note_closed(event)

    def _note_closed(self, event: SessionClosed) -> None:
        # The fatal codes an operator must fix (docs/protocol.md §5). `forbidden` is never
        # fatal and a refused certificate is a transport refusal, not a session error.
        if event.code in ("unsupported_version", "unknown_node"):
            cls = UnsupportedVersion if event.code == "unsupported_version" else AuthError
            self.fatal = cls(f"{event.code}: {event.reason}")
        log.warning(
            "session closed%s: %s: %s",
            " by the cloud" if event.by_peer else "",
            event.code,
            event.reason,
        )

    def link_lost(self, exc: LinkError) -> None:
        log.warning("link lost: %s", exc)

    def handle_events(self) -> None:
        for event in self.session.events_received():
            if isinstance(event, MessageReceived):
                self._downstream.append(event.envelope)
                self._wake.set()
            elif isinstance(event, AckReceived):
                self._acked_to_trim = event.cursor
                self._wake.set()
            elif isinstance(event, ErrorReceived) and not event.fatal:
                log.warning(
                    "the cloud refused message %s: %s: %s", event.parent, event.code, event.reason
                )
            elif isinstance(event, SessionClosed):
                self._note_closed(event)

    async def work(self) -> None:
        link, now = self.link, self.clock.monotonic()
        if now >= self._next_heartbeat:
            self.session.update_heartbeat(link.heartbeat())
            self._next_heartbeat = now + link.config.link.ping_interval / 2
        await self._apply_downstream()
        if self._acked_to_trim > self._acked_trimmed:
            cursor = self._acked_to_trim
            await link.db.run(link.store.outbox_acked, cursor)
            self._acked_trimmed = cursor
        await self._pump_outbox()

    async def _apply_downstream(self) -> None:
        if not self._downstream:
            return
        batch, self._downstream = self._downstream, []
        link = self.link
        changed = await link.db.run(link.store.apply_batch, batch)
        crash_point("edge.after_apply_commit")
        top = max(env.rv or 0 for env in batch)
        self.session.ack(top, link.clock.monotonic())
        if self._hold_until_rv and top < self._hold_until_rv:
            return  # mid-snapshot: the scheduler sees the state only once it is whole
        if self._hold_until_rv:
            self._hold_until_rv = 0
            changed = changed or ["*"]
        if changed:
            link.on_desired(changed)

    async def _pump_outbox(self) -> None:
        session, link = self.session, self.link
        while self._more_outbox and session.send_capacity() > 0:
            want = session.send_capacity()
            rows = await link.db.run(link.store.outbox_after, session.last_sent, want)
            if len(rows) < want:
                self._more_outbox = False
            if session.closed:
                return
            now = link.clock.monotonic()
            for row in rows:
                session.send(row.op, row.res, row.seq, row.body, now)
            await self.flush()
            if rows:
                crash_point("edge.after_outbox_send")
