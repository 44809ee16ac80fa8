"""Cloud side of the sync protocol: one `NodeSession` per connected edge.

It drives the sans-I/O `Session` over a `Channel` (any transport) and the
store: desired state goes down from the node's cursor in a window, acks
advance the cursor, reports and results come up and are applied
idempotently by (node, seq) before they are acked (docs/protocol.md §6).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudcore.store import CloudStore, DesiredRow
from shared.aio.dbthread import DbThread
from shared.aio.driver import SessionDriver
from shared.clock import Clock
from shared.errors import LinkClosed, LinkError, PeerClosed, StoreError
from shared.faults import crash_point
from shared.protocol.events import (
    AckReceived,
    ErrorReceived,
    Event,
    HelloReceived,
    MessageReceived,
    PingReceived,
    SessionClosed,
)
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role
from shared.text import (
    SOFTWARE_MAX_CHARS,
    bound_labels,
    bound_report,
    bound_string,
    escape_text,
)
from shared.transport import Channel

log = logging.getLogger(__name__)

PUMP_BATCH = 256
QUEUE_LIMIT = 1024
"""Rows a caught-up session holds in memory before it falls back to reading the store."""
PROGRESS_DELAY = 0.02
NOTE_MAX_CHARS = 300
"""Longest node-supplied text (an error reason, a close reason) quoted in one log line."""


def _quote(text: object) -> str:
    """Node-supplied text as it may appear in a cloud log line: escaped, one line, bounded."""
    return escape_text(text, NOTE_MAX_CHARS)


@dataclass
class HubStats:
    """Counters for metrics and the API."""

    sessions_opened: int = 0
    sessions_replaced: int = 0
    downstream_sent: int = 0
    acks_received: int = 0
    upstream_applied: int = 0
    upstream_refused: int = 0
    protocol_errors: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    """Upstream messages refused (forbidden, ...), by verdict."""
    connections_refused: dict[str, int] = field(default_factory=dict)
    """Edge connections refused before a session (no_certificate, expired, foreign_ca,
    handshake_timeout, too_many_handshakes, ...), both transports, by reason."""
    reports_trimmed: int = 0
    """hello and heartbeat bodies cut to the report limits (shared/text.py)."""


class Hub:
    """The live sessions, at most one per node; transports hand every channel to `serve`."""

    def __init__(
        self,
        store: CloudStore,
        db: DbThread,
        clock: Clock,
        session_config: SessionConfig,
        result_history: int,
    ) -> None:
        self.store = store
        self.db = db
        self.clock = clock
        self.session_config = session_config
        self.result_history = result_history
        self.sessions: dict[str, NodeSession] = {}
        self.stats = HubStats()
        self.on_labels_changed: Callable[[str], None] | None = None
        """Called when a node reports new labels (schedules a reconcile for it)."""
        self._acked: dict[str, int] = {}
        self._heartbeats: dict[str, dict[str, Any]] = {}
        self._progress = asyncio.Event()
        self._progress_task: asyncio.Task[None] | None = None

    def notify(self, written: dict[str, list[DesiredRow]]) -> None:
        """New desired-state rows were committed: hand them to their nodes' sessions."""
        for node, rows in written.items():
            session = self.sessions.get(node)
            if session is not None:
                session.offer(rows)

    # Acks and heartbeats from every session are persisted together, in one transaction
    # per flush: per-node transactions cost ~1 ms each and capped dispatch (bench/).

    def note_acked(self, node: str, rv: int) -> None:
        self._acked[node] = max(rv, self._acked.get(node, 0))
        self._progress.set()

    def note_heartbeat(self, node: str, body: dict[str, Any]) -> None:
        self._heartbeats[node] = body
        self._progress.set()

    def forget_progress(self, node: str) -> None:
        self._heartbeats.pop(node, None)

    def start(self) -> None:
        self._progress_task = asyncio.ensure_future(self._persist_progress())

    async def stop(self) -> None:
        if self._progress_task is not None:
            self._progress_task.cancel()
            await asyncio.gather(self._progress_task, return_exceptions=True)
        await self._flush_progress()

    async def _persist_progress(self) -> None:
        while True:
            await self._progress.wait()
            await asyncio.sleep(PROGRESS_DELAY)  # let a burst of acks coalesce
            try:
                await self._flush_progress()
            except StoreError as exc:
                log.error("cannot record acks and heartbeats (will retry): %s", exc)
                await asyncio.sleep(1.0)

    async def _flush_progress(self) -> None:
        self._progress.clear()
        acked, self._acked = self._acked, {}
        heartbeats, self._heartbeats = self._heartbeats, {}
        if acked or heartbeats:
            try:
                await self.db.run(
                    self.store.record_progress, acked, heartbeats, self.clock.time_ms()
                )
            except StoreError:
                for node, rv in acked.items():  # keep them for the next attempt
                    self._acked[node] = max(rv, self._acked.get(node, 0))
                raise

    async def serve(self, channel: Channel) -> None:
        """Run one edge connection to its end. Never raises for what the peer does."""
        session = NodeSession(self, channel)
        try:
            await session.run()
        except StoreError as exc:
            log.error(
                "node %s (%s): database failure, closing its session: %s",
                channel.node,
                channel.peer,
                exc,
            )
        finally:
            await channel.close(1011 if session.failed else 1000, session.close_reason[:100])

    async def close_all(self, reason: str) -> None:
        """Close every session at once (one by one, 1,000 QUIC closes add up)."""
        await asyncio.gather(
            *(s.shut(reason) for s in list(self.sessions.values())), return_exceptions=True
        )


