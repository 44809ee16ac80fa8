"""docs/protocol.md §5.1, drawn from the tables in states.py so the doc cannot drift.

`render_block()` turns the state table, what each state may receive, the
reliable streams and the window/cursor rules into a Mermaid
`stateDiagram-v2` and Markdown tables; docs/protocol.md holds that text
between `BEGIN` and `END` markers, and tests/unit/test_statedoc.py fails
when the two differ. Refresh the doc with

    python -m shared.protocol.statedoc --write docs/protocol.md

(`python -m shared.protocol.states` prints the same block). Rendering is pure;
only `main()` touches files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.protocol import states
from shared.protocol.messages import Op
from shared.protocol.states import Outcome, Role, State

BEGIN = "<!-- states:begin -->"
END = "<!-- states:end -->"

_OUTCOME_TEXT = {
    Outcome.PROCEED: "proceed",
    Outcome.IGNORE: "ignored: nothing is sent",
    Outcome.REFUSE: "refused: `LocalProtocolError` (a bug in the caller), nothing is sent",
    Outcome.CLOSE: "fatal `bad_message`: the session closes",
}


def _node(role: Role, state: State) -> str:
    return f"{role.value}_{state.value}"


def render_mermaid() -> str:
    """The transition table as a Mermaid `stateDiagram-v2`, one composite state per role."""
    lines = ["stateDiagram-v2"]
    for role in Role:
        lines.append(f"    state {role.value} {{")
        for state in states.ROLE_STATES[role]:
            lines.append(f'        state "{state.value}" as {_node(role, state)}')
        lines.append(f"        [*] --> {_node(role, states.INITIAL[role])}")
        for (r, state, trigger), nxt in states.TRANSITIONS.items():
            if r is role:
                lines.append(
                    f"        {_node(role, state)} --> {_node(role, nxt)}: {trigger.value}"
                )
        for state in states.ROLE_STATES[role]:
            if not any(r is role and s is state for (r, s, _) in states.TRANSITIONS):
                lines.append(f"        {_node(role, state)} --> [*]")
        lines.append("    }")
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _ops(names: frozenset[str]) -> str:
    order = [op.value for op in Op]
    return ", ".join(f"`{name}`" for name in sorted(names, key=order.index))


def render_tables() -> str:
    """The same tables in Markdown: transitions, receivable ops, streams and rules."""
    transitions = [
        [role.value, f"`{state.value}`", states.TRIGGER_TEXT[trigger], f"`{nxt.value}`"]
        for (role, state, trigger), nxt in states.TRANSITIONS.items()
    ]
    receivable = [
        [role.value, f"`{state.value}`", _ops(ops)]
        for (role, state), ops in states.RECEIVABLE.items()
    ]
    streams = [
        [
            role.value,
            _ops(frozenset(op.value for op in stream.sends)),
            f"`{stream.send_cursor}`",
            f"`{stream.receive_cursor}`",
        ]
        for role, stream in states.STREAMS.items()
    ]
    rules = [
        [
            rule.action,
            rule.when,
            _OUTCOME_TEXT[rule.outcome],
            f"`{rule.message}`" if rule.message else "",
        ]
        for rule in states.RULES
    ]
    initial = [[role.value, f"`{state.value}`"] for role, state in states.INITIAL.items()]
    return "\n".join(
        [
            _table(["role", "initial state"], initial),
            _table(["role", "state", "trigger", "next state"], transitions),
            "What each side may receive in each state; anything else is a fatal "
            "`bad_message`, and a `closed` session ignores every frame:\n",
            _table(["role", "state", "may receive"], receivable),
            "Reliable streams: which ops each role sends with a cursor, and which "
            "envelope field carries it:\n",
            _table(
                [
                    "role",
                    "sends reliably",
                    "cursor on its messages and on the acks it receives",
                    "cursor on the acks it sends",
                ],
                streams,
            ),
            "Window and cursor rules, checked top-down per action; the first row "
            "that holds decides. `last` is the last cursor sent or received in this "
            "session, starting at the cursor announced in the handshake:\n",
            _table(["action", "when", "outcome", "error text"], rules),
        ]
    )


def render_block() -> str:
    """What docs/protocol.md holds between BEGIN and END (markers excluded)."""
    return "\n```mermaid\n" + render_mermaid() + "```\n\n" + render_tables()


def splice(document: str, block: str) -> str:
    """`document` with the text between its BEGIN and END markers replaced by `block`.

    Raises ValueError unless each marker appears exactly once, BEGIN first.
    """
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise ValueError(f"the document must hold {BEGIN} and {END} exactly once each")
    if document.index(END) < document.index(BEGIN):
        raise ValueError(f"{END} comes before {BEGIN}")
    head, rest = document.split(BEGIN)
    tail = rest.split(END)[1]
    return head + BEGIN + "\n" + block.strip("\n") + "\n" + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.protocol.statedoc",
        description="Print the session state diagram and rules drawn from states.py, or "
        "refresh/check the block between the markers of a Markdown file.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="rewrite FILE's block")
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block differs")
    args = parser.parse_args(argv)
    path: Path | None = args.write or args.check
    if path is None:
        sys.stdout.write(render_block())
        return 0
    try:
        document = path.read_text(encoding="utf-8")
        fresh = splice(document, render_block())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if fresh != document:
            print(
                f"{path}: the states block is out of date; run {parser.prog} --write {path}",
                file=sys.stderr,
            )
            return 1
        return 0
    if fresh != document:
        path.write_text(fresh, encoding="utf-8")
        print(f"{path}: states block refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
