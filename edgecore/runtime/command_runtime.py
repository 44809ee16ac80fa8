"""The `command` task kind as a Runtime: each run is a process (edgecore/runtime/command.py)."""

from __future__ import annotations

import os

from edgecore.config import RuntimeConfig
from edgecore.runtime import RunContext
from edgecore.runtime.command import RunOutcome, RunSettings, run_command
from shared.resources import CommandTaskSpec, Task
from shared.runpolicy import run_limits


class CommandRuntime:
    kind = "command"

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config

    async def prepare(self, task: Task) -> None:
        """Nothing to load: every run starts its own process."""

    async def run(self, task: Task, context: RunContext) -> RunOutcome:
        spec = task.spec
        assert isinstance(spec, CommandTaskSpec)
        return await run_command(
            spec.command, context.data_dir, context.task_dir, context.env, self._settings(spec)
        )

    async def release(self, task: Task) -> None:
        """No state is kept between runs."""

    async def close(self) -> None:
        """No state is kept between runs."""

    def _settings(self, spec: CommandTaskSpec) -> RunSettings:
        config = self.config
        limits = run_limits(
            timeout=spec.command.timeout,
            cpus=os.cpu_count() or 1,
            open_files=config.max_open_files,
            memory_mb=spec.resources.memory_mb or None,
            default_memory_mb=config.default_memory_mb,
        )
        return RunSettings(
            tail_bytes=config.output_tail_bytes,
            kill_grace=config.kill_grace,
            allow_env=frozenset(config.allow_env),
            run_as=config.run_as,
            limits=limits,
        )
