"""Certificates, keys and join tokens for edgesync.

Pure crypto: no file, network or clock access. Every function that stamps a
validity period takes `now` (an aware datetime) so callers and tests control
time. All keys are EC P-256 and all signatures SHA-256, to keep the Pi/Jetson
side cheap and the policy easy to audit.

Trust model: the cloud runs a private CA. Edge nodes join with a one-time
token that pins the CA's SHA-256 fingerprint (so the edge can detect a wrong
cloud or a man-in-the-middle) and carries a secret the cloud only stores hashed.
The node sends a CSR; the cloud issues a client certificate whose subject is
built from the token's node name, never copied from the CSR.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import JoinError, PKIError

__all__ = [
    "NODE_ORG",
    "TOKEN_PREFIX",
    "JoinToken",
    "ca_fingerprint",
    "cert_expires_at",
    "cert_to_pem",
    "create_ca",
    "create_csr",
    "create_server_cert",
    "generate_key",
    "hash_token_secret",
    "key_to_pem",
    "load_cert_pem",
    "load_key_pem",
    "new_admin_token",
    "new_join_token",
    "node_name_from_cert",
    "node_name_from_der",
    "parse_join_token",
    "sign_node_csr",
    "token_secret_matches",
    "validate_node_name",
    "verify_ca_matches_token",
]

NODE_ORG = "edgesync:nodes"
"""O= of every node certificate; fixed by the CA, never taken from a CSR."""

TOKEN_PREFIX = "es1"
"""Version tag of the join-token wire form, so the format can change later."""

# Certificates start a little in the past so a peer whose clock lags ours
# does not reject a certificate issued a moment ago.
_CLOCK_SKEW = timedelta(minutes=5)

_NODE_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_HEX16_RE = re.compile(r"[0-9a-f]{16}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")


# --------------------------------------------------------------------------- helpers


def _utc(now: datetime) -> datetime:
    """Normalise `now` to UTC; a naive datetime is a caller bug (ambiguous zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("`now` must be a timezone-aware datetime (use datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc)


def _is_p256_public(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def _public_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_ca(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, now: datetime) -> None:
    """Refuse to issue from a mismatched or expired CA: the result would never verify."""
    ca_pub = ca_cert.public_key()
    if not isinstance(ca_pub, ec.EllipticCurvePublicKey) or _public_der(ca_pub) != _public_der(
        ca_key.public_key()
    ):
        raise PKIError("the CA private key does not belong to the CA certificate")
    if now >= ca_cert.not_valid_after_utc:
        raise PKIError(
            f"the CA certificate expired at {ca_cert.not_valid_after_utc.isoformat()}; "
            "create a new CA and re-join the nodes"
        )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI from the CA's SKI when present, so chain building matches exactly."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ca_pub = ca_cert.public_key()
        if not isinstance(ca_pub, ec.EllipticCurvePublicKey):
            raise PKIError("the CA certificate does not hold an EC key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_pub)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _validity(
    now: datetime, days: int, ca_cert: x509.Certificate | None = None
) -> tuple[datetime, datetime]:
    """(not_before, not_after); a leaf never outlives its CA, since it could not verify then."""
    if days <= 0:
        raise ValueError(f"certificate lifetime must be positive, got {days} days")
    not_before = now - _CLOCK_SKEW
    not_after = now + timedelta(days=days)
    if ca_cert is not None:
        not_after = min(not_after, ca_cert.not_valid_after_utc)
        not_before = max(not_before, ca_cert.not_valid_before_utc)
    return not_before, not_after


def _single_cn(name: x509.Name) -> str | None:
    """The one CN string in `name`, or None if there are zero, several, or a non-string one."""
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- keys and certificates


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: small, fast on ARM, and universally supported by TLS stacks."""
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(
    common_name: str, now: datetime, days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign leaves only (path_length=0), never sub-CAs."""
    now = _utc(now)
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(now, days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf_key_usage() -> x509.KeyUsage:
    # digitalSignature is all an ECDSA TLS leaf needs (TLS 1.3 and ECDHE suites).
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def create_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    now: datetime,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The cloud's TLS certificate; clients check the SAN, so every reachable name must be listed.

    825 days is the longest lifetime common TLS clients accept for a server certificate.
    """
    now = _utc(now)
    if isinstance(hosts, str) or not hosts:
        raise ValueError("create_server_cert needs a non-empty list of host names or IP addresses")
    _check_ca(ca_key, ca_cert, now)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        if not host:
            raise ValueError("empty host name in server certificate hosts")
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = generate_key()
    not_before, not_after = _validity(now, days, ca_cert)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def create_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """The edge's certificate request; the private key never leaves the node."""
    validate_node_name(node_name)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, node_name),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORG),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def check_node_csr(csr_pem: bytes, expected_node: str) -> ec.EllipticCurvePublicKey:
    """The CSR's public key if a node may be issued a certificate for it; JoinError if not.

    The cloud runs this before it spends the join token, so a joining node that
    sent a bad request (wrong key type, tampered, another CN) can try again.
    """
    validate_node_name(expected_node)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise JoinError(f"the certificate request is not a valid PEM CSR: {exc}") from None
    try:
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JoinError(f"the certificate request could not be read: {exc}") from None
    if not signature_ok:
        raise JoinError("the certificate request's signature is invalid (corrupted or tampered)")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not _is_p256_public(public_key):
        raise JoinError(
            f"the certificate request uses a {_describe_key(public_key)} key; "
            "edgesync nodes must use EC P-256"
        )
    cn = _single_cn(csr.subject)
    if cn is None:
        raise JoinError("the certificate request must have exactly one subject CN (the node name)")
    if cn != expected_node:
        raise JoinError(f"CSR subject CN {cn!r} does not match the token's node {expected_node!r}")
    return public_key


def sign_node_csr(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    csr_pem: bytes,
    expected_node: str,
    now: datetime,
    days: int = 365,
) -> x509.Certificate:
    """Issue a node's client certificate, trusting only the CSR's public key.

    The subject is rebuilt from `expected_node` (the name bound to the join
    token): copying the CSR subject would let a joining node claim extra
    organisations or another node's identity.
    Raises JoinError for anything the joining node got wrong, ValueError if
    `expected_node` is not a valid node name (a caller bug), and PKIError if the
    CA itself is unusable.
    """
    now = _utc(now)
    public_key = check_node_csr(csr_pem, expected_node)
    _check_ca(ca_key, ca_cert, now)
    not_before, not_after = _validity(now, days, ca_cert)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, expected_node),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORG),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _describe_key(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.lstrip("_")


def node_name_from_cert(cert: x509.Certificate) -> str:
    """The node identity of a peer certificate: its single CN, which must be a valid node name."""
    cn = _single_cn(cert.subject)
    if cn is None:
        raise PKIError("the certificate must have exactly one subject CN (the node name)")
    try:
        return validate_node_name(cn)
    except ValueError as exc:
        raise PKIError(f"the certificate's CN is not a node name: {exc}") from None


def node_name_from_der(der: bytes) -> str:
    """Same as node_name_from_cert, for what ssl.getpeercert(binary_form=True) returns."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"the peer certificate is not valid DER: {exc}") from None
    return node_name_from_cert(cert)


def ca_fingerprint(ca_cert: x509.Certificate) -> str:
    """'sha256:<hex>' over the DER; what operators compare and join tokens pin."""
    return "sha256:" + ca_cert.fingerprint(hashes.SHA256()).hex()


def validate_node_name(name: str) -> str:
    """Node names end up in certificates, file names and log lines, so keep them DNS-label-like."""
    if not isinstance(name, str) or _NODE_NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"invalid node name {name!r}: use 1-63 characters from lowercase a-z, 0-9, "
            "'-' and '.', starting and ending with a letter or digit"
        )
    return name


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: file permissions protect it, and daemons start unattended."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """PEM, the form every TLS stack and operator tool reads."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM EC private key; PKIError says what is wrong, not a traceback."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise PKIError(f"the private key could not be loaded (is it encrypted?): {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"the data is not a valid PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"expected an EC private key, got {type(key).__name__.lstrip('_')}")
    return key


def load_cert_pem(data: bytes) -> x509.Certificate:
    """Parse a PEM certificate (the first one, if several); PKIError on garbage."""
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"the data is not a valid PEM certificate: {exc}") from None


