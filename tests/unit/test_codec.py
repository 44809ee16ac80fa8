"""The envelope codec: round trips, every limit, and every way a frame can be refused."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from shared.errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    RemoteProtocolError,
    UnknownOperation,
)
from shared.protocol import codec
from shared.protocol.codec import Limits
from shared.protocol.messages import Envelope, Op, parse_resource

BASE: dict[str, Any] = {"v": 1, "op": "ping", "id": "01ABC", "ts": 1_732_400_000_000}

OPTIONAL: dict[str, Any] = {
    "res": "task/default/blink-led",
    "rv": 42,
    "seq": 7,
    "parent": "01PARENT",
    "body": {"spec": {"image": "busybox", "args": ["a", 1, 2.5, None, True]}, "n": -3},
}


def frame(**fields: Any) -> bytes:
    """A raw frame: BASE with `fields` merged in (a value of ... removes the field)."""
    doc = {**BASE, **fields}
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def body_of_depth(total: int, container: str = "list") -> dict[str, Any]:
    """A body whose envelope nests exactly `total` levels (envelope = 1, body = 2)."""
    assert total >= 2
    inner: Any = 1
    for _ in range(total - 2):
        inner = [inner] if container == "list" else {"k": inner}
    return {"k": inner}


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


# ------------------------------------------------------------------ round trips

FIELD_SETS = [(), *[(name,) for name in OPTIONAL], tuple(OPTIONAL)]


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
@pytest.mark.parametrize("fields", FIELD_SETS, ids=lambda f: "+".join(f) or "bare")
def test_round_trip_every_op_and_optional_field(op: Op, fields: tuple[str, ...]) -> None:
    env = Envelope(op=op, id="01HZX", ts=1_732_400_000_123, **{f: OPTIONAL[f] for f in fields})
    data = codec.encode(env)
    assert isinstance(data, bytes)
    # Absent optional fields are not written at all (not written as null).
    assert set(orjson.loads(data)) == {"v", "op", "id", "ts", *fields}
    assert codec.decode(data) == env


def test_round_trip_of_empty_body_keeps_it_distinct_from_no_body() -> None:
    with_body = Envelope(op=Op.PING, id="x", ts=0, body={})
    without = Envelope(op=Op.PING, id="x", ts=0)
    assert codec.decode(codec.encode(with_body)).body == {}
    assert codec.decode(codec.encode(without)).body is None


def test_decode_accepts_str_and_bytes_alike() -> None:
    env = Envelope(op=Op.REPORT, id="é-1", ts=5, res="twin/ns/x", seq=3, body={"t": "ünï ✓"})
    data = codec.encode(env)
    assert codec.decode(data) == env
    assert codec.decode(data.decode("utf-8")) == env


def test_extreme_cursor_values_round_trip() -> None:
    top = (1 << 63) - 1
    env = Envelope(op=Op.APPLY, id="a", ts=-1, res="node/a/b", rv=top, seq=0)
    assert codec.decode(codec.encode(env)) == env


def test_unknown_top_level_fields_are_ignored() -> None:
    env = codec.decode(frame(extra={"anything": [1, 2]}, trace="x"))
    assert env == Envelope(op=Op.PING, id=BASE["id"], ts=BASE["ts"])


# ------------------------------------------------------------------ frame size


def test_frame_exactly_at_the_limit_is_accepted_one_byte_over_is_not() -> None:
    data = frame(body={"pad": "x" * 40})
    assert codec.decode(data, Limits(max_frame_bytes=len(data))).body == {"pad": "x" * 40}
    with pytest.raises(FrameTooLarge):
        codec.decode(data, Limits(max_frame_bytes=len(data) - 1))


def test_frame_size_of_str_is_counted_in_utf8_bytes() -> None:
    text = frame(body={"pad": "é" * 20}).decode("utf-8")
    n_bytes = len(text.encode("utf-8"))
    assert len(text) < n_bytes
    assert codec.decode(text, Limits(max_frame_bytes=n_bytes)).body == {"pad": "é" * 20}
    with pytest.raises(FrameTooLarge):
        codec.decode(text, Limits(max_frame_bytes=len(text)))


def test_frame_size_is_checked_before_parsing() -> None:
    # Not JSON at all, but too large: the size verdict wins.
    with pytest.raises(FrameTooLarge):
        codec.decode(b"\xff" * 101, Limits(max_frame_bytes=100))
    with pytest.raises(MalformedMessage):
        codec.decode(b"\xff" * 100, Limits(max_frame_bytes=100))


def test_encode_at_the_limit_and_one_byte_over() -> None:
    env = Envelope(op=Op.APPLY, id="a", ts=1, res="task/ns/n", rv=1, body={"x": "y" * 100})
    size = len(codec.encode(env))
    assert len(codec.encode(env, Limits(max_frame_bytes=size))) == size
    with pytest.raises(LocalProtocolError, match="frame limit"):
        codec.encode(env, Limits(max_frame_bytes=size - 1))


def test_encode_of_an_oversized_body_is_a_local_error() -> None:
    env = Envelope(op=Op.CHUNK, id="a", ts=1, res="model/ns/m", rv=1, body={"data": "A" * 2_000})
    with pytest.raises(LocalProtocolError) as info:
        codec.encode(env, Limits(max_frame_bytes=1_000))
    assert not isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize(
    "body",
    [
        {"x": {1, 2}},
        {"x": object()},
        {"x": b"bytes"},
        {1: "int key"},
        {"x": 1 << 64},
    ],
    ids=["set", "object", "bytes", "int-key", "int-over-64-bit"],
)
def test_encode_of_a_non_serialisable_body_is_a_local_error(body: dict[Any, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="not JSON-serialisable"):
        codec.encode(Envelope(op=Op.REPORT, id="a", ts=1, res="node/a/b", seq=1, body=body))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_floats_are_encoded_as_null(value: float) -> None:
    # JSON has no NaN/Infinity; the codec documents that they travel as null.
    env = Envelope(op=Op.REPORT, id="a", ts=1, res="node/a/b", seq=1, body={"temp": value})
    assert codec.decode(codec.encode(env)).body == {"temp": None}


# ------------------------------------------------------------------ depth


@pytest.mark.parametrize("container", ["list", "dict"])
@pytest.mark.parametrize("max_depth", [2, 3, 8])
def test_depth_at_the_limit_is_accepted_one_deeper_is_not(container: str, max_depth: int) -> None:
    limits = Limits(max_depth=max_depth)
    ok_body = body_of_depth(max_depth, container)
    assert depth_of({"body": ok_body}) == max_depth
    assert codec.decode(frame(body=ok_body), limits).body == ok_body
    deep_body = body_of_depth(max_depth + 1, container)
    with pytest.raises(MalformedMessage, match="nesting"):
        codec.decode(frame(body=deep_body), limits)


def test_depth_counts_the_envelope_itself() -> None:
    limits = Limits(max_depth=1)
    assert codec.decode(frame(), limits).body is None
    with pytest.raises(MalformedMessage, match="nesting"):
        codec.decode(frame(body={}), limits)


def test_depth_applies_to_unknown_top_level_fields_too() -> None:
    with pytest.raises(MalformedMessage, match="nesting"):
        codec.decode(frame(extra=[[[]]]), Limits(max_depth=3))
    assert codec.decode(frame(extra=[[]]), Limits(max_depth=3)).op is Op.PING


def test_default_depth_limit_rejects_deep_nesting() -> None:
    deep = body_of_depth(codec.DEFAULT_LIMITS.max_depth + 1)
    with pytest.raises(MalformedMessage):
        codec.decode(frame(body=deep))


def test_nesting_beyond_the_json_parser_limit_is_malformed() -> None:
    data = b'{"v":1,"op":"ping","id":"a","ts":1,"body":{"k":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    with pytest.raises(MalformedMessage):
        codec.decode(data, Limits(max_depth=10_000))


# ------------------------------------------------------------------ strings and keys


@pytest.mark.parametrize(
    "make_body",
    [
        lambda s: {"s": s},
        lambda s: {"l": ["ok", s]},
        lambda s: {"d": {"e": s}},
    ],
    ids=["value", "in-array", "nested"],
)
def test_string_length_at_the_limit_and_one_over(make_body: Any) -> None:
    limits = Limits(max_string_chars=10)
    assert codec.decode(frame(body=make_body("é" * 10)), limits).body == make_body("é" * 10)
    with pytest.raises(MalformedMessage, match="string of 11 chars"):
        codec.decode(frame(body=make_body("a" * 11)), limits)


def test_top_level_string_fields_obey_the_string_limit() -> None:
    with pytest.raises(MalformedMessage, match="string"):
        codec.decode(frame(id="a" * 11), Limits(max_string_chars=10))


@pytest.mark.parametrize(
    "make_body",
    [lambda k: {k: 1}, lambda k: {"d": {k: 1}}, lambda k: {"l": [{k: 1}]}],
    ids=["body", "nested", "in-array"],
)
def test_key_length_at_the_limit_and_one_over(make_body: Any) -> None:
    limits = Limits(max_string_chars=10)
    assert codec.decode(frame(body=make_body("k" * 10)), limits).body == make_body("k" * 10)
    with pytest.raises(MalformedMessage, match="key of 11 chars"):
        codec.decode(frame(body=make_body("k" * 11)), limits)


# ------------------------------------------------------------------ item counts


def test_object_members_at_the_limit_and_one_over() -> None:
    limits = Limits(max_items=5)
    five = {str(i): i for i in range(5)}
    assert codec.decode(frame(body={"o": five}), limits).body == {"o": five}
    with pytest.raises(MalformedMessage, match="object with 6 members"):
        codec.decode(frame(body={"o": {**five, "5": 5}}), limits)


def test_array_elements_at_the_limit_and_one_over() -> None:
    limits = Limits(max_items=5)
    assert codec.decode(frame(body={"a": list(range(5))}), limits).body == {"a": list(range(5))}
    with pytest.raises(MalformedMessage, match="array of 6 elements"):
        codec.decode(frame(body={"a": list(range(6))}), limits)


def test_item_limit_applies_to_the_envelope_object() -> None:
    limits = Limits(max_items=5)
    assert codec.decode(frame(body={}), limits).body == {}  # v, op, id, ts, body
    with pytest.raises(MalformedMessage, match="object with 6 members"):
        codec.decode(frame(body={}, parent="p"), limits)


# ------------------------------------------------------------------ ids


@pytest.mark.parametrize("max_id", [8, 64])
def test_id_length_limits(max_id: int) -> None:
    limits = Limits(max_id_chars=max_id)
    assert codec.decode(frame(id="i" * max_id), limits).id == "i" * max_id
    with pytest.raises(MalformedMessage, match="'id'"):
        codec.decode(frame(id="i" * (max_id + 1)), limits)
    assert codec.decode(frame(parent="p" * max_id), limits).parent == "p" * max_id
    with pytest.raises(MalformedMessage, match="'parent'"):
        codec.decode(frame(parent="p" * (max_id + 1)), limits)


def test_empty_id_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="'id'"):
        codec.decode(frame(id=""))


def test_default_id_limit_is_the_documented_64() -> None:
    assert codec.decode(frame(id="x" * 64)).id == "x" * 64
    with pytest.raises(MalformedMessage):
        codec.decode(frame(id="x" * 65))


# ------------------------------------------------------------------ syntax and shape

MALFORMED_JSON = [
    b"",
    b" ",
    b"{",
    b'{"v":1',
    b"{'v': 1}",
    b'{"v":1,}',
    b'{"v":1,"op":"ping","id":"a","ts":1} trailing',
    b'{"v":1,"op":"ping","id":"a","ts":NaN}',
    b'{"v":1,"op":"ping","id":"a","ts":Infinity}',
    b'{"v":1,"op":"ping","id":"\xff\xfe","ts":1}',
    b'{"v":1,"op":"ping","id":"\\ud800","ts":1}',
    b'\xef\xbb\xbf{"v":1,"op":"ping","id":"a","ts":1}',
    b"\x00",
    b"nul",
]


@pytest.mark.parametrize("data", MALFORMED_JSON, ids=range(len(MALFORMED_JSON)))
def test_malformed_json(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        codec.decode(data)


def test_lone_surrogate_in_str_frame_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        codec.decode('{"v":1,"op":"ping","id":"\ud800","ts":1}')


@pytest.mark.parametrize(
    "data", [b"[]", b'[{"v":1}]', b"1", b"-2.5", b'"ping"', b"null", b"true"], ids=str
)
def test_top_level_must_be_an_object(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="JSON object"):
        codec.decode(data)


@pytest.mark.parametrize("name", ["v", "op", "id", "ts"])
def test_missing_required_field(name: str) -> None:
    with pytest.raises(MalformedMessage, match=repr(name)):
        codec.decode(frame(**{name: ...}))


@pytest.mark.parametrize("name", ["v", "op", "id", "ts"])
def test_null_required_field_counts_as_missing(name: str) -> None:
    with pytest.raises(MalformedMessage, match="missing"):
        codec.decode(frame(**{name: None}))


WRONG_TYPES: dict[str, list[Any]] = {
    "v": ["1", 1.0, True, False, [1], {"v": 1}],
    "op": [1, True, ["ping"], {"op": "ping"}],
    "id": [1, 1.5, True, ["a"], {"id": "a"}],
    "ts": ["1", 1.5, True, [1], {}],
    "res": [1, True, ["task/a/b"], {}],
    "rv": ["1", 1.5, True, False, [1], {}],
    "seq": ["1", 1.0, True, False, [1], {}],
    "parent": [1, False, ["p"], {}],
    "body": [[], "x", 1, 1.5, True, ["k", 1]],
}
WRONG_TYPE_CASES = [(name, value) for name, values in WRONG_TYPES.items() for value in values]


@pytest.mark.parametrize(
    ("name", "value"), WRONG_TYPE_CASES, ids=[f"{n}={v!r}" for n, v in WRONG_TYPE_CASES]
)
def test_wrong_type_for_each_field(name: str, value: Any) -> None:
    with pytest.raises(MalformedMessage, match=repr(name)):
        codec.decode(frame(**{name: value}))


@pytest.mark.parametrize("name", ["rv", "seq"])
@pytest.mark.parametrize("value", [-1, -(1 << 63), 1 << 63, (1 << 64) - 1, 1 << 64, 10**30])
def test_cursor_out_of_range(name: str, value: int) -> None:
    data = frame().replace(b"}", f',"{name}":{value}}}'.encode())
    with pytest.raises(MalformedMessage, match=repr(name)):
        codec.decode(data)


@pytest.mark.parametrize("name", ["rv", "seq"])
@pytest.mark.parametrize("value", [0, 1, (1 << 63) - 1])
def test_cursor_in_range(name: str, value: int) -> None:
    assert getattr(codec.decode(frame(**{name: value})), name) == value


@pytest.mark.parametrize("op", ["frobnicate", "APPLY", "Ping", "ping ", "", "x" * 500])
def test_unknown_op(op: str) -> None:
    with pytest.raises(UnknownOperation) as info:
        codec.decode(frame(op=op))
    assert len(str(info.value)) < 200  # the peer's op is truncated in the message


BAD_RESOURCES = [
    "bogus/ns/name",
    "Task/ns/name",
    "task/ns",
    "task",
    "task/ns/name/extra",
    "task//name",
    "task/ns/",
    "/ns/name",
    "task/n s/name",
    "task/ns/na$me",
    "task/ns/na:me",
    "task/ns/é",
    "task/ns/" + "n" * 64,
    "task/" + "n" * 64 + "/name",
    "",
]


@pytest.mark.parametrize("res", BAD_RESOURCES)
def test_bad_resource_names(res: str) -> None:
    with pytest.raises(MalformedMessage, match="resource"):
        codec.decode(frame(res=res))


@pytest.mark.parametrize(
    "res",
    [
        "node/default/pi-1",
        "device/ns_1/cam.0",
        "model/a/" + "n" * 63,
        "config/" + "n" * 63 + "/x",
        "twin/A-Z/a_z",
    ],
)
def test_good_resource_names(res: str) -> None:
    assert codec.decode(frame(res=res)).res == res


# ------------------------------------------------------------------ error hierarchy

ALL_BAD_FRAMES: list[tuple[bytes, Limits]] = [
    (frame(body={"pad": "x" * 50}), Limits(max_frame_bytes=60)),
    (b"{", codec.DEFAULT_LIMITS),
    (b"[]", codec.DEFAULT_LIMITS),
    (frame(v=...), codec.DEFAULT_LIMITS),
    (frame(rv=True), codec.DEFAULT_LIMITS),
    (frame(op="nope"), codec.DEFAULT_LIMITS),
    (frame(res="task/a"), codec.DEFAULT_LIMITS),
    (frame(body=body_of_depth(5)), Limits(max_depth=4)),
    (frame(body={"s": "x" * 6}), Limits(max_string_chars=5)),
    (frame(body={"a": [1, 2, 3]}), Limits(max_items=2)),
    (frame(id="x" * 9), Limits(max_id_chars=8)),
]


@pytest.mark.parametrize(("data", "limits"), ALL_BAD_FRAMES, ids=range(len(ALL_BAD_FRAMES)))
def test_every_decode_error_is_a_remote_protocol_error(data: bytes, limits: Limits) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(data, limits)
    assert isinstance(info.value, RemoteProtocolError)
    assert not isinstance(info.value, LocalProtocolError)
    assert type(info.value) in (FrameTooLarge, MalformedMessage, UnknownOperation)


def test_error_codes_are_distinct_per_class() -> None:
    codes = {cls.code for cls in (FrameTooLarge, MalformedMessage, UnknownOperation)}
    assert codes == {"frame_too_large", "malformed", "unknown_op"}
    assert RemoteProtocolError.code not in codes


@pytest.mark.parametrize("segment", [".", ".."])
def test_dot_segments_are_refused(segment: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_resource(f"task/{segment}/x")
    with pytest.raises(MalformedMessage):
        parse_resource(f"task/default/{segment}")
