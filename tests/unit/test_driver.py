"""The session driver (shared/aio/driver.py) with no sockets: a cloud-role and an edge-role
driver over the in-memory Channel pair, under a FakeClock the tests move by hand."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from shared.aio.driver import SessionDriver
from shared.aio.memory_channel import CloseInfo, MemoryChannel, MemoryLink, channel_pair
from shared.clock import FakeClock
from shared.errors import LinkBroken, LinkError, PeerClosed
from shared.ids import CounterIds
from shared.protocol import codec
from shared.protocol.events import (
    AckReceived,
    HelloReceived,
    MessageReceived,
    PingReceived,
    SessionClosed,
    WelcomeReceived,
)
from shared.protocol.messages import Envelope, Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role, State
from tests.helpers.session_pair import raw_frame

CONFIG = SessionConfig(window=4, ping_interval=4.0, missed_pings=3, handshake_timeout=8.0)
RES = "task/default/blink"
SECRET = "s3cret-env-value"


class Side(SessionDriver):
    """A driver like cloudcore's NodeSession and edgecore's link connection, with lists
    instead of stores: it 'applies' what arrives, acks it, and sends its own outbox."""

    def __init__(self, role: Role, channel: MemoryChannel, clock: FakeClock, cursor: int) -> None:
        session = Session(
            role, CONFIG, clock.monotonic(), clock.time_ms(), ids=CounterIds(role.value)
        )
        super().__init__(session, channel, clock, role.value)
        self.role = role
        self.cursor = cursor
        """applied_rv (edge) or received_seq (cloud) announced in the handshake."""
        self.outbox: list[tuple[int, dict[str, Any]]] = []
        self.applied: list[Envelope] = []
        self.acked: list[int] = []
        self.pings: list[dict[str, Any]] = []
        self.handshakes: list[HelloReceived | WelcomeReceived] = []
        self.closes: list[SessionClosed] = []
        self.lost: list[LinkError] = []
        self._arrived: list[Envelope] = []

    async def start(self) -> None:
        if self.role is Role.EDGE:
            self.session.update_heartbeat({"cpu": 0.25})
            self.session.send_hello(self.cursor, {"software": "test"}, self.clock.monotonic())
            await self.flush()

    def handle_events(self) -> None:
        now = self.clock.monotonic()
        for event in self.session.events_received():
            if isinstance(event, HelloReceived):
                self.handshakes.append(event)
                self.session.accept(self.cursor, {"node": self.channel.node}, now)
                self.wake()
            elif isinstance(event, WelcomeReceived):
                self.handshakes.append(event)
                self.wake()
            elif isinstance(event, MessageReceived):
                self._arrived.append(event.envelope)
                self.wake()
            elif isinstance(event, AckReceived):
                self.acked.append(event.cursor)
                self.wake()
            elif isinstance(event, PingReceived):
                self.pings.append(event.body)
            elif isinstance(event, SessionClosed):
                self.closes.append(event)

    async def work(self) -> None:
        session, now = self.session, self.clock.monotonic()
        if self._arrived:
            batch, self._arrived = self._arrived, []
            self.applied.extend(batch)
            session.ack(max(MessageReceived(envelope=e).cursor for e in batch), now)
        op = Op.APPLY if self.role is Role.CLOUD else Op.REPORT
        while self.outbox and session.send_capacity() > 0:
            cursor, body = self.outbox.pop(0)
            session.send(op, RES, cursor, body, now)

    def link_lost(self, exc: LinkError) -> None:
        self.lost.append(exc)

    async def shut(self, reason: str) -> None:
        """Close from outside, as NodeSession.shut and the link's shut do."""
        self.session.close("closing", reason, self.clock.monotonic())
        await self.flush_quietly()
        self.wake()

    async def serve(self) -> None:
        try:
            await self.start()
            await self.run_loops()
        finally:
            await self.channel.close(1000, "bye")


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10.0))


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class Fleet:
    """A cloud driver and an edge driver over one in-memory link."""

    def __init__(self, queue_size: int = 64, applied_rv: int = 0, received_seq: int = 0) -> None:
        self.clock = FakeClock()
        self.link: MemoryLink = channel_pair(node="edge-1", queue_size=queue_size)
        self.cloud = Side(Role.CLOUD, self.link.cloud, self.clock, received_seq)
        self.edge = Side(Role.EDGE, self.link.edge, self.clock, applied_rv)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.tasks = [
            asyncio.ensure_future(self.cloud.serve()),
            asyncio.ensure_future(self.edge.serve()),
        ]
        await until(lambda: self.cloud.session.is_open and self.edge.session.is_open, "open")

    def wake(self) -> None:
        self.cloud.wake()
        self.edge.wake()

    async def finished(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 5.0)


