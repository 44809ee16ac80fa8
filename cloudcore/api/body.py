"""Request bodies: format by Content-Type, bounded, and never parsed in a way that stalls the loop.

The rules (docs/operations.md, "Operator API"):
- JSON (`application/json`, or no Content-Type) is parsed by msgspec in C:
  about a millisecond per MiB, with nesting bounded before any field is used.
- YAML (`application/yaml`, `application/x-yaml`, `text/yaml`) is accepted only
  on routes that say so, which are behind the operator's bearer token. It is
  parsed in a worker process with libyaml, smaller bodies only, two at a time,
  with anchors/aliases refused (a "billion laughs" document is tiny and
  expands without bound when used).
- Anything else is 415; a body over the route's limit is 413; bytes that are
  not UTF-8, or not the format they claim, are 400.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from shared.untrusted_yaml import load_untrusted_or_explain

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
    """Reads bodies by the rules above; YAML in worker processes, two at a time.

    Processes, not threads: a thread parsing YAML shares the GIL (and the
    garbage collector's pauses) with the event loop, and held it for ~100 ms
    per 60 KiB document in tests/integration/test_api_bodies.py. The workers
    start on the first YAML body and are replaced if they die.
    """

    def __init__(self) -> None:
        self._yaml_slots = asyncio.Semaphore(YAML_CONCURRENCY)
        self._pool: ProcessPoolExecutor | None = None

    def _yaml_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a threaded daemon
            self._pool = ProcessPoolExecutor(YAML_CONCURRENCY, mp_context=context)
        return self._pool

    async def read(self, request: web.Request, rules: BodyRules) -> Any:
        """The parsed body (None when empty). Raises BodyError."""
        raw, is_yaml = await _read_raw(request, rules)
        if raw is None:
            return None
        if not is_yaml:
            return _parse_json(raw)
        async with self._yaml_slots:
            try:
                return await _parse_yaml(raw, self._yaml_pool())
            except BrokenProcessPool:
                self.close()
                raise BodyError(
                    503, "parser_unavailable", "the YAML parser stopped; retry, or send JSON"
                ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


async def _read_raw(request: web.Request, rules: BodyRules) -> tuple[bytes | None, bool]:
    """The body's bytes within the route's limit (None when empty), and whether it is YAML."""
    media = request.content_type if request.headers.get("Content-Type") else "application/json"
    is_yaml = media in YAML_TYPES or media.endswith("+yaml")
    if not (media in JSON_TYPES or media.endswith("+json") or (rules.yaml and is_yaml)):
        accepted = "application/json" + (" or application/yaml" if rules.yaml else "")
        raise BodyError(415, "unsupported_media_type", f"send {accepted}, not {media}")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BodyError(
            415, "unsupported_media_type", f"send the body uncompressed, not {encoding[:40]}"
        )
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
    return (raw if raw.strip() else None), is_yaml


def _parse_json(raw: bytes) -> Any:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BodyError(400, "bad_request", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError(400, "bad_request", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(value)
    return value


async def _parse_yaml(raw: bytes, pool: ProcessPoolExecutor) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, "bad_request", f"YAML body is not UTF-8 (byte {exc.start})") from None
    parse = functools.partial(load_untrusted_or_explain, text, max_depth=MAX_DEPTH)
    ok, value = await asyncio.get_running_loop().run_in_executor(pool, parse)
    if not ok:
        raise BodyError(400, "bad_request", value)
    return value


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
