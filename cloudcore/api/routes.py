"""HTTPS on port 10002: the join endpoint and the operator REST API.

Every route is one row of `Api.routes()`: method, path, handler, the types it
takes and returns, and every status it can answer. aiohttp's router and the
OpenAPI document (cloudcore/api/openapi.py) are both built from that table.
Joins authenticate with a single-use token; the operator API with the admin
bearer token (docs/operations.md). Every error is JSON
`{"error": code, "message": text}`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from cloudcore.api import schemas as s
from cloudcore.api.body import BodyError, BodyReader, BodyRules
from cloudcore.hub.refusals import RefusalLog
from cloudcore.pki import CloudPKI
from cloudcore.scheduler import Scheduler
from cloudcore.store import CloudStore
from cloudcore.sync import Hub
from shared import pki
from shared.aio.dbthread import DbThread
from shared.clock import Clock
from shared.errors import JoinError, NotFound, ResourceError, StoreError
from shared.faults import crash_point
from shared.resources import Task, parse_task, to_document, validate_name
from shared.resources.common import convert

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
"""Largest operator request body (JSON)."""
PLACEMENT_WAIT = 10.0
"""Seconds an apply waits for its placement before answering without the node count."""
MAX_JOIN_BODY = 16 * 1024
"""Largest /join body: a token and a CSR are under 2 KiB."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STORE_ERRORS = (503,)
JOIN_BODY = BodyRules(max_bytes=MAX_JOIN_BODY)
"""JSON only: /join is unauthenticated, and YAML costs far more to parse."""
OPERATOR_BODY = BodyRules(max_bytes=MAX_BODY, yaml=True)


