"""Drive two sans-I/O sessions against each other, with no sockets and a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.clock import FakeClock
from shared.ids import IdSource
from shared.protocol import codec
from shared.protocol.events import Event, HelloReceived, WelcomeReceived
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role, State

E = TypeVar("E", bound=Event)

_ids = itertools.count(1)


def transfer(src: Session, dst: Session, now: float) -> list[bytes]:
    """Deliver every frame `src` has queued to `dst`; returns the frames delivered."""
    frames = src.data_to_send()
    for frame in frames:
        dst.receive_frame(frame, now)
    return frames


def pump(a: Session, b: Session, now: float, max_rounds: int = 50) -> None:
    """Exchange frames both ways until neither side has anything left to send."""
    for _ in range(max_rounds):
        moved = transfer(a, b, now) + transfer(b, a, now)
        if not moved:
            return
    raise AssertionError("sessions kept talking to each other")


def sent_envelopes(session: Session) -> list[Envelope]:
    """Drain and decode what `session` wants to send (the frames are not delivered)."""
    return [codec.decode(frame, session.config.limits) for frame in session.data_to_send()]


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, kind)]


def raw_frame(
    op: Op | str,
    *,
    msg_id: str | None = None,
    ts: int = 1_732_400_000_000,
    res: str | None = None,
    rv: int | None = None,
    seq: int | None = None,
    parent: str | None = None,
    body: dict[str, Any] | None = None,
    v: int = 1,
) -> bytes:
    """A frame as a (possibly misbehaving) peer would send it, built with the real codec."""
    env = Envelope(
        op=Op(op),
        id=msg_id or f"raw-{next(_ids)}",
        ts=ts,
        res=res,
        rv=rv,
        seq=seq,
        parent=parent,
        body=body,
        v=v,
    )
    return codec.encode(env)


@dataclass
class Pair:
    """An edge and a cloud session sharing one fake clock."""

    clock: FakeClock
    edge: Session
    cloud: Session

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def edge_to_cloud(self) -> list[bytes]:
        return transfer(self.edge, self.cloud, self.now)

    def cloud_to_edge(self) -> list[bytes]:
        return transfer(self.cloud, self.edge, self.now)

    def pump(self) -> None:
        pump(self.edge, self.cloud, self.now)

    def tick(self) -> None:
        """Run both timers at the current time."""
        self.edge.handle_timer(self.now)
        self.cloud.handle_timer(self.now)

    def drain(self) -> tuple[list[Event], list[Event]]:
        """(edge events, cloud events) since the last drain."""
        return self.edge.events_received(), self.cloud.events_received()


def make_pair(
    edge_config: SessionConfig | None = None,
    cloud_config: SessionConfig | None = None,
    clock: FakeClock | None = None,
    *,
    edge_ids: IdSource | None = None,
    cloud_ids: IdSource | None = None,
) -> Pair:
    """Two fresh sessions; `*_ids` default to each session's own `ulid_source`."""
    clock = clock or FakeClock()
    now, wall = clock.monotonic(), clock.time_ms()
    edge = Session(Role.EDGE, edge_config or SessionConfig(), now, wall, ids=edge_ids)
    cloud = Session(Role.CLOUD, cloud_config or SessionConfig(), now, wall, ids=cloud_ids)
    return Pair(clock=clock, edge=edge, cloud=cloud)


def open_pair(
    applied_rv: int = 0,
    received_seq: int = 0,
    edge_config: SessionConfig | None = None,
    cloud_config: SessionConfig | None = None,
    clock: FakeClock | None = None,
    *,
    edge_ids: IdSource | None = None,
    cloud_ids: IdSource | None = None,
) -> Pair:
    """A pair that completed the handshake; handshake events are drained and checked."""
    pair = make_pair(edge_config, cloud_config, clock, edge_ids=edge_ids, cloud_ids=cloud_ids)
    pair.edge.send_hello(applied_rv, {"node": "edge-1"}, pair.now)
    pair.edge_to_cloud()
    hellos = of_type(pair.cloud.events_received(), HelloReceived)
    assert [h.applied_rv for h in hellos] == [applied_rv]
    pair.cloud.accept(received_seq, {}, pair.now)
    pair.cloud_to_edge()
    welcomes = of_type(pair.edge.events_received(), WelcomeReceived)
    assert [w.received_seq for w in welcomes] == [received_seq]
    assert pair.edge.state is State.OPEN and pair.cloud.state is State.OPEN
    return pair
