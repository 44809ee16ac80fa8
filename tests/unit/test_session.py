"""The sans-I/O session: two sessions wired back to back under a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from shared.backoff import is_retryable
from shared.clock import FakeClock
from shared.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    RemoteProtocolError,
    UnknownOperation,
    UnsupportedVersion,
)
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
from shared.protocol.messages import Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role, State
from tests.helpers.session_pair import (
    Pair,
    make_pair,
    of_type,
    open_pair,
    raw_frame,
    sent_envelopes,
    transfer,
)

RES = "task/default/blink"
TIMED = SessionConfig(ping_interval=4.0, missed_pings=3, handshake_timeout=8.0)
"""Timer values that are exact in binary floating point."""


def closed_by_us(
    session: Session, events: list[Event], peer: Session | None = None, now: float = 0.0
) -> SessionClosed:
    """Check `session` closed itself exactly once and told the peer with a fatal error.

    With `peer`, the frames are delivered to it and it must report the error and close.
    """
    assert session.state is State.CLOSED
    closes = of_type(events, SessionClosed)
    assert len(closes) == 1 and events[-1] is closes[0]
    closed = closes[0]
    assert closed.by_peer is False
    frames = session.data_to_send()
    last = codec.decode(frames[-1], session.config.limits)
    assert last.op is Op.ERROR and last.body is not None
    assert last.body == {"code": closed.code, "reason": closed.reason, "fatal": True}
    if peer is not None:
        for frame in frames:
            peer.receive_frame(frame, now)
        assert peer.events_received()[-2:] == [
            ErrorReceived(code=closed.code, reason=closed.reason, parent=None, fatal=True),
            SessionClosed(code=closed.code, reason=closed.reason, by_peer=True),
        ]
        assert peer.state is State.CLOSED
    return closed


# ------------------------------------------------------------------ handshake


def test_handshake_exchanges_cursors_and_opens_both_sides() -> None:
    pair = make_pair()
    pair.edge.send_hello(17, {"node": "pi-1"}, pair.now)
    assert pair.edge.state is State.HELLO_SENT and not pair.edge.is_open

    [hello_frame] = pair.edge_to_cloud()
    hello = codec.decode(hello_frame)
    assert hello.op is Op.HELLO and hello.body is not None
    assert hello.body["applied_rv"] == 17 and hello.body["node"] == "pi-1"
    assert hello.body["versions"] == list(pair.edge.config.versions)

    [event] = pair.cloud.events_received()
    assert isinstance(event, HelloReceived)
    assert event.applied_rv == 17 and event.body["node"] == "pi-1"
    assert event.version == max(pair.cloud.config.versions)
    assert pair.cloud.state is State.HELLO_RECEIVED
    assert pair.cloud.last_sent == 17  # downstream resumes after the edge's applied_rv
    assert pair.cloud.send_capacity() == 0

    pair.cloud.accept(9, {"cloud": "c1"}, pair.now)
    assert pair.cloud.state is State.OPEN
    pair.cloud_to_edge()
    [welcome] = pair.edge.events_received()
    assert isinstance(welcome, WelcomeReceived)
    assert welcome.received_seq == 9 and welcome.body["cloud"] == "c1"
    assert welcome.version == event.version == pair.edge.version == pair.cloud.version
    assert pair.edge.state is State.OPEN and pair.edge.is_open and pair.cloud.is_open
    assert pair.edge.last_sent == 9  # upstream resumes after the cloud's received_seq
    assert pair.edge.send_capacity() == pair.edge.config.window
    assert pair.cloud.send_capacity() == pair.cloud.config.window


def test_emitted_timestamps_follow_the_wall_clock() -> None:
    clock = FakeClock(start=50.0, wall_ms=1_700_000_000_000)
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED, clock=clock)
    clock.advance(TIMED.ping_interval)
    pair.tick()
    [ping] = sent_envelopes(pair.edge)
    assert ping.op is Op.PING and ping.ts == clock.time_ms()


def test_handshake_calls_in_the_wrong_role_or_state_are_local_errors() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError):
        pair.cloud.send_hello(0, {}, pair.now)
    with pytest.raises(LocalProtocolError):
        pair.cloud.accept(0, {}, pair.now)  # no hello yet
    with pytest.raises(LocalProtocolError):
        pair.edge.accept(0, {}, pair.now)
    assert pair.cloud.data_to_send() == [] and pair.edge.data_to_send() == []


def test_reject_closes_both_sides() -> None:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge_to_cloud()
    pair.cloud.events_received()
    pair.cloud.reject("revoked", "certificate revoked", pair.now)
    closed = closed_by_us(pair.cloud, pair.cloud.events_received(), pair.edge, pair.now)
    assert closed.code == "revoked" and closed.reason == "certificate revoked"
    assert pair.cloud.close_error is None
    pair.cloud.close("x", "y", pair.now)  # idempotent
    assert pair.cloud.events_received() == [] and pair.cloud.data_to_send() == []


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("edge_versions", "cloud_versions"),
    [((1,), (1, 2)), ((1, 2), (1,)), ((1, 2), (1, 2)), ((1, 2, 3), (2, 3, 4)), ((3, 1), (1, 3))],
)
def test_version_negotiation_picks_the_highest_common(
    edge_versions: tuple[int, ...], cloud_versions: tuple[int, ...]
) -> None:
    expected = max(set(edge_versions) & set(cloud_versions))
    pair = open_pair(
        edge_config=SessionConfig(versions=edge_versions),
        cloud_config=SessionConfig(versions=cloud_versions),
    )
    assert pair.edge.version == pair.cloud.version == expected


def test_no_common_version_closes_both_sides() -> None:
    pair = make_pair(
        edge_config=SessionConfig(versions=(2, 3)), cloud_config=SessionConfig(versions=(1,))
    )
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge_to_cloud()
    cloud_events = pair.cloud.events_received()
    assert of_type(cloud_events, HelloReceived) == []
    closed = closed_by_us(pair.cloud, cloud_events, pair.edge, pair.now)
    assert closed.code == "unsupported_version"
    assert isinstance(pair.cloud.close_error, UnsupportedVersion)
    assert not is_retryable(pair.cloud.close_error)
    assert pair.edge.state is State.CLOSED and pair.cloud.state is State.CLOSED
    assert pair.edge.version is None and pair.cloud.version is None


def test_welcome_choosing_a_version_not_offered_closes_the_edge() -> None:
    pair = make_pair(edge_config=SessionConfig(versions=(1,)))
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge.data_to_send()
    pair.edge.receive_frame(raw_frame(Op.WELCOME, body={"version": 2, "received_seq": 0}), pair.now)
    closed = closed_by_us(pair.edge, pair.edge.events_received())
    assert closed.code == "unsupported_version"
    assert isinstance(pair.edge.close_error, UnsupportedVersion)


@pytest.mark.parametrize(
    "body",
    [
        {"applied_rv": 0},
        {"versions": 1, "applied_rv": 0},
        {"versions": [1, True], "applied_rv": 0},
        {"versions": ["1"], "applied_rv": 0},
        {"versions": [1]},
        {"versions": [1], "applied_rv": -1},
        {"versions": [1], "applied_rv": True},
        {"versions": [1], "applied_rv": "0"},
        {"versions": [1], "applied_rv": 1.5},
    ],
)
def test_bad_hello_body_closes_the_cloud(body: dict[str, object]) -> None:
    pair = make_pair()
    pair.cloud.receive_frame(raw_frame(Op.HELLO, body=body), pair.now)
    closed = closed_by_us(pair.cloud, pair.cloud.events_received())
    assert closed.code == "bad_message"
    assert type(pair.cloud.close_error) is RemoteProtocolError


@pytest.mark.parametrize(
    "body",
    [
        {"version": 1},
        {"version": 1, "received_seq": -5},
        {"version": 1, "received_seq": False},
        {"version": 1, "received_seq": 2.0},
        {"received_seq": 0},
        {"version": "1", "received_seq": 0},
    ],
)
def test_bad_welcome_body_closes_the_edge(body: dict[str, object]) -> None:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge.data_to_send()
    pair.edge.receive_frame(raw_frame(Op.WELCOME, body=body), pair.now)
    closed_by_us(pair.edge, pair.edge.events_received())
    assert isinstance(pair.edge.close_error, RemoteProtocolError)


# ------------------------------------------------------------------ windowed sends


def test_window_fills_and_a_cumulative_ack_frees_several() -> None:
    pair = open_pair(cloud_config=SessionConfig(window=4))
    cloud, edge = pair.cloud, pair.edge
    for i, rv in enumerate([3, 5, 6, 9]):
        assert cloud.send_capacity() == 4 - i
        cloud.send(Op.APPLY, RES, rv, {"n": rv}, pair.now)
    assert cloud.send_capacity() == 0
    with pytest.raises(LocalProtocolError, match="window"):
        cloud.send(Op.APPLY, RES, 10, None, pair.now)

    pair.cloud_to_edge()
    received = of_type(edge.events_received(), MessageReceived)
    assert [m.cursor for m in received] == [3, 5, 6, 9]
    assert [m.envelope.body for m in received] == [{"n": 3}, {"n": 5}, {"n": 6}, {"n": 9}]
    assert all(m.envelope.res == RES for m in received)

    edge.ack(6, pair.now)
    [ack] = pair.edge_to_cloud()
    assert codec.decode(ack).rv == 6 and codec.decode(ack).seq is None
    assert cloud.events_received() == [AckReceived(cursor=6)]
    assert cloud.send_capacity() == 3  # 3, 5 and 6 freed at once; 9 still in flight
    cloud.send(Op.DELETE, RES, 10, None, pair.now)
    assert cloud.send_capacity() == 2
    edge.ack(9, pair.now)
    pair.edge_to_cloud()
    assert cloud.events_received() == [AckReceived(cursor=9)]
    assert cloud.send_capacity() == 3


def test_upstream_window_and_ack_use_seq() -> None:
    pair = open_pair(received_seq=100, edge_config=SessionConfig(window=2))
    edge, cloud = pair.edge, pair.cloud
    edge.send(Op.REPORT, "twin/default/cam", 101, {"temp": 40}, pair.now)
    edge.send(Op.RESULT, "task/default/job", 102, {"ok": True}, pair.now)
    assert edge.send_capacity() == 0
    with pytest.raises(LocalProtocolError):
        edge.send(Op.REPORT, "twin/default/cam", 103, None, pair.now)
    pair.edge_to_cloud()
    received = of_type(cloud.events_received(), MessageReceived)
    assert [(m.envelope.op, m.cursor, m.envelope.seq) for m in received] == [
        (Op.REPORT, 101, 101),
        (Op.RESULT, 102, 102),
    ]
    cloud.ack(102, pair.now)
    [ack] = pair.cloud_to_edge()
    assert codec.decode(ack).seq == 102 and codec.decode(ack).rv is None
    assert edge.events_received() == [AckReceived(cursor=102)]
    assert edge.send_capacity() == 2


def test_sending_before_open_is_a_local_error() -> None:
    pair = make_pair()
    assert pair.edge.send_capacity() == 0 and pair.cloud.send_capacity() == 0
    with pytest.raises(LocalProtocolError):
        pair.edge.send(Op.REPORT, RES, 1, None, pair.now)  # before welcome
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge_to_cloud()
    with pytest.raises(LocalProtocolError):
        pair.cloud.send(Op.APPLY, RES, 1, None, pair.now)  # before accept
    with pytest.raises(LocalProtocolError):
        pair.edge.send(Op.REPORT, RES, 1, None, pair.now)


@pytest.mark.parametrize(
    ("role", "op"),
    [
        (Role.CLOUD, Op.REPORT),
        (Role.CLOUD, Op.RESULT),
        (Role.CLOUD, Op.PING),
        (Role.EDGE, Op.APPLY),
        (Role.EDGE, Op.DELETE),
        (Role.EDGE, Op.CHUNK),
        (Role.EDGE, Op.ACK),
    ],
)
def test_only_reliable_ops_of_ones_own_direction_can_be_sent(role: Role, op: Op) -> None:
    pair = open_pair()
    session = pair.cloud if role is Role.CLOUD else pair.edge
    with pytest.raises(LocalProtocolError):
        session.send(op, RES, 1, None, pair.now)
    assert session.data_to_send() == [] and session.last_sent == 0


@pytest.mark.parametrize("role", [Role.CLOUD, Role.EDGE])
def test_send_cursor_must_strictly_increase(role: Role) -> None:
    pair = open_pair(applied_rv=10, received_seq=10)
    session = pair.cloud if role is Role.CLOUD else pair.edge
    op = Op.APPLY if role is Role.CLOUD else Op.REPORT
    with pytest.raises(LocalProtocolError):
        session.send(op, RES, 10, None, pair.now)  # the peer already has 10
    session.send(op, RES, 20, None, pair.now)  # gaps are fine
    for cursor in (20, 19, 0):
        with pytest.raises(LocalProtocolError):
            session.send(op, RES, cursor, None, pair.now)
    session.send(op, RES, 21, None, pair.now)
    assert session.last_sent == 21
    assert [e.rv if role is Role.CLOUD else e.seq for e in sent_envelopes(session)] == [20, 21]


def test_send_returns_the_message_id() -> None:
    pair = open_pair()
    msg_id = pair.cloud.send(Op.CHUNK, "model/default/yolo", 1, {"i": 0}, pair.now)
    [env] = sent_envelopes(pair.cloud)
    assert env.id == msg_id and env.op is Op.CHUNK


def test_start_sending_after_refuses_with_messages_in_flight() -> None:
    pair = open_pair()
    pair.cloud.send(Op.APPLY, RES, 1, None, pair.now)
    with pytest.raises(LocalProtocolError):
        pair.cloud.start_sending_after(0)
    assert pair.cloud.last_sent == 1


# ------------------------------------------------------------------ receiving cursors


def acks_sent(session: Session) -> list[int | None]:
    """The cursors of the acks `session` has queued to send (other frames dropped)."""
    frames = [codec.decode(f) for f in session.data_to_send()]
    return [f.rv if f.rv is not None else f.seq for f in frames if f.op is Op.ACK]


@pytest.mark.parametrize("second", [5, 4, 0])
def test_a_resent_rv_is_skipped_not_applied_and_the_session_stays_open(second: int) -> None:
    """The tolerant rule (docs/protocol.md §6.2): a cursor at or below the last one
    received is a resend, skipped. Not durable yet (no ack sent): no ack for it either."""
    pair = open_pair()
    pair.edge.data_to_send()
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=5), pair.now)
    assert [m.cursor for m in of_type(pair.edge.events_received(), MessageReceived)] == [5]
    pair.edge.receive_frame(raw_frame(Op.DELETE, res=RES, rv=second), pair.now)
    assert of_type(pair.edge.events_received(), MessageReceived) == []
    assert pair.edge.state is State.OPEN
    assert pair.edge.duplicates_skipped == 1
    assert acks_sent(pair.edge) == []


def test_a_resend_of_an_acked_rv_is_acked_again_by_its_own_cursor() -> None:
    pair = open_pair()
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=5), pair.now)
    pair.edge.events_received()
    pair.edge.ack(5, pair.now)
    assert acks_sent(pair.edge) == [5]
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=4), pair.now)
    assert of_type(pair.edge.events_received(), MessageReceived) == []
    assert acks_sent(pair.edge) == [4]  # never above what that sender may have sent
    assert pair.edge.state is State.OPEN


def test_a_resent_seq_at_the_announced_cursor_is_skipped_and_acked() -> None:
    """The cloud announced received_seq 7; an edge that resends seq 7 gets an ack for it."""
    pair = open_pair(received_seq=7)
    pair.cloud.data_to_send()
    pair.cloud.receive_frame(raw_frame(Op.REPORT, res=RES, seq=7), pair.now)
    assert of_type(pair.cloud.events_received(), MessageReceived) == []
    assert acks_sent(pair.cloud) == [7]
    assert pair.cloud.state is State.OPEN
    pair.cloud.receive_frame(raw_frame(Op.REPORT, res=RES, seq=8), pair.now)
    assert [m.cursor for m in of_type(pair.cloud.events_received(), MessageReceived)] == [8]


def test_first_message_above_the_announced_cursor_is_applied_one_at_it_skipped() -> None:
    pair = open_pair(applied_rv=10)
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=11), pair.now)
    assert [m.cursor for m in of_type(pair.edge.events_received(), MessageReceived)] == [11]
    other = open_pair(applied_rv=10)
    other.edge.data_to_send()
    other.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=10), other.now)
    assert of_type(other.edge.events_received(), MessageReceived) == []
    assert acks_sent(other.edge) == [10]
    assert other.edge.state is State.OPEN


# ------------------------------------------------------------------ acks


@pytest.mark.parametrize("role", [Role.CLOUD, Role.EDGE])
def test_ack_beyond_last_sent_closes_the_receiver(role: Role) -> None:
    pair = open_pair()
    if role is Role.CLOUD:
        session, op, ack = pair.cloud, Op.APPLY, {"rv": 3}
    else:
        session, op, ack = pair.edge, Op.REPORT, {"seq": 3}
    session.send(op, RES, 1, None, pair.now)
    session.send(op, RES, 2, None, pair.now)
    session.data_to_send()
    session.receive_frame(raw_frame(Op.ACK, **ack), pair.now)
    events = session.events_received()
    assert of_type(events, AckReceived) == []
    assert closed_by_us(session, events).code == "bad_message"
    assert "beyond the last sent" in str(session.close_error)


@pytest.mark.parametrize("role", [Role.CLOUD, Role.EDGE])
def test_ack_without_the_right_cursor_closes_the_receiver(role: Role) -> None:
    pair = open_pair()
    session = pair.cloud if role is Role.CLOUD else pair.edge
    op = Op.APPLY if role is Role.CLOUD else Op.REPORT
    session.send(op, RES, 1, None, pair.now)
    session.data_to_send()
    wrong = {"seq": 1} if role is Role.CLOUD else {"rv": 1}  # the other direction's cursor
    session.receive_frame(raw_frame(Op.ACK, **wrong), pair.now)
    assert closed_by_us(session, session.events_received()).code == "bad_message"


def test_duplicate_and_stale_acks_are_ignored() -> None:
    pair = open_pair(cloud_config=SessionConfig(window=8))
    for rv in range(1, 6):
        pair.cloud.send(Op.APPLY, RES, rv, None, pair.now)
    pair.cloud.data_to_send()
    pair.cloud.receive_frame(raw_frame(Op.ACK, rv=3), pair.now)
    assert pair.cloud.events_received() == [AckReceived(cursor=3)]
    capacity = pair.cloud.send_capacity()
    assert capacity == 8 - 2
    for stale in (3, 2, 0):
        pair.cloud.receive_frame(raw_frame(Op.ACK, rv=stale), pair.now)
    assert pair.cloud.events_received() == []
    assert pair.cloud.is_open and pair.cloud.send_capacity() == capacity
    assert pair.cloud.data_to_send() == []


def test_local_ack_beyond_received_is_a_local_error() -> None:
    pair = open_pair(applied_rv=4)
    with pytest.raises(LocalProtocolError):
        pair.edge.ack(5, pair.now)
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=6), pair.now)
    pair.edge.ack(6, pair.now)
    with pytest.raises(LocalProtocolError):
        pair.edge.ack(7, pair.now)
    assert [e.rv for e in sent_envelopes(pair.edge)] == [6]
    assert pair.edge.is_open


def test_local_ack_at_or_below_the_last_ack_sends_nothing() -> None:
    pair = open_pair(applied_rv=4)
    pair.edge.ack(4, pair.now)  # the hello already announced 4
    pair.edge.ack(2, pair.now)
    assert pair.edge.data_to_send() == []
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=5), pair.now)
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=6), pair.now)
    pair.edge.ack(6, pair.now)
    pair.edge.ack(5, pair.now)
    pair.edge.ack(6, pair.now)
    assert [(e.op, e.rv) for e in sent_envelopes(pair.edge)] == [(Op.ACK, 6)]


# ------------------------------------------------------------------ resume


def test_second_session_resumes_from_persisted_cursors() -> None:
    clock = FakeClock()
    first = open_pair(clock=clock)
    for rv in (1, 2, 3, 4, 5):
        first.cloud.send(Op.APPLY, RES, rv, {"rv": rv}, first.now)
    for seq in (1, 2, 3, 4):
        first.edge.send(Op.REPORT, RES, seq, {"seq": seq}, first.now)
    first.pump()
    # The edge durably applied up to rv 3, the cloud up to seq 2; then the link drops.
    first.edge.ack(3, first.now)
    first.cloud.ack(2, first.now)
    first.pump()
    edge_events, cloud_events = first.drain()
    assert of_type(cloud_events, AckReceived) == [AckReceived(cursor=3)]
    assert of_type(edge_events, AckReceived) == [AckReceived(cursor=2)]
    applied_rv = max(a.cursor for a in of_type(cloud_events, AckReceived))
    received_seq = max(a.cursor for a in of_type(edge_events, AckReceived))

    clock.advance(1.0)
    second = make_pair(clock=clock)
    second.edge.send_hello(applied_rv, {}, second.now)
    second.edge_to_cloud()
    [hello] = second.cloud.events_received()
    assert isinstance(hello, HelloReceived) and hello.applied_rv == 3
    assert second.cloud.last_sent == 3
    second.cloud.accept(received_seq, {}, second.now)
    with pytest.raises(LocalProtocolError):
        second.cloud.send(Op.APPLY, RES, 3, None, second.now)  # the edge already applied 3
    second.cloud.send(Op.APPLY, RES, 4, {"rv": 4}, second.now)
    second.cloud.send(Op.APPLY, RES, 5, {"rv": 5}, second.now)
    second.cloud_to_edge()
    edge_events = second.edge.events_received()
    assert [type(e) for e in edge_events] == [WelcomeReceived, MessageReceived, MessageReceived]
    welcome = edge_events[0]
    assert isinstance(welcome, WelcomeReceived) and welcome.received_seq == 2
    assert [m.cursor for m in of_type(edge_events, MessageReceived)] == [4, 5]
    assert second.edge.last_sent == 2

    second.edge.send(Op.REPORT, RES, 3, {"seq": 3}, second.now)
    second.edge.send(Op.REPORT, RES, 4, {"seq": 4}, second.now)
    second.edge_to_cloud()
    assert [m.cursor for m in of_type(second.cloud.events_received(), MessageReceived)] == [3, 4]
    second.edge.ack(5, second.now)
    second.cloud.ack(4, second.now)
    second.pump()
    edge_events, cloud_events = second.drain()
    assert cloud_events == [AckReceived(cursor=5)] and edge_events == [AckReceived(cursor=4)]
    assert second.edge.is_open and second.cloud.is_open


def test_resumed_edge_skips_and_acks_a_replay_of_applied_messages() -> None:
    pair = open_pair(applied_rv=3)
    pair.edge.data_to_send()
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=2), pair.now)
    assert of_type(pair.edge.events_received(), MessageReceived) == []
    assert acks_sent(pair.edge) == [2]
    assert pair.edge.state is State.OPEN


# ------------------------------------------------------------------ ping, pong, liveness


def test_pings_are_sent_every_interval_and_pongs_set_rtt() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    interval = TIMED.ping_interval
    assert pair.edge.rtt is None and pair.cloud.rtt is None
    pair.clock.advance(interval - 0.5)
    pair.tick()
    assert pair.edge.data_to_send() == [] and pair.cloud.data_to_send() == []

    for round_no in range(1, 4):
        pair.clock.advance(0.5 if round_no == 1 else interval - 0.25)
        pair.tick()
        edge_pings = pair.edge.data_to_send()
        cloud_pings = pair.cloud.data_to_send()
        assert [codec.decode(f).op for f in edge_pings] == [Op.PING]
        assert [codec.decode(f).op for f in cloud_pings] == [Op.PING]
        for frame in edge_pings:
            pair.cloud.receive_frame(frame, pair.now)
        for frame in cloud_pings:
            pair.edge.receive_frame(frame, pair.now)
        pongs_from_cloud = sent_envelopes(pair.cloud)
        pongs_from_edge = sent_envelopes(pair.edge)
        assert [(p.op, p.parent) for p in pongs_from_cloud] == [
            (Op.PONG, codec.decode(edge_pings[0]).id)
        ]
        assert [(p.op, p.parent) for p in pongs_from_edge] == [
            (Op.PONG, codec.decode(cloud_pings[0]).id)
        ]
        pair.clock.advance(0.25)
        for env in pongs_from_cloud:
            pair.edge.receive_frame(codec.encode(env), pair.now)
        for env in pongs_from_edge:
            pair.cloud.receive_frame(codec.encode(env), pair.now)
        assert pair.edge.rtt == pytest.approx(0.25)
        assert pair.cloud.rtt == pytest.approx(0.25)
        edge_events, cloud_events = pair.drain()
        assert [type(e) for e in edge_events] == [PingReceived]
        assert [type(e) for e in cloud_events] == [PingReceived]
    assert pair.edge.is_open and pair.cloud.is_open


def test_pong_for_an_unknown_ping_does_not_set_rtt() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    pair.edge.receive_frame(raw_frame(Op.PONG, parent="not-a-ping"), pair.now)
    pair.edge.receive_frame(raw_frame(Op.PONG), pair.now)
    assert pair.edge.rtt is None and pair.edge.is_open
    assert pair.edge.events_received() == []


def test_steady_traffic_keeps_the_session_alive() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    for _ in range(10 * TIMED.missed_pings):
        pair.clock.advance(TIMED.ping_interval)
        pair.tick()
        pair.pump()
    assert pair.edge.is_open and pair.cloud.is_open


def test_silence_times_out_the_silent_side_and_the_peer_hears_it() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    start = pair.now
    # The edge's frames are lost; the cloud's still arrive, so only the cloud hears silence.
    while pair.cloud.is_open:
        pair.clock.advance(TIMED.ping_interval)
        pair.tick()
        pair.edge.data_to_send()
        assert pair.edge.is_open
        if pair.cloud.is_open:
            pair.cloud_to_edge()
    assert pair.now - start == pytest.approx(TIMED.dead_after)
    pair.edge.events_received()
    closed = closed_by_us(pair.cloud, pair.cloud.events_received(), pair.edge, pair.now)
    assert closed.code == "timeout"
    assert pair.cloud.close_error is None
    pair.cloud.receive_frame(raw_frame(Op.PING), pair.now)  # too late: ignored
    assert pair.cloud.events_received() == [] and pair.cloud.data_to_send() == []


def test_not_yet_dead_just_before_dead_after() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    pair.clock.advance(TIMED.dead_after - 0.5)
    pair.cloud.handle_timer(pair.now)
    assert pair.cloud.is_open
    pair.clock.advance(0.5)
    pair.cloud.handle_timer(pair.now)
    assert pair.cloud.state is State.CLOSED


@pytest.mark.parametrize("cloud_accepts_hello", [False, True])
def test_handshake_timeout(cloud_accepts_hello: bool) -> None:
    pair = make_pair(edge_config=TIMED, cloud_config=TIMED)
    pair.edge.send_hello(0, {}, pair.now)
    if cloud_accepts_hello:
        pair.edge_to_cloud()  # the cloud got the hello but never decides
    pair.clock.advance(TIMED.handshake_timeout - 0.5)
    pair.tick()
    assert pair.edge.state is State.HELLO_SENT
    assert pair.cloud.state is (State.HELLO_RECEIVED if cloud_accepts_hello else State.AWAIT_HELLO)
    pair.clock.advance(0.5)
    pair.tick()
    for session in (pair.edge, pair.cloud):
        closed = closed_by_us(session, session.events_received())
        assert closed.code == "timeout" and "handshake" in closed.reason


def test_open_session_is_not_subject_to_the_handshake_timeout() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    pair.clock.advance(TIMED.handshake_timeout)
    pair.tick()
    pair.pump()
    assert pair.edge.is_open and pair.cloud.is_open


def test_no_pings_before_the_session_is_open() -> None:
    pair = make_pair(edge_config=TIMED, cloud_config=TIMED)
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge_to_cloud()
    pair.clock.advance(TIMED.ping_interval)
    pair.tick()
    assert pair.edge.data_to_send() == [] and pair.cloud.data_to_send() == []


def test_ping_carries_the_heartbeat_body() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    metrics = {"cpu": 0.5, "mem_free_mb": 312, "temp_c": 61.25}
    pair.edge.update_heartbeat(metrics)
    metrics["cpu"] = 0.99  # the session keeps its own copy
    pair.clock.advance(TIMED.ping_interval)
    pair.tick()
    pair.pump()
    edge_events, cloud_events = pair.drain()
    assert of_type(cloud_events, PingReceived) == [
        PingReceived(body={"cpu": 0.5, "mem_free_mb": 312, "temp_c": 61.25})
    ]
    assert of_type(edge_events, PingReceived) == [PingReceived(body={})]

    pair.edge.update_heartbeat({"cpu": 0.75})
    pair.clock.advance(TIMED.ping_interval)
    pair.tick()
    pair.pump()
    assert of_type(pair.cloud.events_received(), PingReceived) == [PingReceived(body={"cpu": 0.75})]


def test_next_deadline_during_the_handshake() -> None:
    for config in (TIMED, SessionConfig(ping_interval=2.0, handshake_timeout=8.0)):
        pair = make_pair(edge_config=config, cloud_config=config)
        start = pair.now
        expected = start + min(config.handshake_timeout, config.ping_interval)
        assert pair.edge.next_deadline() == expected
        assert pair.cloud.next_deadline() == expected


def test_next_deadline_when_open_and_when_closed() -> None:
    config = SessionConfig(ping_interval=4.0, missed_pings=2)
    pair = open_pair(edge_config=config, cloud_config=config)
    start = pair.now
    assert pair.cloud.next_deadline() == start + config.ping_interval
    # A late timer: the ping goes out at start+6, the next is due at start+10, but the
    # peer has been silent since `start`, so the dead line (start+8) comes first.
    pair.clock.advance(6.0)
    pair.cloud.handle_timer(pair.now)
    assert [e.op for e in sent_envelopes(pair.cloud)] == [Op.PING]
    assert pair.cloud.next_deadline() == start + config.dead_after
    # Hearing from the peer moves the dead line; the next ping is now first.
    pair.clock.advance(1.0)
    pair.cloud.receive_frame(raw_frame(Op.PING), pair.now)
    assert pair.cloud.next_deadline() == start + 6.0 + config.ping_interval
    pair.cloud.close("shutdown", "bye", pair.now)
    assert pair.cloud.next_deadline() is None


def test_handle_timer_at_next_deadline_makes_progress() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    deadline = pair.cloud.next_deadline()
    assert deadline is not None
    pair.clock.advance(deadline - pair.now)
    pair.cloud.handle_timer(pair.now)
    assert [e.op for e in sent_envelopes(pair.cloud)] == [Op.PING]
    later = pair.cloud.next_deadline()
    assert later is not None and later > deadline


# ------------------------------------------------------------------ ops not allowed


def _cloud_awaiting_hello() -> tuple[Pair, Session]:
    pair = make_pair()
    return pair, pair.cloud


def _cloud_with_hello() -> tuple[Pair, Session]:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge_to_cloud()
    pair.cloud.events_received()
    return pair, pair.cloud


def _edge_awaiting_welcome() -> tuple[Pair, Session]:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge.data_to_send()
    return pair, pair.edge


def _open_cloud() -> tuple[Pair, Session]:
    pair = open_pair()
    return pair, pair.cloud


def _open_edge() -> tuple[Pair, Session]:
    pair = open_pair()
    return pair, pair.edge


FORBIDDEN: list[tuple[str, Callable[[], tuple[Pair, Session]], bytes]] = [
    ("report-before-hello", _cloud_awaiting_hello, raw_frame(Op.REPORT, res=RES, seq=1)),
    ("ping-before-hello", _cloud_awaiting_hello, raw_frame(Op.PING)),
    ("ack-before-hello", _cloud_awaiting_hello, raw_frame(Op.ACK, rv=0)),
    ("report-before-accept", _cloud_with_hello, raw_frame(Op.REPORT, res=RES, seq=1)),
    ("ack-before-accept", _cloud_with_hello, raw_frame(Op.ACK, rv=0)),
    (
        "second-hello",
        _cloud_with_hello,
        raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 0}),
    ),
    ("cloud-gets-apply", _open_cloud, raw_frame(Op.APPLY, res=RES, rv=1)),
    ("cloud-gets-chunk", _open_cloud, raw_frame(Op.CHUNK, res=RES, rv=1)),
    ("cloud-gets-welcome", _open_cloud, raw_frame(Op.WELCOME, body={"version": 1})),
    (
        "hello-when-open",
        _open_cloud,
        raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 0}),
    ),
    (
        "edge-gets-hello",
        _edge_awaiting_welcome,
        raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 0}),
    ),
    ("apply-before-welcome", _edge_awaiting_welcome, raw_frame(Op.APPLY, res=RES, rv=1)),
    ("ack-before-welcome", _edge_awaiting_welcome, raw_frame(Op.ACK, seq=0)),
    (
        "edge-gets-hello-when-open",
        _open_edge,
        raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 0}),
    ),
    ("edge-gets-report", _open_edge, raw_frame(Op.REPORT, res=RES, seq=1)),
    ("edge-gets-result", _open_edge, raw_frame(Op.RESULT, res=RES, seq=1)),
    (
        "second-welcome",
        _open_edge,
        raw_frame(Op.WELCOME, body={"version": 1, "received_seq": 0}),
    ),
]


@pytest.mark.parametrize(
    ("setup", "frame"), [c[1:] for c in FORBIDDEN], ids=[c[0] for c in FORBIDDEN]
)
def test_op_not_allowed_in_state_closes_with_an_error(
    setup: Callable[[], tuple[Pair, Session]], frame: bytes
) -> None:
    pair, session = setup()
    before = session.state
    session.receive_frame(frame, pair.now)
    events = session.events_received()
    assert [type(e) for e in events] == [SessionClosed]
    peer = pair.edge if session is pair.cloud else pair.cloud
    peer.events_received()
    closed = closed_by_us(session, events, peer, pair.now)
    assert closed.code == "bad_message"
    assert type(session.close_error) is RemoteProtocolError
    assert before.value in closed.reason


# ------------------------------------------------------------------ malformed frames


def _too_large(limit: int) -> bytes:
    return raw_frame(Op.PING, body={"pad": "x" * limit})


MALFORMED = [
    ("malformed", MalformedMessage, b"{not json"),
    ("malformed", MalformedMessage, b"[1, 2]"),
    ("malformed", MalformedMessage, b'{"v":1,"op":"ping","id":"x","ts":true}'),
    ("malformed", MalformedMessage, b'{"v":1,"op":"apply","id":"x","ts":1,"res":"bad"}'),
    ("frame_too_large", FrameTooLarge, _too_large(600)),
    ("unknown_op", UnknownOperation, b'{"v":1,"op":"subscribe","id":"x","ts":1}'),
]


@pytest.mark.parametrize("role", [Role.EDGE, Role.CLOUD])
@pytest.mark.parametrize(("code", "error_type", "frame"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_frames_close_with_typed_error(
    role: Role, code: str, error_type: type[Exception], frame: bytes
) -> None:
    config = SessionConfig(limits=codec.Limits(max_frame_bytes=512))
    pair = open_pair(edge_config=config, cloud_config=config)
    session, peer = (pair.edge, pair.cloud) if role is Role.EDGE else (pair.cloud, pair.edge)
    session.receive_frame(frame, pair.now)
    peer.events_received()
    closed = closed_by_us(session, session.events_received(), peer, pair.now)
    assert closed.code == code
    assert type(session.close_error) is error_type
    assert str(session.close_error) == closed.reason


# ------------------------------------------------------------------ non-fatal errors


def test_send_error_keeps_both_sides_open() -> None:
    pair = open_pair()
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=1, msg_id="01BAD"), pair.now)
    pair.edge.events_received()
    pair.edge.send_error("forbidden", "task belongs to another node", "01BAD", pair.now)
    assert pair.edge.is_open
    pair.edge_to_cloud()
    assert pair.cloud.events_received() == [
        ErrorReceived(
            code="forbidden", reason="task belongs to another node", parent="01BAD", fatal=False
        )
    ]
    assert pair.cloud.is_open
    pair.cloud.send(Op.APPLY, RES, 2, None, pair.now)  # business as usual
    pair.cloud_to_edge()
    assert [m.cursor for m in of_type(pair.edge.events_received(), MessageReceived)] == [2]


def test_error_without_fatal_true_is_not_fatal() -> None:
    pair = open_pair()
    for body in ({"code": "x", "fatal": "yes"}, {"code": "x", "fatal": 1}, None):
        pair.edge.receive_frame(raw_frame(Op.ERROR, body=body), pair.now)
    events = pair.edge.events_received()
    assert len(events) == 3 and all(isinstance(e, ErrorReceived) and not e.fatal for e in events)
    assert pair.edge.is_open


def test_error_fields_from_the_peer_are_truncated() -> None:
    pair = open_pair()
    pair.edge.receive_frame(
        raw_frame(Op.ERROR, body={"code": "c" * 500, "reason": "r" * 5000}), pair.now
    )
    [error] = pair.edge.events_received()
    assert isinstance(error, ErrorReceived)
    assert error.code == "c" * 64 and error.reason == "r" * 1024


# ------------------------------------------------------------------ after close


def test_operations_after_close_are_no_ops() -> None:
    pair = open_pair(edge_config=TIMED, cloud_config=TIMED)
    edge = pair.edge
    edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=1), pair.now)
    edge.close("shutdown", "edgecore stopping", pair.now)
    events = edge.events_received()
    assert events[-1] == SessionClosed(code="shutdown", reason="edgecore stopping", by_peer=False)
    assert edge.close_error is None
    edge.data_to_send()

    edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=2), pair.now)
    edge.receive_frame(b"garbage", pair.now)
    edge.receive_frame(raw_frame(Op.ERROR, body={"code": "x", "fatal": True}), pair.now)
    pair.clock.advance(10 * TIMED.dead_after)
    edge.handle_timer(pair.now)
    edge.ack(1, pair.now)
    edge.ack(99, pair.now)  # would be a LocalProtocolError if open
    edge.send_error("x", "y", None, pair.now)
    edge.close("again", "twice", pair.now)
    edge.update_heartbeat({"cpu": 1.0})
    assert edge.events_received() == []
    assert edge.data_to_send() == []
    assert edge.state is State.CLOSED and not edge.is_open
    assert edge.next_deadline() is None and edge.send_capacity() == 0
    with pytest.raises(LocalProtocolError):
        edge.send(Op.REPORT, RES, 1, None, pair.now)


def test_close_sends_a_fatal_error_once() -> None:
    pair = open_pair()
    pair.cloud.close("maintenance", "cloud restarting", pair.now)
    pair.cloud.close("maintenance", "cloud restarting", pair.now)
    frames = pair.cloud.data_to_send()
    assert len(frames) == 1
    body = codec.decode(frames[0]).body
    assert body == {"code": "maintenance", "reason": "cloud restarting", "fatal": True}


# ------------------------------------------------------------------ reliable fields


RELIABLE_MISSING = [
    ("apply-no-res", Role.EDGE, raw_frame(Op.APPLY, rv=1), "'res'"),
    ("delete-no-res", Role.EDGE, raw_frame(Op.DELETE, rv=1), "'res'"),
    ("apply-no-rv", Role.EDGE, raw_frame(Op.APPLY, res=RES), "'rv'"),
    ("chunk-seq-not-rv", Role.EDGE, raw_frame(Op.CHUNK, res=RES, seq=1), "'rv'"),
    ("report-no-seq", Role.CLOUD, raw_frame(Op.REPORT, res=RES), "'seq'"),
    ("result-no-res", Role.CLOUD, raw_frame(Op.RESULT, seq=1), "'res'"),
    ("report-rv-not-seq", Role.CLOUD, raw_frame(Op.REPORT, res=RES, rv=1), "'seq'"),
]


@pytest.mark.parametrize(
    ("role", "frame", "missing"),
    [c[1:] for c in RELIABLE_MISSING],
    ids=[c[0] for c in RELIABLE_MISSING],
)
def test_reliable_message_without_res_or_cursor_closes(
    role: Role, frame: bytes, missing: str
) -> None:
    pair = open_pair()
    session = pair.edge if role is Role.EDGE else pair.cloud
    session.receive_frame(frame, pair.now)
    events = session.events_received()
    assert of_type(events, MessageReceived) == []
    assert closed_by_us(session, events).code == "bad_message"
    assert missing in str(session.close_error)


@pytest.mark.parametrize("op", [Op.APPLY, Op.DELETE, Op.CHUNK])
def test_every_downstream_reliable_op_is_delivered(op: Op) -> None:
    pair = open_pair()
    pair.cloud.send(op, "model/default/m", 1, {"op": op.value}, pair.now)
    pair.cloud_to_edge()
    [msg] = pair.edge.events_received()
    assert isinstance(msg, MessageReceived)
    assert msg.envelope.op is op and msg.cursor == 1 and msg.envelope.body == {"op": op.value}


# ------------------------------------------------------------------ hostile handshake values


def test_welcome_with_float_version_closes_instead_of_raising() -> None:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    frame = orjson.dumps(
        {"v": 1, "op": "welcome", "id": "w", "ts": 1, "body": {"version": 1.0, "received_seq": 0}}
    )
    pair.edge.receive_frame(frame, pair.now)  # must not raise
    assert pair.edge.state is State.CLOSED


def test_welcome_with_bool_version_is_refused() -> None:
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    pair.edge.receive_frame(
        raw_frame(Op.WELCOME, body={"version": True, "received_seq": 0}), pair.now
    )
    assert pair.edge.state is State.CLOSED


def test_hello_applied_rv_beyond_the_cursor_range_is_refused() -> None:
    pair = make_pair()
    pair.cloud.receive_frame(
        raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 1 << 63}), pair.now
    )
    assert pair.cloud.state is State.CLOSED


@pytest.mark.parametrize(
    ("limits", "res"),
    [
        (codec.Limits(max_frame_bytes=300), "x" * 150),
        (codec.DEFAULT_LIMITS, "\x7f" * codec.DEFAULT_LIMITS.max_string_chars),
    ],
    ids=["small-limit", "default-limit"],
)
def test_bad_frame_with_long_peer_text_never_raises(limits: codec.Limits, res: str) -> None:
    session = Session(Role.CLOUD, SessionConfig(limits=limits), 0.0, 0)
    frame = orjson.dumps({"v": 1, "op": "hello", "id": "h", "ts": 1, "res": res})
    assert len(frame) <= limits.max_frame_bytes
    session.receive_frame(frame, 0.0)  # must not raise
    assert session.state is State.CLOSED


def test_transfer_helper_delivers_in_order() -> None:
    pair = open_pair()
    for rv in (1, 2, 3):
        pair.cloud.send(Op.APPLY, RES, rv, None, pair.now)
    frames = transfer(pair.cloud, pair.edge, pair.now)
    assert len(frames) == 3 and pair.cloud.data_to_send() == []
    assert [m.cursor for m in of_type(pair.edge.events_received(), MessageReceived)] == [1, 2, 3]


def test_welcome_with_resync_restarts_the_downstream_cursor() -> None:
    pair = make_pair()
    pair.edge.send_hello(50, {}, pair.now)
    transfer(pair.edge, pair.cloud, pair.now)
    pair.cloud.events_received()
    pair.cloud.start_sending_after(0)  # the cloud decided it cannot vouch for rv 50
    pair.cloud.accept(0, {"resync": True, "snapshot_rv": 3}, pair.now)
    transfer(pair.cloud, pair.edge, pair.now)
    (welcome,) = of_type(pair.edge.events_received(), WelcomeReceived)
    assert welcome.resync is True and welcome.snapshot_rv == 3
    pair.cloud.send(Op.APPLY, RES, 1, None, pair.now)
    transfer(pair.cloud, pair.edge, pair.now)
    assert [m.cursor for m in of_type(pair.edge.events_received(), MessageReceived)] == [1]
    assert pair.edge.state is State.OPEN


def test_welcome_without_resync_keeps_the_cursor() -> None:
    pair = make_pair()
    pair.edge.send_hello(50, {}, pair.now)
    transfer(pair.edge, pair.cloud, pair.now)
    pair.cloud.accept(0, {}, pair.now)
    transfer(pair.cloud, pair.edge, pair.now)
    pair.edge.receive_frame(raw_frame(Op.APPLY, res=RES, rv=1), pair.now)
    # rv 1 is at or below the announced 50: skipped as already applied, not applied twice
    assert of_type(pair.edge.events_received(), MessageReceived) == []
    assert pair.edge.state is State.OPEN
