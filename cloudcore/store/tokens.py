"""Join tokens: hashed, single-use secrets that let a device join as one node."""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

from cloudcore.store.base import StoreBase
from cloudcore.store.schema import join_tokens
from shared.errors import JoinError
from shared.pki import hash_token_secret, token_secret_matches


class JoinGrant(NamedTuple):
    """What a consumed join token grants."""

    node: str
    labels: dict[str, str] | None
    """The operator's labels for the node, or None if the token carried none."""


class TokenStore(StoreBase):
    """Join tokens (table `join_tokens`)."""

    def add_join_token(
        self,
        token_id: str,
        node: str,
        secret: str,
        now_ms: int,
        expires_ms: int,
        labels: dict[str, str] | None = None,
    ) -> None:
        """`labels`: the operator's placement labels for the node this token joins."""
        with self._tx("store a join token") as conn:
            conn.execute(
                sa.insert(join_tokens).values(
                    id=token_id,
                    node=node,
                    secret_hash=hash_token_secret(secret),
                    created_ms=now_ms,
                    expires_ms=expires_ms,
                    labels=labels or None,
                )
            )

    def consume_join_token(self, token_id: str, secret: str, now_ms: int) -> JoinGrant:
        """Mark a token used; returns its node and labels. JoinError if unknown, forged,
        expired or used."""
        with self._tx("consume a join token") as conn:
            row = conn.execute(
                sa.select(join_tokens).where(join_tokens.c.id == token_id)
            ).one_or_none()
            if row is None or not token_secret_matches(secret, row.secret_hash):
                raise JoinError("join token is not valid for this cloud (unknown or forged)")
            if row.used_ms is not None:
                raise JoinError(
                    f"join token for node {row.node!r} was already used; create a new one "
                    "with `edgectl token create`"
                )
            if now_ms >= row.expires_ms:
                raise JoinError(
                    f"join token for node {row.node!r} expired; create a new one with "
                    "`edgectl token create`"
                )
            updated = conn.execute(
                sa.update(join_tokens)
                .where(join_tokens.c.id == token_id, join_tokens.c.used_ms.is_(None))
                .values(used_ms=now_ms)
            ).rowcount
            if updated != 1:
                raise JoinError("join token was used concurrently by another join")
            return JoinGrant(str(row.node), dict(row.labels) if row.labels else None)
