"""File modes: data dirs 0700, databases (and SQLite's -wal/-shm) 0600, on start of both
daemons and whatever umask they were started with; a WARNING for every mode changed.

The helpers are tested on real files; the daemons as real processes (cloudcore alone,
edgecore joined to an in-process cloud).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.files import ensure_private_dir, ensure_private_files, secure_data_dir, write_private
from tests.integration.harness import Cloud, eventually

REPO = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------- the helpers


def test_loose_data_dir_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING):
        assert ensure_private_dir(data) is True
    assert mode(data) == 0o700
    assert [r.getMessage() for r in caplog.records] == [
        f"data dir {data} had mode 0755 (readable by others); changed it to 0700"
    ]
    caplog.clear()
    assert ensure_private_dir(data) is False  # already private: no change, no warning
    assert caplog.records == []


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_new_data_dir_is_0700_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        ensure_private_dir(tmp_path / "a" / "data")
    assert mode(tmp_path / "a" / "data") == 0o700


def test_data_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        ensure_private_dir(tmp_path / "f")


def test_database_and_side_files_are_tightened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "edge.db"
    for suffix, loose in (("", 0o644), ("-wal", 0o664), ("-shm", 0o666)):
        path = tmp_path / f"edge.db{suffix}"
        path.write_text("")
        path.chmod(loose)
    with caplog.at_level(logging.WARNING):
        changed = ensure_private_files([db, tmp_path / "absent.db"])
    assert sorted(p.name for p in changed) == ["edge.db", "edge.db-shm", "edge.db-wal"]
    assert all(mode(p) == 0o600 for p in changed)
    assert len([r for r in caplog.records if "changed it to 0600" in r.getMessage()]) == 3


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_write_private_is_0600_whatever_the_umask_and_replaces(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "node.key"
    target.write_text("old")
    target.chmod(0o644)
    with umask(mask):
        write_private(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["node.key"]  # no temporary file left


def test_secure_data_dir_does_both(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "cloud.db").write_text("")
    (data / "cloud.db").chmod(0o644)
    secure_data_dir(data, [data / "cloud.db"])
    assert mode(data) == 0o700 and mode(data / "cloud.db") == 0o600


# ---------------------------------------------------------------- the daemons


def spawn(argv: list[str], mask: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.umask(mask),
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cloudcore_tightens_its_data_dir_and_database_at_start(tmp_path: Path) -> None:
    data = tmp_path / "cloud"
    data.mkdir()
    data.chmod(0o755)
    (data / "cloud.db").write_bytes(b"")
    (data / "cloud.db").chmod(0o644)
    config = tmp_path / "c.yaml"
    config.write_text(
        "hub: {listen: 127.0.0.1, websocket_port: 0, quic_port: -1}\n"
        "api: {listen: 127.0.0.1, port: 0}\n"
    )
    log = tmp_path / "cloud.log"
    proc = spawn(["cloudcore", "--config", str(config), "--data-dir", str(data)], 0o022, log)
    try:
        wait_for(lambda: (data / "cloudcore.json").exists() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        # While it runs: SQLite removes -wal and -shm at a clean close.
        assert mode(data) == 0o700
        for name in ("cloud.db", "cloud.db-wal", "cloud.db-shm", "admin.token", "cloudcore.json"):
            assert mode(data / name) == 0o600, name
        assert mode(data / "pki") == 0o700
    finally:
        assert stop(proc) == 0, log.read_text()
    text = log.read_text()
    assert f"data dir {data} had mode 0755 (readable by others); changed it to 0700" in text
    assert f"database file {data / 'cloud.db'} had mode 0644" in text


async def test_edgecore_serve_creates_its_database_private_under_umask_0(
    cloud: Cloud, tmp_path: Path
) -> None:
    edge_dir = tmp_path / "edge"
    await cloud.join("n1", edge_dir)
    edge_dir.chmod(0o755)
    log = tmp_path / "edge.log"
    proc = spawn(["edgecore", "serve", "--data-dir", str(edge_dir)], 0o000, log)
    try:
        await eventually(
            lambda: cloud.hub.sessions.get("n1") is not None or proc.poll() is not None,
            timeout=30,
            what="the edge connected",
        )
        assert proc.poll() is None, log.read_text()
        # While it runs: SQLite removes -wal and -shm at a clean close.
        assert mode(edge_dir) == 0o700
        for name in ("edge.db", "edge.db-wal", "edge.db-shm", "node.key", "edgecore.yaml"):
            assert mode(edge_dir / name) == 0o600, (name, oct(mode(edge_dir / name)))
    finally:
        code = await asyncio.to_thread(stop, proc)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert f"data dir {edge_dir} had mode 0755 (readable by others); changed it to 0700" in text