def cert_expires_at(cert: x509.Certificate) -> datetime:
    """not_valid_after as an aware UTC datetime, for renewal scheduling."""
    return cert.not_valid_after_utc


# --------------------------------------------------------------------------- join tokens


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A one-time join credential: pins the CA, names the token row, proves possession.

    Constructing one validates every field, so a JoinToken is always well-formed.
    The secret is left out of repr() so tokens can be logged safely.
    """

    ca_hash: str
    token_id: str
    secret: str = field(repr=False)
    node: str = ""
    """The node this token joins. A hint for the edge's CSR only: the cloud trusts its
    own record of the token, never this field."""

    def __post_init__(self) -> None:
        if not isinstance(self.node, str) or _NODE_NAME_RE.fullmatch(self.node) is None:
            raise JoinError("malformed join token: the node name part is not a valid name")
        if not isinstance(self.ca_hash, str) or _HEX64_RE.fullmatch(self.ca_hash) is None:
            raise JoinError(
                "malformed join token: the CA hash must be 64 lowercase hexadecimal characters"
            )
        if not isinstance(self.token_id, str) or _HEX16_RE.fullmatch(self.token_id) is None:
            raise JoinError(
                "malformed join token: the token id must be 16 lowercase hexadecimal characters"
            )
        if not isinstance(self.secret, str) or _SECRET_RE.fullmatch(self.secret) is None:
            raise JoinError(
                "malformed join token: the secret must be 43 URL-safe base64 characters"
            )

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}.{self.ca_hash}.{self.token_id}.{self.secret}.{self.node}"


def new_join_token(ca_cert: x509.Certificate, node: str) -> JoinToken:
    """A fresh token pinned to `ca_cert`; the caller stores hash_token_secret(token.secret)."""
    return JoinToken(
        ca_hash=ca_fingerprint(ca_cert).removeprefix("sha256:"),
        token_id=secrets.token_hex(8),
        secret=secrets.token_urlsafe(32),
        node=node,
    )


def parse_join_token(text: str) -> JoinToken:
    """Parse the wire form; errors never echo the text, since it may hold a real secret."""
    # The node name may itself contain dots, so it is the last part and split off whole.
    parts = text.strip().split(".", 4)
    if len(parts) != 5:
        raise JoinError(
            f"malformed join token: expected 5 dot-separated parts "
            f"('{TOKEN_PREFIX}.<ca-hash>.<id>.<secret>.<node>'), got {len(parts)}"
        )
    prefix, ca_hash, token_id, secret, node = parts
    if prefix != TOKEN_PREFIX:
        raise JoinError(
            f"malformed join token: it must start with '{TOKEN_PREFIX}.' (copy the whole token)"
        )
    return JoinToken(ca_hash=ca_hash, token_id=token_id, secret=secret, node=node)


def hash_token_secret(secret: str) -> str:
    """SHA-256 hex of the secret: the cloud stores this, so a database leak grants no joins.

    A plain hash suffices because the secret has 256 bits of entropy (no brute force).
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison so response timing does not leak the stored hash."""
    return hmac.compare_digest(
        hash_token_secret(secret).encode("ascii"), stored_hash.encode("utf-8")
    )


def verify_ca_matches_token(ca_cert: x509.Certificate, token: JoinToken) -> None:
    """The edge's check of the cloud before sending anything: the CA must be the pinned one."""
    actual = ca_fingerprint(ca_cert).removeprefix("sha256:")
    if not hmac.compare_digest(actual.encode("ascii"), token.ca_hash.encode("ascii")):
        raise JoinError(
            f"the cloud's CA (sha256:{actual}) does not match the join token's "
            f"(sha256:{token.ca_hash}); wrong cloud or man-in-the-middle"
        )


def new_admin_token() -> str:
    """A 256-bit bearer token for operator API access."""
    return secrets.token_urlsafe(32)
