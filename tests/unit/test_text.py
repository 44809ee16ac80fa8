"""Escaping node-supplied text and bounding node reports (shared/text.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.text import (
    LABEL_MAX,
    ReportLimits,
    bound_labels,
    bound_report,
    bound_string,
    encoded_size,
    escape_text,
)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain label", "plain label"),
        ("two\nlines", "two\\nlines"),
        ("cr\rover", "cr\\rover"),
        ("tab\there", "tab\\there"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("sep\u2028x", "sep\\u2028x"),
        ("back\\slash", "back\\\\slash"),
        ("ünïcødé ok", "ünïcødé ok"),
        ("nul\x00", "nul\\x00"),
    ],
)
def test_escape_text_leaves_one_printable_line(raw: str, shown: str) -> None:
    out = escape_text(raw)
    assert out == shown
    assert out.isprintable()


def test_escape_text_is_unambiguous() -> None:
    """A literal backslash-n and a real LF do not look the same after escaping."""
    assert escape_text("a\\nb") != escape_text("a\nb")


def test_escape_text_cuts_before_escaping_and_marks_the_cut() -> None:
    assert escape_text("x" * 10, max_chars=4) == "xxxx…"
    assert escape_text("\n" * 10, max_chars=2) == "\\n\\n…"
    assert escape_text(42) == "42"


def test_bound_string() -> None:
    assert bound_string("abc", 3) == ("abc", False)
    assert bound_string("abcd", 3) == ("abc…", True)


def test_a_normal_heartbeat_passes_unchanged() -> None:
    body = {"cpu": 0.25, "memory": 0.5, "running": 3, "arch": "aarch64", "ok": True, "n": None}
    assert bound_report(body) == (body, [])


def test_a_huge_heartbeat_is_trimmed_within_the_total_budget() -> None:
    body = {f"k{i}": "x" * 10_000 for i in range(100)}
    bounded, notes = bound_report(body)
    assert encoded_size(bounded) <= ReportLimits().max_total_bytes
    assert len(json.dumps(bounded)) < 20_000
    assert len(bounded) <= ReportLimits().max_keys
    assert all(len(v) <= ReportLimits().max_string_chars + 1 for v in bounded.values())
    assert notes


def test_report_limits_each_dimension() -> None:
    limits = ReportLimits(max_keys=2, max_key_chars=5, max_string_chars=3, max_depth=2)
    bounded, notes = bound_report(
        {"a": "abcdef", "toolongkey": 1, "b": {"c": {"d": 1}}, "e": 2}, limits
    )
    assert bounded == {"a": "abc…", "b": {"c": None}}
    assert len(notes) == 4, notes
    assert bound_report([1, 2]) == ({}, ["not a mapping (list): dropped"])
    assert bound_report(None) == ({}, [])
    assert bound_report({"o": object()})[0] == {"o": None}


def test_labels_are_bounded_in_number_and_length() -> None:
    labels, notes = bound_labels({f"k{i}": "v" for i in range(LABEL_MAX + 5)})
    assert len(labels) == LABEL_MAX and notes
    labels, notes = bound_labels({"k" * 100: "v" * 1000})
    [(key, value)] = labels.items()
    assert len(key) == 64 and len(value) == 257 and notes
    assert bound_labels("zone=vault") == ({}, ["labels are not a mapping (str): dropped"])


def test_text_and_throttle_import_no_io_library() -> None:
    code = (
        "import sys, shared.text, shared.throttle, shared.certpolicy\n"
        "print(','.join(m for m in ['asyncio', 'websockets', 'aioquic', 'sqlalchemy'] "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
