"""The Task resource: desired work for one node or a set of nodes (design.md "Tasks").

    apiVersion: edgesync.io/v1
    kind: Task
    metadata: {name: hello, namespace: default}
    spec:
      kind: command
      command: {argv: [uname, -a], timeout: 30}
      trigger: {type: interval, every: 60}
      placement: {selector: {zone: lab}}

`spec` is a tagged union on `kind` (today `command`; `inference` joins it with
its runtime) and `trigger` one on `type`. Some fields are accepted and stored
before the code that acts on them lands (docs/operations.md lists which): an
operator can write them now and they keep their meaning.

The document is parsed once, at the API (`parse_task`); the cloud stores the
canonical form (`to_document`) and both daemons rebuild the typed object from
it with `task_from_document`.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any, Literal

import msgspec
from cronsim import CronSim, CronSimError

from shared.errors import ResourceError
from shared.mqtt_topics import TopicError, validate_filter
from shared.resources.common import (
    LabelKey,
    Labels,
    LabelValue,
    Metadata,
    Name,
    Struct,
    convert,
    pattern,
    to_builtins,
)

Seconds = Annotated[float, msgspec.Meta(ge=0, le=366 * 86400)]
EnvKey = Annotated[
    str,
    pattern(
        r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        "a variable name: a letter or '_', then letters, digits and '_' (no '=')",
    ),
]
EnvValue = Annotated[str, pattern(r"^[^\x00]*$", "free of NUL bytes", max_length=32768)]
Arg = Annotated[
    str, pattern(r"^[^\x00]+$", "a non-empty argument free of NUL bytes", max_length=4096)
]


# ------------------------------------------------------------------ command


class CommandSpec(Struct, frozen=True):
    argv: Annotated[
        list[Arg],
        msgspec.Meta(
            min_length=1,
            max_length=256,
            description="program and arguments, never a shell string",
            examples=[["uname", "-a"]],
        ),
    ]
    timeout: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 60.0
    """Seconds before the process group is killed and the run fails."""
    env: Annotated[dict[EnvKey, EnvValue], msgspec.Meta(max_length=256)] = {}
    """Extra environment variables (the edge's policy may refuse some, docs/operations.md)."""
    workdir: Annotated[
        str,
        pattern(
            r"^[^\x00]{0,255}$",
            "a relative path of at most 255 characters, free of NUL bytes (relative to the "
            "task's own directory in the edge data dir; no '..')",
        ),
    ] = ""

    def __post_init__(self) -> None:
        if self.workdir.startswith("/") or ".." in self.workdir.split("/"):
            raise ValueError("workdir must be a relative path without '..'")


# ------------------------------------------------------------------ triggers


class OnceTrigger(Struct, frozen=True, tag_field="type", tag="once"):
    """Run once per generation of the task (a changed spec runs again)."""


class IntervalTrigger(Struct, frozen=True, tag_field="type", tag="interval"):
    every: Annotated[float, msgspec.Meta(ge=0.1, le=366 * 86400, description="seconds")]


class CronTrigger(Struct, frozen=True, tag_field="type", tag="cron"):
    schedule: Annotated[
        str,
        msgspec.Meta(
            max_length=256,
            description="a five-field cron expression",
            examples=["*/5 * * * *"],
        ),
    ]
    timezone: Annotated[str, msgspec.Meta(max_length=64, examples=["UTC"])] = "UTC"

    def __post_init__(self) -> None:
        if len(self.schedule.split()) != 5:
            raise ValueError(
                f"cron schedule {self.schedule!r} must have five fields: "
                "minute hour day-of-month month day-of-week"
            )
        try:
            zone = zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        try:
            CronSim(self.schedule, dt.datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise ValueError(f"invalid cron schedule {self.schedule!r}: {exc}") from None

    def next_after(self, when_ms: int) -> int:
        """The first scheduled instant strictly after `when_ms` (epoch ms)."""
        zone = zoneinfo.ZoneInfo(self.timezone)
        start = dt.datetime.fromtimestamp(when_ms / 1000, zone).replace(microsecond=0)
        return int(next(iter(CronSim(self.schedule, start))).timestamp() * 1000)


class MqttTrigger(Struct, frozen=True, tag_field="type", tag="mqtt"):
    """Run on each message of a topic filter on the edge's event bus."""

    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=1024, examples=["sensors/#"])]

    def __post_init__(self) -> None:
        try:
            validate_filter(self.topic)
        except TopicError as exc:
            raise ValueError(str(exc)) from None


Trigger = OnceTrigger | IntervalTrigger | CronTrigger | MqttTrigger


# ------------------------------------------------------------------ placement


class MatchExpression(Struct, frozen=True):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Annotated[list[LabelValue], msgspec.Meta(max_length=64)] = []

    def __post_init__(self) -> None:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = labels.get(self.key) in self.values
        return present if self.operator == "In" else not present


class NodeSelectorTerm(Struct, frozen=True):
    """Every expression must match (AND)."""

    match_expressions: Annotated[list[MatchExpression], msgspec.Meta(max_length=32)] = []

    def matches(self, labels: dict[str, str]) -> bool:
        return all(e.matches(labels) for e in self.match_expressions)


