"""Every session state, transition and window/cursor rule, as tables (docs/protocol.md §5, §6.2).

Read a transition row as: in STATE, on TRIGGER, the session moves to NEXT.
Anything not in the table is a protocol violation (a RemoteProtocolError if
the peer caused it, a LocalProtocolError if our own code did).

The window and cursor rules (what may be sent given the window, cumulative
acks, strictly increasing cursors, duplicates) are `Rule` rows checked by
small pure functions below, in the order the rows are listed; `Session`
only applies the verdict. docs/protocol.md §5.1 is drawn from these tables
(shared/protocol/statedoc.py), and a test fails when it drifts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from shared.protocol.messages import DOWNSTREAM_RELIABLE, UPSTREAM_RELIABLE, Op


class Role(str, enum.Enum):
    CLOUD = "cloud"
    EDGE = "edge"


class State(str, enum.Enum):
    AWAIT_HELLO = "await_hello"
    """Cloud: connection up, waiting for the edge's hello."""
    HELLO_RECEIVED = "hello_received"
    """Cloud: hello in hand, the application decides (accept or reject)."""
    HELLO_SENT = "hello_sent"
    """Edge: hello sent, waiting for welcome."""
    OPEN = "open"
    """Both: reliable messages, acks and pings flow."""
    CLOSED = "closed"
    """Both: nothing more is sent or accepted."""


class Trigger(str, enum.Enum):
    RECV_HELLO = "recv_hello"
    ACCEPT = "accept"
    RECV_WELCOME = "recv_welcome"
    CLOSE = "close"


TRIGGER_TEXT: dict[Trigger, str] = {
    Trigger.RECV_HELLO: "receive `hello` (valid, common version)",
    Trigger.ACCEPT: "the application accepts (sends `welcome`)",
    Trigger.RECV_WELCOME: "receive `welcome` (valid)",
    Trigger.CLOSE: "close: a fatal `error` sent or received, a timeout, a violation, a reject",
}
"""What fires each trigger, in words (for the generated docs)."""

INITIAL: dict[Role, State] = {Role.CLOUD: State.AWAIT_HELLO, Role.EDGE: State.HELLO_SENT}

ROLE_STATES: dict[Role, tuple[State, ...]] = {
    Role.CLOUD: (State.AWAIT_HELLO, State.HELLO_RECEIVED, State.OPEN, State.CLOSED),
    Role.EDGE: (State.HELLO_SENT, State.OPEN, State.CLOSED),
}
"""The states each role can be in."""

TRANSITIONS: dict[tuple[Role, State, Trigger], State] = {
    (Role.CLOUD, State.AWAIT_HELLO, Trigger.RECV_HELLO): State.HELLO_RECEIVED,
    (Role.CLOUD, State.HELLO_RECEIVED, Trigger.ACCEPT): State.OPEN,
    (Role.EDGE, State.HELLO_SENT, Trigger.RECV_WELCOME): State.OPEN,
    # Closing is allowed from every live state, on either side.
    **{
        (role, state, Trigger.CLOSE): State.CLOSED
        for role in Role
        for state in ROLE_STATES[role]
        if state is not State.CLOSED
    },
}

# Operations each side may receive in each state; the rest are violations.
_ALWAYS = frozenset({"ping", "pong", "error"})
RECEIVABLE: dict[tuple[Role, State], frozenset[str]] = {
    (Role.CLOUD, State.AWAIT_HELLO): frozenset({"hello", "error"}),
    (Role.CLOUD, State.HELLO_RECEIVED): _ALWAYS,
    (Role.CLOUD, State.OPEN): _ALWAYS | {"report", "result", "ack"},
    (Role.EDGE, State.HELLO_SENT): _ALWAYS | {"welcome"},
    (Role.EDGE, State.OPEN): _ALWAYS | {"apply", "delete", "chunk", "ack"},
}


# ------------------------------------------------------------------ streams

