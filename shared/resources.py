"""Resource documents operators write (tasks), validated as pure functions.

A task document looks like a Kubernetes object so operators read it at a glance:

    apiVersion: edgesync.io/v1
    kind: Task
    metadata: {name: hello, namespace: default}
    spec:
      kind: command
      command: {argv: [uname, -a], timeout: 30}
      trigger: {type: interval, every: 60}
      placement: {selector: {zone: lab}}

Errors are ResourceError naming the offending field path.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.errors import ResourceError

API_VERSION = "edgesync.io/v1"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
TASK_KINDS = ("command",)
TRIGGER_TYPES = ("once", "interval")
OFFLINE_POLICIES = ("continue", "pause", "relocatable")


@dataclass(frozen=True, slots=True)
class CommandSpec:
    argv: list[str]
    """Program and arguments, never a shell string."""
    timeout: float = 60.0
    """Seconds before the process group is killed and the run fails."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables."""
    workdir: str = ""
    """Working directory relative to the task's directory inside the edge data dir."""


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    type: str = "once"
    every: float = 0.0
    """Seconds between runs for `interval`."""


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    nodes: list[str] = field(default_factory=list)
    """Pinned node names; empty means every node matching `selector`."""
    selector: dict[str, str] = field(default_factory=dict)
    """Labels a node must carry (all of them)."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    namespace: str
    name: str
    kind: str
    command: CommandSpec
    trigger: TriggerSpec
    placement: PlacementSpec
    priority: int = 0
    offline: str = "continue"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"task/{self.namespace}/{self.name}"

    def to_document(self) -> dict[str, Any]:
        """The canonical document (what the API returns and the edge receives)."""
        return {
            "apiVersion": API_VERSION,
            "kind": "Task",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
            "spec": {
                "kind": self.kind,
                "command": asdict(self.command),
                "trigger": asdict(self.trigger),
                "placement": asdict(self.placement),
                "priority": self.priority,
                "offline": self.offline,
            },
        }


def validate_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ResourceError(
            f"{path}: {value!r} is not a valid name (lowercase letters, digits, '-' and '.', "
            "1-63 chars, starting and ending with a letter or digit)"
        )
    return value


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResourceError(f"{path}: must be a mapping")
    return value


def _str_map(value: Any, path: str) -> dict[str, str]:
    result = {}
    for k, v in _mapping(value, path).items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ResourceError(f"{path}.{k}: must be a string")
        result[str(k)] = str(v)
    return result


def _number(value: Any, path: str, default: float, minimum: float = 0.0) -> float:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ResourceError(f"{path}: must be a number >= {minimum:g}")
    return float(value)


def _only(doc: dict[str, Any], allowed: set[str], path: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise ResourceError(
            f"{path}: unknown field(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def parse_task(doc: Any) -> TaskSpec:
    """Validate a task document; raises ResourceError naming the field."""
    if not isinstance(doc, dict):
        raise ResourceError("task document must be a mapping")
    _only(doc, {"apiVersion", "kind", "metadata", "spec"}, "task")
    if doc.get("apiVersion", API_VERSION) != API_VERSION:
        raise ResourceError(f"apiVersion: expected {API_VERSION!r}, got {doc.get('apiVersion')!r}")
    if doc.get("kind", "Task") != "Task":
        raise ResourceError(f"kind: expected 'Task', got {doc.get('kind')!r}")
    meta = _mapping(doc.get("metadata"), "metadata")
    _only(meta, {"name", "namespace", "labels"}, "metadata")
    name = validate_name(meta.get("name"), "metadata.name")
    namespace = validate_name(meta.get("namespace", "default"), "metadata.namespace")
    spec = _mapping(doc.get("spec"), "spec")
    _only(spec, {"kind", "command", "trigger", "placement", "priority", "offline"}, "spec")
    kind = spec.get("kind", "command")
    if kind not in TASK_KINDS:
        raise ResourceError(f"spec.kind: {kind!r} is not one of {', '.join(TASK_KINDS)}")
    return TaskSpec(
        namespace=namespace,
        name=name,
        kind=kind,
        command=_parse_command(spec.get("command")),
        trigger=_parse_trigger(spec.get("trigger")),
        placement=_parse_placement(spec.get("placement")),
        priority=int(_number(spec.get("priority"), "spec.priority", 0, minimum=-1000)),
        offline=_parse_offline(spec.get("offline")),
        labels=_str_map(meta.get("labels"), "metadata.labels"),
    )


def _parse_command(value: Any) -> CommandSpec:
    cmd = _mapping(value, "spec.command")
    _only(cmd, {"argv", "timeout", "env", "workdir"}, "spec.command")
    argv = cmd.get("argv")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
    ):
        raise ResourceError(
            "spec.command.argv: must be a non-empty list of strings, e.g. [uname, -a] "
            "(commands never go through a shell)"
        )
    workdir = cmd.get("workdir", "")
    if not isinstance(workdir, str) or workdir.startswith("/") or ".." in workdir.split("/"):
        raise ResourceError("spec.command.workdir: must be a relative path without '..'")
    return CommandSpec(
        argv=list(argv),
        timeout=_number(cmd.get("timeout"), "spec.command.timeout", 60.0, minimum=0.001),
        env=_str_map(cmd.get("env"), "spec.command.env"),
        workdir=workdir,
    )


def _parse_trigger(value: Any) -> TriggerSpec:
    trig = _mapping(value, "spec.trigger")
    _only(trig, {"type", "every"}, "spec.trigger")
    ttype = trig.get("type", "once")
    if ttype not in TRIGGER_TYPES:
        raise ResourceError(f"spec.trigger.type: {ttype!r} is not one of {TRIGGER_TYPES}")
    every = _number(trig.get("every"), "spec.trigger.every", 0.0)
    if ttype == "interval" and every < 0.1:
        raise ResourceError("spec.trigger.every: interval triggers need every >= 0.1 seconds")
    return TriggerSpec(type=ttype, every=every)


def _parse_placement(value: Any) -> PlacementSpec:
    pl = _mapping(value, "spec.placement")
    _only(pl, {"nodes", "selector"}, "spec.placement")
    nodes = pl.get("nodes", [])
    if not isinstance(nodes, list):
        raise ResourceError("spec.placement.nodes: must be a list of node names")
    return PlacementSpec(
        nodes=[validate_name(n, f"spec.placement.nodes[{i}]") for i, n in enumerate(nodes)],
        selector=_str_map(pl.get("selector"), "spec.placement.selector"),
    )


def _parse_offline(value: Any) -> str:
    offline = value if value is not None else "continue"
    if offline not in OFFLINE_POLICIES:
        raise ResourceError(f"spec.offline: {offline!r} is not one of {OFFLINE_POLICIES}")
    return str(offline)
