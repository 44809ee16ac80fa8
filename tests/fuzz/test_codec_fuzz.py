"""Property tests: the codec and the session never fail in ways the peer can exploit.

The codec may only raise RemoteProtocolError subclasses for anything a peer sends; the
session may raise nothing at all for peer input and must end up open or cleanly closed.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.errors import RemoteProtocolError
from shared.protocol import codec
from shared.protocol.codec import Limits
from shared.protocol.events import ErrorReceived, SessionClosed
from shared.protocol.messages import RESOURCE_KINDS, Envelope, Op
from shared.protocol.session import Session
from shared.protocol.states import Role, State
from tests.helpers.session_pair import make_pair, open_pair, transfer

FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CURSOR = st.integers(min_value=0, max_value=(1 << 63) - 1)
ANY_INT = st.one_of(
    st.integers(min_value=-10, max_value=10),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
)
# Surrogates included: orjson refuses them on both sides, which must stay a clean error.
ANY_TEXT = st.text(
    st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from('"\\/\x00')),
    max_size=20,
)
SCALARS = st.one_of(st.none(), st.booleans(), ANY_INT, st.floats(), ANY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(ANY_TEXT, children, max_size=5)
    ),
    max_leaves=15,
)

FIELD_NAMES = st.sampled_from(["v", "op", "id", "ts", "res", "rv", "seq", "parent", "body"])
OP_NAMES = st.one_of(st.sampled_from([op.value for op in Op]), ANY_TEXT)
SMALL_LIMITS = st.builds(
    Limits,
    max_frame_bytes=st.integers(min_value=0, max_value=4096),
    max_depth=st.integers(min_value=0, max_value=8),
    max_string_chars=st.integers(min_value=0, max_value=64),
    max_items=st.integers(min_value=0, max_value=12),
    max_id_chars=st.integers(min_value=0, max_value=70),
)
ANY_LIMITS = st.one_of(st.just(codec.DEFAULT_LIMITS), SMALL_LIMITS)


def serialise(doc: Any, ensure_ascii: bool) -> bytes | None:
    """JSON text for any value (big ints, NaN, surrogates), or None if even json refuses."""
    try:
        return json.dumps(doc, ensure_ascii=ensure_ascii, allow_nan=True).encode(
            "utf-8", "surrogatepass"
        )
    except (ValueError, TypeError, RecursionError):
        return None


def check_envelope(env: Envelope, limits: Limits) -> None:
    """What a successfully decoded envelope guarantees to the code that uses it."""
    assert isinstance(env, Envelope) and isinstance(env.op, Op)
    for value in (env.v, env.ts):
        assert type(value) is int
    assert isinstance(env.id, str) and 0 < len(env.id) <= limits.max_id_chars
    assert env.parent is None or (
        isinstance(env.parent, str) and len(env.parent) <= limits.max_id_chars
    )
    for cursor in (env.rv, env.seq):
        assert cursor is None or (type(cursor) is int and 0 <= cursor < 1 << 63)
    assert env.res is None or env.res.split("/")[0] in RESOURCE_KINDS
    assert env.body is None or isinstance(env.body, dict)


def decode_or_refuse(data: bytes | str, limits: Limits = codec.DEFAULT_LIMITS) -> None:
    try:
        env = codec.decode(data, limits)
    except RemoteProtocolError:
        return
    check_envelope(env, limits)


# ------------------------------------------------------------------ decode never crashes


@FAST
@given(data=st.binary(max_size=512), limits=ANY_LIMITS)
def test_random_bytes_only_raise_remote_protocol_errors(data: bytes, limits: Limits) -> None:
    decode_or_refuse(data, limits)


@FAST
@given(text=ANY_TEXT | st.text(max_size=100), limits=ANY_LIMITS)
def test_random_text_only_raises_remote_protocol_errors(text: str, limits: Limits) -> None:
    decode_or_refuse(text, limits)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with a few bytes flipped, inserted or removed."""
    data = bytearray(draw(envelopes().map(codec.encode)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        pos = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from(b'{}[]",:0-9.eE\\ntfu\x00\xff'))
        if action == "insert" or pos == len(data):
            data.insert(pos, byte)
        elif action == "flip":
            data[pos] = byte
        else:
            del data[pos]
    return bytes(data)


@FAST
@given(data=mutated_frames())
def test_mutated_frames_only_raise_remote_protocol_errors(data: bytes) -> None:
    decode_or_refuse(data)


@st.composite
def json_documents(draw: st.DrawFn) -> Any:
    """Almost-valid envelopes: random JSON as the body, as any field and as extra fields."""
    doc: dict[str, Any] = {
        "v": 1,
        "op": draw(OP_NAMES),
        "id": draw(st.text(min_size=1, max_size=64)),
        "ts": draw(st.integers(min_value=0, max_value=1 << 62)),
    }
    if draw(st.booleans()):
        doc["body"] = draw(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=6))
    for name in draw(st.lists(FIELD_NAMES, max_size=4)):
        doc[name] = draw(JSON_VALUES)
    for name in draw(st.lists(FIELD_NAMES, max_size=2)):
        doc.pop(name, None)
    extra = draw(st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=3))
    doc.update({k: v for k, v in extra.items() if k not in doc})
    return draw(st.one_of(st.just(doc), JSON_VALUES))


