"""What the session tells its driver: past-tense, frozen events (docs/protocol.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.protocol.messages import Envelope


@dataclass(frozen=True, slots=True)
class Event:
    """Base of session events."""


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Cloud side: the edge introduced itself. Call `accept()` or `reject()` next."""

    version: int
    """The protocol version that will be used (highest in common)."""
    applied_rv: int
    """Highest desired-state `rv` the edge has durably applied: resend everything above it."""
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WelcomeReceived(Event):
    """Edge side: the cloud accepted the session; the session is open."""

    version: int
    received_seq: int
    """Highest outbox `seq` the cloud has durably applied: drop rows up to it, resend the rest."""
    body: dict[str, Any]
    resync: bool = False
    """The cloud cannot vouch for the edge's `applied_rv`: drop all desired state and take
    the full snapshot that follows (complete once `snapshot_rv` is applied)."""
    snapshot_rv: int = 0


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A reliable message (apply/delete/chunk downstream, report/result upstream).

    The application applies it durably, then calls `Session.ack(cursor)`;
    acks may be batched (cumulative).
    """

    envelope: Envelope

    @property
    def cursor(self) -> int:
        value = self.envelope.rv if self.envelope.rv is not None else self.envelope.seq
        assert value is not None  # guaranteed by the session's validation
        return value


@dataclass(frozen=True, slots=True)
class AckReceived(Event):
    """The peer durably applied every reliable message up to `cursor`; window space freed."""

    cursor: int


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """A heartbeat from the peer; `body` carries the edge's load metrics, if any."""

    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorReceived(Event):
    """The peer reported an error. If `fatal`, the session is now closed."""

    code: str
    reason: str
    parent: str | None
    fatal: bool


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    """The session ended; the driver closes the transport after flushing `data_to_send()`."""

    code: str
    reason: str
    by_peer: bool
