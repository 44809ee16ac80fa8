"""The cloud's certificate authority on disk: CA, server certificate, admin token.

Created on first start in the data dir (mode 0700, keys 0600). The server
certificate is re-issued when the configured hosts change or it nears
expiry; the CA is never replaced automatically (that would orphan every
node).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shared import pki
from shared.errors import PKIError
from shared.files import write_private

log = logging.getLogger(__name__)

RENEW_BEFORE = dt.timedelta(days=30)


class CloudPKI:
    def __init__(self, data_dir: Path, hosts: list[str]) -> None:
        self.dir = data_dir / "pki"
        self.hosts = hosts
        self.ca_cert_path = self.dir / "ca.crt"
        self.ca_key_path = self.dir / "ca.key"
        self.server_cert_path = self.dir / "server.crt"
        self.server_key_path = self.dir / "server.key"
        self.admin_token_path = data_dir / "admin.token"
        self._ca_key: ec.EllipticCurvePrivateKey | None = None
        self._ca_cert: x509.Certificate | None = None

    def ensure(self, now: dt.datetime) -> None:
        """Create whatever is missing; re-issue the server certificate if needed."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        if not self.ca_cert_path.exists():
            if self.ca_key_path.exists():
                raise PKIError(
                    f"{self.ca_key_path} exists without {self.ca_cert_path}; "
                    "restore the CA certificate or remove both to start a new CA"
                )
            key, cert = pki.create_ca("edgesync cloud CA", now)
            write_private(self.ca_key_path, pki.key_to_pem(key))
            self.ca_cert_path.write_bytes(pki.cert_to_pem(cert))
            log.info("created a new cloud CA %s", pki.ca_fingerprint(cert))
        self._ca_key = pki.load_key_pem(self._read(self.ca_key_path))
        self._ca_cert = pki.load_cert_pem(self._read(self.ca_cert_path))
        if self._server_cert_stale(now):
            key, cert = pki.create_server_cert(self._ca_key, self._ca_cert, self.hosts, now)
            write_private(self.server_key_path, pki.key_to_pem(key))
            self.server_cert_path.write_bytes(pki.cert_to_pem(cert))
            log.info("issued the server certificate for %s", ", ".join(self.hosts))
        if not self.admin_token_path.exists():
            write_private(self.admin_token_path, pki.new_admin_token().encode() + b"\n")
            log.info("created the operator admin token in %s", self.admin_token_path)

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise PKIError(f"cannot read {path}: {exc.strerror}") from None

    def _server_cert_stale(self, now: dt.datetime) -> bool:
        if not self.server_cert_path.exists() or not self.server_key_path.exists():
            return True
        cert = pki.load_cert_pem(self._read(self.server_cert_path))
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return True
        names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
        names |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        if names != set(self.hosts):
            return True
        return pki.cert_expires_at(cert) - now < RENEW_BEFORE

    @property
    def ca_cert(self) -> x509.Certificate:
        if self._ca_cert is None:
            raise PKIError("PKI not loaded; call ensure() first")
        return self._ca_cert

    @property
    def ca_pem(self) -> bytes:
        return pki.cert_to_pem(self.ca_cert)

    def admin_token(self) -> str:
        return self._read(self.admin_token_path).decode().strip()

    def sign_node(self, csr_pem: bytes, node: str, now: dt.datetime, days: int) -> bytes:
        if self._ca_key is None:
            raise PKIError("PKI not loaded; call ensure() first")
        cert = pki.sign_node_csr(self._ca_key, self.ca_cert, csr_pem, node, now, days)
        return pki.cert_to_pem(cert)
