"""How a new session resumes: the cloud's decision on an edge's hello (docs/protocol.md
§6.5, §6.6). Pure: the cloud store reads the node's row and the rv counter, calls
`decide_resume`, and writes what it returns in the same transaction.

Two questions, answered from durable state only:
- Upstream: has the edge's outbox numbering restarted? A hello whose `store_id`
  differs from the recorded one comes from a new edge store (reinstall, new SD
  card), so the cloud announces `received_seq = 0`.
- Downstream: can the cloud vouch for the edge's `applied_rv`? Not after a
  re-join (no `store_id` recorded), not when it is above every rv the cloud
  ever issued (the cloud database is older), and not while an earlier resync
  is still unacknowledged. Then the edge drops its desired state and takes a
  full snapshot (`resync`). An edge announcing 0 holds nothing: never resynced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ResyncReason(str, Enum):
    """Why the cloud cannot vouch for an edge's `applied_rv` (first that applies)."""

    PENDING = "pending"
    """A resync was asked for and the edge has acked nothing since (welcome lost, crash)."""
    REJOINED = "rejoined"
    """The node was registered anew (join or re-join): no store_id is recorded."""
    CLOUD_OLDER = "cloud_older"
    """`applied_rv` is above every rv this cloud issued: its database is from a backup."""


@dataclass(frozen=True, slots=True)
class NodeCursors:
    """What the cloud recorded about a node before this hello (its `nodes` row)."""

    store_id: str | None
    """None: registered anew by a join or re-join, not connected since."""
    received_seq: int
    resync_pending: bool


@dataclass(frozen=True, slots=True)
class Resume:
    """The decision; the store writes `store_id`, `received_seq`, `acked_rv`,
    `resync_pending := resync`."""

    received_seq: int
    """What the welcome announces, and the node's new `received_seq`."""
    acked_rv: int
    """The node's new `acked_rv`: its `applied_rv`, or 0 on a resync."""
    resync_reason: ResyncReason | None
    """Why a full snapshot is sent; None: resume from `applied_rv`."""
    store_replaced: bool
    """The edge's store is not the one recorded: its outbox numbering restarted."""

    @property
    def resync(self) -> bool:
        return self.resync_reason is not None


def decide_resume(
    recorded: NodeCursors, *, store_id: str, applied_rv: int, issued_rv: int
) -> Resume:
    """Decide how a session resumes from the hello's `store_id` and `applied_rv` and the
    highest rv the cloud ever issued (`issued_rv`). The resync is sticky (`PENDING`)
    until the edge acks something from the snapshot, which clears `resync_pending`."""
    store_replaced = recorded.store_id is not None and recorded.store_id != store_id
    reason: ResyncReason | None = None
    if applied_rv > 0:
        if recorded.resync_pending:
            reason = ResyncReason.PENDING
        elif recorded.store_id is None:
            reason = ResyncReason.REJOINED
        elif applied_rv > issued_rv:
            reason = ResyncReason.CLOUD_OLDER
    return Resume(
        received_seq=0 if store_replaced else recorded.received_seq,
        acked_rv=0 if reason is not None else applied_rv,
        resync_reason=reason,
        store_replaced=store_replaced,
    )
