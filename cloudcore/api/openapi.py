"""The OpenAPI 3.1 document, generated from the route table and the typed structs.

Never written by hand: a route added to `Api.routes()` appears here with its
request and response schemas and every status it can answer, so the contract
that schemathesis checks in tests/integration/test_api_contract.py is the
code itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from cloudcore.api import schemas as s
from cloudcore.api.body import JSON_TYPES, YAML_TYPES
from cloudcore.api.routes import Route
from shared.resources.common import NAME_PATTERN

REF = "#/components/schemas/{name}"
STATUS_TEXT = {
    400: "The body is not valid JSON/YAML, or nested too deep",
    401: "Missing or wrong bearer token",
    403: "The join was refused (token unknown, used, expired or forged; CSR mismatch)",
    404: "No such object",
    413: "The body is over the route's size limit",
    415: "The Content-Type is not one this route accepts",
    422: "The body is well-formed but invalid; the message names the field",
    503: "The database is unavailable; retry",
}


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    types: list[Any] = [s.Error]
    for r in routes:
        types += [t for t in (r.ok, r.body) if t is not None]
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, by_type)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgesync cloudcore API",
            "version": "1",
            "description": "Join endpoint and operator API (docs/operations.md).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _operation(r: Route, by_type: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    ok_schema = by_type[r.ok] if r.ok is not None else _untyped_ok(r)
    responses: dict[str, Any] = {
        str(r.status): {"description": "OK", "content": {r.ok_media: {"schema": ok_schema}}}
    }
    errors = set(r.errors)
    if r.auth:
        errors.add(401)
    if r.body is not None:
        errors |= {400, 413, 415, 422}
    for code in sorted(errors):
        responses[str(code)] = {
            "description": STATUS_TEXT[code],
            "content": {"application/json": {"schema": by_type[s.Error]}},
        }
    op: dict[str, Any] = {
        "summary": r.summary,
        "operationId": _operation_id(r),
        "responses": responses,
    }
    params = re.findall(r"{(\w+)}", r.path)
    if params:
        op["parameters"] = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": NAME_PATTERN},
            }
            for p in params
        ]
    if r.body is not None:
        media = sorted(JSON_TYPES)
        if r.body_rules is not None and r.body_rules.yaml:
            media += sorted(YAML_TYPES)
        content: dict[str, Any] = {}
        for m in media:
            content[m] = {"schema": by_type[r.body]}
            if r.examples:
                content[m]["examples"] = {
                    f"example{i}": {"value": v} for i, v in enumerate(r.examples)
                }
        op["requestBody"] = {"required": True, "content": content}
    if not r.auth:
        op["security"] = []
    return op


def _untyped_ok(r: Route) -> dict[str, Any]:
    return {"type": "object"} if r.ok_media == "application/json" else {"type": "string"}


def _operation_id(r: Route) -> str:
    words = re.sub(r"[{}]", "", r.path).strip("/").replace("/", "_").replace(".", "_")
    return f"{r.method.lower()}_{words or 'root'}"
