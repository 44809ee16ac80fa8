"""Message ids: injected per session, reproducible when seeded, unique ULIDs by default."""

from __future__ import annotations

import random
import re

import pytest

from shared.clock import FakeClock
from shared.ids import CounterIds, IdSource, new_ulid, ulid_source
from shared.protocol import codec
from shared.protocol.messages import Op
from shared.protocol.session import Session, SessionConfig
from shared.protocol.states import Role
from tests.helpers.session_pair import make_pair, transfer

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
RES = "task/default/blink"
TIMED = SessionConfig(ping_interval=4.0, missed_pings=3, handshake_timeout=8.0, window=8)


def _crockford_time_ms(ulid: str) -> int:
    """The 48-bit time of a ULID (its first 10 characters)."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    value = 0
    for char in ulid[:10]:
        value = value * 32 + alphabet.index(char)
    return value


def whole_exchange(edge_ids: IdSource | None, cloud_ids: IdSource | None) -> list[bytes]:
    """Every frame of a scripted session pair, in the order it crossed the wire:
    handshake, reliable sends both ways, cumulative acks, a non-fatal error, pings
    and pongs, and a close."""
    clock = FakeClock(start=10.0, wall_ms=1_700_000_000_000)
    pair = make_pair(TIMED, TIMED, clock, edge_ids=edge_ids, cloud_ids=cloud_ids)
    wire: list[bytes] = []

    def edge_to_cloud() -> None:
        wire.extend(transfer(pair.edge, pair.cloud, pair.now))

    def cloud_to_edge() -> None:
        wire.extend(transfer(pair.cloud, pair.edge, pair.now))

    pair.edge.send_hello(0, {"software": "edgecore/test"}, pair.now)
    edge_to_cloud()
    clock.advance(0.001)
    pair.cloud.accept(0, {"node": "edge-1"}, pair.now)
    cloud_to_edge()
    for rv in (1, 2, 5):
        clock.advance(0.002)
        pair.cloud.send(Op.APPLY, RES, rv, {"generation": rv}, pair.now)
    cloud_to_edge()
    pair.edge.ack(5, pair.now)
    for seq in (1, 2):
        pair.edge.send(Op.REPORT, RES, seq, {"phase": "running"}, pair.now)
    edge_to_cloud()
    pair.cloud.send_error("forbidden", "not yours", "some-id", pair.now)
    pair.cloud.ack(2, pair.now)
    cloud_to_edge()
    clock.advance(TIMED.ping_interval)
    pair.tick()
    edge_to_cloud()  # the edge's ping, and the cloud's pong is queued
    cloud_to_edge()  # the cloud's ping and pong
    edge_to_cloud()  # the edge's pong
    pair.edge.close("shutdown", "edgecore stopping", pair.now)
    edge_to_cloud()
    assert pair.edge.closed and pair.cloud.closed
    return wire


def test_seeded_id_sources_make_every_frame_of_an_exchange_reproducible() -> None:
    first = whole_exchange(ulid_source(random.Random(1)), ulid_source(random.Random(2)))
    second = whole_exchange(ulid_source(random.Random(1)), ulid_source(random.Random(2)))
    assert len(first) >= 14
    assert first == second
    ops = [codec.decode(frame).op for frame in first]
    assert ops[:2] == [Op.HELLO, Op.WELCOME] and ops[-1] is Op.ERROR
    assert {Op.APPLY, Op.REPORT, Op.ACK, Op.PING, Op.PONG} <= set(ops)
    # The ids really come from the sources: another seed changes them and nothing else.
    other = whole_exchange(ulid_source(random.Random(3)), ulid_source(random.Random(2)))
    assert other != first
    for mine, theirs in zip(first, other, strict=True):
        a, b = codec.decode(mine), codec.decode(theirs)
        assert (a.op, a.ts, a.res, a.rv, a.seq, a.body) == (b.op, b.ts, b.res, b.rv, b.seq, b.body)


def test_counter_ids_number_each_sides_messages_in_order() -> None:
    wire = whole_exchange(CounterIds("edge"), CounterIds("cloud"))
    envelopes = [codec.decode(frame) for frame in wire]
    edge_ids = [e.id for e in envelopes if e.id.startswith("edge-")]
    cloud_ids = [e.id for e in envelopes if e.id.startswith("cloud-")]
    assert len(edge_ids) + len(cloud_ids) == len(envelopes)
    assert edge_ids == [f"edge-{n:06d}" for n in range(1, len(edge_ids) + 1)]
    assert cloud_ids == [f"cloud-{n:06d}" for n in range(1, len(cloud_ids) + 1)]
    # A pong names the ping it answers, by the id the other side's source made.
    pongs = [e for e in envelopes if e.op is Op.PONG]
    pings = {e.id for e in envelopes if e.op is Op.PING}
    assert len(pongs) == 2 and {p.parent for p in pongs} == pings


def test_default_ids_are_unique_time_ordered_ulids() -> None:
    clock = FakeClock(start=0.0, wall_ms=1_700_000_000_000)
    session = Session(Role.CLOUD, SessionConfig(window=5000), clock.monotonic(), clock.time_ms())
    hello = b'{"v":1,"id":"h","ts":1,"op":"hello","body":{"versions":[1],"applied_rv":0}}'
    session.receive_frame(hello, clock.monotonic())
    session.accept(0, {}, clock.monotonic())
    ids = []
    for rv in range(1, 2001):
        if rv % 500 == 0:
            clock.advance(0.25)
        ids.append(session.send(Op.APPLY, RES, rv, None, clock.monotonic()))
    assert len(set(ids)) == len(ids)
    assert all(ULID.match(msg_id) for msg_id in ids)
    assert _crockford_time_ms(ids[0]) == 1_700_000_000_000
    assert _crockford_time_ms(ids[-1]) == clock.time_ms()
    times = [_crockford_time_ms(msg_id) for msg_id in ids]
    assert times == sorted(times)


def test_default_sources_share_no_state_with_the_global_random() -> None:
    def ids_after_seeding_the_global_random() -> list[str]:
        random.seed(1234)
        pair = make_pair()
        pair.edge.send_hello(0, {}, pair.now)
        transfer(pair.edge, pair.cloud, pair.now)
        pair.cloud.accept(0, {}, pair.now)
        transfer(pair.cloud, pair.edge, pair.now)
        return [pair.edge.send(Op.REPORT, RES, seq, None, pair.now) for seq in (1, 2, 3)]

    state = random.getstate()
    first = ids_after_seeding_the_global_random()
    second = ids_after_seeding_the_global_random()
    # Same global seed, same clock: equal ids would mean the sessions drew from `random`.
    assert set(first).isdisjoint(second)
    random.setstate(state)
    pair = make_pair()
    pair.edge.send_hello(0, {}, pair.now)
    transfer(pair.edge, pair.cloud, pair.now)
    pair.cloud.accept(0, {}, pair.now)
    assert random.getstate() == state  # nothing drawn from the process-wide generator


def test_two_default_sessions_do_not_repeat_each_others_ids() -> None:
    a, b = ulid_source(), ulid_source()
    assert {a(1_700_000_000_000) for _ in range(500)}.isdisjoint(
        {b(1_700_000_000_000) for _ in range(500)}
    )


def test_ulid_source_and_new_ulid_agree_on_the_format() -> None:
    state = random.getstate()
    random.seed(99)
    expected = new_ulid(1_700_000_000_123)
    random.setstate(state)
    assert ulid_source(random.Random(99))(1_700_000_000_123) == expected
    assert ULID.match(expected) and _crockford_time_ms(expected) == 1_700_000_000_123


@pytest.mark.parametrize("prefix", ["", "p" * 41])
def test_counter_ids_refuse_a_prefix_that_makes_bad_ids(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix must be 1-40 characters"):
        CounterIds(prefix)


def test_counter_ids_fit_the_envelope_id_limit() -> None:
    source = CounterIds("p" * 40, start=10**15)
    msg_id = source(0)
    assert len(msg_id) <= codec.DEFAULT_LIMITS.max_id_chars
