"""The sans-I/O sync session (docs/protocol.md §4-§6).

One `Session` per connection, on each side. Frames in (`receive_frame`),
frames out (`data_to_send`), events out (`events_received`), time in
(`handle_timer(now)`, `next_deadline()`). It imports no I/O library and
never reads a clock, so tests drive two sessions against each other with a
fake clock and no sockets.

Reliability lives above a single connection: cursors (`rv` downstream,
`seq` upstream) are persisted by the applications, exchanged in
hello/welcome, and acked cumulatively. Within a connection the session
enforces ordering (a cursor at or below the last one received is a resend:
skipped, and acked again once durable), a send window (at most `window`
unacked reliable messages in flight) and liveness (ping/pong).
The ordering and window rules themselves are rows in states.py; this
module keeps the counters and applies each verdict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from shared.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, UnsupportedVersion
from shared.ids import IdSource, ulid_source
from shared.protocol import codec
from shared.protocol.events import (
    AckReceived,
    ErrorReceived,
    Event,
    HelloReceived,
    MessageReceived,
    PingReceived,
    SessionClosed,
    WelcomeReceived,
)
from shared.protocol.messages import SUPPORTED_VERSIONS, Envelope, Op
from shared.protocol.states import (
    INITIAL,
    LOCAL_ACK_OK,
    MOVE_OK,
    PEER_ACK_OK,
    RECEIVABLE,
    RECEIVE_OK,
    RECEIVE_RESEND,
    SEND_OK,
    STREAMS,
    TRANSITIONS,
    Outcome,
    Role,
    Rule,
    State,
    Trigger,
    check_local_ack,
    check_move_send_cursor,
    check_peer_ack,
    check_receive,
    check_send,
    send_capacity,
)

TraceDirection = Literal["send", "recv", "event"]
TraceHook = Callable[[TraceDirection, Envelope | Event], None]
"""Called with ("send", envelope) for each message queued for the peer, ("recv", envelope)
for each frame from the peer that decoded (before it is checked), and ("event", event) for
each event as `events_received()` hands it over. It must not raise and must not call back
into the session; drivers use it to log at DEBUG (the session itself logs nothing)."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    window: int = 256
    """Most reliable messages in flight (sent, not yet acked) per direction."""
    ping_interval: float = 15.0
    """Seconds between pings from each side."""
    missed_pings: int = 3
    """The link is dead after `missed_pings * ping_interval` seconds with nothing received."""
    handshake_timeout: float = 10.0
    """Seconds allowed from connection to an open session."""
    limits: codec.Limits = field(default_factory=codec.Limits)
    """Frame and parsing limits."""
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    """Protocol versions this side speaks."""

    @property
    def dead_after(self) -> float:
        return self.ping_interval * self.missed_pings


