"""Request bodies: format by Content-Type, bounded, and never parsed in a way that stalls the loop.

The rules (docs/operations.md, "Operator API"):
- JSON (`application/json`, or no Content-Type) is parsed by msgspec in C:
  about a millisecond per MiB, with nesting bounded before any field is used.
- YAML (`application/yaml`, `application/x-yaml`, `text/yaml`) is accepted only
  on routes that say so, which are behind the operator's bearer token. It is
  parsed in a worker thread with libyaml, smaller bodies only, one or two at a
  time, with anchors/aliases refused (a "billion laughs" document is tiny and
  expands without bound when used).
- Anything else is 415; a body over the route's limit is 413; bytes that are
  not UTF-8, or not the format they claim, are 400.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml
from aiohttp import web

from shared.untrusted_yaml import UntrustedYamlError, load_untrusted

JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
MAX_DEPTH = 32
"""Deepest nesting accepted in any request body (a task document needs 6)."""
YAML_CONCURRENCY = 2


class BodyError(Exception):
    """A request body that cannot be used; becomes a JSON error with `status`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class BodyRules:
    max_bytes: int
    yaml: bool = False
    max_yaml_bytes: int = 64 * 1024
    """YAML costs ~2 s of CPU per MiB even with libyaml: a task document is ~1 KiB."""


class BodyReader:
    """Reads bodies by the rules above; holds the slots that bound concurrent YAML parses."""

    def __init__(self) -> None:
        self._yaml_slots = asyncio.Semaphore(YAML_CONCURRENCY)

    async def read(self, request: web.Request, rules: BodyRules) -> Any:
        """The parsed body (None when empty). Raises BodyError."""
        return await _read_body(request, rules, self._yaml_slots)


async def _read_body(request: web.Request, rules: BodyRules, slots: asyncio.Semaphore) -> Any:
    media = request.content_type if request.headers.get("Content-Type") else "application/json"
    is_yaml = media in YAML_TYPES or media.endswith("+yaml")
    if not (media in JSON_TYPES or media.endswith("+json") or (rules.yaml and is_yaml)):
        accepted = "application/json" + (" or application/yaml" if rules.yaml else "")
        raise BodyError(415, "unsupported_media_type", f"send {accepted}, not {media}")
    limit = rules.max_yaml_bytes if is_yaml else rules.max_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyError(413, "too_large", f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "too_large", f"request body is over the limit of {limit} bytes")
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    return await _parse_yaml(raw, slots) if is_yaml else _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BodyError(400, "bad_request", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, "bad_request", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(value)
    return value


async def _parse_yaml(raw: bytes, slots: asyncio.Semaphore) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, "bad_request", f"YAML body is not UTF-8 (byte {exc.start})") from None
    async with slots:
        try:
            return await asyncio.to_thread(load_untrusted, text, max_depth=MAX_DEPTH)
        except UntrustedYamlError as exc:
            raise BodyError(400, "bad_request", f"request body: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            message = f"request body is not valid YAML{where}: {problem}"
            raise BodyError(400, "bad_request", message) from None


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise BodyError(400, "bad_request", f"body nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)
