"""Runs `command` tasks: an argv (never a shell), a timeout, a bounded output tail.

The process gets its own session (process group) so a timeout or a stop
kills everything it started, not only the direct child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.resources import CommandSpec

BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


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


async def run_command(
    spec: CommandSpec,
    workdir: Path,
    extra_env: dict[str, str],
    tail_bytes: int,
    kill_grace: float,
) -> RunOutcome:
    """Run to completion, timeout or cancellation (cancellation kills the process group)."""
    workdir = workdir / spec.workdir if spec.workdir else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env.update(extra_env)
    env.update(spec.env)
    started = time.monotonic()
    out, err = _Tail(tail_bytes), _Tail(tail_bytes)
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            cwd=workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        return RunOutcome(
            "failed", None, f"cannot start {spec.argv[0]!r}: {exc.strerror}", "", "", 0
        )
    drains = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
    error = ""
    try:
        await asyncio.wait_for(proc.wait(), spec.timeout)
    except (TimeoutError, asyncio.TimeoutError):
        error = f"timed out after {spec.timeout:g}s; killed"
        await _kill(proc, kill_grace)
    except asyncio.CancelledError:
        await _kill(proc, kill_grace)
        drains.cancel()
        raise
    try:
        await asyncio.wait_for(drains, kill_grace + 1)
    except (TimeoutError, asyncio.TimeoutError):
        drains.cancel()  # a grandchild kept the pipes open; the tail so far is what we have
    code = proc.returncode
    duration = int((time.monotonic() - started) * 1000)
    if not error and code is not None and code < 0:
        error = f"killed by signal {-code}"
    phase = "succeeded" if code == 0 and not error else "failed"
    return RunOutcome(phase, code, error, out.text(), err.text(), duration)


async def _kill(proc: asyncio.subprocess.Process, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except (TimeoutError, asyncio.TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
