"""What a task run may ask of the edge, decided without I/O (docs/operations.md, "Task runs").

The cloud validates task documents too, but the edge checks again right before a
run: it may run a document an older cloud accepted, and what is allowed (which
variables, which user, which limits) is the node's own policy.

- `check_env`: names must be variable names, values must not hold NUL, and
  variables that change what a program loads or finds (`LOADER_VARIABLES`,
  any `LD_*` or `DYLD_*`, and `PATH`) are refused unless `runtime.allow_env`
  lists them.
- `workdir_parts`: the task's `workdir` as path components, refusing absolute
  paths, `..`, NUL. Symbolic links are refused at run time by the runtime,
  component by component (edgecore/runtime/command.py).
- `run_limits`: the rlimits of a run, from its timeout, its declared memory and
  the node's config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from shared.errors import RunRefused

LOADER_VARIABLES = (
    # the dynamic loader (any LD_* and DYLD_* is refused too, see LOADER_PREFIXES)
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "MALLOC_CONF",
    # interpreters and runtimes
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONEXECUTABLE",
    "PYTHONBREAKPOINT",
    "PYTHONINSPECT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "RUBYLIB",
    "RUBYOPT",
    "LUA_PATH",
    "LUA_CPATH",
    "LUA_INIT",
    "TCLLIBPATH",
    "CLASSPATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    # shells run these files or strings
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    # libraries that load modules named by the environment
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    "GST_PLUGIN_PATH",
    "QT_PLUGIN_PATH",
    "GTK_MODULES",
    "GIO_EXTRA_MODULES",
    "LIBGL_DRIVERS_PATH",
    "SSLKEYLOGFILE",
)
"""Variables refused unless `runtime.allow_env` names them: each makes a program load,
run or trust code or files chosen by whoever wrote the task."""
LOADER_PREFIXES = ("LD_", "DYLD_")
SEARCH_PATH = "PATH"
"""Which `argv[0]` runs: a task may not choose it by changing PATH unless allowed."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_loader_variable(name: str) -> bool:
    """True for the variables refused by default (PATH included)."""
    return name == SEARCH_PATH or name in LOADER_VARIABLES or name.startswith(LOADER_PREFIXES)


def check_env(env: Mapping[str, str], allow: Collection[str]) -> None:
    """Raise RunRefused naming the first variable the node does not accept."""
    for key, value in env.items():
        if not isinstance(key, str) or not key:
            raise RunRefused("spec.command.env: a variable name is empty")
        where = f"spec.command.env.{key}" if _ENV_NAME.match(key) else f"spec.command.env[{key!r}]"
        if not _ENV_NAME.match(key):
            raise RunRefused(
                f"{where}: not a variable name (letters, digits and '_', not starting "
                "with a digit; no '=' or NUL)"
            )
        if not isinstance(value, str) or "\0" in value:
            raise RunRefused(f"{where}: the value contains a NUL byte")
        if is_loader_variable(key) and key not in allow:
            what = (
                "chooses which programs run"
                if key == SEARCH_PATH
                else ("changes what programs load")
            )
            raise RunRefused(
                f"{where}: {key} {what}; refused unless the node's runtime.allow_env lists it"
            )


def workdir_parts(workdir: str) -> tuple[str, ...]:
    """The components of a task's relative `workdir`; raises RunRefused for a bad one."""
    if not isinstance(workdir, str) or "\0" in workdir:
        raise RunRefused("spec.command.workdir: contains a NUL byte")
    if workdir.startswith("/"):
        raise RunRefused(f"spec.command.workdir: {workdir!r} must be relative to the task's dir")
    parts = tuple(p for p in workdir.split("/") if p not in ("", "."))
    if ".." in parts:
        raise RunRefused(f"spec.command.workdir: {workdir!r} must not contain '..'")
    return parts


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Resource limits of one run (setrlimit soft = hard unless noted)."""

    address_space_bytes: int | None
    """RLIMIT_AS; None leaves it as edgecore's."""
    open_files: int
    """RLIMIT_NOFILE."""
    cpu_seconds: int
    """RLIMIT_CPU soft limit (SIGXCPU); the hard limit is a few seconds above (SIGKILL)."""
    core_bytes: int = 0
    """RLIMIT_CORE: no core dumps (they could hold the task's secrets)."""


MAX_CPU_SECONDS = 1 << 40
"""setrlimit takes a C long: a timeout of 1e20 s must not overflow it."""


def run_limits(
    timeout: float,
    cpus: int,
    open_files: int,
    memory_mb: int | None,
    default_memory_mb: int,
) -> RunLimits:
    """Limits from the task's timeout (CPU time), its declared memory and the node's defaults.

    RLIMIT_CPU is a backstop behind the wall-clock timeout: it is the CPU time the
    run could use on every CPU for its whole timeout, so it only fires if the
    timeout could not be enforced (edgecore died).
    """
    memory = memory_mb if memory_mb else default_memory_mb
    budget = timeout * max(1, cpus)
    cpu_seconds = (
        math.ceil(budget) + 1
        if math.isfinite(budget) and budget < MAX_CPU_SECONDS
        else MAX_CPU_SECONDS
    )
    return RunLimits(
        address_space_bytes=memory * 1024 * 1024 if memory else None,
        open_files=open_files,
        cpu_seconds=cpu_seconds,
    )