class Session:
    """A sync session for one connection.

    Error handling: the session never raises for what the peer sends; a
    violation is answered with an `error` frame, the session closes and a
    `SessionClosed` event says why (the typed exception is in `close_error`).
    Misuse by the local application raises LocalProtocolError.
    """

    def __init__(
        self,
        role: Role,
        config: SessionConfig,
        now: float,
        wall_ms: int,
        *,
        ids: IdSource | None = None,
        trace: TraceHook | None = None,
    ) -> None:
        """`ids` makes each outgoing message's id from its wall time (default: a `ulid_source`
        of this session's own); pass a seeded one to make every frame reproducible.
        `trace` (also settable later as `.trace`) sees every message and event; None, the
        default, costs one comparison per frame."""
        self.role = role
        self.trace = trace
        self.config = config
        self._stream = STREAMS[role]
        self.state = INITIAL[role]
        self.version: int | None = None
        self.close_error: ProtocolError | None = None
        self.rtt: float | None = None
        """Round-trip time of the latest answered ping, seconds."""
        self._wall_offset_ms = wall_ms - int(now * 1000)
        self._new_id: IdSource = ids if ids is not None else ulid_source()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._started = now
        self._last_received = now
        self._next_ping = now + config.ping_interval
        self._pings_sent: dict[str, float] = {}
        self._heartbeat: dict[str, Any] = {}
        # Reliable streams: what we send and what we receive.
        self._in_flight: deque[int] = deque()
        self._last_sent = 0
        self._last_acked_by_peer = 0
        self._last_received_cursor = 0
        self._last_acked_by_us = 0
        self.duplicates_skipped = 0
        """Reliable messages skipped as resends (cursor at or below the last received)."""

    # ---------------------------------------------------------------- handshake

    def send_hello(self, applied_rv: int, body: dict[str, Any], now: float) -> None:
        """Edge: open the session, announcing the highest `rv` it has durably applied."""
        self._require(Role.EDGE, State.HELLO_SENT, "send_hello")
        self._last_received_cursor = self._last_acked_by_us = applied_rv
        hello = {**body, "versions": list(self.config.versions), "applied_rv": applied_rv}
        self._emit(Op.HELLO, now, body=hello)

    def accept(self, received_seq: int, body: dict[str, Any], now: float) -> None:
        """Cloud: accept the hello, announcing the highest outbox `seq` it has applied."""
        self._transition(Trigger.ACCEPT)
        self._last_received_cursor = self._last_acked_by_us = received_seq
        welcome = {**body, "version": self.version, "received_seq": received_seq}
        self._emit(Op.WELCOME, now, body=welcome)

    def reject(self, code: str, reason: str, now: float) -> None:
        """Cloud: refuse the hello (unknown node, revoked, ...). The session closes."""
        self.close(code, reason, now)

    # ---------------------------------------------------------------- sending

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def send_capacity(self) -> int:
        """How many more reliable messages `send` accepts before acks arrive."""
        return send_capacity(self.state, self.config.window, len(self._in_flight))

    @property
    def last_sent(self) -> int:
        """Highest cursor sent in this session (starts at the peer's announced cursor)."""
        return self._last_sent

    def start_sending_after(self, cursor: int) -> None:
        """Set where this session's outgoing stream resumes (the peer's announced cursor)."""
        rule = check_move_send_cursor(len(self._in_flight))
        if rule is not MOVE_OK:
            raise _violation(rule)
        self._last_sent = self._last_acked_by_peer = cursor

    def send(
        self,
        op: Op,
        res: str,
        cursor: int,
        body: dict[str, Any] | None,
        now: float,
    ) -> str:
        """Send one reliable message; returns its id.

        Raises LocalProtocolError if the session is not open, the window is
        full, the op is not reliable for this side, or `cursor` does not
        strictly increase.
        """
        last = self._last_sent
        rule = check_send(
            self.role, self.state, op, cursor, last, len(self._in_flight), self.config.window
        )
        if rule is not SEND_OK:
            raise _violation(
                rule,
                role=self.role.value,
                op=op.value,
                state=self.state.value,
                cursor=cursor,
                last=last,
            )
        if self._stream.send_cursor == "rv":
            msg_id = self._emit(op, now, res=res, rv=cursor, body=body)
        else:
            msg_id = self._emit(op, now, res=res, seq=cursor, body=body)
        self._in_flight.append(cursor)
        self._last_sent = cursor
        return msg_id

    def ack(self, cursor: int, now: float) -> None:
        """Acknowledge every received reliable message up to `cursor` (after applying them)."""
        last = self._last_received_cursor
        rule = check_local_ack(self.state, cursor, last, self._last_acked_by_us)
        if rule is not LOCAL_ACK_OK:
            if rule.outcome is not Outcome.IGNORE:
                raise _violation(rule, cursor=cursor, last=last)
            return
        self._last_acked_by_us = cursor
        if self._stream.receive_cursor == "rv":
            self._emit(Op.ACK, now, rv=cursor)
        else:
            self._emit(Op.ACK, now, seq=cursor)

    def send_error(self, code: str, reason: str, parent: str | None, now: float) -> None:
        """Report a non-fatal error about one message (e.g. forbidden); the session stays open."""
        if self.state is not State.CLOSED:
            body = {"code": code, "reason": _clip(reason)}
            self._emit(Op.ERROR, now, parent=parent, body=body)

    def update_heartbeat(self, body: dict[str, Any]) -> None:
        """Set what the next pings carry (the edge's load metrics)."""
        self._heartbeat = dict(body)

    def close(self, code: str, reason: str, now: float, error: ProtocolError | None = None) -> None:
        """Close the session, telling the peer why. Idempotent."""
        if self.state is State.CLOSED:
            return
        reason = _clip(reason)
        self._emit(Op.ERROR, now, body={"code": code, "reason": reason, "fatal": True})
        self._transition(Trigger.CLOSE)
        self.close_error = error
        self._events.append(SessionClosed(code=code, reason=reason, by_peer=False))

    # ---------------------------------------------------------------- receiving

    def receive_frame(self, frame: bytes | str, now: float) -> None:
        """Feed one frame from the transport; see `events_received()` afterwards."""
        if self.state is State.CLOSED:
            return
        self._last_received = now
        try:
            env = codec.decode(frame, self.config.limits)
            if self.trace is not None:
                self.trace("recv", env)
            self._dispatch(env, now)
        except RemoteProtocolError as exc:
            self.close(exc.code, str(exc), now, error=exc)

    def _dispatch(self, env: Envelope, now: float) -> None:
        op = env.op
        if op.value not in RECEIVABLE[(self.role, self.state)]:
            raise RemoteProtocolError(
                f"{op.value} is not allowed from the {self._peer_name} in state {self.state.value}"
            )
        if op is Op.PING:
            self._emit(Op.PONG, now, parent=env.id)
            self._events.append(PingReceived(body=env.body or {}))
        elif op is Op.PONG:
            sent = self._pings_sent.pop(env.parent or "", None)
            if sent is not None:
                self.rtt = now - sent
        elif op is Op.ERROR:
            self._on_error(env)
        elif op is Op.ACK:
            self._on_ack(env)
        elif op is Op.HELLO:
            self._on_hello(env, now)
        elif op is Op.WELCOME:
            self._on_welcome(env)
        else:
            self._on_reliable(env, now)

    def _on_hello(self, env: Envelope, now: float) -> None:
        body = env.body or {}
        versions = body.get("versions")
        applied = body.get("applied_rv")
        if not isinstance(versions, list) or not all(_is_int(v) for v in versions):
            raise RemoteProtocolError("hello.versions must be a list of integers")
        if not _is_cursor(applied):
            raise RemoteProtocolError("hello.applied_rv must be an integer in [0, 2^63)")
        common = set(versions) & set(self.config.versions)
        if not common:
            raise UnsupportedVersion(
                f"edge speaks protocol versions {versions[:8]}, cloud speaks "
                f"{list(self.config.versions)}; upgrade the older side"
            )
        self.version = max(common)
        self._transition(Trigger.RECV_HELLO)
        self.start_sending_after(applied)
        self._events.append(HelloReceived(version=self.version, applied_rv=applied, body=body))

    def _on_welcome(self, env: Envelope) -> None:
        body = env.body or {}
        version = body.get("version")
        received = body.get("received_seq")
        if not _is_int(version) or version not in self.config.versions:
            raise UnsupportedVersion(
                f"cloud chose protocol version {str(version)[:16]!r}, which was not offered"
            )
        if not _is_cursor(received):
            raise RemoteProtocolError("welcome.received_seq must be an integer in [0, 2^63)")
        resync = body.get("resync") is True
        snapshot_rv = body.get("snapshot_rv", 0)
        if not _is_cursor(snapshot_rv):
            raise RemoteProtocolError("welcome.snapshot_rv must be an integer in [0, 2^63)")
        self.version = version
        self._transition(Trigger.RECV_WELCOME)
        self.start_sending_after(received)
        if resync:  # the cloud restarts its stream from the beginning
            self._last_received_cursor = self._last_acked_by_us = 0
        self._events.append(
            WelcomeReceived(
                version=version,
                received_seq=received,
                body=body,
                resync=resync,
                snapshot_rv=snapshot_rv,
            )
        )

    def _on_reliable(self, env: Envelope, now: float) -> None:
        field = self._stream.receive_cursor
        cursor: int | None = env.rv if field == "rv" else env.seq
        last = self._last_received_cursor
        rule = check_receive(cursor, env.res is not None, last)
        if rule is RECEIVE_RESEND:
            # Skipped, never applied twice (docs/protocol.md §6.2, §6.4). If it is already
            # durable (at or below our last ack, or the cursor announced at the handshake)
            # it is acked again, by its own cursor, which the sender has sent and so may be
            # acked; otherwise the ack that follows the pending commit covers it.
            assert cursor is not None
            self.duplicates_skipped += 1
            if 0 < cursor <= self._last_acked_by_us:
                if field == "rv":
                    self._emit(Op.ACK, now, rv=cursor)
                else:
                    self._emit(Op.ACK, now, seq=cursor)
            return
        if rule is not RECEIVE_OK:
            raise _violation(rule, op=env.op.value, field=field, cursor=cursor, last=last)
        assert cursor is not None  # RECEIVE_NO_CURSOR closed the session otherwise
        self._last_received_cursor = cursor
        self._events.append(MessageReceived(envelope=env))

    def _on_ack(self, env: Envelope) -> None:
        cursor: int | None = env.rv if self._stream.send_cursor == "rv" else env.seq
        last = self._last_sent
        rule = check_peer_ack(cursor, last, self._last_acked_by_peer)
        if rule is not PEER_ACK_OK:
            if rule.outcome is not Outcome.IGNORE:
                raise _violation(rule, cursor=cursor, last=last)
            return  # duplicate or stale ack: harmless
        assert cursor is not None
        self._last_acked_by_peer = cursor
        while self._in_flight and self._in_flight[0] <= cursor:
            self._in_flight.popleft()
        self._events.append(AckReceived(cursor=cursor))

    def _on_error(self, env: Envelope) -> None:
        body = env.body or {}
        code = str(body.get("code", "error"))[:64]
        reason = str(body.get("reason", ""))[:1024]
        fatal = body.get("fatal") is True
        self._events.append(ErrorReceived(code=code, reason=reason, parent=env.parent, fatal=fatal))
        if fatal:
            self._transition(Trigger.CLOSE)
            self._events.append(SessionClosed(code=code, reason=reason, by_peer=True))

    # ---------------------------------------------------------------- time

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next be called (monotonic seconds), or None if closed."""
        if self.state is State.CLOSED:
            return None
        if self.state is not State.OPEN:
            return min(self._started + self.config.handshake_timeout, self._next_ping)
        return min(self._next_ping, self._last_received + self.config.dead_after)

    def handle_timer(self, now: float) -> None:
        """Send due pings; close the session if the peer went silent or the handshake stalled."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.OPEN and now >= self._started + self.config.handshake_timeout:
            self.close("timeout", f"no handshake within {self.config.handshake_timeout:g}s", now)
            return
        if now >= self._last_received + self.config.dead_after:
            self.close(
                "timeout",
                f"nothing received from the {self._peer_name} for {now - self._last_received:.1f}s",
                now,
            )
            return
        if now >= self._next_ping:
            if self.state is State.OPEN:
                ping_id = self._emit(Op.PING, now, body=self._heartbeat or None)
                self._pings_sent = {ping_id: now}  # only the latest matters for rtt
            self._next_ping = now + self.config.ping_interval

    # ---------------------------------------------------------------- output

    def data_to_send(self) -> list[bytes]:
        """Frames to write to the transport, in order. Clears the buffer."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """Events since the last call, in order. Clears the buffer."""
        events, self._events = self._events, []
        if self.trace is not None:
            for event in events:
                self.trace("event", event)
        return events

    # ---------------------------------------------------------------- internals

    @property
    def _peer_name(self) -> str:
        return "edge" if self.role is Role.CLOUD else "cloud"

    def _require(self, role: Role, state: State, what: str) -> None:
        if self.role is not role or self.state is not state:
            raise LocalProtocolError(f"{what} not allowed for {self.role.value} in {self.state}")

    def _transition(self, trigger: Trigger) -> None:
        nxt = TRANSITIONS.get((self.role, self.state, trigger))
        if nxt is None:
            raise LocalProtocolError(
                f"{trigger.value} is not allowed for {self.role.value} in {self.state.value}"
            )
        self.state = nxt

    def _emit(
        self,
        op: Op,
        now: float,
        *,
        res: str | None = None,
        rv: int | None = None,
        seq: int | None = None,
        parent: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> str:
        wall = int(now * 1000) + self._wall_offset_ms
        msg_id = self._new_id(wall)
        env = Envelope(op=op, id=msg_id, ts=wall, res=res, rv=rv, seq=seq, parent=parent, body=body)
        self._out.append(codec.encode(env, self.config.limits))
        if self.trace is not None:
            self.trace("send", env)
        return msg_id


MAX_REASON_CHARS = 512


def _violation(rule: Rule, **values: Any) -> ProtocolError:
    """The exception for a REFUSE (our bug) or CLOSE (the peer's violation) verdict."""
    if rule.outcome is Outcome.CLOSE:
        return RemoteProtocolError(rule.explain(**values))
    if rule.outcome is Outcome.REFUSE:
        return LocalProtocolError(rule.explain(**values))
    return LocalProtocolError(f"{rule.action}: verdict {rule.outcome.value!r} not handled here")


def _clip(reason: str) -> str:
    """Error reasons may quote peer data: bound them so an error frame always fits."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_cursor(value: object) -> TypeGuard[int]:
    return _is_int(value) and 0 <= value < 1 << 63
