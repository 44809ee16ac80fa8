"""Typed configuration: frozen dataclasses loaded from YAML with errors an operator can act on.

Each daemon describes its settings as nested frozen dataclasses whose fields
are declared with `setting(default, "help", check=...)`. This module turns YAML
into those dataclasses and rejects, in one pass, every unknown key, wrong type
and value its field's `Check` refuses. Each problem is reported as
`FILE: dotted.key: what is wrong`. It also renders the defaults, with help and
the allowed values as comments, for `--print-default-config`.

A section may also define `problems(self) -> Iterable[tuple[str, str]]` for rules
that span several fields (a backoff cap below its initial delay); keys are
relative to the section.

The checks here are pure: they look at the value only. A check that has to look
at the machine (is `data_dir` a directory?) lives beside the I/O it needs
(`shared.files.usable_dir`) and plugs in the same way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from shared.errors import ConfigError

T = TypeVar("T")


# ---------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Check:
    """A constraint on one setting's value.

    `test(value)` returns None when the value is fine, otherwise a short phrase
    saying what is wrong ("must be 1 to 65535, got 70000"). `describe` is what
    `--print-default-config` shows ("1 to 65535").
    """

    describe: str
    test: Callable[[Any], str | None]
    io: bool = False
    """True when `test` looks at the machine (the filesystem); `check_defaults` skips it."""

    def __call__(self, value: Any) -> str | None:
        return self.test(value)


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def in_range(
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    extra: str = "",
) -> Check:
    """A number >= low (> low with `above`) and <= high; NaN and infinities are refused.

    `extra` names a special value outside the range ("-1 disables"); it is only text.
    """
    parts = []
    if low is not None and high is not None and not above:
        parts.append(f"{_number_text(low)} to {_number_text(high)}")
    else:
        if low is not None:
            parts.append(f"{'>' if above else '>='} {_number_text(low)}")
        if high is not None:
            parts.append(f"<= {_number_text(high)}")
    describe = " and ".join(parts) + (f"; {extra}" if extra else "")

    def test(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number ({describe}), got {value!r}"
        too_low = low is not None and (value <= low if above else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            return f"must be {describe}, got {_number_text(value)}"
        return None

    return Check(describe, test)


PORT = in_range(0, 65535, extra="0 picks a free one")

# Protocol settings both daemons declare (hub.* on the cloud, link.* on the edge).
FRAME_BYTES = in_range(4096, 64 << 20)
"""A frame must hold at least a hello; above 64 MiB a single frame could exhaust a Pi."""
WINDOW = in_range(1, 65536)
POSITIVE_SECONDS = in_range(0, above=True)
MISSED_PINGS = in_range(1, 100)


def one_of(*choices: str, ignore_case: bool = False) -> Check:
    """One of `choices` (compared case-insensitively with `ignore_case`)."""
    shown = ", ".join(choices)

    def test(value: Any) -> str | None:
        seen = value.upper() if ignore_case and isinstance(value, str) else value
        allowed = [c.upper() for c in choices] if ignore_case else list(choices)
        if seen not in allowed:
            return f"must be one of {shown}, got {value!r}"
        return None

    return Check(f"one of {shown}", test)


def non_empty(what: str = "") -> Check:
    """A non-empty string, list or mapping."""

    def test(value: Any) -> str | None:
        if (isinstance(value, str) and not value.strip()) or not value:
            return f"must not be empty{f' ({what})' if what else ''}"
        return None

    return Check("not empty", test)


def _ip(value: Any) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address such as 0.0.0.0, 127.0.0.1 or ::, got {value!r}"
    return None


IP_ADDRESS = Check("an IP address (0.0.0.0 = every IPv4 address, :: = every address)", _ip)

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _host(value: Any) -> str | None:
    if _ip(value) is None:
        return None
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        return f"{value!r} is neither an IP address nor a DNS name"
    return None


HOST = Check("a DNS name or an IP address", _host)


def each(check: Check) -> Check:
    """Apply `check` to every item of a list (or every value of a mapping)."""

    def test(value: Any) -> str | None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for index, item in items:
            problem = check(item)
            if problem:
                return f"[{index}]: {problem}"
        return None

    return Check(f"each {check.describe}", test)


def all_of(*checks: Check) -> Check:
    """Every one of `checks`, reporting the first that fails."""

    def test(value: Any) -> str | None:
        for check in checks:
            problem = check(value)
            if problem:
                return problem
        return None

    return Check("; ".join(c.describe for c in checks), test)


def url(*schemes: str, empty_ok: bool = True) -> Check:
    """A URL with one of `schemes` and a host (or empty, with `empty_ok`)."""
    shown = " or ".join(f"{s}://HOST:PORT" for s in schemes)

    def test(value: Any) -> str | None:
        if value == "" and empty_ok:
            return None
        try:
            parsed = urllib.parse.urlsplit(value)
            parsed.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            return f"must be {shown}, got {value!r} ({exc})"
        if parsed.scheme not in schemes or not parsed.hostname:
            return f"must be {shown}, got {value!r}"
        return None

    return Check(shown + (" or empty" if empty_ok else ""), test)


SQL_BACKENDS = ("sqlite", "postgresql")


def _sqlalchemy_url(value: Any) -> str | None:
    if value == "":
        return None
    # Imported here: SQLAlchemy's URL parser is pure, but importing SQLAlchemy at
    # module level would pull the database layer into this pure module.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(value)
    except (ArgumentError, ValueError) as exc:
        return f"is not an SQLAlchemy URL ({exc})"
    backend = parsed.get_backend_name()
    if backend not in SQL_BACKENDS:
        return (
            f"database {backend!r} is not supported; use postgresql+psycopg://USER@HOST/DB "
            "or sqlite:///PATH"
        )
    if backend == "sqlite" and not parsed.database:
        return "sqlite needs a file: sqlite:///PATH (an in-memory database would lose everything)"
    return None


SQLALCHEMY_URL = Check(
    "empty, postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB or sqlite:///PATH", _sqlalchemy_url
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL = one_of(*LOG_LEVELS, ignore_case=True)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_NAME = Check(
    "an environment variable name",
    lambda v: None if _ENV_NAME.match(v) else f"{v!r} is not an environment variable name",
)


# ---------------------------------------------------------------- declaring settings


def setting(default: Any, help: str, check: Check | None = None) -> Any:
    """Declare a config field with its default, a one-line help text and its constraint."""
    metadata = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type[T], help: str) -> Any:
    """Declare a nested config section."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# ---------------------------------------------------------------- loading


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """'line L, column C: invalid YAML: PROBLEM' without PyYAML's `<unicode string>` name."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}invalid YAML: {problem}"


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text of a file; raises ConfigError naming the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); save the file as UTF-8"
        ) from None


def load_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping. An empty file (or one with only comments) means all defaults.

    Raises ConfigError naming the file (and the line) when it cannot be read, is
    not UTF-8, is not valid YAML, or its top level is not a mapping.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    text = decode_text(data, str(path))
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_text(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of settings, got {_kind(loaded)}"
        )
    return loaded


class _Problems:
    """Problems found while loading, each as (source, key, what is wrong)."""

    def __init__(self, source: str, key_sources: Mapping[str, str]) -> None:
        self.source = source
        self.key_sources = key_sources
        self.items: list[str] = []

    def add(self, key: str, problem: str) -> None:
        top = key.split(".", 1)[0].split("[", 1)[0]
        source = self.key_sources.get(top, self.source)
        self.items.append(f"{source}: {key or 'config'}: {problem}")


def from_dict(
    cls: type[T],
    data: dict[str, Any],
    source: str,
    prefix: str = "",
    key_sources: Mapping[str, str] | None = None,
) -> T:
    """Build dataclass `cls` from a mapping, checking every value.

    Raises one ConfigError listing every problem, one per line, each as
    `SOURCE: key: what is wrong`. `key_sources` names another source for some
    top-level keys (a command-line override such as `--data-dir`).
    """
    problems = _Problems(source, key_sources or {})
    result = _build(cls, data, prefix, problems)
    if problems.items:
        raise ConfigError("\n".join(problems.items))
    assert result is not None
    return result


def _build(cls: type[T], data: dict[str, Any], prefix: str, problems: _Problems) -> T | None:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    before = len(problems.items)
    for name, value in data.items():
        key = f"{prefix}{name}"
        field = fields.get(name) if isinstance(name, str) else None
        if field is None:
            known = ", ".join(sorted(fields))
            shown = key if isinstance(name, str) else f"{prefix}{name!r}"
            problems.add(shown, f"unknown setting (known here: {known})")
            continue
        ok, converted = _convert(hints[name], value, key, problems)
        if not ok:
            continue
        check: Check | None = field.metadata.get("check")
        problem = check(converted) if check is not None else None
        if problem:
            problems.add(key, problem)
            continue
        values[name] = converted
    if len(problems.items) > before:
        return None
    try:
        built = cls(**values)
    except (TypeError, ValueError) as exc:
        problems.add(prefix.rstrip("."), str(exc))
        return None
    cross = getattr(built, "problems", None)
    if callable(cross):
        for key, problem in cross():
            problems.add(f"{prefix}{key}", problem)
    return built


def _convert(hint: Any, value: Any, key: str, problems: _Problems) -> tuple[bool, Any]:
    """(True, converted) or (False, None) after recording what is wrong."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            problems.add(key, f"must be a mapping of settings, got {_kind(value)}")
            return False, None
        built = _build(hint, value, key + ".", problems)
        return built is not None, built
    if origin in (list, tuple):
        if not isinstance(value, list):
            problems.add(key, f"must be a list, got {_kind(value)}")
            return False, None
        items = []
        for i, item in enumerate(value):
            ok, converted = _convert(args[0], item, f"{key}[{i}]", problems)
            if not ok:
                return False, None
            items.append(converted)
        return True, (items if origin is list else tuple(items))
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(key, f"must be a mapping, got {_kind(value)}")
            return False, None
        out = {}
        for k, v in value.items():
            ok, converted = _convert(args[1], v, f"{key}.{k}", problems)
            if not ok:
                return False, None
            out[str(k)] = converted
        return True, out
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True, float(value)
    if hint is Any:
        return True, value
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return True, value
    name = getattr(hint, "__name__", str(hint))
    problems.add(key, f"must be {name}, got {_kind(value)} {value!r}")
    return False, None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def check_defaults(cls: type[Any]) -> list[str]:
    """Problems the declared checks find in the defaults themselves (a test keeps it empty)."""
    problems: list[str] = []
    _check_defaults(cls(), "", problems)
    return problems


def _check_defaults(obj: Any, prefix: str, problems: list[str]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_defaults(value, f"{prefix}{f.name}.", problems)
            continue
        check: Check | None = f.metadata.get("check")
        problem = check(value) if check is not None and not check.io else None
        if problem:
            problems.append(f"{prefix}{f.name}: {problem}")


# ---------------------------------------------------------------- rendering


def render_defaults(cls: type[Any]) -> str:
    """The default configuration as commented YAML: help, then the allowed values."""
    lines: list[str] = []
    _render(cls(), lines, 0)
    return "\n".join(lines) + "\n"


def _render(obj: Any, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help")
        check: Check | None = f.metadata.get("check")
        if help_text:
            lines.append(f"{pad}# {help_text}")
        if check is not None:
            lines.append(f"{pad}#   allowed: {check.describe}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _render(value, lines, indent + 1)
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            lines.append(f"{pad}{dumped}")


def describe_checks(cls: type[Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """(dotted key, allowed values) for every checked setting, for docs and tests."""
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            yield from describe_checks(hint, f"{prefix}{f.name}.")
            continue
        check: Check | None = f.metadata.get("check")
        if check is not None:
            yield f"{prefix}{f.name}", check.describe
