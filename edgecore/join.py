"""`edgecore join`: exchange a join token for a node certificate, pinning the cloud's CA.

1. Fetch the cloud CA without trusting anything yet, and compare its
   SHA-256 with the hash inside the token (a wrong cloud or a
   man-in-the-middle stops here).
2. Generate a P-256 key locally (it never leaves the node) and a CSR.
3. POST token + CSR over TLS verified against the pinned CA.
4. Check the answer (the certificate is for this key, signed by the pinned CA),
   then install key, certificate, CA and a complete edgecore.yaml (all 0600)
   atomically: nothing is written before this step.
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
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from edgecore.config import CONFIG_NAME, EdgeConfig
from shared import pki
from shared.config import from_dict, load_yaml_file
from shared.errors import ConfigError, JoinError, PKIError
from shared.files import USABLE_DIR, ensure_private_dir, fsync_dir, stage_private

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
    """Join the cloud; returns the node name. Raises JoinError with what to do.

    Nothing is written until the cloud has issued a certificate that matches the
    new key and verifies against the pinned CA; then the key, certificate, CA
    and config are staged as fsynced temporary files and renamed into place, so
    a failed join (wrong cloud, spent token, refused CSR) leaves a joined node
    exactly as it was. Raises ConfigError (before contacting the cloud) when the
    existing edgecore.yaml or the resulting one would not load.
    """
    token = pki.parse_join_token(token_text)
    parsed = urllib.parse.urlparse(cloud_url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise JoinError(
            f"--cloud must be https://HOST:PORT (the cloud's join port), not {cloud_url!r}"
        )
    problem = USABLE_DIR(str(data_dir))
    if problem:
        raise ConfigError(f"--data-dir: {problem}")
    config_path = data_dir / CONFIG_NAME
    existing = load_yaml_file(config_path) if config_path.exists() else {}
    from_dict(EdgeConfig, {**existing, "data_dir": str(data_dir)}, str(config_path))
    base = f"https://{parsed.netloc}"
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to fetch the CA, which is then pinned by hash
    try:
        ca = pki.load_cert_pem(_request(f"{base}/ca.crt", insecure))
    except PKIError as exc:
        raise JoinError(f"{base}/ca.crt did not return a certificate: {exc}") from None
    pki.verify_ca_matches_token(ca, token)
    ca_pem = pki.cert_to_pem(ca)
    pinned = ssl.create_default_context(cadata=ca_pem.decode())
    key = pki.generate_key()
    # The cloud checks the CSR's name against its own record of the token.
    csr = pki.create_csr(key, token.node)
    raw = _request(f"{base}/join", pinned, {"token": token_text.strip(), "csr": csr.decode()})
    node, cert, ws_port, quic_port = _parse_answer(raw, key, ca)
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    cloud = {"websocket_url": f"wss://{host}:{ws_port}/edgesync/v1", "api_url": base}
    if quic_port is not None:
        cloud["quic_url"] = f"quic://{host}:{quic_port}"
    config: dict[str, Any] = {**existing, "data_dir": str(data_dir), "cloud": cloud}
    if labels or "labels" not in existing:
        config["labels"] = labels
    from_dict(EdgeConfig, config, str(config_path))  # what serve will load must load
    _install(
        data_dir,
        {
            "node.key": pki.key_to_pem(key),
            "node.crt": pki.cert_to_pem(cert),
            "ca.crt": ca_pem,
            CONFIG_NAME: yaml.safe_dump(config, sort_keys=False).encode(),
        },
    )
    return node


def _parse_answer(
    raw: bytes, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[str, x509.Certificate, int, int | None]:
    """(node, certificate, websocket port, QUIC port or None); raises JoinError."""
    try:
        answer = json.loads(raw)
        node = answer["node"]
        cert = pki.load_cert_pem(str(answer["certificate"]).encode())
        ws_port = answer["websocket_port"]
        quic_port = answer.get("quic_port")
    except (ValueError, KeyError, TypeError, AttributeError, PKIError) as exc:
        raise JoinError(
            f"the cloud's join answer is not usable ({exc}); nothing was written"
        ) from None
    if not isinstance(node, str) or pki.node_name_from_cert(cert) != node:
        raise JoinError("the cloud issued a certificate for another node; refusing it")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise JoinError("the cloud's certificate is not for this node's new key; refusing it")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise JoinError(
            "the cloud's certificate is not signed by the pinned CA; refusing it"
        ) from None
    if not _is_port(ws_port) or not (quic_port is None or _is_port(quic_port)):
        raise JoinError(f"the cloud's join answer has bad ports: {ws_port!r}, {quic_port!r}")
    return node, cert, ws_port, quic_port


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _install(data_dir: Path, files: dict[str, bytes]) -> None:
    """Stage every file (fsynced, 0600), then rename them all into place and fsync the dir.

    Until the first rename the old files are untouched; the renames follow each
    other at once, key first and config last.
    """
    ensure_private_dir(data_dir)
    staged = []
    try:
        for name, data in files.items():
            staged.append((stage_private(data_dir / name, data), data_dir / name))
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise JoinError(
            f"cannot write into {data_dir}: {exc.strerror}; nothing was changed"
        ) from None
    for tmp, final in staged:
        os.replace(tmp, final)
    fsync_dir(data_dir)
