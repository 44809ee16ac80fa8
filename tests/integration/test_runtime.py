"""The command runtime with real processes, and the edge scheduler around it with a real
SQLite store: runs never wedge, never escape the task's directory, never load what the
node did not allow, and run as an unprivileged user with limits when edgecore is root.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecore.config import RuntimeConfig
from edgecore.runtime import RuntimeRegistry
from edgecore.runtime.command import RunOutcome, RunSettings, run_command
from edgecore.runtime.command_runtime import CommandRuntime
from edgecore.scheduler import LocalScheduler
from edgecore.store import EdgeStore
from shared.aio.dbthread import DbThread
from shared.clock import SystemClock
from shared.protocol.messages import Envelope, Op
from shared.resources import CommandSpec
from shared.runpolicy import run_limits
from tests.integration.harness import eventually

TASK_DIR = ("work", "default", "t")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def run(
    root: Path, argv: list[str], settings: RunSettings | None = None, **spec: Any
) -> RunOutcome:
    command = CommandSpec(argv=argv, timeout=spec.pop("timeout", 10), **spec)
    return asyncio.run(
        run_command(
            command, root, TASK_DIR, {"EDGESYNC_TASK": "task/default/t"}, settings or RunSettings()
        )
    )


def task_dir(root: Path) -> Path:
    return root.joinpath(*TASK_DIR)


# ---------------------------------------------------------------- env and workdir refusals


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"env": {"A": "x\0y"}}, "spec.command.env.A: the value contains a NUL byte"),
        ({"env": {"A=B": "x"}}, "spec.command.env['A=B']: not a variable name"),
        ({"workdir": "a\0b"}, "spec.command.workdir: contains a NUL byte"),
        ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, "LD_PRELOAD changes what programs load"),
        ({"env": {"PYTHONPATH": "/tmp"}}, "PYTHONPATH changes what programs load"),
        ({"env": {"PATH": "/tmp/evil"}}, "PATH chooses which programs run"),
    ],
)
def test_refused_spec_fails_the_run_without_starting_it(
    tmp_path: Path, spec: dict[str, Any], reason: str
) -> None:
    outcome = run(tmp_path, ["touch", "ran"], **spec)
    assert outcome.phase == "failed" and outcome.exit_code is None
    assert reason in outcome.error, outcome.error
    assert not (task_dir(tmp_path) / "ran").exists()


def test_allow_env_lets_a_loader_variable_through(tmp_path: Path) -> None:
    settings = RunSettings(allow_env=frozenset({"LD_LIBRARY_PATH", "PATH"}))
    outcome = run(
        tmp_path,
        ["sh", "-c", 'echo "$LD_LIBRARY_PATH $PATH"'],
        settings,
        env={"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/usr/bin:/bin"},
    )
    assert outcome.phase == "succeeded", outcome
    assert outcome.stdout_tail == "/opt/lib /usr/bin:/bin\n"


def test_edgesync_variables_cannot_be_overridden_by_the_task(tmp_path: Path) -> None:
    outcome = run(tmp_path, ["sh", "-c", 'echo "$EDGESYNC_TASK"'], env={"EDGESYNC_TASK": "lie"})
    assert outcome.stdout_tail == "task/default/t\n", outcome


def test_symlink_left_by_an_earlier_run_is_refused_and_nothing_is_written_outside(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data"
    root.mkdir()
    # An earlier run of the task plants links to outside its directory.
    first = run(root, ["sh", "-c", f"ln -s {outside} out && mkdir real && ln -s {outside} real/x"])
    assert first.phase == "succeeded", first
    for workdir in ("out", "out/sub", "real/x"):
        outcome = run(root, ["touch", "escaped"], workdir=workdir)
        assert outcome.phase == "failed" and outcome.exit_code is None, (workdir, outcome)
        assert "is a symbolic link" in outcome.error and "refusing to follow it" in outcome.error
    assert list(outside.iterdir()) == []
    # A real subdirectory still works.
    ok = run(root, ["sh", "-c", "touch inside && pwd"], workdir="real/deeper")
    assert ok.phase == "succeeded", ok
    assert (task_dir(root) / "real" / "deeper" / "inside").exists()


def test_symlinked_task_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "data"
    (root / "work" / "default").mkdir(parents=True)
    (root / "work" / "default" / "t").symlink_to(outside)
    outcome = run(root, ["touch", "escaped"])
    assert "is a symbolic link" in outcome.error, outcome
    assert list(outside.iterdir()) == []


def test_a_file_where_the_workdir_should_be_is_refused(tmp_path: Path) -> None:
    run(tmp_path, ["touch", "sub"])
    outcome = run(tmp_path, ["true"], workdir="sub")
    assert outcome.phase == "failed" and "is not a directory" in outcome.error, outcome


def test_program_that_cannot_start_fails_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "work" / "default" / "t").mkdir(parents=True)
    script = task_dir(tmp_path) / "script"
    script.write_bytes(b"\x7fELF garbage")
    script.chmod(0o755)
    outcome = run(tmp_path, ["./script"], RunSettings(run_as="root"))
    assert outcome.phase == "failed" and outcome.exit_code is None
    assert outcome.error == "cannot start './script': Exec format error", outcome


# ---------------------------------------------------------------- user and limits


@as_root
def test_commands_run_as_nobody_with_only_nobodys_groups_when_root(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    outcome = run(tmp_path, ["sh", "-c", "id -u; id -g; id -G; touch mine; echo $HOME"])
    assert outcome.phase == "succeeded", outcome
    uid, gid, groups, home = outcome.stdout_tail.splitlines()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert set(map(int, groups.split())) == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert 0 not in set(map(int, groups.split()))
    assert home == nobody.pw_dir
    st = (task_dir(tmp_path) / "mine").stat()
    assert st.st_uid == nobody.pw_uid
    # The task's own directory belongs to it; the ones above stay edgecore's.
    assert task_dir(tmp_path).stat().st_uid == nobody.pw_uid
    assert (tmp_path / "work" / "default").stat().st_uid == 0


@as_root
def test_run_as_root_must_be_explicit(tmp_path: Path) -> None:
    outcome = run(tmp_path, ["id", "-u"], RunSettings(run_as="root"))
    assert outcome.stdout_tail == "0\n", outcome


@as_root
def test_unknown_run_as_user_fails_the_run(tmp_path: Path) -> None:
    outcome = run(tmp_path, ["touch", "ran"], RunSettings(run_as="no-such-user-here"))
    assert outcome.phase == "failed"
    assert "runtime.run_as: there is no user 'no-such-user-here' on this node" in outcome.error


@as_root
def test_nobody_cannot_read_the_data_dir_above_its_task(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "edge.db").write_text("secret")
    outcome = run(root, ["cat", "../../../edge.db"])
    assert outcome.phase == "failed" and "Permission denied" in outcome.stderr_tail, outcome


def limits_of(outcome: RunOutcome) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in outcome.stdout_tail.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        rows[name] = (soft, hard)
    return rows


def test_rlimits_from_timeout_memory_and_config(tmp_path: Path) -> None:
    limits = run_limits(timeout=10, cpus=2, open_files=64, memory_mb=512, default_memory_mb=0)
    outcome = run(tmp_path, ["cat", "/proc/self/limits"], RunSettings(limits=limits), timeout=10)
    assert outcome.phase == "succeeded", outcome
    rows = limits_of(outcome)
    assert rows["Max core file size"] == ("0", "0")
    assert rows["Max open files"] == ("64", "64")
    assert rows["Max cpu time"] == ("21", "26")
    assert rows["Max address space"] == (str(512 << 20), str(512 << 20))


def test_memory_limit_stops_a_run_that_allocates_more(tmp_path: Path) -> None:
    limits = run_limits(timeout=10, cpus=1, open_files=64, memory_mb=None, default_memory_mb=64)
    grab = "x = bytearray(256 * 1024 * 1024)"
    outcome = run(tmp_path, ["python3", "-c", grab], RunSettings(limits=limits, run_as="root"))
    assert outcome.phase == "failed" and outcome.exit_code == 1, outcome
    assert "MemoryError" in outcome.stderr_tail


# ---------------------------------------------------------------- the scheduler around it


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[EdgeStore, DbThread, Path]]:
    store = EdgeStore(tmp_path / "edge.db")
    db = DbThread()
    store.open()
    try:
        yield store, db, tmp_path
    finally:
        db.shutdown()
        store.close()


def task_envelope(rv: int, name: str, command: dict[str, Any]) -> Envelope:
    document = {
        "apiVersion": "edgesync.io/v1",
        "kind": "Task",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"kind": "command", "command": command, "trigger": {"type": "once"}},
    }
    return Envelope(
        op=Op.APPLY,
        id=f"m{rv}",
        ts=0,
        res=f"task/default/{name}",
        rv=rv,
        body={"document": document, "generation": 1, "epoch": 1},
    )


async def run_once(
    edge: tuple[EdgeStore, DbThread, Path], config: RuntimeConfig, command: dict[str, Any]
) -> list[dict[str, Any]]:
    """Apply a once-task, let the real scheduler run it, return its finished runs."""
    store, db, data_dir = edge
    store.apply_batch([task_envelope(1, "t", command)])
    scheduler = LocalScheduler(
        config,
        store,
        db,
        SystemClock(),
        data_dir,
        "n1",
        on_outbox=lambda: None,
        link_up=lambda: True,
        runtimes=RuntimeRegistry([CommandRuntime(config)]),
    )
    loop = asyncio.create_task(scheduler.run())
    try:

        def finished() -> list[dict[str, Any]]:
            runs = store.runs_for("task/default/t")
            return runs if runs and all(r["phase"] != "running" for r in runs) else []

        await eventually(finished, what="the run finished")
        await asyncio.sleep(0.2)  # a wedged or repeated run would show up now
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    return list(store.runs_for("task/default/t"))


def results_in_outbox(store: EdgeStore) -> list[dict[str, Any]]:
    return [r.body for r in store.outbox_after(0, 100) if r.op is Op.RESULT]


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"argv": ["true"], "env": {"A": "x\0y"}}, "spec.command.env[...]: must be free of NUL"),
        ({"argv": ["true"], "env": {"A=B": "x"}}, "spec.command.env key: must be a variable name"),
        ({"argv": ["true"], "workdir": "a\0b"}, "spec.command.workdir: must be a relative path"),
    ],
)
def test_bad_spec_from_the_cloud_ends_failed_with_its_reason_reported_once(
    edge: tuple[EdgeStore, DbThread, Path], command: dict[str, Any], reason: str
) -> None:
    runs = asyncio.run(run_once(edge, RuntimeConfig(run_as="root"), command))
    assert len(runs) == 1 and runs[0]["phase"] == "failed", runs
    assert reason in runs[0]["result"]["error"]
    results = results_in_outbox(edge[0])
    assert len(results) == 1 and reason in results[0]["error"], results


def test_unexpected_runtime_exception_ends_the_run_failed_once(
    edge: tuple[EdgeStore, DbThread, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # A run_as the config loader would refuse makes the user lookup itself raise.
    config = RuntimeConfig(run_as="bad\0name")
    runs = asyncio.run(run_once(edge, config, {"argv": ["true"]}))
    assert len(runs) == 1 and runs[0]["phase"] == "failed", runs
    error = runs[0]["result"]["error"]
    assert error == "edgecore could not run the task: ValueError: embedded null byte", error
    assert len(results_in_outbox(edge[0])) == 1
    assert any("the runtime failed" in r.getMessage() for r in caplog.records)


def test_good_run_through_the_scheduler_gets_limits_and_succeeds(
    edge: tuple[EdgeStore, DbThread, Path],
) -> None:
    config = RuntimeConfig(max_open_files=100, default_memory_mb=1024)
    runs = asyncio.run(run_once(edge, config, {"argv": ["cat", "/proc/self/limits"]}))
    assert runs[0]["phase"] == "succeeded", runs
    text = runs[0]["result"]["stdout_tail"]
    assert "Max open files            100" in text
    assert f"Max address space         {1024 << 20}" in text


def test_what_a_run_leaves_running_in_its_group_ends_with_it(tmp_path: Path) -> None:
    marker = f"sleep 30.{os.getpid()}"  # a duration no other process here sleeps
    started = time.monotonic()
    outcome = run(
        tmp_path,
        ["sh", "-c", f"{marker} & echo hi"],
        RunSettings(run_as="root", kill_grace=5.0),
    )
    assert outcome.phase == "succeeded" and outcome.stdout_tail == "hi\n", outcome
    assert time.monotonic() - started < 3, "the run waited for its background child"
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout == "", f"a child outlived its run: {left.stdout}"
