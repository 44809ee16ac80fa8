"""Acks and heartbeats of many nodes, persisted together: the hub batches them
(Hub._flush_progress), because a transaction per node costs ~1 ms and capped dispatch."""

from __future__ import annotations

from typing import Any

from cloudcore.store.base import StoreBase
from cloudcore.store.desired import record_acks
from cloudcore.store.heartbeats import HEARTBEAT_HISTORY, record_heartbeats


class ProgressStore(StoreBase):
    """The hub's flush: one transaction, a fixed number of statements per flush."""

    heartbeat_keep: int = HEARTBEAT_HISTORY

    def record_acked(self, node: str, rv: int, now_ms: int) -> None:
        """One node's ack; see record_progress."""
        self.record_progress({node: rv}, {}, now_ms)

    def record_progress(
        self, acked: dict[str, int], heartbeats: dict[str, dict[str, Any]], now_ms: int
    ) -> None:
        """Persist many nodes' acks and heartbeats in one transaction.

        Acks: desired.record_acks (cursor, phases, tombstones). Heartbeats:
        heartbeats.record_heartbeats (the node row and its bounded history).
        At most five statements, whatever the number of nodes.
        """
        with self._tx("record acks and heartbeats") as conn:
            record_acks(conn, acked, now_ms)
            record_heartbeats(conn, heartbeats, now_ms, self.heartbeat_keep)
