"""Identifier types: distinct names for the ints and strings that must never be mixed up."""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", str)
"""A node's name; equal to the CN of its client certificate."""

Revision = NewType("Revision", int)
"""Cloud-assigned, monotonically increasing version of a desired-state change (`rv`)."""

Seq = NewType("Seq", int)
"""Edge-assigned, per-node, monotonically increasing outbox sequence number."""

ResourceKey = NewType("ResourceKey", str)
"""`kind/namespace/name`, e.g. `task/default/camera-faces`."""
