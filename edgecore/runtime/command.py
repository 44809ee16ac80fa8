"""Runs `command` tasks: an argv (never a shell), a timeout, a bounded output tail, inside
the task's own directory, as an unprivileged user, with resource limits.

The process gets its own session (process group) so a timeout or a stop
kills everything it started, not only the direct child.

Containment (docs/operations.md, "Task runs"):
- The working directory is DATA_DIR/work/NAMESPACE/NAME[/WORKDIR]. It is opened
  one component at a time with O_NOFOLLOW, so a symbolic link anywhere below the
  data dir (one an earlier run left, say) refuses the run instead of leading it
  outside; the child enters it with fchdir on that very descriptor, so nothing
  can swap a component between the check and the start.
- When edgecore runs as root, the command runs as `runtime.run_as` (default
  `nobody`) with that user's groups only; the task's directory belongs to it.
- rlimits: RLIMIT_CORE 0, RLIMIT_NOFILE, RLIMIT_CPU from the timeout, RLIMIT_AS
  from the task's declared memory (shared/runpolicy.py).

Error handling: `run_command` never raises for what the task asks (bad env,
workdir, user, a program that cannot start); it returns a failed RunOutcome
whose `error` says why. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import resource
import signal
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import RunRefused
from shared.resources import CommandSpec
from shared.runpolicy import RunLimits, check_env, workdir_parts

BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
DEFAULT_RUN_AS = "nobody"
EXIT_POLL = 0.02
"""Seconds between checks that a run's main process has exited."""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    phase: str
    """succeeded (exit 0) or failed."""
    exit_code: int | None
    error: str
    stdout_tail: str
    stderr_tail: str
    duration_ms: int

    def as_result(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "exit_code": self.exit_code,
            "error": self.error,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def refused(cls, reason: str) -> RunOutcome:
        """A run that never started."""
        return cls("failed", None, reason, "", "", 0)


@dataclass(frozen=True, slots=True)
class RunUser:
    """The account a command runs as, when it is not edgecore's own."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True, slots=True)
class RunSettings:
    """The node's side of a run (from `runtime.*` and the task's limits)."""

    tail_bytes: int = 4096
    kill_grace: float = 2.0
    allow_env: Collection[str] = ()
    run_as: str = ""
    limits: RunLimits | None = None


def resolve_run_as(setting: str, euid: int) -> RunUser | None:
    """The user to switch to, or None to run as edgecore itself. Raises RunRefused.

    As root: `setting` (empty means `nobody`); `root`/`0` runs as root on purpose.
    Not root: switching is impossible, so `setting` must be empty or edgecore's user.
    """
    if euid != 0:
        if setting in ("", str(euid)) or _name_of(euid) == setting:
            return None
        raise RunRefused(
            f"runtime.run_as is {setting!r} but edgecore runs as uid {euid}, not root, "
            "and cannot switch users; run edgecore as root or leave run_as empty"
        )
    name = setting or DEFAULT_RUN_AS
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise RunRefused(
            f"runtime.run_as: there is no user {name!r} on this node; create it "
            "(useradd --system) or set runtime.run_as to an existing unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        return None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _name_of(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def open_workdir(root: Path, parts: tuple[str, ...], owned_from: int, user: RunUser | None) -> int:
    """Open (creating as needed) root/parts[0]/…, never following a symbolic link.

    Components from index `owned_from` on belong to `user` (the task's own
    directories). Returns a descriptor of the last one (O_CLOEXEC); raises RunRefused.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RunRefused(f"cannot open the data dir {root}: {exc.strerror}") from None
    walked = root
    try:
        for index, part in enumerate(parts):
            walked = walked / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(
                    part,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(walked):
                    raise RunRefused(
                        f"the working directory {walked} is a symbolic link (left by an earlier "
                        "run?); refusing to follow it out of the task's directory; remove it"
                    ) from None
                if exc.errno == errno.ENOTDIR:
                    raise RunRefused(f"{walked} is not a directory; remove it") from None
                raise RunRefused(f"cannot open {walked}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            if user is not None and index >= owned_from:
                st = os.fstat(fd)
                if (st.st_uid, st.st_gid) != (user.uid, user.gid):
                    os.fchown(fd, user.uid, user.gid)
        return fd
    except BaseException:
        os.close(fd)
        raise


class _ChildSetup:
    """Runs in the child between fork and exec (after the user switch): enter the
    working directory by descriptor and lower the rlimits. Only async-signal-safe-ish
    system calls here: no logging, no allocation-heavy Python."""

    def __init__(self, dir_fd: int, limits: list[tuple[int, int, int]]) -> None:
        self.dir_fd = dir_fd
        self.limits = limits

    def __call__(self) -> None:
        os.fchdir(self.dir_fd)
        for which, soft, hard in self.limits:
            resource.setrlimit(which, (soft, hard))


def _rlimits(limits: RunLimits | None) -> list[tuple[int, int, int]]:
    """(resource, soft, hard), each capped at edgecore's own hard limit (never raised)."""
    if limits is None:
        return [(resource.RLIMIT_CORE, 0, 0)]
    wanted = [
        (resource.RLIMIT_CORE, limits.core_bytes, limits.core_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5),
    ]
    if limits.address_space_bytes is not None:
        size = limits.address_space_bytes
        wanted.append((resource.RLIMIT_AS, size, size))
    out = []
    for which, soft, hard in wanted:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        out.append((which, soft, hard))
    return out


class _Tail:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]
            self.truncated = True

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        return ("…" + text) if self.truncated else text


async def _drain(stream: asyncio.StreamReader | None, tail: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        tail.feed(chunk)


def _environment(
    spec: CommandSpec, extra_env: dict[str, str], settings: RunSettings, user: RunUser | None
) -> dict[str, str]:
    check_env(spec.env, settings.allow_env)
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    if user is not None:
        env["HOME"] = user.home
    env.update(spec.env)
    env.update(extra_env)  # EDGESYNC_* are edgecore's: a task cannot override them
    return env


async def run_command(
    spec: CommandSpec,
    root: Path,
    task_dir: tuple[str, ...],
    extra_env: dict[str, str],
    settings: RunSettings,
) -> RunOutcome:
    """Run to completion, timeout or cancellation (cancellation kills the process group).

    `root` is the data dir, `task_dir` the task's directory below it (work, NS, NAME);
    the command runs in `task_dir/spec.workdir`. Never raises except CancelledError.
    """
    try:
        user = resolve_run_as(settings.run_as, os.geteuid())
        env = _environment(spec, extra_env, settings, user)
        parts = task_dir + workdir_parts(spec.workdir)
        dir_fd = open_workdir(root, parts, len(task_dir) - 1, user)
    except RunRefused as exc:
        return RunOutcome.refused(str(exc))
    try:
        return await _run(spec, env, dir_fd, user, settings)
    finally:
        os.close(dir_fd)


async def _run(
    spec: CommandSpec, env: dict[str, str], dir_fd: int, user: RunUser | None, settings: RunSettings
) -> RunOutcome:
    started = time.monotonic()
    out, err = _Tail(settings.tail_bytes), _Tail(settings.tail_bytes)
    switch: dict[str, Any] = {}
    if user is not None:
        switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_ChildSetup(dir_fd, _rlimits(settings.limits)),
            **switch,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return RunOutcome.refused(f"cannot start {spec.argv[0]!r}: {reason}")
    except (ValueError, subprocess.SubprocessError) as exc:
        return RunOutcome.refused(f"cannot start {spec.argv[0]!r}: {exc}")
    drains = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    error = ""
    try:
        await asyncio.wait_for(_exited(proc), spec.timeout)
    except (TimeoutError, asyncio.TimeoutError):
        error = f"timed out after {spec.timeout:g}s; killed"
        await _kill(proc, settings.kill_grace)
    except asyncio.CancelledError:
        await _kill(proc, settings.kill_grace)
        drains.cancel()
        raise
    # The run ends with its main process: what it left running in its process group is
    # killed, so no child outlives the run or holds its output pipes open. (A child that
    # called setsid has left the group: the unit's KillMode=control-group contains it.)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(drains, settings.kill_grace + 1)
    except (TimeoutError, asyncio.TimeoutError):
        drains.cancel()  # a grandchild kept the pipes open; the tail so far is what we have
    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), settings.kill_grace + 1)
    code = proc.returncode
    duration = int((time.monotonic() - started) * 1000)
    if not error and code is not None and code < 0:
        error = f"killed by signal {-code}"
        if -code == signal.SIGXCPU:
            error += " (SIGXCPU: the run's CPU time limit, see runtime limits)"
    phase = "succeeded" if code == 0 and not error else "failed"
    return RunOutcome(phase, code, error, out.text(), err.text(), duration)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """The main process has exited. (`proc.wait()` also waits for every pipe to close,
    which a background child holding stdout would delay until it ends.)"""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio has no public exit event
        await asyncio.sleep(EXIT_POLL)


async def _kill(proc: asyncio.subprocess.Process, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except (TimeoutError, asyncio.TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