def test_handshake_then_reliable_sends_both_ways_with_cumulative_acks() -> None:
    async def main() -> None:
        fleet = Fleet(applied_rv=2, received_seq=1)
        cloud, edge = fleet.cloud, fleet.edge
        cloud.outbox = [(rv, {"generation": rv}) for rv in (3, 4, 7, 8, 9, 12, 13)]
        edge.outbox = [(seq, {"phase": "running"}) for seq in (2, 3, 5)]
        await fleet.start()
        [hello] = cloud.handshakes
        [welcome] = edge.handshakes
        assert isinstance(hello, HelloReceived) and hello.applied_rv == 2
        assert isinstance(welcome, WelcomeReceived) and welcome.received_seq == 1
        assert welcome.body["node"] == "edge-1"
        fleet.wake()
        await until(lambda: len(edge.applied) == 7 and len(cloud.applied) == 3, "delivery")
        await until(lambda: cloud.acked[-1:] == [13] and edge.acked[-1:] == [5], "acks")
        assert [e.rv for e in edge.applied] == [3, 4, 7, 8, 9, 12, 13]
        assert [e.body for e in edge.applied][:2] == [{"generation": 3}, {"generation": 4}]
        assert [e.seq for e in cloud.applied] == [2, 3, 5]
        # A window of 4: the cloud waited for acks, which are cumulative and increasing.
        assert cloud.acked == sorted(set(cloud.acked)) and len(cloud.acked) >= 2
        assert cloud.session.send_capacity() == edge.session.send_capacity() == CONFIG.window
        await edge.shut("edgecore is stopping")
        await fleet.finished()

    run(main)


def test_backpressure_from_a_one_frame_queue_loses_and_reorders_nothing() -> None:
    async def main() -> None:
        fleet = Fleet(queue_size=1)
        fleet.cloud.outbox = [(rv, {"n": rv}) for rv in range(1, 41)]
        await fleet.start()
        fleet.wake()
        await until(lambda: fleet.cloud.acked[-1:] == [40], "all 40 acked")
        assert [e.rv for e in fleet.edge.applied] == list(range(1, 41))
        await fleet.cloud.shut("done")
        await fleet.finished()

    run(main)


def test_pings_flow_on_the_injected_clock_and_carry_the_heartbeat() -> None:
    async def main() -> None:
        fleet = Fleet()
        await fleet.start()
        assert fleet.cloud.pings == [] and fleet.edge.session.rtt is None
        fleet.clock.advance(CONFIG.ping_interval)
        fleet.wake()
        await until(lambda: fleet.cloud.pings and fleet.edge.pings, "a ping each way")
        await until(lambda: None not in (fleet.cloud.session.rtt, fleet.edge.session.rtt), "rtt")
        assert fleet.cloud.pings == [{"cpu": 0.25}] and fleet.edge.pings == [{}]
        assert fleet.cloud.session.rtt == fleet.edge.session.rtt == 0.0  # the clock stood still
        # Traffic keeps both alive past the dead line of the first ping.
        for _ in range(CONFIG.missed_pings + 1):
            fleet.clock.advance(CONFIG.ping_interval)
            fleet.wake()
            count = len(fleet.cloud.pings)
            await until(lambda c=count: len(fleet.cloud.pings) > c, "the next ping")
        assert fleet.cloud.session.is_open and fleet.edge.session.is_open
        await fleet.cloud.shut("done")
        await fleet.finished()

    run(main)