class PreferredTerm(Struct, frozen=True):
    weight: Annotated[int, msgspec.Meta(ge=1, le=100)]
    term: NodeSelectorTerm


class NodeAffinity(Struct, frozen=True):
    required: Annotated[list[NodeSelectorTerm], msgspec.Meta(max_length=32)] = []
    """A node must match at least one term (OR); empty: no requirement."""
    preferred: Annotated[list[PreferredTerm], msgspec.Meta(max_length=32)] = []
    """Scored, not required."""


class Toleration(Struct, frozen=True):
    key: Annotated[str, msgspec.Meta(max_length=253)] = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: LabelValue = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: Annotated[int, msgspec.Meta(ge=0, le=366 * 86400)] | None = None


class TopologySpread(Struct, frozen=True):
    topology_key: LabelKey
    max_skew: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "DoNotSchedule"


class Placement(Struct, frozen=True):
    nodes: Annotated[list[Name], msgspec.Meta(max_length=1000)] = []
    """Pinned node names; empty means every node matching the rest."""
    selector: Labels = {}
    """Labels a node must carry (all of them)."""
    node_affinity: NodeAffinity | None = None
    tolerations: Annotated[list[Toleration], msgspec.Meta(max_length=64)] = []
    replicas: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    """Run on this many matching nodes; None: on every matching node."""
    topology_spread: Annotated[list[TopologySpread], msgspec.Meta(max_length=8)] = []
    profile: Name | None = None
    """Only nodes of this firmware profile (firmware_profiles/)."""
    accelerator: Annotated[str, msgspec.Meta(max_length=63)] | None = None


# ------------------------------------------------------------------ the rest of a spec


class Resources(Struct, frozen=True):
    cpu_millicores: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    memory_mb: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    accelerator: Annotated[str, msgspec.Meta(max_length=63)] | None = None


class Retry(Struct, frozen=True):
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    backoff: Annotated[float, msgspec.Meta(ge=0, le=86400, description="seconds")] = 10.0
    max_backoff: Annotated[float, msgspec.Meta(ge=0, le=86400, description="seconds")] = 300.0


QosClass = Literal["guaranteed", "burstable", "best-effort"]
OfflinePolicy = Literal["continue", "pause", "relocatable"]


class _SpecBase(Struct, frozen=True, tag_field="kind"):
    trigger: Trigger = OnceTrigger()
    placement: Placement = Placement()
    resources: Resources = Resources()
    qos: QosClass = "best-effort"
    priority: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000_000)] = 0
    """Higher first when more runs are due than the edge has slots."""
    offline: OfflinePolicy = "continue"
    retry: Retry = Retry()
    sla_ms: Annotated[int, msgspec.Meta(ge=1, le=86_400_000)] | None = None


class CommandTaskSpec(_SpecBase, frozen=True, tag="command", kw_only=True):
    command: CommandSpec


TaskSpec = CommandTaskSpec
"""The union of task kinds; `inference` joins it with its runtime."""
TASK_KINDS: tuple[str, ...] = ("command",)


class Task(Struct, frozen=True, kw_only=True):
    api_version: Literal["edgesync.io/v1"] = msgspec.field(
        default="edgesync.io/v1", name="apiVersion"
    )
    kind: Literal["Task"] = "Task"
    metadata: Metadata
    spec: TaskSpec

    @property
    def key(self) -> str:
        return f"task/{self.metadata.namespace}/{self.metadata.name}"

    @property
    def task_kind(self) -> str:
        """`spec.kind`: which runtime runs it (a tag, so not an attribute of the spec)."""
        return str(self.spec.__struct_config__.tag)


def parse_task(doc: Any) -> Task:
    """Validate an operator's task document; ResourceError names the field path."""
    if not isinstance(doc, dict):
        raise ResourceError("task document must be a mapping with metadata and spec")
    spec = doc.get("spec")
    if isinstance(spec, dict):
        if "kind" not in spec:
            # `kind: command` may be left out, as in every task written before kinds.
            doc = {**doc, "spec": {**spec, "kind": "command"}}
        elif spec["kind"] not in TASK_KINDS:
            raise ResourceError(
                f"spec.kind: {spec['kind']!r} is not a task kind (one of {', '.join(TASK_KINDS)})"
            )
    return convert(doc, Task, "task")


def to_document(task: Task) -> dict[str, Any]:
    """The canonical document: what the API returns, the store keeps and the edge receives."""
    doc: dict[str, Any] = to_builtins(task)
    return doc


def task_from_document(doc: Any) -> Task:
    """Rebuild the typed task from a canonical document (store, desired state on the edge).

    Still validated: an edge older than the cloud may meet a field it does not know.
    """
    return convert(doc, Task, "task")


__all__ = [
    "CommandSpec",
    "CommandTaskSpec",
    "CronTrigger",
    "IntervalTrigger",
    "LabelKey",
    "LabelValue",
    "MqttTrigger",
    "NodeAffinity",
    "OnceTrigger",
    "Placement",
    "Resources",
    "Retry",
    "Task",
    "TaskSpec",
    "Toleration",
    "Trigger",
    "parse_task",
    "task_from_document",
    "to_document",
]