CursorField = Literal["rv", "seq"]


@dataclass(frozen=True, slots=True)
class Stream:
    """What one role sends reliably, and which envelope field carries which cursor."""

    sends: frozenset[Op]
    """Reliable ops this role sends (and the peer receives)."""
    send_cursor: CursorField
    """The field of this role's reliable messages, and of the acks it receives."""
    receive_cursor: CursorField
    """The field of the peer's reliable messages, and of the acks this role sends."""


STREAMS: dict[Role, Stream] = {
    Role.CLOUD: Stream(sends=DOWNSTREAM_RELIABLE, send_cursor="rv", receive_cursor="seq"),
    Role.EDGE: Stream(sends=UPSTREAM_RELIABLE, send_cursor="seq", receive_cursor="rv"),
}


# ------------------------------------------------------------------ window and cursor rules


class Outcome(str, enum.Enum):
    """What the session does with a verdict."""

    PROCEED = "proceed"
    """Do it."""
    IGNORE = "ignore"
    """Harmless: do nothing, send nothing."""
    REFUSE = "refuse"
    """Our application broke the rule: raise LocalProtocolError, send nothing."""
    CLOSE = "close"
    """The peer broke the rule: close the session with `bad_message` (RemoteProtocolError)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the rules: for `action`, `when` it holds, the session does `outcome`."""

    action: str
    when: str
    outcome: Outcome
    message: str = ""
    """The error's text for REFUSE / CLOSE: a str.format template over the checker's values
    (role, op, state, field, cursor, last)."""

    def explain(self, **values: Any) -> str:
        return self.message.format(**values)


_P, _I, _R, _C = Outcome.PROCEED, Outcome.IGNORE, Outcome.REFUSE, Outcome.CLOSE

SEND_NOT_RELIABLE = Rule(
    "send",
    "the op is not reliable in this role's direction",
    _R,
    "{role} cannot send {op} reliably",
)
SEND_NOT_OPEN = Rule("send", "the session is not open", _R, "cannot send {op}: session is {state}")
SEND_WINDOW_FULL = Rule(
    "send",
    "`window` messages are in flight (sent, not yet acked)",
    _R,
    "send window is full; wait for AckReceived",
)
SEND_NOT_AFTER = Rule(
    "send",
    "cursor ≤ the last cursor sent (at first: the peer's announced one)",
    _R,
    "cursor {cursor} does not follow {last}",
)
SEND_OK = Rule("send", "otherwise: sent, and in flight until acked", _P)

RECEIVE_NO_CURSOR = Rule(
    "receive reliable", "no cursor in this direction's field", _C, "{op} without '{field}'"
)
RECEIVE_NO_RES = Rule("receive reliable", "no `res`", _C, "{op} without 'res'")
RECEIVE_RESEND = Rule(
    "receive reliable",
    "cursor ≤ the last cursor received (a resend, or below the cursor announced in the "
    "handshake): skipped, never applied twice; acked again by its own cursor once durable",
    _I,
)
RECEIVE_OK = Rule("receive reliable", "otherwise: `MessageReceived`; the cursor advances", _P)

PEER_ACK_NO_CURSOR = Rule(
    "receive ack", "no cursor in this role's send field", _C, "ack without a cursor"
)
PEER_ACK_BEYOND = Rule(
    "receive ack",
    "cursor > the last cursor sent",
    _C,
    "ack of {cursor}, beyond the last sent {last}",
)
PEER_ACK_STALE = Rule("receive ack", "cursor ≤ the last ack received (duplicate or stale)", _I)
PEER_ACK_OK = Rule(
    "receive ack",
    "otherwise (cumulative): every message in flight ≤ cursor is freed; `AckReceived`",
    _P,
)

