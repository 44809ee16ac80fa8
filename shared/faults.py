"""Crash points: kill the process at a named step, to test the exactly-once argument.

docs/protocol.md §6 claims that a crash at any instant loses and duplicates
nothing. The e2e tests prove it by setting, in a daemon's environment,

    EDGESYNC_CRASH_AT=edge.after_apply_commit        # the first time
    EDGESYNC_CRASH_AT=edge.after_outbox_send:3       # the third time

which makes the process exit at once (`os._exit`, as abrupt as SIGKILL: no
flush, no cleanup) when it reaches that step. Unset, a crash point costs one
comparison.
"""

from __future__ import annotations

import os
import sys

CRASH_EXIT_CODE = 137

_spec = os.environ.get("EDGESYNC_CRASH_AT", "")
_name, _, _count = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 1


def crash_point(name: str) -> None:
    """Exit immediately if this is the armed crash point's N-th hit."""
    global _remaining
    if not _name or name != _name:
        return
    _remaining -= 1
    if _remaining <= 0:
        sys.stderr.write(f"EDGESYNC_CRASH_AT: crashing at {name}\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
