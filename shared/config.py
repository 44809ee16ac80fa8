"""Typed configuration: frozen dataclasses loaded from YAML with errors an operator can act on.

Each daemon describes its settings as nested frozen dataclasses whose fields
are declared with `setting(default, "help")`. This module turns YAML into
those dataclasses (rejecting unknown keys and wrong types, naming the file
and the dotted key) and renders the defaults, with help as comments, for
`--print-default-config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from shared.errors import ConfigError

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:
    """Declare a config field with its default and a one-line help text."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


def section(cls: type[T], help: str) -> Any:
    """Declare a nested config section."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def load_yaml_file(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; raises ConfigError naming the file and the line on syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def from_dict(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping; raises ConfigError naming `source` and the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{prefix}{key}' (known here: {known})")
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, source, f"{prefix}{name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix or 'config'}: {exc}") from None


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, source, key)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping of settings")
        return from_dict(hint, value, source, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {_kind(value)}")
        items = [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {_kind(value)}")
        return {str(k): _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Any:
        return value
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    raise ConfigError(
        f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {_kind(value)} {value!r}"
    )


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def render_defaults(cls: type[Any]) -> str:
    """The default configuration as commented YAML."""
    lines: list[str] = []
    _render(cls(), lines, 0)
    return "\n".join(lines) + "\n"


def _render(obj: Any, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help")
        if help_text:
            lines.append(f"{pad}# {help_text}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _render(value, lines, indent + 1)
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            lines.append(f"{pad}{dumped}")