LOCAL_ACK_NOT_OPEN = Rule("send ack", "the session is not open", _I)
LOCAL_ACK_BEYOND = Rule(
    "send ack",
    "cursor > the last cursor received",
    _R,
    "cannot ack {cursor}: only received up to {last}",
)
LOCAL_ACK_STALE = Rule(
    "send ack", "cursor ≤ the last ack sent (at first: the announced cursor)", _I
)
LOCAL_ACK_OK = Rule("send ack", "otherwise: an `ack` for everything up to cursor", _P)

MOVE_IN_FLIGHT = Rule(
    "move the send cursor",
    "messages are in flight",
    _R,
    "cannot move the send cursor with messages in flight",
)
MOVE_OK = Rule(
    "move the send cursor",
    "otherwise: the stream resumes after the new cursor (the peer's announced "
    "cursor; 0 on a resync)",
    _P,
)

RULES: tuple[Rule, ...] = (
    SEND_NOT_RELIABLE,
    SEND_NOT_OPEN,
    SEND_WINDOW_FULL,
    SEND_NOT_AFTER,
    SEND_OK,
    RECEIVE_NO_CURSOR,
    RECEIVE_NO_RES,
    RECEIVE_RESEND,
    RECEIVE_OK,
    PEER_ACK_NO_CURSOR,
    PEER_ACK_BEYOND,
    PEER_ACK_STALE,
    PEER_ACK_OK,
    LOCAL_ACK_NOT_OPEN,
    LOCAL_ACK_BEYOND,
    LOCAL_ACK_STALE,
    LOCAL_ACK_OK,
    MOVE_IN_FLIGHT,
    MOVE_OK,
)
"""Every rule, grouped by action; within an action the first row that holds decides."""


def send_capacity(state: State, window: int, in_flight: int) -> int:
    """How many more reliable messages may be sent before acks arrive (0 unless open)."""
    return window - in_flight if state is State.OPEN else 0


def check_send(
    role: Role, state: State, op: Op, cursor: int, last_sent: int, in_flight: int, window: int
) -> Rule:
    """The verdict on sending one reliable message (SEND_* rows)."""
    if op not in STREAMS[role].sends:
        return SEND_NOT_RELIABLE
    if state is not State.OPEN:
        return SEND_NOT_OPEN
    if in_flight >= window:
        return SEND_WINDOW_FULL
    if cursor <= last_sent:
        return SEND_NOT_AFTER
    return SEND_OK


def check_receive(cursor: int | None, has_res: bool, last_received: int) -> Rule:
    """The verdict on a reliable message from the peer (RECEIVE_* rows)."""
    if cursor is None:
        return RECEIVE_NO_CURSOR
    if not has_res:
        return RECEIVE_NO_RES
    if cursor <= last_received:
        return RECEIVE_RESEND
    return RECEIVE_OK


def check_peer_ack(cursor: int | None, last_sent: int, last_acked: int) -> Rule:
    """The verdict on an ack from the peer (PEER_ACK_* rows)."""
    if cursor is None:
        return PEER_ACK_NO_CURSOR
    if cursor > last_sent:
        return PEER_ACK_BEYOND
    if cursor <= last_acked:
        return PEER_ACK_STALE
    return PEER_ACK_OK


def check_local_ack(state: State, cursor: int, last_received: int, last_acked: int) -> Rule:
    """The verdict on our application acking up to `cursor` (LOCAL_ACK_* rows)."""
    if state is not State.OPEN:
        return LOCAL_ACK_NOT_OPEN
    if cursor > last_received:
        return LOCAL_ACK_BEYOND
    if cursor <= last_acked:
        return LOCAL_ACK_STALE
    return LOCAL_ACK_OK


def check_move_send_cursor(in_flight: int) -> Rule:
    """The verdict on resetting where the outgoing stream resumes (MOVE_* rows)."""
    return MOVE_IN_FLIGHT if in_flight else MOVE_OK


if __name__ == "__main__":  # python -m shared.protocol.states: same as shared.protocol.statedoc
    from shared.protocol.statedoc import main

    main()