@FAST
@given(doc=json_documents(), ensure_ascii=st.booleans(), as_text=st.booleans(), limits=ANY_LIMITS)
def test_random_json_only_raises_remote_protocol_errors(
    doc: Any, ensure_ascii: bool, as_text: bool, limits: Limits
) -> None:
    data = serialise(doc, ensure_ascii)
    assume(data is not None)
    assert data is not None
    if as_text:
        decode_or_refuse(data.decode("utf-8", "surrogatepass"), limits)
    else:
        decode_or_refuse(data, limits)


# ------------------------------------------------------------------ valid envelopes round-trip

SAFE_TEXT = st.text(max_size=30)  # no surrogates: the wire is UTF-8
SAFE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    SAFE_TEXT,
)
SAFE_VALUES = st.recursive(
    SAFE_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(SAFE_TEXT, children, max_size=5)
    ),
    max_leaves=30,
)
SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
    min_size=1,
    max_size=63,
).filter(lambda seg: seg not in (".", ".."))  # path-like segments are refused
RESOURCES = st.builds(
    lambda kind, ns, name: f"{kind}/{ns}/{name}",
    st.sampled_from(sorted(RESOURCE_KINDS)),
    SEGMENT,
    SEGMENT,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    maybe = st.booleans()
    return Envelope(
        op=draw(st.sampled_from(list(Op))),
        id=draw(st.text(min_size=1, max_size=64)),
        ts=draw(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)),
        res=draw(RESOURCES) if draw(maybe) else None,
        rv=draw(CURSOR) if draw(maybe) else None,
        seq=draw(CURSOR) if draw(maybe) else None,
        parent=draw(st.text(min_size=1, max_size=64)) if draw(maybe) else None,
        body=draw(st.dictionaries(SAFE_TEXT, SAFE_VALUES, max_size=6)) if draw(maybe) else None,
        v=draw(st.integers(min_value=0, max_value=1 << 31)),
    )


@FAST
@given(env=envelopes(), as_text=st.booleans())
def test_valid_envelopes_round_trip_exactly(env: Envelope, as_text: bool) -> None:
    data = codec.encode(env)
    assert isinstance(data, bytes)
    decoded = codec.decode(data.decode("utf-8") if as_text else data)
    assert decoded == env
    # Equal is not enough for JSON numbers: 1 == 1.0 == True. Compare the wire forms.
    assert codec.encode(decoded) == data


# ------------------------------------------------------------------ sessions never raise

SESSION_KEYS = st.sampled_from(
    ["versions", "applied_rv", "version", "received_seq", "code", "reason", "fatal"]
)


