"""Every session state and transition in one table (docs/protocol.md §5).

Read a row as: in STATE, on TRIGGER, the session moves to NEXT. Anything not
in the table is a protocol violation (a RemoteProtocolError if the peer
caused it, a LocalProtocolError if our own code did).
"""

from __future__ import annotations

import enum


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
    SEND_HELLO = "send_hello"
    RECV_HELLO = "recv_hello"
    ACCEPT = "accept"
    RECV_WELCOME = "recv_welcome"
    CLOSE = "close"


INITIAL: dict[Role, State] = {Role.CLOUD: State.AWAIT_HELLO, Role.EDGE: State.HELLO_SENT}

TRANSITIONS: dict[tuple[Role, State, Trigger], State] = {
    (Role.CLOUD, State.AWAIT_HELLO, Trigger.RECV_HELLO): State.HELLO_RECEIVED,
    (Role.CLOUD, State.HELLO_RECEIVED, Trigger.ACCEPT): State.OPEN,
    (Role.EDGE, State.HELLO_SENT, Trigger.RECV_WELCOME): State.OPEN,
    # Closing is allowed from every live state, on either side.
    **{
        (role, state, Trigger.CLOSE): State.CLOSED
        for role in Role
        for state in State
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
