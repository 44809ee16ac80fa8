"""CI cannot go green without PostgreSQL: the conftest fails (not skips) its tests under
`CI`, and .ci/run starts an installed but stopped server. Real processes, fake tools only
where the real ones would touch the machine's PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dead_pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a loopback port that refuses connections (bound, not listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql+psycopg://postgres@127.0.0.1:{sock.getsockname()[1]}/postgres"


def run_pg_test(url: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_XDIST_WORKER")}
    env["EDGESYNC_TEST_PG_URL"] = url
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q", "-rs",
         "tests/integration/test_cloud_store.py::test_join_token_is_consumed_once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("ci", ["1"])
def test_unreachable_postgres_fails_under_ci_naming_the_url(dead_pg_url: str, ci: str) -> None:
    out = run_pg_test(dead_pg_url, ci)

    assert out.returncode == 1, out.stdout
    assert "1 passed, 1 error" in out.stdout  # sqlite ran; postgresql failed in its fixture
    assert f"PostgreSQL at {dead_pg_url} is unreachable" in out.stdout
    assert "CI is set, so the PostgreSQL tests must run" in out.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_unreachable_postgres_skips_outside_ci(dead_pg_url: str, ci: str | None) -> None:
    out = run_pg_test(dead_pg_url, ci)

    assert out.returncode == 0, out.stdout
    assert "1 passed, 1 skipped" in out.stdout
    assert f"PostgreSQL at {dead_pg_url} is unreachable" in out.stdout


def fake_tools(tmp_path: Path, cluster_status: str | None) -> tuple[Path, Path, dict[str, str]]:
    """A PATH with fake pg_lsclusters/pg_ctlcluster/make that log their arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    scripts = {"make": 'echo "make $*" >> "$LOG"; exit 0'}
    if cluster_status is not None:
        scripts["pg_lsclusters"] = (
            f'echo "15  main    5432 {cluster_status} postgres /var/lib/pg /var/log/pg.log"'
        )
        scripts["pg_ctlcluster"] = 'echo "pg_ctlcluster $*" >> "$LOG"; exit 0'
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    etc = tmp_path / "etc-postgresql"  # absent: PostgreSQL is not installed
    if cluster_status is not None:
        (etc / "15" / "main").mkdir(parents=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(log),
        "EDGESYNC_PG_ETC": str(etc),
        "HOME": str(tmp_path),
    }
    return bin_dir, log, env


@pytest.mark.parametrize(
    ("status", "started"), [("down", True), ("online", False), (None, False)]
)  # fmt: skip
def test_ci_run_starts_an_installed_stopped_postgres(
    tmp_path: Path, status: str | None, started: bool
) -> None:
    _, log, env = fake_tools(tmp_path, status)

    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )

    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    start = "pg_ctlcluster --skip-systemctl-redirect 15 main start"
    assert (start in calls) is started
    assert calls[-1] == "make test"  # the README's test command, still


def test_ci_run_sets_ci_so_postgres_tests_cannot_be_skipped(tmp_path: Path) -> None:
    _, log, env = fake_tools(tmp_path, None)
    (tmp_path / "bin" / "make").write_text('#!/bin/sh\necho "CI=$CI" >> "$LOG"\n')

    subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, check=True, timeout=60)

    assert log.read_text().splitlines() == ["CI=1"]
