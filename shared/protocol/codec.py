"""JSON codec for envelopes with hard limits (docs/protocol.md §3).

Limits are enforced in three places, cheapest first:
1. the frame's byte length, before any parsing (FrameTooLarge);
2. during parsing, orjson refuses nesting deeper than 1024 levels, so a
   hostile frame cannot exhaust the stack; memory is already bounded by 1;
3. right after parsing, before any field is used: nesting depth, string
   lengths and container sizes against the configured `Limits`, then the
   envelope's field types.

All failures raise subclasses of RemoteProtocolError and nothing else, which
the fuzz tests in tests/fuzz check. This module is the only place that knows
the wire encoding, so a binary codec can replace it.

JSON has no NaN or Infinity: non-finite floats in a body are sent as null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.errors import FrameTooLarge, LocalProtocolError, MalformedMessage, UnknownOperation
from shared.protocol.messages import OPS_BY_NAME, Envelope, parse_resource


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 1 << 20
    """Largest frame accepted or sent (1 MiB). Model files travel as `chunk` messages."""
    max_depth: int = 32
    """Deepest nesting of objects/arrays in a frame, the envelope itself being depth 1."""
    max_string_chars: int = 256 * 1024
    """Longest string value or key."""
    max_items: int = 10_000
    """Most members of one object or elements of one array."""
    max_id_chars: int = 64
    """Longest `id` / `parent`."""


DEFAULT_LIMITS = Limits()

_INT_TYPES = (int,)


def encode(env: Envelope, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialise an envelope; raises LocalProtocolError if it would exceed the frame limit."""
    doc: dict[str, Any] = {"v": env.v, "id": env.id, "ts": env.ts, "op": env.op.value}
    if env.parent is not None:
        doc["parent"] = env.parent
    if env.res is not None:
        doc["res"] = env.res
    if env.rv is not None:
        doc["rv"] = env.rv
    if env.seq is not None:
        doc["seq"] = env.seq
    if env.body is not None:
        doc["body"] = env.body
    try:
        data = orjson.dumps(doc)
    except TypeError as exc:
        raise LocalProtocolError(f"envelope body is not JSON-serialisable: {exc}") from None
    if len(data) > limits.max_frame_bytes:
        raise LocalProtocolError(
            f"{env.op.value} {env.res or ''} encodes to {len(data)} bytes, above the "
            f"{limits.max_frame_bytes}-byte frame limit; send large payloads as chunks"
        )
    return data


def decode(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse and validate one frame.

    Raises FrameTooLarge, MalformedMessage or UnknownOperation (all RemoteProtocolError).
    """
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > limits.max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {size} bytes exceeds the {limits.max_frame_bytes}-byte limit"
        )
    try:
        doc = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"frame is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"frame must be a JSON object, got {type(doc).__name__}")
    _check_shape(doc, limits, 1)
    return _envelope_from_doc(doc, limits)


def _check_shape(value: Any, limits: Limits, depth: int) -> None:
    """Walk a parsed document enforcing depth, string and container limits."""
    if depth > limits.max_depth:
        raise MalformedMessage(f"nesting deeper than {limits.max_depth} levels")
    if isinstance(value, dict):
        if len(value) > limits.max_items:
            raise MalformedMessage(f"object with {len(value)} members (limit {limits.max_items})")
        for key, item in value.items():
            if len(key) > limits.max_string_chars:
                raise MalformedMessage(f"key of {len(key)} chars (limit {limits.max_string_chars})")
            if isinstance(item, (dict, list)):
                _check_shape(item, limits, depth + 1)
            elif isinstance(item, str) and len(item) > limits.max_string_chars:
                raise MalformedMessage(
                    f"string of {len(item)} chars (limit {limits.max_string_chars})"
                )
    elif isinstance(value, list):
        if len(value) > limits.max_items:
            raise MalformedMessage(f"array of {len(value)} elements (limit {limits.max_items})")
        for item in value:
            if isinstance(item, (dict, list)):
                _check_shape(item, limits, depth + 1)
            elif isinstance(item, str) and len(item) > limits.max_string_chars:
                raise MalformedMessage(
                    f"string of {len(item)} chars (limit {limits.max_string_chars})"
                )


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool) -> Any:
    value = doc.get(name)
    if value is None:
        if required:
            raise MalformedMessage(f"envelope field {name!r} is missing")
        return None
    # bool is an int subclass in Python but never a valid integer field here.
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MalformedMessage(
            f"envelope field {name!r} must be {want}, got {type(value).__name__}"
        )
    return value


def _envelope_from_doc(doc: dict[str, Any], limits: Limits) -> Envelope:
    v = _field(doc, "v", _INT_TYPES, True)
    op_name = _field(doc, "op", str, True)
    op = OPS_BY_NAME.get(op_name)
    if op is None:
        raise UnknownOperation(f"unknown op {op_name[:64]!r}")
    msg_id = _field(doc, "id", str, True)
    if not 0 < len(msg_id) <= limits.max_id_chars:
        raise MalformedMessage(f"envelope 'id' must be 1-{limits.max_id_chars} chars")
    parent = _field(doc, "parent", str, False)
    if parent is not None and not 0 < len(parent) <= limits.max_id_chars:
        raise MalformedMessage(f"envelope 'parent' must be 1-{limits.max_id_chars} chars")
    ts = _field(doc, "ts", _INT_TYPES, True)
    res = _field(doc, "res", str, False)
    if res is not None:
        parse_resource(res)
    rv = _field(doc, "rv", _INT_TYPES, False)
    seq = _field(doc, "seq", _INT_TYPES, False)
    for name, number in (("rv", rv), ("seq", seq)):
        if number is not None and not 0 <= number < 1 << 63:
            raise MalformedMessage(f"envelope {name!r} must be in [0, 2^63)")
    body = _field(doc, "body", dict, False)
    return Envelope(op=op, id=msg_id, ts=ts, res=res, rv=rv, seq=seq, parent=parent, body=body, v=v)
