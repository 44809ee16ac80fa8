"""The filters every cloudcore runs; each is a pure check of one task against one node."""

from __future__ import annotations

from cloudcore.scheduler.framework import Filter, NodeInfo, TaskInfo

MIB = 1024 * 1024


class NodeSelection:
    """Pinned nodes, the label selector and required node affinity (spec.placement)."""

    name = "node-selection"

    def reject(self, task: TaskInfo, node: NodeInfo) -> str | None:
        placement = task.task.spec.placement
        if placement.nodes and node.name not in placement.nodes:
            return "not one of the pinned nodes"
        for key, value in placement.selector.items():
            if node.labels.get(key) != value:
                return f"selector {key}={value} does not match"
        required = placement.node_affinity.required if placement.node_affinity else []
        if required and not any(term.matches(dict(node.labels)) for term in required):
            return "no required node-affinity term matches"
        return None


class ResourceFit:
    """A task whose requests exceed the node's whole capacity can never run there.

    Sums over the node's other work arrive with the load-aware scheduler; a node
    that reported no capacity is not filtered.
    """

    name = "resource-fit"

    def reject(self, task: TaskInfo, node: NodeInfo) -> str | None:
        wanted = task.task.spec.resources
        cpus = node.capacity.get("cpus")
        if wanted.cpu_millicores and isinstance(cpus, int) and wanted.cpu_millicores > cpus * 1000:
            return f"needs {wanted.cpu_millicores}m CPU; the node has {cpus * 1000}m"
        memory = node.capacity.get("memory_bytes")
        if (
            wanted.memory_mb
            and isinstance(memory, int)
            and memory
            and wanted.memory_mb * MIB > memory
        ):
            return f"needs {wanted.memory_mb} MiB memory; the node has {memory // MIB} MiB"
        return None


DEFAULT_FILTERS: tuple[Filter, ...] = (NodeSelection(), ResourceFit())
