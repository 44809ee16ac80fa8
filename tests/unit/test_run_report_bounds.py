"""What the cloud keeps of a run report a node sends (shared/text.py: bound_run_report)."""

from __future__ import annotations

from shared.text import bound_run_report


def test_only_declared_fields_are_kept_each_bounded() -> None:
    body = {
        "run_id": "r" * 100,
        "phase": "succeeded",
        "generation": 3,
        "epoch": 2,
        "exit_code": None,
        "stdout_tail": "x" * 1_000_000,
        "error": "e" * 10_000,
        "extra": {"nested": "y" * 500_000},
        "duration_ms": True,
    }
    kept = bound_run_report(body)
    assert set(kept) == {
        "run_id",
        "phase",
        "generation",
        "epoch",
        "exit_code",
        "stdout_tail",
        "error",
    }
    assert len(kept["run_id"]) == 64 and len(kept["stdout_tail"]) == 65536
    assert len(kept["error"]) == 4096 and kept["exit_code"] is None
