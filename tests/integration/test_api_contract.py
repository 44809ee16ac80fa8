"""The operator API against its own generated OpenAPI document, checked by schemathesis.

schemathesis runs as a separate process (its CLI) against a live in-process
cloudcore over real TLS: examples (which must be accepted), coverage, fuzzing
and stateful phases, with the four standard checks. Any 5xx, an undocumented
status, a wrong Content-Type or a body that does not match the schema fails it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.harness import Cloud

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert found, "schemathesis' `st` command is missing: install the test extra (make test)"
    return found


@pytest.mark.slow
async def test_api_conforms_to_its_generated_openapi_document(cloud: Cloud, tmp_path: Path) -> None:
    report = tmp_path / "st.log"
    har = tmp_path / "st.har"
    proc = await asyncio.create_subprocess_exec(
        _st(),
        "run",
        f"{cloud.api_url}/openapi.json",
        "--checks",
        CHECKS,
        "-H",
        f"Authorization: Bearer {cloud.admin_token}",
        "--tls-verify",
        str(cloud.ca_path),
        "--max-examples",
        os.environ.get("EDGESYNC_SCHEMATHESIS_EXAMPLES", "15"),
        "--seed",
        "20261208",
        "--continue-on-failure",
        "--warnings",
        "off",
        "--no-color",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        stdout=report.open("wb"),
        cwd=tmp_path,  # schemathesis keeps a cache in .schemathesis/ of its working dir
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    code = await asyncio.wait_for(proc.wait(), 80)
    output = report.read_text(errors="replace")
    assert code == 0, output[-6000:]
    assert "No issues found" in output, output[-6000:]
    # Positive examples were really accepted, not merely answered with a documented 4xx.
    accepted: dict[tuple[str, str], int] = {}
    for entry in json.loads(har.read_text())["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        if 200 <= response["status"] < 300:
            key = (request["method"], urlsplit(request["url"]).path)
            accepted[key] = accepted.get(key, 0) + 1
    assert accepted.get(("POST", "/api/v1/tasks")), accepted
    assert accepted.get(("POST", "/api/v1/tokens")), accepted


async def test_openapi_document_covers_every_route_and_status(cloud: Cloud) -> None:
    status, doc = await cloud.request("GET", "/openapi.json", auth=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    api_app = cloud.app.api_app
    assert api_app is not None
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api_app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    tokens = doc["paths"]["/api/v1/tokens"]["post"]
    assert set(tokens["responses"]) == {"201", "400", "401", "413", "415", "422", "503"}
    task_body = doc["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/yaml"} <= set(task_body)
    join = doc["paths"]["/join"]["post"]
    assert join["security"] == [] and set(join["requestBody"]["content"]) == {"application/json"}
    assert doc["paths"]["/ca.crt"]["get"]["responses"]["200"]["content"].keys() == {
        "application/x-pem-file"
    }
    schemas = doc["components"]["schemas"]
    assert schemas["Task"]["additionalProperties"] is False
    assert "discriminator" in str(schemas["CommandTaskSpec"]["properties"]["trigger"])
