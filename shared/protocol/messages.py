"""The message envelope shared by every transport (docs/protocol.md §2)."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from shared.errors import LocalProtocolError, MalformedMessage

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)


class Op(str, enum.Enum):
    """Operations. Reliable ones carry a cursor (`rv` downstream, `seq` upstream) and are acked."""

    APPLY = "apply"
    DELETE = "delete"
    REPORT = "report"
    RESULT = "result"
    ACK = "ack"
    HELLO = "hello"
    WELCOME = "welcome"
    PING = "ping"
    PONG = "pong"
    ERROR = "error"
    CHUNK = "chunk"


OPS_BY_NAME: dict[str, Op] = {op.value: op for op in Op}

DOWNSTREAM_RELIABLE = frozenset({Op.APPLY, Op.DELETE, Op.CHUNK})
"""Cloud → edge desired state; each carries the cloud store's `rv`."""

UPSTREAM_RELIABLE = frozenset({Op.REPORT, Op.RESULT})
"""Edge → cloud reported state; each carries the edge outbox's `seq`."""

RESOURCE_KINDS = frozenset({"node", "task", "device", "twin", "model", "config"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """One protocol message. `body` is op-specific; see docs/protocol.md for each op."""

    op: Op
    id: str
    ts: int
    res: str | None = None
    rv: int | None = None
    seq: int | None = None
    parent: str | None = None
    body: dict[str, Any] | None = None
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class ResourceName:
    """`kind/namespace/name`, parsed."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


def _valid_segment(text: str) -> bool:
    return (
        0 < len(text) <= 63
        and text.isascii()
        and text not in (".", "..")
        and all(c.isalnum() or c in "-_." for c in text)
    )


@functools.lru_cache(maxsize=8192)
def parse_resource(text: str) -> ResourceName:
    """Parse and validate a resource name; raises MalformedMessage naming the problem."""
    parts = text.split("/")
    if len(parts) != 3:
        raise MalformedMessage(f"resource {text[:80]!r} is not kind/namespace/name")
    kind, namespace, name = parts
    if kind not in RESOURCE_KINDS:
        raise MalformedMessage(f"resource {text[:80]!r} has unknown kind {kind[:16]!r}")
    if not (_valid_segment(namespace) and _valid_segment(name)):
        raise MalformedMessage(
            f"resource {text[:80]!r}: namespace and name must be 1-63 chars of [A-Za-z0-9._-]"
        )
    return ResourceName(kind, namespace, name)


def resource_key(kind: str, namespace: str, name: str) -> str:
    """Build a resource name, validating it (a LocalProtocolError if we built a bad one)."""
    text = f"{kind}/{namespace}/{name}"
    try:
        parse_resource(text)
    except MalformedMessage as exc:
        raise LocalProtocolError(str(exc)) from None
    return text
