"""Real client certificates with chosen defects, for the certificate-policy tests.

Each one is signed with a real CA key (the cloud's own, read from its data dir, or a
foreign one), so the hubs see exactly what a misissued or stale node certificate
looks like on the wire.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared import pki

NO_EKU: tuple[x509.ObjectIdentifier, ...] = ()
CLIENT_EKU = (ExtendedKeyUsageOID.CLIENT_AUTH,)
SERVER_EKU = (ExtendedKeyUsageOID.SERVER_AUTH,)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    eku: tuple[x509.ObjectIdentifier, ...] | None = CLIENT_EKU,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf for `name`; eku=None leaves the extension out, () is not allowed by X.509."""
    key = pki.generate_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True)
    files = CertFiles(directory / f"{stem}.crt", directory / f"{stem}.key")
    files.cert.write_bytes(pki.cert_to_pem(cert))
    files.key.write_bytes(pki.key_to_pem(key))
    return files


def cloud_ca(pki_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The cloud's own CA key and certificate, from its data dir."""
    key = pki.load_key_pem((pki_dir / "ca.key").read_bytes())
    return key, pki.load_cert_pem((pki_dir / "ca.crt").read_bytes())


def defective(
    pki_dir: Path, out: Path, name: str, defect: str, now: dt.datetime | None = None
) -> CertFiles:
    """A certificate for `name` with one defect: "ok", "not_yet_valid", "expired",
    "missing_eku", "wrong_eku" (signed by the cloud CA) or "foreign_ca"."""
    now = now or dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    ca_key, ca_cert = cloud_ca(pki_dir)
    window = (now - day, now + day)
    eku: tuple[x509.ObjectIdentifier, ...] | None = CLIENT_EKU
    if defect == "not_yet_valid":
        window = (now + day, now + 2 * day)
    elif defect == "expired":
        window = (now - 2 * day, now - day)
    elif defect == "missing_eku":
        eku = None
    elif defect == "wrong_eku":
        eku = SERVER_EKU
    elif defect == "foreign_ca":
        ca_key, ca_cert = pki.create_ca("foreign CA", now)
    elif defect != "ok":
        raise ValueError(f"unknown defect {defect!r}")
    key, cert = issue(ca_key, ca_cert, name, not_before=window[0], not_after=window[1], eku=eku)
    return write(out, f"{name}-{defect}", key, cert)
