"""Building blocks every resource shares: names, labels, metadata, and the one decode step.

All resources are `msgspec.Struct`s: one declaration gives validation (with the
field path in every error), the canonical document, and the JSON Schema the
OpenAPI contract is generated from (cloudcore/api/openapi.py). Structs are
frozen and reject unknown fields, so a typo in an operator's YAML is an error,
never a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from shared.errors import ResourceError

T = TypeVar("T")

API_VERSION = "edgesync.io/v1"

_PATTERN_WORDS: dict[str, str] = {}


def pattern(regex: str, words: str, **meta: Any) -> msgspec.Meta:
    """A string constraint whose error says `words` ("must be …"), not the regex."""
    _PATTERN_WORDS[regex] = words
    return msgspec.Meta(pattern=regex, description=words, **meta)


NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
Name = Annotated[
    str,
    pattern(
        NAME_PATTERN,
        "a name: lowercase letters, digits, '-' and '.'; 1-63 characters, "
        "starting and ending with a letter or digit",
        examples=["pi-kitchen"],
    ),
]
LabelKey = Annotated[
    str,
    pattern(
        r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$",
        "a label key: [prefix/]name as in Kubernetes, e.g. zone or edgesync.io/arch",
        examples=["zone"],
    ),
]
LabelValue = Annotated[
    str,
    pattern(
        r"^(([A-Za-z0-9][A-Za-z0-9_.-]{0,61})?[A-Za-z0-9])?$",
        "a label value: empty, or up to 63 letters, digits, '-', '_' and '.'",
        examples=["lab"],
    ),
]
Labels = Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=64)]

_NAME_RE = re.compile(NAME_PATTERN)


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every resource struct: immutable, strict about unknown fields.

    Subclasses say `frozen=True` again (and `kw_only=True` where a required field follows
    inherited defaults): mypy and msgspec read class keywords per class.
    """


class Metadata(Struct, frozen=True):
    name: Name
    namespace: Name = "default"
    labels: Labels = {}


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME_RE.match(value) is not None


def validate_name(value: Any, path: str) -> str:
    """A name field outside a struct (URL parts, token requests); ResourceError if invalid."""
    if not is_name(value):
        raise ResourceError(
            f"{path}: {value!r} is not a valid name (lowercase letters, digits, '-' and '.', "
            "1-63 chars, starting and ending with a letter or digit)"
        )
    return str(value)


def convert(obj: Any, cls: type[T], what: str) -> T:
    """Validate an already-parsed document into `cls`; ResourceError names the field path.

    msgspec says "Expected `int` >= 0 - at `$.spec.priority`"; operators read
    "spec.priority: expected `int` >= 0", the way they wrote the YAML.
    """
    try:
        return msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise ResourceError(_operator_message(str(exc), what)) from None


def _operator_message(message: str, what: str) -> str:
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        return f"{what}: {message[:1].lower()}{message[1:]}"
    key = ""
    if where.startswith("key` in `"):  # a mapping key, not its value, is wrong
        key, where = " key", where.removeprefix("key` in `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    text = text[:1].lower() + text[1:]
    for regex, words in _PATTERN_WORDS.items():
        text = text.replace(f"expected `str` matching regex {regex!r}", f"must be {words}")
    return f"{path or what}{key}: {text}"


def to_builtins(obj: Any) -> Any:
    """The canonical JSON-ready form of a struct (every field, defaults included)."""
    return msgspec.to_builtins(obj)