def test_an_edge_gone_silent_is_timed_out_by_the_cloud_on_the_injected_clock() -> None:
    async def main() -> None:
        clock = FakeClock()
        link = channel_pair(node="edge-1")
        cloud = Side(Role.CLOUD, link.cloud, clock, 0)
        task = asyncio.ensure_future(cloud.serve())
        edge = link.edge  # the test is the edge: hello, then silence
        await edge.send([raw_frame(Op.HELLO, body={"versions": [1], "applied_rv": 0})])
        assert codec.decode(await edge.recv()).op is Op.WELCOME
        clock.advance(CONFIG.ping_interval)
        cloud.wake()
        assert codec.decode(await edge.recv()).op is Op.PING  # never answered
        clock.advance(CONFIG.dead_after - CONFIG.ping_interval - 0.5)
        cloud.wake()
        await until(lambda: edge.queued == 1, "the second ping")
        assert cloud.session.is_open and codec.decode(await edge.recv()).op is Op.PING
        clock.advance(0.5)
        cloud.wake()
        await asyncio.wait_for(task, 5.0)
        error = codec.decode(await edge.recv())
        assert error.op is Op.ERROR and error.body is not None
        assert error.body["code"] == "timeout" and error.body["fatal"] is True
        assert "nothing received from the edge for 12.0s" in error.body["reason"]
        with pytest.raises(PeerClosed, match="code 1000, bye"):
            await edge.recv()
        assert [c.code for c in cloud.closes] == ["timeout"]

    run(main)


def test_a_black_holed_link_times_out_both_drivers() -> None:
    async def main() -> None:
        fleet = Fleet()
        await fleet.start()
        fleet.link.black_hole()
        fleet.clock.advance(CONFIG.dead_after)
        fleet.wake()
        await fleet.finished()
        for side in (fleet.cloud, fleet.edge):
            assert [(c.code, c.by_peer) for c in side.closes] == [("timeout", False)]
            assert side.session.closed and isinstance(side.channel, MemoryChannel)
            assert side.channel.closed == CloseInfo(1000, "bye")

    run(main)


@pytest.mark.parametrize("closer", [Role.CLOUD, Role.EDGE])
def test_a_close_from_either_side_ends_both_drivers(closer: Role) -> None:
    async def main() -> None:
        fleet = Fleet()
        await fleet.start()
        first, other = (
            (fleet.cloud, fleet.edge) if closer is Role.CLOUD else (fleet.edge, fleet.cloud)
        )
        await first.shut("maintenance window")
        await fleet.finished()
        # The closer's own SessionClosed is left unread: shut() is its own record of it.
        assert first.closes == [] and first.lost == []
        assert [(c.code, c.reason, c.by_peer) for c in other.closes] == [
            ("closing", "maintenance window", True)
        ]
        assert other.lost == []  # the protocol close came first, not a broken link
        assert first.session.state is other.session.state is State.CLOSED

    run(main)


def test_a_broken_link_ends_both_drivers_with_link_lost() -> None:
    async def main() -> None:
        fleet = Fleet()
        await fleet.start()
        fleet.link.break_link("cable pulled")
        await fleet.finished()
        for side in (fleet.cloud, fleet.edge):
            assert [type(e) for e in side.lost] == [LinkBroken]
            assert "cable pulled" in str(side.lost[0])
            assert side.session.closed

    run(main)


def test_a_transport_close_without_a_protocol_close_is_a_lost_link() -> None:
    async def main() -> None:
        fleet = Fleet()
        await fleet.start()
        await fleet.link.edge.close(1001, "going away")
        await fleet.finished()
        [lost] = fleet.cloud.lost
        assert isinstance(lost, PeerClosed) and "code 1001, going away" in str(lost)
        assert fleet.cloud.closes == []  # the session closed itself as link_lost, quietly

    run(main)


# ------------------------------------------------------------------ DEBUG trace


def test_at_debug_each_driver_traces_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet()
        fleet.cloud.outbox = [(1, {"env": {"TOKEN": SECRET}})]
        await fleet.start()
        fleet.wake()
        await until(lambda: fleet.cloud.acked == [1], "the ack")
        await fleet.edge.shut("bye")
        await fleet.finished()

    with caplog.at_level(logging.DEBUG, logger="shared.aio.driver"):
        run(main)
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.aio.driver"]
    cloud_lines = [line for line in lines if line.startswith("cloud#")]
    edge_lines = [line for line in lines if line.startswith("edge#")]
    assert len(cloud_lines) + len(edge_lines) == len(lines)
    assert len({line.split()[0] for line in cloud_lines}) == 1  # one id per connection
    cloud_id, edge_id = cloud_lines[0].split()[0], edge_lines[0].split()[0]
    assert cloud_id != edge_id
    assert f"{edge_id} send hello id='edge-000001'" in lines
    assert f"{cloud_id} recv hello id='edge-000001'" in lines
    assert f"{cloud_id} event HelloReceived version=1 applied_rv=0" in lines
    assert f"{cloud_id} send apply id='cloud-000002' res={RES} rv=1" in lines
    assert f"{edge_id} event MessageReceived apply res={RES} cursor=1" in lines
    assert f"{edge_id} send ack id='edge-000002' rv=1" in lines
    assert f"{cloud_id} event AckReceived cursor=1" in lines
    assert f"{edge_id} send error id='edge-000003' code='closing' fatal=True" in lines
    assert f"{cloud_id} event SessionClosed code='closing' reason='bye'" in lines
    assert not [line for line in lines if SECRET in line]  # bodies are never logged