@st.composite
def peer_frames(draw: st.DrawFn) -> bytes | str:
    """Frames a confused or hostile peer might send: mostly well-formed, often wrong."""
    kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        data = serialise(draw(json_documents()), draw(st.booleans()))
        return data if data is not None else b"{"
    doc: dict[str, Any] = {
        "v": 1,
        "op": draw(st.sampled_from([op.value for op in Op]) | OP_NAMES),
        "id": draw(st.text(min_size=1, max_size=8)),
        "ts": 0,
    }
    small_cursor = st.integers(min_value=-1, max_value=12) | CURSOR
    if draw(st.booleans()):
        doc["rv"] = draw(small_cursor)
    if draw(st.booleans()):
        doc["seq"] = draw(small_cursor)
    if draw(st.booleans()):
        doc["res"] = draw(st.sampled_from(["task/default/a", "model/x/y", "bad"]))
    if draw(st.booleans()):
        doc["parent"] = draw(st.text(max_size=8))
    if draw(st.booleans()):
        versions = st.lists(st.integers(min_value=0, max_value=3) | JSON_VALUES, max_size=3)
        doc["body"] = draw(
            st.dictionaries(
                SESSION_KEYS,
                st.one_of(st.integers(min_value=-1, max_value=3), versions, JSON_VALUES),
                max_size=4,
            )
        )
    data = serialise(doc, draw(st.booleans()))
    return data if data is not None else b"{"


SETUPS = ["cloud-fresh", "cloud-hello", "cloud-open", "edge-fresh", "edge-hello", "edge-open"]


def make_session(setup: str) -> tuple[Session, float]:
    """A session in the named state, with its pending frames and events drained."""
    if setup.endswith("open"):
        pair = open_pair(applied_rv=3, received_seq=3)
        session = pair.cloud if setup.startswith("cloud") else pair.edge
        op = Op.APPLY if session.role is Role.CLOUD else Op.REPORT
        session.send(op, "task/default/a", 4, {"x": 1}, pair.now)
        session.send(op, "task/default/a", 6, None, pair.now)
    else:
        pair = make_pair()
        if setup.endswith("hello"):
            pair.edge.send_hello(3, {}, pair.now)
            transfer(pair.edge, pair.cloud, pair.now)
        session = pair.cloud if setup.startswith("cloud") else pair.edge
    session.data_to_send()
    session.events_received()
    return session, pair.now


@FAST
@given(
    setup=st.sampled_from(SETUPS),
    frames=st.lists(peer_frames(), min_size=1, max_size=6),
    tick=st.booleans(),
)
def test_sessions_survive_any_peer_frames(setup: str, frames: list[bytes], tick: bool) -> None:
    session, now = make_session(setup)
    before = session.state
    events = []
    for i, frame in enumerate(frames):
        session.receive_frame(frame, now + i)  # must never raise
        if tick:
            session.handle_timer(now + i)
        events.extend(session.events_received())
    closes = [e for e in events if isinstance(e, SessionClosed)]
    if session.state is State.CLOSED:
        assert len(closes) == 1 and events[-1] is closes[0]
        closed = closes[0]
        if closed.by_peer:
            assert isinstance(events[-2], ErrorReceived) and events[-2].fatal
        elif session.close_error is not None:
            assert isinstance(session.close_error, RemoteProtocolError)
            assert closed.code == session.close_error.code
        assert session.next_deadline() is None
    else:
        assert closes == []
        assert session.state in (before, State.OPEN, State.HELLO_RECEIVED)
        assert session.next_deadline() is not None
    # Whatever the session queued is a valid frame the peer can decode.
    out = session.data_to_send()
    for data in out:
        check_envelope(codec.decode(data, session.config.limits), session.config.limits)
    if session.state is State.CLOSED and not closes[0].by_peer:
        last = codec.decode(out[-1])
        assert last.op is Op.ERROR and last.body is not None and last.body["fatal"] is True


@FAST
@given(frames=st.lists(peer_frames(), min_size=1, max_size=4), data=st.data())
def test_a_pair_survives_injected_frames_both_ways(
    frames: list[bytes], data: st.DataObject
) -> None:
    """Random frames injected into a live conversation: nothing raises, closes propagate."""
    pair = open_pair()
    for frame in frames:
        target = data.draw(st.sampled_from([pair.edge, pair.cloud]))
        target.receive_frame(frame, pair.now)
        pair.pump()
    edge_events, cloud_events = pair.drain()
    for session, events, peer in (
        (pair.edge, edge_events, pair.cloud),
        (pair.cloud, cloud_events, pair.edge),
    ):
        closes = [e for e in events if isinstance(e, SessionClosed)]
        assert len(closes) == (0 if session.is_open else 1)
        if closes and not closes[0].by_peer:
            # We told the peer why; it is closed too (by us, or earlier by an injected error).
            assert not peer.is_open
