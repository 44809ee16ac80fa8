"""The real entry points as processes: bad config exits 2 with `PROG: FILE: key: problem`
and no traceback; edgectl refuses empty and broken task files with the file and line.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import pki

TIMEOUT = 60


def run(*argv: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=cwd,
        env=env,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_config_error(proc: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for line in lines:
        assert line in proc.stderr.splitlines(), proc.stderr


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "log_level: BOGUS\n",
            "cloudcore: c.yaml: log_level: must be one of DEBUG, INFO, WARNING, ERROR, got 'BOGUS'",
        ),
        (
            "hub: {websocket_port: 70000}\n",
            "cloudcore: c.yaml: hub.websocket_port: must be 0 "
            "to 65535; 0 picks a free one, got 70000",
        ),
        (
            "pki: {node_cert_days: 0}\n",
            "cloudcore: c.yaml: pki.node_cert_days: must be 1 to 3650, got 0",
        ),
        (
            "database_url: 'mysql://x'\n",
            "cloudcore: c.yaml: database_url: database 'mysql' is "
            "not supported; use postgresql+psycopg://USER@HOST/DB or sqlite:///PATH",
        ),
    ],
)
def test_cloudcore_bad_value_exits_2_naming_file_and_key(
    tmp_path: Path, text: str, line: str
) -> None:
    (tmp_path / "c.yaml").write_text(text)
    assert_config_error(run("cloudcore", "--config", "c.yaml", cwd=tmp_path), line)
    assert not (tmp_path / "var").exists()


def test_cloudcore_reports_every_problem_and_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("hub: {listen: not-an-ip, window: 0}\npki: {hosts: []}\n")
    assert_config_error(
        run("cloudcore", "--config", "c.yaml", cwd=tmp_path),
        "cloudcore: c.yaml: hub.listen: must be an IP address such as 0.0.0.0, 127.0.0.1 or ::, "
        "got 'not-an-ip'",
        "cloudcore: c.yaml: hub.window: must be 1 to 65536, got 0",
        "cloudcore: c.yaml: pki.hosts: must not be empty (the server certificate needs at "
        "least one name)",
    )
    (tmp_path / "c.yaml").write_bytes(b"log_level: \xff\n")
    assert_config_error(
        run("cloudcore", "--config", "c.yaml", cwd=tmp_path),
        "cloudcore: c.yaml: line 1: not UTF-8 text (byte 0xff at offset 11); save the file as "
        "UTF-8",
    )


def test_cloudcore_data_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    proc = run("cloudcore", "--data-dir", "afile", cwd=tmp_path)
    assert_config_error(
        proc, "cloudcore: --data-dir: data_dir: afile exists and is not a directory"
    )


def test_edgecore_unknown_transport_and_negative_backoff_exit_2(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(
        "link: {transport: carrier-pigeon, backoff_initial: -1}\nruntime: {output_tail_bytes: -1}\n"
    )
    assert_config_error(
        run("edgecore", "serve", "--config", "e.yaml", cwd=tmp_path),
        "edgecore: e.yaml: link.transport: must be one of websocket, quic, auto, got "
        "'carrier-pigeon'",
        "edgecore: e.yaml: link.backoff_initial: must be > 0, got -1",
        "edgecore: e.yaml: runtime.output_tail_bytes: must be 0 to 262144, got -1",
    )


def test_bad_log_level_option_exits_2(tmp_path: Path) -> None:
    proc = run(
        "edgecore", "serve", "--data-dir", str(tmp_path), "--log-level", "loud", cwd=tmp_path
    )
    assert proc.returncode == 2 and "invalid choice: 'LOUD'" in proc.stderr, proc.stderr


def test_print_default_config_shows_constraints_and_loads_back(tmp_path: Path) -> None:
    for prog in ("cloudcore", "edgecore"):
        proc = run(prog, "--print-default-config", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "#   allowed: " in proc.stdout
        (tmp_path / f"{prog}.yaml").write_text(
            proc.stdout.replace("/var/lib/edgesync", str(tmp_path / "var"))
        )
    # What was printed is a valid config: edgecore gets as far as "not joined" (exit 1).
    proc = run("edgecore", "serve", "--config", "edgecore.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "has not joined a cloud yet" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- edgectl


@pytest.fixture
def ctl_dir(tmp_path: Path) -> Path:
    """A well-formed edgectl.yaml pointing at a port nothing listens on."""
    now = dt.datetime.now(dt.timezone.utc)
    _, ca = pki.create_ca("test CA", now)
    (tmp_path / "edgectl.yaml").write_text(
        yaml.safe_dump(
            {"server": "https://127.0.0.1:9", "token": "t", "ca": pki.cert_to_pem(ca).decode()}
        )
    )
    return tmp_path


def ctl(ctl_dir: Path, *argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return run("cloudcore.edgectl", "--config", "edgectl.yaml", *argv, cwd=ctl_dir, stdin=stdin)


def test_edgectl_apply_of_an_empty_file_exits_2(ctl_dir: Path) -> None:
    (ctl_dir / "empty.yaml").write_text("# nothing here\n")
    proc = ctl(ctl_dir, "task", "apply", "-f", "empty.yaml")
    assert_config_error(
        proc,
        "edgectl: empty.yaml: holds no task document (empty, or only comments); nothing applied",
    )
    proc = ctl(ctl_dir, "task", "apply", "-f", "-", stdin=b"")
    assert_config_error(
        proc, "edgectl: <stdin>: holds no task document (empty, or only comments); nothing applied"
    )


def test_edgectl_yaml_error_names_file_and_line(ctl_dir: Path) -> None:
    (ctl_dir / "task.yaml").write_text("metadata:\n  name: x\nspec: [unclosed\n")
    proc = ctl(ctl_dir, "task", "apply", "-f", "task.yaml")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgectl: task.yaml: line 4, column 1: invalid YAML:"), (
        proc.stderr
    )
    assert "<unicode string>" not in proc.stderr
    (ctl_dir / "task.yaml").write_text("- a list\n")
    proc = ctl(ctl_dir, "task", "apply", "-f", "task.yaml")
    assert_config_error(
        proc,
        "edgectl: task.yaml: document 1 is a list, not a task mapping (apiVersion, kind, "
        "metadata, spec); nothing applied",
    )


def test_edgectl_checks_its_own_config(ctl_dir: Path) -> None:
    (ctl_dir / "edgectl.yaml").write_text("server: http://x\ntoken: ''\nca: nope\nextra: 1\n")
    proc = ctl(ctl_dir, "node", "list")
    assert_config_error(
        proc,
        "edgectl: edgectl.yaml: server: must be https://HOST:PORT, got 'http://x'",
        "edgectl: edgectl.yaml: token: must not be empty",
        "edgectl: edgectl.yaml: ca: is not a PEM certificate",
    )
    assert "edgectl: edgectl.yaml: extra: unknown setting" in proc.stderr
    proc = run("cloudcore.edgectl", "--config", "missing.yaml", "node", "list", cwd=ctl_dir)
    assert proc.returncode == 2 and "pass --config or set EDGECTL_CONFIG" in proc.stderr


def test_edgectl_unreachable_cloud_is_exit_1(ctl_dir: Path) -> None:
    proc = ctl(ctl_dir, "node", "list")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("edgectl: cannot reach the cloud at https://127.0.0.1:9")