class NodeSession(SessionDriver):
    def __init__(self, hub: Hub, channel: Channel) -> None:
        clock = hub.clock
        session = Session(Role.CLOUD, hub.session_config, clock.monotonic(), clock.time_ms())
        super().__init__(session, channel, clock, channel.node)
        self.hub = hub
        self.node = channel.node
        self.close_reason = "closed"
        self.failed = False
        self._upstream: list[Envelope] = []
        self._done = asyncio.Event()
        # Desired state to send. Until the session has read the store up to its
        # end it is not `caught_up`; after that, new rows arrive in memory from
        # the scheduler (in commit order) and no store read is needed.
        self._caught_up = False
        self._queued: deque[DesiredRow] = deque()
        self._offers = 0  # bumped by every offer: a read that raced one is not trusted
        self._heartbeat_trimmed = False

    def offer(self, rows: list[DesiredRow]) -> None:
        """Rows just committed for this node, in rv order."""
        self._offers += 1
        if self._caught_up and len(self._queued) + len(rows) <= QUEUE_LIMIT:
            self._queued.extend(rows)
        else:
            self._caught_up = False
            self._queued.clear()
        self._wake.set()

    async def shut(self, reason: str) -> None:
        """Close this session from outside (replaced by a newer one, shutdown) and wait for it."""
        self.session.close("closing", reason, self.hub.clock.monotonic())
        self.close_reason = reason
        self._wake.set()
        await self.flush_quietly()
        await self.channel.close(1000, reason[:100])
        await self._done.wait()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            if await self._handshake():
                self.hub.stats.sessions_opened += 1
                try:
                    await self.run_loops()
                except StoreError:
                    self.failed = True
                    raise
        finally:
            if self.hub.sessions.get(self.node) is self:
                del self.hub.sessions[self.node]
                self.hub.forget_progress(self.node)
                await self.hub.db.run(
                    self.hub.store.node_disconnected,
                    self.node,
                    self.close_reason,
                    self.hub.clock.time_ms(),
                )
            self._done.set()

    async def _handshake(self) -> bool:
        try:
            hello = await self.handshake()
        except LinkError as exc:
            self.close_reason = _quote(exc)
            return False
        return isinstance(hello, HelloReceived) and await self._accept(hello)

    def handshake_event(self, event: Event) -> None:
        if isinstance(event, SessionClosed):
            self._log_closed(event)

    async def _accept(self, hello: HelloReceived) -> bool:
        hub, clock, body = self.hub, self.hub.clock, hello.body
        if not await hub.db.run(hub.store.node_exists, self.node):
            log.warning(
                "node %s (%s) refused: not registered (deleted?); re-join it",
                self.node,
                self.channel.peer,
            )
            self.session.reject(
                "unknown_node",
                f"node {self.node} is not registered; join it again with a new token",
                clock.monotonic(),
            )
            self.close_reason = "unknown node"
            await self.flush_quietly()
            return False
        old = hub.sessions.get(self.node)
        if old is not None:
            log.info(
                "node %s: new connection from %s replaces the one from %s",
                self.node,
                self.channel.peer,
                old.channel.peer,
            )
            hub.stats.sessions_replaced += 1
            hub.sessions[self.node] = self
            await old.shut(f"replaced by a new connection from {self.channel.peer}")
        hub.sessions[self.node] = self
        # What a node says about itself is bounded before it is stored and served
        # (docs/protocol.md, "Limits on what a node reports").
        labels, label_notes = bound_labels(body.get("labels"))
        capacity, capacity_notes = bound_report(body.get("capacity"))
        software, software_cut = bound_string(body.get("software", ""), SOFTWARE_MAX_CHARS)
        notes = [*label_notes, *(f"capacity: {n}" for n in capacity_notes)]
        if software_cut:
            notes.append(f"software: cut to {SOFTWARE_MAX_CHARS} chars")
        if notes:
            hub.stats.reports_trimmed += 1
            self._trim_warning("hello", notes)
        start = await hub.db.run(
            hub.store.node_connected,
            self.node,
            # Opaque, but logged by the store when it changes: escaped (deterministically,
            # so the same id compares equal at every hello) and cut to the column.
            store_id=escape_text(body.get("store_id", ""), 64)[:64],
            reported_labels=labels,
            capacity=capacity,
            software=software,
            applied_rv=hello.applied_rv,
            transport=self.channel.transport,
            peer=self.channel.peer,
            now_ms=clock.time_ms(),
        )
        cfg = hub.session_config
        if start.resync:
            self.session.start_sending_after(0)
        self.session.accept(
            start.received_seq,
            {
                "resync": start.resync,
                "snapshot_rv": start.snapshot_rv,
                "node": self.node,
                "server_time": clock.time_ms(),
                "config": {
                    "ping_interval": cfg.ping_interval,
                    "missed_pings": cfg.missed_pings,
                    "window": cfg.window,
                    "max_frame_bytes": cfg.limits.max_frame_bytes,
                },
            },
            clock.monotonic(),
        )
        log.info(
            "node %s connected from %s over %s%s (applied rv %d, received seq %d)",
            self.node,
            self.channel.peer,
            self.channel.transport,
            " (resumed TLS session)" if getattr(self.channel, "resumed", False) else "",
            hello.applied_rv,
            start.received_seq,
        )
        await self.flush()
        if start.labels_changed and hub.on_labels_changed is not None:
            hub.on_labels_changed(self.node)
        return True

    # ------------------------------------------------------------ loops

    def link_lost(self, exc: LinkError) -> None:
        self.close_reason = _quote(exc)
        clean = isinstance(exc, (PeerClosed, LinkClosed))
        level = logging.INFO if clean else logging.WARNING
        log.log(level, "node %s (%s): link lost: %s", self.node, self.channel.peer, _quote(exc))

    async def work(self) -> None:
        await self._apply_upstream()
        await self._pump()

    def handle_events(self) -> None:
        for event in self.session.events_received():
            if isinstance(event, MessageReceived):
                self._upstream.append(event.envelope)
                self._wake.set()
            elif isinstance(event, AckReceived):
                self.hub.note_acked(self.node, event.cursor)
                self.hub.stats.acks_received += 1
                if self._queued or not self._caught_up:
                    self._wake.set()  # window space, and something may be waiting for it
            elif isinstance(event, PingReceived):
                heartbeat, notes = bound_report(event.body)
                if notes:
                    self.hub.stats.reports_trimmed += 1
                    if not self._heartbeat_trimmed:  # once per session, not per heartbeat
                        self._heartbeat_trimmed = True
                        self._trim_warning("heartbeat", notes)
                self.hub.note_heartbeat(self.node, heartbeat)
            elif isinstance(event, ErrorReceived) and not event.fatal:
                log.warning(
                    "node %s reported an error about message %s: %s: %s",
                    self.node,
                    _quote(event.parent),
                    _quote(event.code),
                    _quote(event.reason),
                )
            elif isinstance(event, SessionClosed):
                self._log_closed(event)

    def _trim_warning(self, what: str, notes: list[str]) -> None:
        log.warning(
            "node %s (%s): %s trimmed to the report limits: %s",
            self.node,
            self.channel.peer,
            what,
            _quote("; ".join(notes[:5]) + (f"; {len(notes) - 5} more" if len(notes) > 5 else "")),
        )

    def _log_closed(self, event: SessionClosed) -> None:
        self.close_reason = f"{_quote(event.code)}: {_quote(event.reason)}"
        if event.by_peer:
            log.info(
                "node %s (%s) closed its session: %s",
                self.node,
                self.channel.peer,
                self.close_reason,
            )
        elif event.code in ("timeout", "closing", "link_lost"):
            log.warning(
                "node %s (%s): session closed: %s", self.node, self.channel.peer, self.close_reason
            )
        else:
            self.hub.stats.protocol_errors += 1
            log.warning(
                "node %s (%s): protocol violation, session closed: %s",
                self.node,
                self.channel.peer,
                self.close_reason,
            )

    async def _apply_upstream(self) -> None:
        if not self._upstream:
            return
        batch, self._upstream = self._upstream, []
        hub = self.hub
        outcomes = await hub.db.run(
            hub.store.record_upstream, self.node, batch, hub.clock.time_ms(), hub.result_history
        )
        crash_point("cloud.after_upstream_commit")
        now = hub.clock.monotonic()
        for outcome in outcomes:
            env = outcome.envelope
            if outcome.verdict in ("applied", "duplicate"):
                hub.stats.upstream_applied += 1
            elif outcome.verdict == "stale":
                log.info(
                    "node %s: %s for %s recorded as stale: %s",
                    self.node,
                    env.op.value,
                    _quote(env.res),
                    _quote(outcome.detail),
                )
            else:
                hub.stats.upstream_refused += 1
                hub.stats.refused_by_reason[outcome.verdict] = (
                    hub.stats.refused_by_reason.get(outcome.verdict, 0) + 1
                )
                log.warning(
                    "node %s (%s): refused %s for %s (seq %s): %s",
                    self.node,
                    self.channel.peer,
                    env.op.value,
                    _quote(env.res),
                    env.seq,
                    _quote(outcome.detail),
                )
                self.session.send_error(outcome.verdict, outcome.detail, env.id, now)
        top = max(env.seq or 0 for env in batch)
        self.session.ack(top, now)

    async def _pump(self) -> None:
        session, hub = self.session, self.hub
        while session.send_capacity() > 0 and not session.closed:
            room = min(session.send_capacity(), PUMP_BATCH)
            if self._queued:
                rows = [self._queued.popleft() for _ in range(min(room, len(self._queued)))]
                rows = [r for r in rows if r.rv > session.last_sent]
            elif self._caught_up:
                return
            else:
                offers = self._offers
                rows = await hub.db.run(hub.store.desired_after, self.node, session.last_sent, room)
                if session.closed:
                    return
                if len(rows) < room and offers == self._offers:
                    self._caught_up = True
            now = hub.clock.monotonic()
            for row in rows:
                op = Op.APPLY if row.op == "apply" else Op.DELETE
                session.send(op, row.res, row.rv, row.body, now)
            hub.stats.downstream_sent += len(rows)
            await self.flush()
            if rows:
                crash_point("cloud.after_desired_sent")
