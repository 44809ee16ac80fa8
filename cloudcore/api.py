"""HTTPS on port 10002: the join endpoint and the operator REST API (with OpenAPI).

Joins authenticate with a single-use token; the operator API with the admin
bearer token (docs/operations.md). Every error is JSON
`{"error": code, "message": text}` with a status an HTTP client understands.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from cloudcore.pki import CloudPKI
from cloudcore.scheduler import Scheduler
from cloudcore.store import CloudStore
from cloudcore.sync import Hub
from shared import pki
from shared.clock import Clock
from shared.dbthread import DbThread
from shared.errors import JoinError, NotFound, ResourceError, StoreError
from shared.resources import parse_task, validate_name

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


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
        self.admin_token = pki_files.admin_token()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors, self._auth])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/ca.crt", self.ca_cert)
        r.add_post("/join", self.join)
        r.add_get("/api/v1/nodes", self.list_nodes)
        r.add_get("/api/v1/nodes/{name}", self.get_node)
        r.add_delete("/api/v1/nodes/{name}", self.delete_node)
        r.add_post("/api/v1/tokens", self.create_token)
        r.add_get("/api/v1/tasks", self.list_tasks)
        r.add_post("/api/v1/tasks", self.apply_task)
        r.add_get("/api/v1/tasks/{namespace}/{name}", self.get_task)
        r.add_delete("/api/v1/tasks/{namespace}/{name}", self.delete_task)
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
        except NotFound as exc:
            return _error(404, "not_found", str(exc))
        except ResourceError as exc:
            return _error(422, "invalid", str(exc))
        except JoinError as exc:
            log.warning("join from %s refused: %s", request.remote, exc)
            return _error(403, "join_refused", str(exc))
        except StoreError as exc:
            log.error("API %s %s: %s", request.method, request.path, exc)
            return _error(503, "store_unavailable", str(exc))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/") and not self.insecure_no_auth:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.admin_token.encode()
            ):
                return _error(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token; use the token in the cloud's "
                    "data dir (admin.token) or the edgectl config it writes",
                )
        return await handler(request)

    async def _json(self, request: web.Request) -> Any:
        """The request body as JSON, or as YAML when the content type says so."""
        text = await request.text()
        if not text.strip():
            return None
        if "yaml" not in request.content_type:
            try:
                return json.loads(text)
            except ValueError:
                pass  # operators paste YAML with the wrong header too; try it below
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ResourceError(f"request body is not valid JSON/YAML: {exc}") from None

    # ---------------------------------------------------------------- public

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(self.hub.sessions)})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def ca_cert(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pki.ca_pem, content_type="application/x-pem-file")

    async def join(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("token"), str)
            or not isinstance(body.get("csr"), str)
        ):
            raise ResourceError("join needs a JSON body with string fields 'token' and 'csr'")
        token = pki.parse_join_token(body["token"])
        pki.verify_ca_matches_token(self.pki.ca_cert, token)
        now_ms = self.clock.time_ms()
        node = await self.db.run(
            self.store.consume_join_token, token.token_id, token.secret, now_ms
        )
        now = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc)
        cert = self.pki.sign_node(body["csr"].encode(), node, now, self.node_cert_days)
        await self.db.run(self.store.register_node, node, now_ms)
        log.info("node %s joined from %s", node, request.remote)
        await self.scheduler.reconcile(nodes={node})
        return web.json_response(
            {
                "node": node,
                "certificate": cert.decode(),
                "ca": self.pki.ca_pem.decode(),
                "websocket_port": self.websocket_port(),
                "quic_port": self.quic_port(),
            }
        )

    # ---------------------------------------------------------------- operator

    async def list_nodes(self, request: web.Request) -> web.Response:
        nodes = await self.db.run(self.store.list_nodes)
        return web.json_response({"items": [self._node_view(n) for n in nodes]})

    async def get_node(self, request: web.Request) -> web.Response:
        node = await self.db.run(self.store.get_node, request.match_info["name"])
        view = self._node_view(node)
        view["assignments"] = node["assignments"]
        return web.json_response(view)

    async def delete_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.db.run(self.store.delete_node, name)
        session = self.hub.sessions.get(name)
        if session is not None:
            await session.shut("node deleted by an operator")
        return web.json_response({"deleted": name})

    def _node_view(self, node: dict[str, Any]) -> dict[str, Any]:
        session = self.hub.sessions.get(node["name"])
        return {
            "name": node["name"],
            "state": node["state"],
            "reason": node["reason"],
            "connected": session is not None,
            "transport": node["transport"],
            "peer": node["peer"],
            "labels": node["labels"],
            "capacity": node["capacity"],
            "heartbeat": node["heartbeat"],
            "software": node["software"],
            "last_seen_ms": node["last_seen_ms"],
            "acked_rv": node["acked_rv"],
            "received_seq": node["received_seq"],
            "rtt_ms": round(session.session.rtt * 1000, 3)
            if session is not None and session.session.rtt is not None
            else None,
        }

    async def create_token(self, request: web.Request) -> web.Response:
        body = await self._json(request) or {}
        if not isinstance(body, dict):
            raise ResourceError("token request must be a JSON object")
        node = validate_name(body.get("node"), "node")
        ttl = body.get("ttl", self.default_token_ttl)
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= 7 * 86400:
            raise ResourceError("ttl: must be a number of seconds in (0, 604800]")
        token = pki.new_join_token(self.pki.ca_cert, node)
        now_ms = self.clock.time_ms()
        expires_ms = now_ms + int(ttl * 1000)
        await self.db.run(
            self.store.add_join_token, token.token_id, node, token.secret, now_ms, expires_ms
        )
        log.info("join token created for node %s (expires in %.0fs)", node, ttl)
        return web.json_response(
            {"node": node, "token": str(token), "expires_ms": expires_ms}, status=201
        )

    async def list_tasks(self, request: web.Request) -> web.Response:
        rows = await self.db.run(self.store.list_tasks)
        return web.json_response({"items": [_task_view(r) for r in rows]})

    async def get_task(self, request: web.Request) -> web.Response:
        row = await self.db.run(
            self.store.get_task, request.match_info["namespace"], request.match_info["name"]
        )
        view = _task_view(row)
        view["results"] = row["results"]
        return web.json_response(view)

    async def apply_task(self, request: web.Request) -> web.Response:
        spec = parse_task(await self._json(request))
        document = spec.to_document()
        generation = await self.db.run(
            self.store.put_task, spec.namespace, spec.name, document, self.clock.time_ms()
        )
        written = await self.scheduler.reconcile(tasks={spec.key})
        assigned = await self.db.run(self.store.assignment_count, spec.key)
        log.info(
            "task %s applied (generation %d, %d node(s), %d changed)",
            spec.key,
            generation,
            assigned,
            len(written),
        )
        return web.json_response(
            {
                "namespace": spec.namespace,
                "name": spec.name,
                "generation": generation,
                "document": document,
                "nodes": assigned,
                "changed_nodes": len(written),
            }
        )

    async def delete_task(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        await self.db.run(self.store.delete_task, ns, name)
        await self.scheduler.reconcile(tasks={f"task/{ns}/{name}"})
        return web.json_response({"deleted": f"task/{ns}/{name}"})


def _task_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "namespace": row["namespace"],
        "name": row["name"],
        "generation": row["generation"],
        "document": row["document"],
        "updated_ms": row["updated_ms"],
        "assignments": row.get("assignments", []),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(
    summary: str,
    ok: str,
    *,
    body: str | None = None,
    auth: bool = True,
    params: list[str] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": _ref(ok)}}},
            "default": {
                "description": "Error",
                "content": {"application/json": {"schema": _ref("Error")}},
            },
        },
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if not auth:
        op["security"] = []
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "edgesync cloudcore API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "Object": {"type": "object", "additionalProperties": True},
            "JoinRequest": {
                "type": "object",
                "required": ["token", "csr"],
                "properties": {
                    "token": {"type": "string"},
                    "csr": {"type": "string", "description": "PEM CSR"},
                },
            },
            "TokenRequest": {
                "type": "object",
                "required": ["node"],
                "properties": {
                    "node": {"type": "string"},
                    "ttl": {"type": "number", "description": "seconds"},
                },
            },
            "Task": {
                "type": "object",
                "description": "A task document (examples/hello-task.yaml)",
                "required": ["metadata", "spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": {"type": "object"},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": _op("Liveness", "Object", auth=False)},
        "/ca.crt": {
            "get": _op(
                "The cloud CA certificate (PEM); pin it by the token's hash", "Object", auth=False
            )
        },
        "/join": {
            "post": _op(
                "Exchange a join token and CSR for a node certificate",
                "Object",
                body="JoinRequest",
                auth=False,
            )
        },
        "/api/v1/nodes": {"get": _op("List nodes", "Object")},
        "/api/v1/nodes/{name}": {
            "get": _op("Get a node", "Object", params=["name"]),
            "delete": _op("Delete a node", "Object", params=["name"]),
        },
        "/api/v1/tokens": {
            "post": _op("Create a single-use join token", "Object", body="TokenRequest")
        },
        "/api/v1/tasks": {
            "get": _op("List tasks", "Object"),
            "post": _op("Create or update a task", "Object", body="Task"),
        },
        "/api/v1/tasks/{namespace}/{name}": {
            "get": _op(
                "Get a task with assignments and results", "Object", params=["namespace", "name"]
            ),
            "delete": _op("Delete a task", "Object", params=["namespace", "name"]),
        },
    },
}
