"""What the operator API takes and returns, as typed structs.

The handlers build their answers from these, and cloudcore/api/openapi.py
generates the contract from the same classes, so the document cannot drift
from what is served. Node-supplied maps (capacity, heartbeat, result bodies)
are free-form here and bounded where the hub receives them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from shared.resources.common import Labels, Name

Millis = Annotated[int, msgspec.Meta(description="milliseconds since the Unix epoch (UTC)")]


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Response structs: the client may ignore fields added later (not forbid_unknown)."""


class _In(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Request structs: unknown fields are an error."""


class Error(_Out, frozen=True):
    error: str
    """A stable code: invalid, not_found, unauthorized, join_refused, …"""
    message: str
    """What was wrong and what to do, for a person."""


class Health(_Out, frozen=True):
    status: str
    sessions: int


class JoinRequest(_In, frozen=True):
    token: Annotated[
        str, msgspec.Meta(max_length=512, examples=["es1.<ca-sha256>.<id>.<secret>.pi-kitchen"])
    ]
    csr: Annotated[
        str, msgspec.Meta(max_length=8192, description="PEM certificate request; CN = node name")
    ]


class JoinResponse(_Out, frozen=True):
    node: str
    certificate: str
    ca: str
    websocket_port: int
    quic_port: int | None


class TokenRequest(_In, frozen=True):
    node: Name
    labels: Labels = {}
    """Placement labels the node gets when it joins (operator-owned)."""
    ttl: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400, description="seconds")] | None = None


class TokenResponse(_Out, frozen=True):
    node: str
    token: str
    expires_ms: Millis


class NodeView(_Out, frozen=True):
    name: str
    state: str
    reason: str
    connected: bool
    transport: str
    peer: str
    labels: dict[str, str]
    """Placement labels: the operator's (join token, `edgectl node label`)."""
    reported_labels: dict[str, str]
    """What the node says about itself; used for placement only for `node_label_keys`."""
    capacity: dict[str, Any]
    heartbeat: dict[str, Any]
    software: str
    last_seen_ms: Millis
    acked_rv: int
    received_seq: int
    rtt_ms: float | None


class Assignment(_Out, frozen=True):
    res: str
    node: str
    epoch: int
    generation: int
    rv: int
    phase: str
    runs: int
    last_result: dict[str, Any] | None
    updated_ms: Millis


class NodeDetail(NodeView, frozen=True):
    assignments: list[Assignment]


class NodeList(_Out, frozen=True):
    items: list[NodeView]


class Result(_Out, frozen=True):
    id: int
    node: str
    seq: int
    res: str
    run_id: str
    epoch: int
    generation: int
    phase: str
    stale: bool
    body: dict[str, Any]
    received_ms: Millis


class TaskView(_Out, frozen=True):
    namespace: str
    name: str
    generation: int
    document: dict[str, Any]
    """The canonical task document (every field, defaults included)."""
    updated_ms: Millis
    assignments: list[Assignment]


class TaskDetail(TaskView, frozen=True):
    results: list[Result]
    """The newest results first (at most 100)."""


class TaskList(_Out, frozen=True):
    items: list[TaskView]


class TaskApplied(_Out, frozen=True):
    namespace: str
    name: str
    generation: int
    document: dict[str, Any]
    nodes: int | None
    """Nodes the task is assigned to now; null if placement took longer than the API
    waits (it goes on in the background: `GET` the task for its assignments)."""


class NodeLabels(_In, frozen=True):
    labels: Labels
    """The node's placement labels, replacing the old ones; tasks are re-placed."""


class Deleted(_Out, frozen=True):
    deleted: str