@dataclass(frozen=True)
class Route:
    """One operation: what aiohttp serves and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    ok: type | None
    """Type of the success body (None: not JSON, see `ok_media`)."""
    status: int = 200
    body: type | None = None
    body_rules: BodyRules | None = None
    errors: tuple[int, ...] = ()
    """Every error status the handler answers, beside the ones all routes share."""
    auth: bool = True
    ok_media: str = "application/json"
    examples: list[Any] = field(default_factory=list)
    """Request bodies that succeed (schemathesis sends them; docs show them)."""


def _json(value: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(s.Error(error=code, message=message), status)


EXAMPLE_TASK = {
    "apiVersion": "edgesync.io/v1",
    "kind": "Task",
    "metadata": {"name": "hello", "namespace": "default"},
    "spec": {
        "kind": "command",
        "command": {"argv": ["uname", "-a"], "timeout": 30},
        "trigger": {"type": "interval", "every": 60},
        "placement": {"selector": {"zone": "lab"}},
    },
}


class Api:
    def __init__(
        self,
        *,
        store: CloudStore,
        db: DbThread,
        pki_files: CloudPKI,
        scheduler: Scheduler,
        hub: Hub,
        clock: Clock,
        node_cert_days: int,
        default_token_ttl: float,
        websocket_port: Callable[[], int],
        quic_port: Callable[[], int | None],
        insecure_no_auth: bool,
        refusals: RefusalLog,
        max_document_bytes: int,
    ) -> None:
        self.store = store
        self.db = db
        self.pki = pki_files
        self.scheduler = scheduler
        self.hub = hub
        self.clock = clock
        self.node_cert_days = node_cert_days
        self.default_token_ttl = default_token_ttl
        self.websocket_port = websocket_port
        self.quic_port = quic_port
        self.insecure_no_auth = insecure_no_auth
        self.refusals = refusals
        """Unauthenticated refusals (joins), counted and logged within a budget."""
        self.admin_token = pki_files.admin_token()
        self.bodies = BodyReader()
        self.max_document_bytes = max_document_bytes
        self._openapi: bytes | None = None

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/healthz", self.healthz, "Liveness", s.Health, auth=False),
            Route("GET", "/openapi.json", self.openapi, "This document", None, auth=False),
            Route(
                "GET",
                "/ca.crt",
                self.ca_cert,
                "The cloud CA certificate (PEM); pin it by the token's hash",
                None,
                auth=False,
                ok_media="application/x-pem-file",
            ),
            Route(
                "POST",
                "/join",
                self.join,
                "Exchange a join token and CSR for a node certificate",
                s.JoinResponse,
                body=s.JoinRequest,
                body_rules=JOIN_BODY,
                errors=(403, 422, *STORE_ERRORS),
                auth=False,
            ),
            Route(
                "GET",
                "/api/v1/nodes",
                self.list_nodes,
                "List nodes",
                s.NodeList,
                errors=STORE_ERRORS,
            ),
            Route(
                "GET",
                "/api/v1/nodes/{name}",
                self.get_node,
                "Get a node with its assignments",
                s.NodeDetail,
                errors=(404, *STORE_ERRORS),
            ),
            Route(
                "PUT",
                "/api/v1/nodes/{name}/labels",
                self.set_node_labels,
                "Replace a node's placement labels (tasks are re-placed)",
                s.NodeDetail,
                body=s.NodeLabels,
                body_rules=OPERATOR_BODY,
                errors=(404, *STORE_ERRORS),
                examples=[{"labels": {"zone": "lab"}}],
            ),
            Route(
                "DELETE",
                "/api/v1/nodes/{name}",
                self.delete_node,
                "Delete a node (its certificate is no longer accepted)",
                s.Deleted,
                errors=(404, *STORE_ERRORS),
            ),
            Route(
                "POST",
                "/api/v1/tokens",
                self.create_token,
                "Create a single-use join token",
                s.TokenResponse,
                status=201,
                body=s.TokenRequest,
                body_rules=OPERATOR_BODY,
                errors=(422, *STORE_ERRORS),
                examples=[{"node": "pi-kitchen", "ttl": 3600, "labels": {"zone": "kitchen"}}],
            ),
            Route(
                "GET",
                "/api/v1/tasks",
                self.list_tasks,
                "List tasks",
                s.TaskList,
                errors=STORE_ERRORS,
            ),
            Route(
                "POST",
                "/api/v1/tasks",
                self.apply_task,
                "Create or update a task",
                s.TaskApplied,
                body=Task,
                body_rules=OPERATOR_BODY,
                errors=(422, *STORE_ERRORS),
                examples=[EXAMPLE_TASK],
            ),
            Route(
                "GET",
                "/api/v1/tasks/{namespace}/{name}",
                self.get_task,
                "Get a task with its assignments and newest results",
                s.TaskDetail,
                errors=(404, *STORE_ERRORS),
            ),
            Route(
                "DELETE",
                "/api/v1/tasks/{namespace}/{name}",
                self.delete_task,
                "Delete a task (a tombstone reaches every node it ran on)",
                s.Deleted,
                errors=(404, *STORE_ERRORS),
            ),
        ]

    def app(self) -> web.Application:
        # aiohttp's own limit is a backstop; each route reads its body with its own limit.
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._auth])
        for route in self.routes():
            app.router.add_route(route.method, route.path, route.handler)
        return app

    # ---------------------------------------------------------------- middleware

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except BodyError as exc:
            return _error(exc.status, exc.code, str(exc))
        except NotFound as exc:
            return _error(404, "not_found", str(exc))
        except ResourceError as exc:
            return _error(422, "invalid", str(exc))
        except JoinError as exc:
            self.refusals.refuse("join", str(request.remote), "join_refused", str(exc))
            return _error(403, "join_refused", str(exc))
        except StoreError as exc:
            log.error("API %s %s: %s", request.method, request.path, exc)
            return _error(503, "store_unavailable", str(exc))
        except Exception:  # a bug: say so in JSON, keep the details in the log
            log.exception("API %s %s failed", request.method, request.path)
            return _error(500, "internal", "cloudcore failed to answer; see its log")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/") and not self.insecure_no_auth:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("utf-8", "replace"), self.admin_token.encode()
            ):
                return _error(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token; use the token in the cloud's "
                    "data dir (admin.token) or the edgectl config it writes",
                )
        return await handler(request)

    async def _body(self, request: web.Request, cls: type[Any], rules: BodyRules) -> Any:
        value = await self.bodies.read(request, rules)
        if cls is Task:
            return parse_task(value)
        return convert({} if value is None else value, cls, "request body")

    # ---------------------------------------------------------------- public

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(s.Health(status="ok", sessions=len(self.hub.sessions)))

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:  # built once: ~10 ms, and anyone may ask for it
            from cloudcore.api.openapi import openapi_document

            self._openapi = msgspec.json.encode(openapi_document(self.routes()))
        return web.Response(body=self._openapi, content_type="application/json")

    async def ca_cert(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pki.ca_pem, content_type="application/x-pem-file")

    async def join(self, request: web.Request) -> web.Response:
        body: s.JoinRequest = await self._body(request, s.JoinRequest, JOIN_BODY)
        token = pki.parse_join_token(body.token)
        pki.verify_ca_matches_token(self.pki.ca_cert, token)
        try:  # before the token is spent: a node that sent a bad request can try again
            pki.check_node_csr(body.csr.encode(), token.node)
        except ValueError as exc:
            raise JoinError(f"join token names no valid node: {exc}") from None
        now_ms = self.clock.time_ms()
        grant = await self.db.run(
            self.store.consume_join_token, token.token_id, token.secret, now_ms
        )
        node = grant.node
        now = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc)
        cert = self.pki.sign_node(body.csr.encode(), node, now, self.node_cert_days)
        await self.db.run(self.store.register_node, node, now_ms, grant.labels)
        log.info("node %s joined from %s", node, request.remote)
        self.scheduler.request(nodes={node})
        return _json(
            s.JoinResponse(
                node=node,
                certificate=cert.decode(),
                ca=self.pki.ca_pem.decode(),
                websocket_port=self.websocket_port(),
                quic_port=self.quic_port(),
            )
        )

    # ---------------------------------------------------------------- operator

    async def list_nodes(self, request: web.Request) -> web.Response:
        nodes = await self.db.run(self.store.list_nodes)
        return _json(s.NodeList(items=[self._node_view(n, s.NodeView) for n in nodes]))

    async def get_node(self, request: web.Request) -> web.Response:
        name = _path_name(request, "name")
        node = await self.db.run(self.store.get_node, name)
        return _json(self._node_view(node, s.NodeDetail))

    async def set_node_labels(self, request: web.Request) -> web.Response:
        name = _path_name(request, "name")
        body: s.NodeLabels = await self._body(request, s.NodeLabels, OPERATOR_BODY)
        await self.db.run(self.store.set_node_labels, name, body.labels)
        log.info("node %s labelled %s by an operator", name, body.labels)
        await self.scheduler.placed(nodes={name}, timeout=PLACEMENT_WAIT)
        node = await self.db.run(self.store.get_node, name)
        return _json(self._node_view(node, s.NodeDetail))

    async def delete_node(self, request: web.Request) -> web.Response:
        name = _path_name(request, "name")
        await self.db.run(self.store.delete_node, name)
        session = self.hub.sessions.get(name)
        if session is not None:
            await session.shut("node deleted by an operator")
        return _json(s.Deleted(deleted=name))

    def _node_view(self, node: dict[str, Any], cls: type[Any]) -> Any:
        """A node row as NodeView/NodeDetail, with what only the live session knows."""
        session = self.hub.sessions.get(node["name"])
        rtt = session.session.rtt if session is not None else None
        live = {"connected": session is not None, "rtt_ms": round(rtt * 1000, 3) if rtt else None}
        return _view({**node, **live}, cls)

    async def create_token(self, request: web.Request) -> web.Response:
        body: s.TokenRequest = await self._body(request, s.TokenRequest, OPERATOR_BODY)
        ttl = body.ttl if body.ttl is not None else self.default_token_ttl
        token = pki.new_join_token(self.pki.ca_cert, body.node)
        now_ms = self.clock.time_ms()
        expires_ms = now_ms + int(ttl * 1000)
        await self.db.run(
            self.store.add_join_token,
            token.token_id,
            body.node,
            token.secret,
            now_ms,
            expires_ms,
            body.labels,
        )
        log.info("join token created for node %s (expires in %.0fs)", body.node, ttl)
        return _json(s.TokenResponse(node=body.node, token=str(token), expires_ms=expires_ms), 201)

    async def list_tasks(self, request: web.Request) -> web.Response:
        rows = await self.db.run(self.store.list_tasks)
        return _json(s.TaskList(items=[_task_view(r, s.TaskView) for r in rows]))

    async def get_task(self, request: web.Request) -> web.Response:
        ns, name = _path_name(request, "namespace"), _path_name(request, "name")
        row = await self.db.run(self.store.get_task, ns, name)
        return _json(_task_view(row, s.TaskDetail))

    async def apply_task(self, request: web.Request) -> web.Response:
        task: Task = await self._body(request, Task, OPERATOR_BODY)
        document = to_document(task)
        size = len(msgspec.json.encode(document))
        if size > self.max_document_bytes:
            raise ResourceError(
                f"task: the document is {size} bytes encoded, and a node receives at most "
                f"{self.max_document_bytes} (hub.max_frame_bytes less the envelope); move "
                "large data out of the task (env, argv) into files the task fetches"
            )
        meta = task.metadata
        generation = await self.db.run(
            self.store.put_task, meta.namespace, meta.name, document, self.clock.time_ms()
        )
        crash_point("cloud.after_task_write")
        placed = await self.scheduler.placed(tasks={task.key}, timeout=PLACEMENT_WAIT)
        assigned = await self.db.run(self.store.assignment_count, task.key) if placed else None
        log.info(
            "task %s applied (generation %d, %s)",
            task.key,
            generation,
            f"{assigned} node(s)" if placed else "placement still running",
        )
        return _json(
            s.TaskApplied(
                namespace=meta.namespace,
                name=meta.name,
                generation=generation,
                document=document,
                nodes=assigned,
            )
        )

    async def delete_task(self, request: web.Request) -> web.Response:
        ns, name = _path_name(request, "namespace"), _path_name(request, "name")
        await self.db.run(self.store.delete_task, ns, name)
        self.scheduler.request(tasks={f"task/{ns}/{name}"})
        return _json(s.Deleted(deleted=f"task/{ns}/{name}"))


def _path_name(request: web.Request, part: str) -> str:
    """A name from the URL; one that cannot exist is simply not found."""
    value = request.match_info[part]
    try:
        return validate_name(value, part)
    except ResourceError as exc:
        raise NotFound(str(exc)) from None


def _view(row: dict[str, Any], cls: type[Any]) -> Any:
    """A store row (and its nested rows) as a response struct; columns it does not
    declare are left out, so a new column is never served by accident."""
    return msgspec.convert(_plain(row), cls)


def _plain(value: Any) -> Any:
    """Plain dicts with `str` keys: SQLAlchemy names columns with a str subclass."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _task_view(row: dict[str, Any], cls: type[Any]) -> Any:
    return _view({"assignments": [], **row}, cls)
