"""The edge's pure run policy: which env a task may set, its workdir, its limits."""

from __future__ import annotations

import pytest

from shared.errors import RunRefused
from shared.runpolicy import (
    LOADER_VARIABLES,
    MAX_CPU_SECONDS,
    check_env,
    is_loader_variable,
    run_limits,
    workdir_parts,
)


def refused(env: dict[str, str], allow: tuple[str, ...] = ()) -> str:
    with pytest.raises(RunRefused) as info:
        check_env(env, allow)
    return str(info.value)


def test_ordinary_variables_pass() -> None:
    check_env({"GREETING": "hi", "LANG": "C.UTF-8", "_X1": "", "HOME": "/tmp"}, ())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"A=B": "x"}, "spec.command.env['A=B']: not a variable name"),
        ({"": "x"}, "spec.command.env: a variable name is empty"),
        ({"A\0B": "x"}, "not a variable name"),
        ({"1A": "x"}, "spec.command.env['1A']: not a variable name"),
        ({"A": "x\0y"}, "spec.command.env.A: the value contains a NUL byte"),
        ({"LD_PRELOAD": "/tmp/x.so"}, "spec.command.env.LD_PRELOAD: LD_PRELOAD changes what"),
        ({"LD_ANYTHING": "1"}, "LD_ANYTHING changes what programs load"),
        ({"DYLD_INSERT_LIBRARIES": "x"}, "changes what programs load"),
        ({"PYTHONPATH": "/tmp"}, "PYTHONPATH changes what programs load"),
        ({"NODE_OPTIONS": "--require x"}, "NODE_OPTIONS changes"),
        ({"PATH": "/tmp/evil:/usr/bin"}, "spec.command.env.PATH: PATH chooses which programs run"),
    ],
)
def test_refused_env_names_the_variable(env: dict[str, str], expected: str) -> None:
    message = refused(env)
    assert expected in message, message


def test_refusal_says_how_to_allow_it() -> None:
    assert "refused unless the node's runtime.allow_env lists it" in refused({"PATH": "/x"})


def test_allow_env_lets_named_loader_variables_through_only() -> None:
    check_env(
        {"PATH": "/opt/bin:/usr/bin", "LD_LIBRARY_PATH": "/opt/lib"}, ("PATH", "LD_LIBRARY_PATH")
    )
    assert "LD_PRELOAD" in refused({"LD_PRELOAD": "x"}, ("PATH", "LD_LIBRARY_PATH"))
    # allowing a loader variable never allows a NUL in it
    assert "NUL" in refused({"PATH": "a\0b"}, ("PATH",))


def test_documented_list_is_what_is_refused() -> None:
    for name in LOADER_VARIABLES:
        assert is_loader_variable(name), name
    assert not is_loader_variable("HOME") and not is_loader_variable("LANG")


@pytest.mark.parametrize(
    ("workdir", "parts"),
    [("", ()), ("out", ("out",)), ("a/b/", ("a", "b")), ("./a//b", ("a", "b"))],
)
def test_workdir_parts(workdir: str, parts: tuple[str, ...]) -> None:
    assert workdir_parts(workdir) == parts


@pytest.mark.parametrize(
    ("workdir", "expected"),
    [
        ("a\0b", "contains a NUL byte"),
        ("/etc", "must be relative"),
        ("a/../../etc", "must not contain '..'"),
        ("..", "must not contain '..'"),
    ],
)
def test_bad_workdir_is_refused(workdir: str, expected: str) -> None:
    with pytest.raises(RunRefused, match=expected):
        workdir_parts(workdir)


def test_limits_from_timeout_memory_and_defaults() -> None:
    limits = run_limits(timeout=10, cpus=4, open_files=256, memory_mb=64, default_memory_mb=0)
    assert limits.address_space_bytes == 64 << 20
    assert limits.cpu_seconds == 41  # every CPU for the whole timeout, plus one second
    assert limits.open_files == 256 and limits.core_bytes == 0
    default = run_limits(timeout=0.5, cpus=1, open_files=16, memory_mb=None, default_memory_mb=128)
    assert default.address_space_bytes == 128 << 20 and default.cpu_seconds == 2
    assert run_limits(1, 1, 16, None, 0).address_space_bytes is None


@pytest.mark.parametrize("timeout", [1e300, float("inf")])
def test_cpu_limit_never_overflows(timeout: float) -> None:
    assert run_limits(timeout, 8, 16, None, 0).cpu_seconds == MAX_CPU_SECONDS
