"""`edgecore join`: exchange a join token for a node certificate, pinning the cloud's CA.

1. Fetch the cloud CA without trusting anything yet, and compare its
   SHA-256 with the hash inside the token (a wrong cloud or a
   man-in-the-middle stops here).
2. Generate a P-256 key locally (it never leaves the node) and a CSR.
3. POST token + CSR over TLS verified against the pinned CA.
4. Store key (0600), certificate, CA and a complete edgecore.yaml.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from edgecore.config import CONFIG_NAME
from shared import pki
from shared.errors import JoinError, PKIError
from shared.files import write_private

TIMEOUT = 15.0


def _request(url: str, ctx: ssl.SSLContext, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=TIMEOUT) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise JoinError(f"the cloud refused the join: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JoinError(f"cannot reach the cloud at {url}: {reason}") from None


def join(cloud_url: str, token_text: str, data_dir: Path, labels: dict[str, str]) -> str:
    """Join the cloud; returns the node name. Raises JoinError with what to do."""
    token = pki.parse_join_token(token_text)
    parsed = urllib.parse.urlparse(cloud_url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise JoinError(
            f"--cloud must be https://HOST:PORT (the cloud's join port), not {cloud_url!r}"
        )
    base = f"https://{parsed.netloc}"
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to fetch the CA, which is then pinned by hash
    try:
        ca = pki.load_cert_pem(_request(f"{base}/ca.crt", insecure))
    except PKIError as exc:
        raise JoinError(f"{base}/ca.crt did not return a certificate: {exc}") from None
    pki.verify_ca_matches_token(ca, token)

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    ca_path = data_dir / "ca.crt"
    ca_path.write_bytes(pki.cert_to_pem(ca))
    pinned = ssl.create_default_context(cafile=str(ca_path))
    key = pki.generate_key()
    # The cloud checks the CSR's name against its own record of the token.
    csr = pki.create_csr(key, token.node)
    answer = json.loads(
        _request(f"{base}/join", pinned, {"token": token_text.strip(), "csr": csr.decode()})
    )
    node = str(answer["node"])
    cert = pki.load_cert_pem(str(answer["certificate"]).encode())
    if pki.node_name_from_cert(cert) != node:
        raise JoinError("the cloud issued a certificate for another node; refusing it")
    write_private(data_dir / "node.key", pki.key_to_pem(key))
    (data_dir / "node.crt").write_bytes(pki.cert_to_pem(cert))
    ws_port = int(answer["websocket_port"])
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    cloud = {"websocket_url": f"wss://{host}:{ws_port}/edgesync/v1", "api_url": base}
    quic_port = answer.get("quic_port")
    if isinstance(quic_port, int):
        cloud["quic_url"] = f"quic://{host}:{quic_port}"
    config: dict[str, Any] = {"data_dir": str(data_dir), "labels": labels, "cloud": cloud}
    config_path = data_dir / CONFIG_NAME
    existing = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    if isinstance(existing, dict):
        existing.update({k: v for k, v in config.items() if k != "labels" or labels})
        config = existing
    write_private(config_path, yaml.safe_dump(config, sort_keys=False).encode())
    return node
