"""Upstream messages (`report`, `result`) dispatched by resource kind.

Each kind has one handler (UpstreamHandler): its own authorisation rule for the
session's node (`authorize`, which raises Forbidden) and its own apply. The
registry runs `authorize` before `apply`, so a handler cannot skip the rule.
Today's kind is `task` (runs.py); twin reports, telemetry, hard examples, logs
and plan diffs are one handler class each, registered with
`CloudStore.upstream.register`.

Whatever the handler decides, the message is consumed: `record_upstream`
advances `received_seq` past it, so a refused message (`forbidden`, `invalid`,
an unknown kind) cannot jam the edge's outbox (docs/protocol.md §6.2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloudcore.store.base import StoreBase
from cloudcore.store.schema import nodes
from shared.errors import Forbidden, LocalProtocolError
from shared.fencing import Verdict
from shared.protocol.messages import Envelope

INVALID = "invalid"
"""The verdict on a message this cloud cannot read: a body without the fields its kind
needs, or a kind no handler is registered for. Consumed, not stored."""

G = TypeVar("G")


@dataclass(frozen=True, slots=True)
class UpstreamOutcome:
    """What happened to one upstream message: applied, duplicate, stale, forbidden or
    invalid (the verdict is sent to the edge as a non-fatal error unless applied or
    duplicate)."""

    envelope: Envelope
    verdict: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamContext:
    """What a handler knows besides the message: whose session it came from, and when."""

    node: str
    """The session's node, from its certificate: the identity every rule checks."""
    now_ms: int
    result_history: int
    """Results kept per task and node (cloudcore's `result_history`)."""


class UpstreamHandler(ABC, Generic[G]):
    """The upstream messages of one resource kind, inside the batch's transaction.

    Subclass, set `kind`, and register an instance; SQL belongs here (a store
    module), decisions in shared/ (e.g. shared/fencing.py).
    """

    kind: ClassVar[str]
    """The `kind` of `res` (kind/namespace/name) this handler takes."""

    @abstractmethod
    def authorize(self, conn: Connection, ctx: UpstreamContext, env: Envelope) -> G:
        """Check that `ctx.node` may write `env.res`; return what `apply` needs of it.

        Raises Forbidden (message: what was refused and why, shown to the edge and
        logged) when the resource is not the node's own.
        """

    @abstractmethod
    def apply(
        self, conn: Connection, ctx: UpstreamContext, env: Envelope, grant: G
    ) -> UpstreamOutcome:
        """Apply an authorised message idempotently; return its verdict."""


class UpstreamRegistry:
    """The handlers by kind; `dispatch` routes one message."""

    def __init__(self, handlers: Iterable[UpstreamHandler[Any]] = ()) -> None:
        self._handlers: dict[str, UpstreamHandler[Any]] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: UpstreamHandler[Any]) -> None:
        """Add the handler of a new kind, before the hub starts (the registry is read on
        the DB thread without a lock). LocalProtocolError if the kind has one already:
        two handlers for one kind would make the route ambiguous (a bug)."""
        if handler.kind in self._handlers:
            raise LocalProtocolError(
                f"upstream kind {handler.kind!r} already has a handler "
                f"({type(self._handlers[handler.kind]).__name__})"
            )
        self._handlers[handler.kind] = handler

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def dispatch(self, conn: Connection, ctx: UpstreamContext, env: Envelope) -> UpstreamOutcome:
        """Authorise and apply one message with its kind's handler.

        The codec has already checked `res` (kind/namespace/name, a known kind of
        the protocol); a kind this cloud has no handler for is `invalid`.
        """
        assert env.res is not None
        kind = env.res.partition("/")[0]
        handler = self._handlers.get(kind)
        if handler is None:
            return UpstreamOutcome(
                env,
                INVALID,
                f"this cloud takes no {env.op.value} for kind {kind!r} ({env.res}); "
                f"it takes them for: {', '.join(self.kinds) or 'nothing'}",
            )
        try:
            grant = handler.authorize(conn, ctx, env)
        except Forbidden as exc:
            return UpstreamOutcome(env, Verdict.FORBIDDEN.value, str(exc))
        return handler.apply(conn, ctx, env, grant)


class UpstreamStore(StoreBase):
    """Applies batches of upstream messages; `upstream` is set by CloudStore."""

    upstream: UpstreamRegistry

    def record_upstream(
        self, node: str, envelopes: Iterable[Envelope], now_ms: int, history: int
    ) -> list[UpstreamOutcome]:
        """Apply a batch of reports/results from `node` in one transaction, idempotently.

        Messages at or below the node's `received_seq` are duplicates and
        change nothing. The others go to their kind's handler (`dispatch`),
        whatever it decides they are consumed: `received_seq` moves past them.
        Returns one outcome per message, in order.
        """
        outcomes: list[UpstreamOutcome] = []
        ctx = UpstreamContext(node, now_ms, history)
        with self._tx(f"apply reports from {node}") as conn:
            received = conn.execute(
                sa.select(nodes.c.received_seq).where(nodes.c.name == node)
            ).scalar_one()
            top = int(received)
            for env in envelopes:
                assert env.seq is not None and env.res is not None
                if env.seq <= top:
                    outcomes.append(UpstreamOutcome(env, Verdict.DUPLICATE.value))
                    continue
                top = env.seq
                outcomes.append(self.upstream.dispatch(conn, ctx, env))
            if top > received:
                conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.name == node)
                    .values(received_seq=top, last_seen_ms=now_ms)
                )
        return outcomes
