"""Text a node supplies, made safe for a terminal or a log line, and bounded (pure).

Anything an edge reports (labels, software string, capacity, heartbeat, task
output, error reasons) reaches an operator's terminal through `edgectl` and the
cloud's log. Printed raw, an escape sequence repaints the screen and a CR or LF
forges a table row or a whole log line. `escape_text` is the one function every
such sink applies; `bound_report` is what the hub applies to hello and
heartbeat bodies before they are stored, so a node cannot make the cloud store
and serve megabytes per heartbeat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_text(value: object, max_chars: int | None = None) -> str:
    """`value` as one printable line: controls, CR/LF, DEL, C1, bidi overrides, line and
    paragraph separators and other non-printable code points become backslash escapes
    (as in a Python string literal); a backslash is doubled so the result is unambiguous.

    `max_chars` cuts the input (before escaping) and marks the cut with "…".
    """
    text = value if isinstance(value, str) else str(value)
    cut = max_chars is not None and len(text) > max_chars
    if cut:
        text = text[: max(0, max_chars or 0)]
    if text.isprintable() and "\\" not in text:
        return text + "…" if cut else text
    out: list[str] = []
    for ch in text:
        named = _NAMED.get(ch)
        if named is not None:
            out.append(named)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    return "".join(out) + ("…" if cut else "")


@dataclass(frozen=True)
class ReportLimits:
    """How much a node may report about itself in one mapping (capacity, heartbeat).

    Defaults leave room for far more than today's edge sends (~10 keys) and keep a
    heartbeat below 16 KiB, so 10,000 nodes' latest heartbeats stay ~160 MB at most.
    """

    max_keys: int = 64
    """Entries per mapping (nested ones included); further entries are dropped."""
    max_key_chars: int = 64
    """A longer key drops its entry."""
    max_string_chars: int = 256
    """Longer strings are cut and end with "…"."""
    max_depth: int = 3
    """Nesting of mappings and lists; deeper values are dropped."""
    max_total_bytes: int = 16 * 1024
    """The whole mapping as compact UTF-8 JSON; entries are dropped from the end to fit."""


SOFTWARE_MAX_CHARS = 63
"""The `software` string of a hello (63 + "…" fits the store's 64-character column)."""
LABEL_MAX = 64
LABEL_KEY_MAX_CHARS = 63
LABEL_VALUE_MAX_CHARS = 256
DEFAULT_LIMITS = ReportLimits()


def bound_string(value: object, max_chars: int) -> tuple[str, bool]:
    """`value` as a string of at most `max_chars` (+ "…"); and whether it was cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= max_chars:
        return text, False
    return text[:max_chars] + "…", True


def bound_report(
    value: object, limits: ReportLimits = DEFAULT_LIMITS
) -> tuple[dict[str, Any], list[str]]:
    """A node-reported mapping within `limits`, and what was trimmed (for one log line).

    Not a mapping → {} (and a note). Only JSON scalars, lists and mappings survive.
    """
    notes: list[str] = []
    if not isinstance(value, dict):
        if value is not None:
            notes.append(f"not a mapping ({type(value).__name__}): dropped")
        return {}, notes
    bounded = _bound(value, limits, 1, notes, "")
    assert isinstance(bounded, dict)
    size = encoded_size(bounded)
    if size > limits.max_total_bytes:
        keys = list(bounded)
        while keys and encoded_size(bounded) > limits.max_total_bytes:
            del bounded[keys.pop()]
        notes.append(
            f"{size} bytes encoded, above {limits.max_total_bytes}: "
            f"kept the first {len(bounded)} entries"
        )
    return bounded, notes


def bound_labels(value: object) -> tuple[dict[str, str], list[str]]:
    """Labels as string pairs: at most LABEL_MAX, keys and values cut to their limits."""
    notes: list[str] = []
    if not isinstance(value, dict):
        if value is not None:
            notes.append(f"labels are not a mapping ({type(value).__name__}): dropped")
        return {}, notes
    labels: dict[str, str] = {}
    for raw_key, raw_value in value.items():
        if len(labels) >= LABEL_MAX:
            notes.append(f"more than {LABEL_MAX} labels: the rest dropped")
            break
        key, key_cut = bound_string(raw_key, LABEL_KEY_MAX_CHARS)
        text, value_cut = bound_string(raw_value, LABEL_VALUE_MAX_CHARS)
        if key_cut or value_cut:
            notes.append(f"label {escape_text(key, 40)} cut")
        labels[key] = text
    return labels, notes


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: the measure of `max_total_bytes`."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _bound(value: Any, limits: ReportLimits, depth: int, notes: list[str], path: str) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        text, cut = bound_string(value, limits.max_string_chars)
        if cut:
            notes.append(f"{path or 'value'}: string of {len(value)} chars cut")
        return text
    if depth > limits.max_depth:
        notes.append(f"{path}: nested deeper than {limits.max_depth}: dropped")
        return None
    if isinstance(value, list):
        items = value[: limits.max_keys]
        if len(value) > limits.max_keys:
            notes.append(f"{path}: {len(value)} items, kept {limits.max_keys}")
        return [_bound(v, limits, depth + 1, notes, f"{path}[]") for v in items]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if len(out) >= limits.max_keys:
                notes.append(f"{path or 'mapping'}: more than {limits.max_keys} keys: rest dropped")
                break
            if len(name) > limits.max_key_chars:
                notes.append(f"{path}: a key of {len(name)} chars dropped")
                continue
            where = f"{path}.{name}" if path else name
            out[name] = _bound(item, limits, depth + 1, notes, escape_text(where, 80))
        return out
    notes.append(f"{path}: {type(value).__name__} dropped")
    return None


RUN_REPORT_FIELDS = {
    "run_id": 64,
    "phase": 16,
    "error": 4096,
    "stdout_tail": 65536,
    "stderr_tail": 65536,
}
"""String fields of a run's report or result and the most characters kept of each."""
RUN_REPORT_NUMBERS = (
    "generation",
    "epoch",
    "started_ms",
    "finished_ms",
    "exit_code",
    "duration_ms",
)


def bound_run_report(body: dict[str, Any]) -> dict[str, Any]:
    """What the cloud keeps of a run report (docs/protocol.md §7): the declared fields, each
    bounded; anything else a node sends is dropped, not stored and served."""
    kept: dict[str, Any] = {}
    for name, max_chars in RUN_REPORT_FIELDS.items():
        value = body.get(name)
        if isinstance(value, str):
            kept[name] = value[:max_chars]
    for name in RUN_REPORT_NUMBERS:
        value = body.get(name)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if name in body and (value is None or is_int):
            kept[name] = value
    return kept
