"""The session's optional trace hook: sees every message in and out and every event."""

from __future__ import annotations

from shared.ids import CounterIds
from shared.protocol import codec
from shared.protocol.events import Event
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import TraceDirection
from tests.helpers.session_pair import make_pair, open_pair, raw_frame, transfer

RES = "task/default/blink"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[TraceDirection, Envelope | Event]] = []

    def __call__(self, direction: TraceDirection, item: Envelope | Event) -> None:
        self.calls.append((direction, item))

    def summary(self) -> list[tuple[str, str]]:
        return [
            (d, i.op.value if isinstance(i, Envelope) else type(i).__name__) for d, i in self.calls
        ]


def test_the_hook_sees_messages_both_ways_and_events_as_they_are_handed_over() -> None:
    pair = make_pair()
    cloud_trace = Recorder()
    pair.cloud.trace = cloud_trace  # as a driver sets it, after construction
    pair.edge.send_hello(0, {}, pair.now)
    transfer(pair.edge, pair.cloud, pair.now)
    assert cloud_trace.summary() == [("recv", "hello")]  # the event is not handed over yet
    pair.cloud.events_received()
    pair.cloud.accept(0, {}, pair.now)
    transfer(pair.cloud, pair.edge, pair.now)
    pair.cloud.send(Op.APPLY, RES, 1, {"n": 1}, pair.now)
    transfer(pair.cloud, pair.edge, pair.now)
    pair.edge.events_received()
    pair.edge.ack(1, pair.now)
    transfer(pair.edge, pair.cloud, pair.now)
    pair.cloud.receive_frame(raw_frame(Op.PING), pair.now)
    pair.cloud.events_received()
    assert cloud_trace.summary() == [
        ("recv", "hello"),
        ("event", "HelloReceived"),
        ("send", "welcome"),
        ("send", "apply"),
        ("recv", "ack"),
        ("recv", "ping"),
        ("send", "pong"),
        ("event", "AckReceived"),
        ("event", "PingReceived"),
    ]


def test_what_the_hook_sees_is_exactly_what_goes_out_and_comes_in() -> None:
    pair = open_pair()
    out, into = Recorder(), Recorder()
    pair.cloud.trace, pair.edge.trace = out, into
    for rv in (1, 2, 3):
        pair.cloud.send(Op.APPLY, RES, rv, {"rv": rv}, pair.now)
    frames = transfer(pair.cloud, pair.edge, pair.now)
    sent = [item for d, item in out.calls if d == "send"]
    received = [item for d, item in into.calls if d == "recv"]
    assert [codec.encode(env) for env in sent if isinstance(env, Envelope)] == frames
    assert received == [codec.decode(frame) for frame in frames]
    assert [d for d, _ in into.calls] == ["recv", "recv", "recv"]
    events = pair.edge.events_received()
    assert [item for d, item in into.calls if d == "event"] == events


def test_a_hook_changes_nothing_that_is_sent() -> None:
    def frames(trace: bool) -> list[bytes]:
        pair = open_pair(edge_ids=CounterIds("e"), cloud_ids=CounterIds("c"))
        if trace:
            pair.cloud.trace, pair.edge.trace = Recorder(), Recorder()
        wire = []
        for rv in (1, 2):
            pair.cloud.send(Op.APPLY, RES, rv, None, pair.now)
        wire += transfer(pair.cloud, pair.edge, pair.now)
        pair.edge.events_received()
        pair.edge.ack(2, pair.now)
        pair.edge.send(Op.RESULT, RES, 1, {"ok": True}, pair.now)
        wire += transfer(pair.edge, pair.cloud, pair.now)
        pair.cloud.close("shutdown", "bye", pair.now)
        wire += transfer(pair.cloud, pair.edge, pair.now)
        return wire

    assert frames(trace=True) == frames(trace=False)


def test_a_frame_that_does_not_decode_is_not_traced_but_its_consequences_are() -> None:
    pair = open_pair()
    trace = Recorder()
    pair.edge.trace = trace
    pair.edge.receive_frame(b"{not json", pair.now)
    pair.edge.events_received()
    assert trace.summary() == [("send", "error"), ("event", "SessionClosed")]
    [(_, error)] = [(d, i) for d, i in trace.calls if d == "send"]
    assert isinstance(error, Envelope) and error.body is not None
    assert error.body["code"] == "malformed" and error.body["fatal"] is True


def test_the_hook_is_off_by_default() -> None:
    pair = make_pair()
    assert pair.edge.trace is None and pair.cloud.trace is None
