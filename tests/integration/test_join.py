"""Joining and the operator API against a running cloud's HTTPS endpoint (port 0, real TLS)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgecore.join import join as edge_join
from shared import pki
from shared.errors import JoinError
from tests.integration.harness import Cloud, eventually, now_ms, task_document


async def post_join(cloud: Cloud, token: str, csr: bytes) -> tuple[int, Any]:
    return await cloud.request(
        "POST", "/join", json_body={"token": token, "csr": csr.decode()}, auth=None
    )


def csr_for(node: str) -> bytes:
    return pki.create_csr(pki.generate_key(), node)


def assert_refused(answer: tuple[int, Any], *needles: str) -> None:
    status, body = answer
    assert status == 403, answer
    assert body["error"] == "join_refused", body
    for needle in needles:
        assert needle in body["message"], body


async def registered(cloud: Cloud) -> list[str]:
    return [n["name"] for n in await cloud.db(cloud.store.list_nodes)]


# ---------------------------------------------------------------- join


async def test_join_issues_a_certificate_for_the_node_signed_by_the_ca(
    cloud: Cloud, tmp_path: Path
) -> None:
    token = (await cloud.create_token("pi-kitchen"))["token"]
    edge_dir = tmp_path / "edge"

    node = await asyncio.to_thread(edge_join, cloud.api_url, token, edge_dir, {"zone": "kitchen"})

    assert node == "pi-kitchen"
    cert = x509.load_pem_x509_certificate((edge_dir / "node.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(cloud.ca_path.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if not signed by the cloud CA
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["pi-kitchen"]
    key = pki.load_key_pem((edge_dir / "node.key").read_bytes())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert (edge_dir / "node.key").stat().st_mode & 0o077 == 0
    assert (edge_dir / "ca.crt").read_bytes() == cloud.ca_path.read_bytes()
    config = yaml.safe_load((edge_dir / "edgecore.yaml").read_text())
    assert config["cloud"]["websocket_url"] == cloud.ws_url
    assert config["labels"] == {"zone": "kitchen"}
    status, view = await cloud.request("GET", "/api/v1/nodes/pi-kitchen")
    assert status == 200 and view["state"] == "NotReady", view
    # /ca.crt serves the CA the token pins.
    status, ca_text = await cloud.request("GET", "/ca.crt", auth=None)
    assert status == 200
    assert (
        pki.ca_fingerprint(pki.load_cert_pem(ca_text.encode())).removeprefix("sha256:")
        == pki.parse_join_token(token).ca_hash
    )


async def test_expired_token_is_refused(cloud: Cloud) -> None:
    created = await cloud.create_token("late", ttl=0.001)
    await eventually(lambda: now_ms() > created["expires_ms"] + 5, what="token expiry")

    assert_refused(await post_join(cloud, created["token"], csr_for("late")), "expired")
    assert "late" not in await registered(cloud)


async def test_token_is_single_use(cloud: Cloud) -> None:
    token = (await cloud.create_token("once"))["token"]
    status, first = await post_join(cloud, token, csr_for("once"))
    assert status == 200, first
    assert first["node"] == "once"

    assert_refused(await post_join(cloud, token, csr_for("once")), "already used")


@pytest.mark.parametrize("forge", ["secret", "token-id"])
async def test_forged_token_is_refused(
    cloud: Cloud, forge: str, caplog: pytest.LogCaptureFixture
) -> None:
    real = pki.parse_join_token((await cloud.create_token("victim"))["token"])
    forged = pki.JoinToken(
        ca_hash=real.ca_hash,
        token_id=secrets.token_hex(8) if forge == "token-id" else real.token_id,
        secret=secrets.token_urlsafe(32) if forge == "secret" else real.secret,
        node=real.node,
    )
    if forge == "token-id":
        # An unknown id with the real secret must not find the real row either.
        assert forged.token_id != real.token_id

    assert_refused(await post_join(cloud, str(forged), csr_for("victim")), "unknown or forged")
    assert "victim" not in await registered(cloud)
    assert any(
        "join connection from" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )
    # The forgery did not burn the real token.
    status, answer = await post_join(cloud, str(real), csr_for("victim"))
    assert status == 200, answer


async def test_join_refusals_are_counted_and_logged_within_a_budget(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(40):
        status, _ = await post_join(cloud, "es1.nothex.x.y.n1", csr_for("n1"))
        assert status == 403
    lines = [r for r in caplog.records if "join connection from" in r.getMessage()]
    assert 1 <= len(lines) <= 10, len(lines)
    assert cloud.hub.stats.connections_refused["join_refused"] == 40


async def test_malformed_token_is_refused_without_echoing_it(cloud: Cloud) -> None:
    secret = secrets.token_urlsafe(32)
    status, body = await post_join(cloud, f"es1.nothex.{secret}", csr_for("x"))
    assert status == 403 and body["error"] == "join_refused", body
    assert "malformed join token" in body["message"]
    assert secret not in body["message"]


async def test_csr_for_another_node_is_refused_naming_both(cloud: Cloud) -> None:
    token = (await cloud.create_token("node-a"))["token"]

    assert_refused(await post_join(cloud, token, csr_for("node-b")), "'node-b'", "'node-a'")
    assert "node-a" not in await registered(cloud)
    assert "node-b" not in await registered(cloud)


async def test_edge_refuses_a_cloud_whose_ca_is_not_the_pinned_one(
    cloud: Cloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    _, other_ca = pki.create_ca("some other cloud", now)
    token = pki.new_join_token(other_ca, "pinned-elsewhere")
    edge_dir = tmp_path / "edge"
    caplog.set_level(logging.INFO)

    with pytest.raises(JoinError, match="wrong cloud or man-in-the-middle"):
        await asyncio.to_thread(edge_join, cloud.api_url, str(token), edge_dir, {})

    # Refused before a key, CSR or request: nothing written, nothing reached /join.
    assert not (edge_dir / "node.key").exists()
    assert not (edge_dir / "ca.crt").exists()
    assert not [r for r in caplog.records if r.name == "cloudcore.api" and "join" in r.getMessage()]
    assert "pinned-elsewhere" not in await registered(cloud)
    # The cloud makes the same check itself for a client that skips it.
    assert_refused(
        await post_join(cloud, str(token), csr_for("pinned-elsewhere")),
        "wrong cloud or man-in-the-middle",
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"token": "x"}, "object missing required field `csr`"),
        ({"csr": "x"}, "object missing required field `token`"),
        (["token", "csr"], "expected `object`, got `array`"),
        ("text", "expected `object`, got `str`"),
        ({"token": "x", "csr": "y", "node": "z"}, "object contains unknown field `node`"),
    ],
)
async def test_join_with_a_malformed_body_is_rejected(cloud: Cloud, body: Any, says: str) -> None:
    status, answer = await cloud.request("POST", "/join", json_body=body, auth=None)
    assert status == 422, answer
    assert answer["message"] == f"request body: {says}"


# ---------------------------------------------------------------- operator API


PROTECTED = [
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/anything"),
    ("DELETE", "/api/v1/nodes/anything"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/tasks"),
    ("POST", "/api/v1/tasks"),
    ("DELETE", "/api/v1/tasks/default/anything"),
]


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token", "Basic YWRtaW46YWRtaW4=", "Bearer "], ids=repr
)
async def test_operator_api_requires_the_admin_token(cloud: Cloud, auth: str | None) -> None:
    for method, path in PROTECTED:
        status, body = await cloud.request(
            method, path, json_body={"node": "sneaky"} if method == "POST" else None, auth=auth
        )
        assert status == 401, (method, path, body)
        assert body["error"] == "unauthorized"
        assert "admin.token" in body["message"]
    assert "sneaky" not in await registered(cloud)


async def test_operator_api_accepts_the_admin_token(cloud: Cloud) -> None:
    status, body = await cloud.request("GET", "/api/v1/nodes")
    assert (status, body) == (200, {"items": []})
    status, body = await cloud.request("GET", "/api/v1/nodes", auth=f"bearer {cloud.admin_token}")
    assert status == 200, body


async def test_openapi_document_lists_the_paths(cloud: Cloud) -> None:
    status, doc = await cloud.request("GET", "/openapi.json", auth=None)
    assert status == 200
    assert isinstance(doc, dict), doc  # parsed as JSON
    assert doc["openapi"].startswith("3.")
    for path in ("/join", "/ca.crt", "/api/v1/nodes", "/api/v1/tokens", "/api/v1/tasks"):
        assert path in doc["paths"], path
    assert doc["paths"]["/join"]["post"]["security"] == []
    assert "bearer" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["command"].update(argv="uname -a"), "spec.command.argv"),
        (lambda d: d["spec"]["command"].update(timeout="soon"), "spec.command.timeout"),
        (lambda d: d["spec"]["trigger"].update(type="hourly"), "spec.trigger.type"),
        (lambda d: d["metadata"].update(name="Not_A_Name"), "metadata.name"),
        (lambda d: d["spec"].update(colour="red"), "colour"),
        (lambda d: d["spec"]["placement"].update(nodes=["ok", "BAD NAME"]), "nodes[1]"),
    ],
)
async def test_invalid_task_is_rejected_naming_the_field(
    cloud: Cloud, mutate: Any, field: str
) -> None:
    doc = task_document("valid", ["n1"])
    mutate(doc)
    text = yaml.safe_dump(doc)

    status, body = await cloud.request(
        "POST", "/api/v1/tasks", data=text, headers={"Content-Type": "application/yaml"}
    )

    assert status == 422, body
    assert body["error"] == "invalid"
    assert field in body["message"], body
    status, tasks = await cloud.request("GET", "/api/v1/tasks")
    assert tasks["items"] == []


async def test_unparsable_task_yaml_is_rejected(cloud: Cloud) -> None:
    status, body = await cloud.request(
        "POST",
        "/api/v1/tasks",
        data="metadata: {name: [unclosed\n",
        headers={"Content-Type": "application/yaml"},
    )
    # Malformed syntax is 400 (a valid document with a wrong field is 422).
    assert status == 400, body
    assert body["message"].startswith("request body is not valid YAML at line 2, column 1:"), body


async def test_valid_task_yaml_is_accepted(cloud: Cloud) -> None:
    text = yaml.safe_dump(task_document("valid", ["n1"]))
    status, body = await cloud.request(
        "POST", "/api/v1/tasks", data=text, headers={"Content-Type": "application/yaml"}
    )
    assert status == 200, body
    assert (body["name"], body["generation"]) == ("valid", 1)


async def test_a_bad_certificate_request_does_not_spend_the_token(cloud: Cloud) -> None:
    token = (await cloud.create_token("careful"))["token"]
    assert_refused(await post_join(cloud, token, csr_for("someone-else")), "does not match")
    status, answer = await post_join(cloud, token, csr_for("careful"))
    assert status == 200, answer
