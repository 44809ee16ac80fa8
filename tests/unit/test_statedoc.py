"""docs/protocol.md §5.1 is generated from the tables in states.py and cannot drift."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.protocol import statedoc, states
from shared.protocol.states import Role, State, Trigger

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_MD = ROOT / "docs" / "protocol.md"


def test_the_docs_block_is_what_the_tables_generate() -> None:
    document = PROTOCOL_MD.read_text(encoding="utf-8")
    assert statedoc.splice(document, statedoc.render_block()) == document, (
        "docs/protocol.md §5.1 differs from shared/protocol/states.py; "
        "run: python -m shared.protocol.statedoc --write docs/protocol.md"
    )


def test_the_block_sits_in_section_5() -> None:
    document = PROTOCOL_MD.read_text(encoding="utf-8")
    begin = document.index(statedoc.BEGIN)
    assert document.index("## §5 ") < begin < document.index("## §6 ")


def test_mermaid_has_one_arrow_per_transition_and_nothing_else() -> None:
    text = statedoc.render_mermaid()
    assert text.startswith("stateDiagram-v2\n")
    arrows = re.findall(r"^\s+(\w+) --> (\w+): (\w+)$", text, re.MULTILINE)
    expected = {
        (f"{role.value}_{state.value}", f"{role.value}_{nxt.value}", trigger.value)
        for (role, state, trigger), nxt in states.TRANSITIONS.items()
    }
    assert len(arrows) == len(expected) and set(arrows) == expected
    starts = re.findall(r"^\s+\[\*\] --> (\w+)$", text, re.MULTILINE)
    assert starts == [f"{role.value}_{states.INITIAL[role].value}" for role in Role]
    ends = re.findall(r"^\s+(\w+) --> \[\*\]$", text, re.MULTILINE)
    assert ends == [f"{role.value}_closed" for role in Role]


def test_the_block_follows_the_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change a table and the rendering changes with it: it is drawn, not written."""
    before = statedoc.render_block()
    monkeypatch.setitem(
        states.TRANSITIONS, (Role.EDGE, State.OPEN, Trigger.RECV_WELCOME), State.HELLO_SENT
    )
    monkeypatch.setitem(states.TRIGGER_TEXT, Trigger.RECV_WELCOME, "receive a second welcome")
    after = statedoc.render_block()
    assert after != before
    assert "edge_open --> edge_hello_sent: recv_welcome" in after
    assert "| edge | `open` | receive a second welcome | `hello_sent` |" in after


def test_every_rule_and_receivable_op_appears_in_the_block() -> None:
    block = statedoc.render_block()
    for rule in states.RULES:
        assert f"| {rule.action} | {rule.when} |" in block
    for (role, state), ops in states.RECEIVABLE.items():
        row = next(
            line
            for line in block.splitlines()
            if line.startswith(f"| {role.value} | `{state.value}` | `")
        )
        assert sorted(re.findall(r"`(\w+)`", row.split("|")[3])) == sorted(ops)


DOC = "intro\n<!-- states:begin -->\nold\n<!-- states:end -->\noutro\n"


def test_splice_replaces_only_the_block() -> None:
    assert statedoc.splice(DOC, "\nnew\n\n") == (
        "intro\n<!-- states:begin -->\nnew\n<!-- states:end -->\noutro\n"
    )
    fresh = statedoc.splice(DOC, "x")
    assert statedoc.splice(fresh, "x") == fresh  # idempotent


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("no markers at all", "exactly once"),
        ("<!-- states:begin -->\nonly the start", "exactly once"),
        (DOC + DOC, "exactly once"),
        ("<!-- states:end -->\nswapped\n<!-- states:begin -->", "comes before"),
    ],
    ids=["none", "no-end", "twice", "swapped"],
)
def test_splice_refuses_a_document_without_one_well_formed_block(
    document: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        statedoc.splice(document, "x")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_both_entry_points_print_the_block() -> None:
    for module in ("shared.protocol.statedoc", "shared.protocol.states"):
        out = _run(module)
        assert out.returncode == 0, out.stderr
        assert out.stdout == statedoc.render_block()


def test_check_and_write_refresh_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "protocol.md"
    path.write_text(DOC, encoding="utf-8")
    stale = _run("shared.protocol.statedoc", "--check", str(path))
    assert stale.returncode == 1 and "out of date" in stale.stderr
    assert _run("shared.protocol.statedoc", "--write", str(path)).returncode == 0
    assert path.read_text(encoding="utf-8") == statedoc.splice(DOC, statedoc.render_block())
    assert _run("shared.protocol.statedoc", "--check", str(path)).returncode == 0


def test_a_file_without_markers_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "other.md"
    path.write_text("nothing here\n", encoding="utf-8")
    out = _run("shared.protocol.statedoc", "--write", str(path))
    assert out.returncode == 2 and str(path) in out.stderr and "exactly once" in out.stderr
    assert path.read_text(encoding="utf-8") == "nothing here\n"
