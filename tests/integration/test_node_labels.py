"""Placement labels are the operator's: a node with a valid certificate cannot claim another
zone's work (and its secrets) by what it says about itself (issue 7, NodeRestriction-like)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.protocol.events import MessageReceived
from tests.integration.harness import Cloud, RawEdge, eventually


def selector_task(name: str, zone: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "command": {"argv": ["true"], "env": {"SECRET": f"{zone}-secret"}},
            "placement": {"selector": {"zone": zone}},
        },
    }


def received(edge: RawEdge) -> set[str]:
    return {
        e.envelope.res for e in edge.events if isinstance(e, MessageReceived) and e.envelope.res
    }


async def test_a_node_claiming_a_zone_in_its_hello_gets_nothing_of_it(
    cloud: Cloud, tmp_path: Path
) -> None:
    spy = await cloud.join("spy", tmp_path / "spy", operator_labels={"zone": "lobby"})
    edge = await cloud.edge(spy, labels={"zone": "vault"})
    await cloud.apply_task(selector_task("vault-job", "vault"))
    await cloud.apply_task(selector_task("lobby-job", "lobby"))
    await eventually(lambda: "task/default/lobby-job" in received(edge))
    await asyncio.sleep(0.3)
    assert "task/default/vault-job" not in received(edge)
    status, node = await cloud.request("GET", "/api/v1/nodes/spy")
    assert status == 200
    assert (node["labels"], node["reported_labels"]) == ({"zone": "lobby"}, {"zone": "vault"})
    assert [a["res"] for a in node["assignments"]] == ["task/default/lobby-job"]


@pytest.mark.cloud_config(node_label_keys=["edgesync.io/arch"])
async def test_only_the_keys_the_cloud_allows_are_taken_from_the_node(
    cloud: Cloud, tmp_path: Path
) -> None:
    ident = await cloud.join("n1", tmp_path / "n1")
    edge = await cloud.edge(ident, labels={"edgesync.io/arch": "aarch64", "zone": "vault"})
    arm = {
        "metadata": {"name": "arm-only"},
        "spec": {
            "command": {"argv": ["true"]},
            "placement": {"selector": {"edgesync.io/arch": "aarch64"}},
        },
    }
    await cloud.apply_task(arm)
    await cloud.apply_task(selector_task("vault-job", "vault"))
    await eventually(lambda: "task/default/arm-only" in received(edge))
    await asyncio.sleep(0.3)
    assert "task/default/vault-job" not in received(edge)


async def test_an_operator_relabels_a_node_and_its_work_follows(
    cloud: Cloud, tmp_path: Path
) -> None:
    ident = await cloud.join("n1", tmp_path / "n1", operator_labels={"zone": "a"})
    edge = await cloud.edge(ident)
    await cloud.apply_task(selector_task("b-job", "b"))
    status, node = await cloud.request(
        "PUT", "/api/v1/nodes/n1/labels", json_body={"labels": {"zone": "b"}}
    )
    assert status == 200, node
    assert node["labels"] == {"zone": "b"}
    assert [a["res"] for a in node["assignments"]] == ["task/default/b-job"]
    await eventually(lambda: "task/default/b-job" in received(edge))
    status, answer = await cloud.request(
        "PUT", "/api/v1/nodes/n1/labels", json_body={"labels": {"zone": "bad value!"}}
    )
    assert status == 422 and "labels" in answer["message"], answer
    status, answer = await cloud.request(
        "PUT", "/api/v1/nodes/ghost/labels", json_body={"labels": {}}
    )
    assert status == 404, answer


async def test_edgectl_labels_nodes_and_tokens(cloud: Cloud, tmp_path: Path) -> None:
    config = cloud.data_dir / "edgectl.yaml"

    def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudcore.edgectl", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    made = await asyncio.to_thread(
        edgectl, "token", "create", "--node", "n2", "--label", "zone=a", "--label", "tier=x", "-q"
    )
    assert made.returncode == 0, made.stderr
    await cloud.join_with_token("n2", made.stdout.strip(), tmp_path / "n2")
    out = await asyncio.to_thread(edgectl, "node", "label", "n2", "zone=b", "tier-", "gpu=yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "node n2 labelled: gpu=yes,zone=b"
    bad = await asyncio.to_thread(edgectl, "node", "label", "n2", "novalue")
    assert bad.returncode != 0 and "use KEY=VALUE or KEY- to remove one" in bad.stderr
