"""`edgecore join` writes nothing until the join succeeded, then replaces the files at once:
two real in-process clouds, a node joined to one, failed re-joins with the other's tokens.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import yaml

from edgecore.join import join as edge_join
from shared.errors import ConfigError, JoinError
from tests.integration.harness import Cloud, EdgeIdentity, assert_node_works, start_cloud


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `directory`: content and mode."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


async def join(
    cloud: Cloud, token: str, edge_dir: Path, labels: dict[str, str] | None = None
) -> str:
    return await asyncio.to_thread(edge_join, cloud.api_url, token, edge_dir, labels or {})


async def two_clouds(tmp_path: Path) -> tuple[Cloud, Cloud]:
    a = await start_cloud(tmp_path / "cloud-a")
    b = await start_cloud(tmp_path / "cloud-b")
    return a, b


async def test_failed_rejoin_with_another_clouds_token_leaves_the_node_as_it_was(
    tmp_path: Path, event_loop: asyncio.AbstractEventLoop
) -> None:
    a, b = await two_clouds(tmp_path)
    try:
        edge_dir = tmp_path / "edge"
        await a.join("n1", edge_dir, {"zone": "lab"})
        before = snapshot(edge_dir)
        assert set(before) == {"node.key", "node.crt", "ca.crt", "edgecore.yaml"}

        # 1. A token of cloud B that is already spent, against B: refused at /join,
        #    after the CA check passed (the old code had written B's ca.crt by then).
        spent = (await b.create_token("n1"))["token"]
        await join(b, spent, tmp_path / "scratch")
        with pytest.raises(JoinError, match="already used"):
            await join(b, spent, edge_dir)
        assert snapshot(edge_dir) == before

        # 2. A fresh token of cloud B, sent to cloud A: the CA pinned in it does not match.
        other = (await b.create_token("n1"))["token"]
        with pytest.raises(JoinError, match="does not match the join token"):
            await join(a, other, edge_dir)
        assert snapshot(edge_dir) == before

        # 3. A token of B for another node name: B refuses the CSR.
        wrong = (await b.create_token("n2"))["token"]
        with pytest.raises(JoinError):
            await asyncio.to_thread(edge_join, b.api_url, wrong.replace(".n2", ".n1"), edge_dir, {})
        assert snapshot(edge_dir) == before
        assert not [p for p in edge_dir.iterdir() if p.name.endswith(".tmp")]

        # The node still works with cloud A, over its real mTLS session.
        edge = await a.edge(EdgeIdentity("n1", edge_dir))
        await assert_node_works(a, edge)
    finally:
        await a.stop()
        await b.stop()


async def test_successful_rejoin_replaces_every_file_atomically(
    tmp_path: Path, event_loop: asyncio.AbstractEventLoop
) -> None:
    a, b = await two_clouds(tmp_path)
    try:
        edge_dir = tmp_path / "edge"
        await a.join("n1", edge_dir, {"zone": "lab"})
        config = yaml.safe_load((edge_dir / "edgecore.yaml").read_text())
        config["runtime"] = {"max_concurrent": 3}  # an operator's edit survives a re-join
        (edge_dir / "edgecore.yaml").write_text(yaml.safe_dump(config))
        old = snapshot(edge_dir)

        await b.join("n1", edge_dir)

        new = snapshot(edge_dir)
        assert set(new) == set(old)
        assert all(new[name][0] != old[name][0] for name in ("node.key", "node.crt", "ca.crt"))
        assert new["ca.crt"][0] == b.ca_path.read_bytes()
        assert all(mode == 0o600 for _, mode in new.values()), new
        assert stat.S_IMODE(edge_dir.stat().st_mode) == 0o700
        written = yaml.safe_load(new["edgecore.yaml"][0])
        assert written["cloud"]["websocket_url"] == b.ws_url
        assert written["labels"] == {"zone": "lab"} and written["runtime"] == {"max_concurrent": 3}
        edge = await b.edge(EdgeIdentity("n1", edge_dir))
        await assert_node_works(b, edge)
    finally:
        await a.stop()
        await b.stop()


async def test_broken_existing_config_is_refused_before_the_token_is_spent(
    tmp_path: Path, event_loop: asyncio.AbstractEventLoop
) -> None:
    a = await start_cloud(tmp_path / "cloud-a")
    try:
        edge_dir = tmp_path / "edge"
        edge_dir.mkdir()
        (edge_dir / "edgecore.yaml").write_text("link: {window: 0}\n")
        token = (await a.create_token("n1"))["token"]
        with pytest.raises(ConfigError, match=r"link\.window: must be 1 to 65536"):
            await join(a, token, edge_dir)
        assert sorted(os.listdir(edge_dir)) == ["edgecore.yaml"]
        # The token was not spent: fixing the file and joining again works.
        (edge_dir / "edgecore.yaml").write_text("link: {window: 8}\n")
        assert await join(a, token, edge_dir) == "n1"
    finally:
        await a.stop()