def test_peer_chosen_text_is_escaped_in_the_trace(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        clock = FakeClock()
        link = channel_pair()
        cloud = Side(Role.CLOUD, link.cloud, clock, 0)
        task = asyncio.ensure_future(cloud.serve())
        forged = "h\n2026-12-08 INFO node edge-9 connected\x1b[2K"
        await link.edge.send(
            [raw_frame(Op.HELLO, msg_id=forged, body={"versions": [1], "applied_rv": 0})]
        )
        await link.edge.recv()
        await link.edge.send(
            [raw_frame(Op.ERROR, body={"code": "x\ny", "reason": "r\rz", "fatal": True})]
        )
        await asyncio.wait_for(task, 5.0)

    with caplog.at_level(logging.DEBUG, logger="shared.aio.driver"):
        run(main)
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.aio.driver"]
    assert any(
        "recv hello id='h\\n2026-12-08 INFO node edge-9 connected\\x1b[2K'" in s for s in lines
    )
    assert any("event SessionClosed code='x\\ny' reason='r\\rz'" in s for s in lines)
    assert not [s for s in lines if "\n" in s or "\r" in s or "\x1b" in s]


def test_above_debug_the_trace_hook_stays_unset(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.aio.driver"):
        side = Side(Role.CLOUD, channel_pair().cloud, FakeClock(), 0)
    assert side.session.trace is None


def test_a_trace_hook_set_by_the_application_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    clock = FakeClock()
    session = Session(
        Role.CLOUD, CONFIG, clock.monotonic(), clock.time_ms(), trace=lambda d, i: seen.append(d)
    )
    with caplog.at_level(logging.DEBUG, logger="shared.aio.driver"):
        driver = SessionDriver(session, channel_pair().cloud, clock, "custom")
    assert driver.session.trace is not None and driver.conn_id.startswith("custom#")
    session.close("x", "y", clock.monotonic())
    assert seen == ["send"]


class Handshaking(Side):
    """Opens with the driver's own handshake() before its loops, as both daemons do."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.other: list[object] = []
        self.opened: HelloReceived | WelcomeReceived | None = None

    def handshake_event(self, event: object) -> None:
        self.other.append(event)

    async def open(self) -> None:
        await self.start()
        self.opened = await self.handshake()
        if isinstance(self.opened, HelloReceived):
            self.session.accept(self.cursor, {"node": self.channel.node}, self.clock.monotonic())
            await self.flush()


def test_the_driver_performs_the_handshake_for_both_roles() -> None:
    async def test() -> None:
        clock = FakeClock()
        pair = channel_pair("n1")
        cloud = Handshaking(Role.CLOUD, pair.cloud, clock, 7)
        edge = Handshaking(Role.EDGE, pair.edge, clock, 3)
        await asyncio.gather(cloud.open(), edge.open())
        assert isinstance(cloud.opened, HelloReceived) and cloud.opened.applied_rv == 3
        assert isinstance(edge.opened, WelcomeReceived) and edge.opened.received_seq == 7
        assert cloud.session.state is edge.session.state is State.OPEN
        assert cloud.other == edge.other == []

    run(test)


def test_a_silent_peer_times_the_handshake_out_on_the_session_deadline() -> None:
    async def test() -> None:
        clock = FakeClock()
        pair = channel_pair("n1")
        cloud = Handshaking(Role.CLOUD, pair.cloud, clock, 0)
        opening = asyncio.ensure_future(cloud.open())
        await asyncio.sleep(0.05)
        assert not opening.done()
        clock.advance(CONFIG.handshake_timeout + 0.1)
        await asyncio.wait_for(opening, 5.0)
        assert cloud.opened is None
        assert [type(e) for e in cloud.other] == [SessionClosed]
        assert cloud.other[0].code == "timeout"  # type: ignore[attr-defined]

    run(test)
