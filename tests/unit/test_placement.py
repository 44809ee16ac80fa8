"""Placement as pure functions: filters, scores and binding (cloudcore/scheduler/framework.py)."""

from __future__ import annotations

from typing import Any

from cloudcore.scheduler.filters import DEFAULT_FILTERS, NodeSelection, ResourceFit
from cloudcore.scheduler.framework import NodeInfo, TaskInfo, place, rank
from shared.resources import parse_task, to_document


def task(name: str = "t", **spec: Any) -> TaskInfo:
    doc = {"metadata": {"name": name}, "spec": {"command": {"argv": ["true"]}, **spec}}
    typed = parse_task(doc)
    return TaskInfo(typed, 1, to_document(typed))


def node(name: str, state: str = "Ready", **labels: str) -> NodeInfo:
    return NodeInfo(name, labels, state, {"cpus": 4, "memory_bytes": 4 << 30})


FLEET = [node("a", zone="lab"), node("b", zone="lab", gpu="yes"), node("c", zone="field")]


def targets(t: TaskInfo, nodes: list[NodeInfo] = FLEET) -> set[str]:
    [decision] = place([t], nodes, DEFAULT_FILTERS)
    return set(decision.nodes)


def test_every_node_matches_a_task_without_placement() -> None:
    assert targets(task()) == {"a", "b", "c"}


def test_pinned_nodes_and_selector_both_apply() -> None:
    assert targets(task(placement={"nodes": ["a", "c"]})) == {"a", "c"}
    assert targets(task(placement={"selector": {"zone": "lab"}})) == {"a", "b"}
    assert targets(task(placement={"nodes": ["a", "c"], "selector": {"zone": "lab"}})) == {"a"}


def test_required_affinity_terms_or_together_and_expressions_and() -> None:
    affinity = {
        "required": [
            {
                "match_expressions": [
                    {"key": "zone", "operator": "In", "values": ["lab"]},
                    {"key": "gpu", "operator": "Exists"},
                ]
            },
            {"match_expressions": [{"key": "zone", "operator": "NotIn", "values": ["lab"]}]},
        ]
    }
    assert targets(task(placement={"node_affinity": affinity})) == {"b", "c"}
    nogpu = {"required": [{"match_expressions": [{"key": "gpu", "operator": "DoesNotExist"}]}]}
    assert targets(task(placement={"node_affinity": nogpu})) == {"a", "c"}


def test_rejections_say_why() -> None:
    [decision] = place([task(placement={"selector": {"zone": "lab"}})], FLEET, DEFAULT_FILTERS)
    assert decision.rejected == {"c": "selector zone=lab does not match"}


def test_resource_fit_filters_nodes_too_small_for_the_request() -> None:
    small = NodeInfo("small", {}, "Ready", {"cpus": 1, "memory_bytes": 512 << 20})
    big = NodeInfo("big", {}, "Ready", {"cpus": 8, "memory_bytes": 8 << 30})
    silent = NodeInfo("silent", {}, "Ready", {})
    nodes = [small, big, silent]
    assert targets(task(resources={"cpu_millicores": 2000}), nodes) == {"big", "silent"}
    [d] = place([task(resources={"memory_mb": 1024})], nodes, [ResourceFit()])
    assert d.nodes == {"big", "silent"}
    assert d.rejected == {"small": "needs 1024 MiB memory; the node has 512 MiB"}


def test_replicas_pick_a_stable_subset_and_moves_are_minimal() -> None:
    nodes = [node(f"n{i:02d}") for i in range(20)]
    t = task(placement={"replicas": 3})
    first = targets(t, nodes)
    assert len(first) == 3
    assert targets(t, list(reversed(nodes))) == first  # input order does not matter
    # A node that does not hold a replica leaves: nothing moves.
    bystander = next(n for n in nodes if n.name not in first)
    assert targets(t, [n for n in nodes if n is not bystander]) == first
    # A holder leaves: exactly one replica moves.
    holder = next(n for n in nodes if n.name in first)
    after = targets(t, [n for n in nodes if n is not holder])
    assert len(after) == 3 and len(after & first) == 2


def test_replicas_do_not_all_land_on_the_same_nodes_for_different_tasks() -> None:
    nodes = [node(f"n{i:02d}") for i in range(10)]
    chosen = [
        frozenset(targets(task(f"t{i}", placement={"replicas": 2}), nodes)) for i in range(20)
    ]
    assert len(set(chosen)) > 5


class PreferLabel:
    name = "prefer-label"
    weight = 1.0

    def __init__(self, key: str) -> None:
        self.key = key

    def score(self, task: TaskInfo, node: NodeInfo) -> float:
        return 1.0 if self.key in node.labels else 0.0


def test_scores_rank_before_the_hash_tie_break() -> None:
    t = task(placement={"replicas": 1})
    [decision] = place([t], FLEET, [NodeSelection()], [PreferLabel("gpu")])
    assert decision.nodes == {"b"}
    assert next(n.name for n in rank(t, FLEET, [PreferLabel("gpu")])) == "b"


def test_scores_are_clamped_to_the_unit_interval() -> None:
    class Wild:
        name, weight = "wild", 1.0

        def score(self, task: TaskInfo, node: NodeInfo) -> float:
            return 1e9 if node.name == "a" else 0.0

    class GpuTwice(PreferLabel):
        weight = 2.0

    t = task(placement={"replicas": 1})
    # Unclamped, a's 1e9 would win; clamped it is worth 1.0 against b's 2.0.
    assert next(n.name for n in rank(t, FLEET, [Wild(), GpuTwice("gpu")])) == "b"
