"""The one client-certificate policy both edge transports apply (pure: no I/O).

A node certificate is accepted when it chains directly to this cloud's CA, is
inside its validity window, carries the clientAuth extended key usage (a
certificate without the extension is refused: X.509 would allow it for any
purpose, which is how WebSocket once accepted what QUIC refused), and its single
CN is a valid node name, which becomes the session's identity.

WebSocket lets OpenSSL verify the chain during the handshake (Python's ssl has
no verify callback), so a refusal there arrives as an OpenSSL verify code;
`reason_for_openssl_code` maps it onto the same reasons, and the hub runs
`check_client_certificate` on the certificate of every handshake that did
complete. QUIC (aioquic verifies nothing on the server) runs the whole policy
itself. Both log `CertificateRefused.reason` and count by it.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared import pki
from shared.errors import CertificateRefused, PKIError

NO_CERTIFICATE = "no_certificate"
FOREIGN_CA = "foreign_ca"
NOT_YET_VALID = "not_yet_valid"
EXPIRED = "expired"
MISSING_EKU = "missing_eku"
WRONG_EKU = "wrong_eku"
BAD_NAME = "bad_name"
UNVERIFIED = "unverified"

HINTS: dict[str, str] = {
    NO_CERTIFICATE: "the client sent no certificate; is this an edgesync node?",
    FOREIGN_CA: "the client certificate is not signed by this cloud's CA "
    "(a node of another cloud, or a stale join); re-join the node with a token of this cloud",
    NOT_YET_VALID: "the client certificate is not valid yet: check the node's clock "
    "(or the cloud's)",
    EXPIRED: "the client certificate has expired; re-join the node with a new token",
    MISSING_EKU: "the client certificate has no extended key usage; node certificates "
    "must be for client authentication (re-join the node)",
    WRONG_EKU: "the client certificate is not for client authentication (extended key "
    "usage); re-join the node",
    BAD_NAME: "the client certificate does not name a node",
    UNVERIFIED: "the client certificate did not verify",
}
"""What an operator reads for each reason; the reason itself is the metric label."""

# X509_V_ERR_* codes (openssl/x509_vfy.h) for what OpenSSL refuses during a handshake.
_OPENSSL_CODES: dict[int, str] = {
    2: FOREIGN_CA,  # UNABLE_TO_GET_ISSUER_CERT
    7: FOREIGN_CA,  # CERT_SIGNATURE_FAILURE
    9: NOT_YET_VALID,  # CERT_NOT_YET_VALID
    10: EXPIRED,  # CERT_HAS_EXPIRED
    18: FOREIGN_CA,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: FOREIGN_CA,  # SELF_SIGNED_CERT_IN_CHAIN
    20: FOREIGN_CA,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: FOREIGN_CA,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    26: WRONG_EKU,  # INVALID_PURPOSE
}


def refused(reason: str, detail: str = "") -> CertificateRefused:
    """A CertificateRefused for `reason` with its operator hint (and a detail, if any)."""
    text = HINTS.get(reason, HINTS[UNVERIFIED])
    return CertificateRefused(reason, f"{text} ({detail})" if detail else text)


def reason_for_openssl_code(code: int | None) -> str:
    """The policy reason behind an OpenSSL verify code (UNVERIFIED if unknown)."""
    return _OPENSSL_CODES.get(code or 0, UNVERIFIED)


def check_client_certificate(
    cert: x509.Certificate | None, ca: x509.Certificate, now: datetime
) -> str:
    """The node name of an acceptable client certificate; raise CertificateRefused if not.

    Checks run in the order an operator fixes them: whose certificate it is first,
    then when it is valid, then what it is for, then whom it names.
    """
    if cert is None:
        raise refused(NO_CERTIFICATE)
    if cert.issuer != ca.subject:
        raise refused(FOREIGN_CA, f"issuer {cert.issuer.rfc4514_string()}")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise refused(FOREIGN_CA, str(exc) or type(exc).__name__) from None
    if now < cert.not_valid_before_utc:
        raise refused(NOT_YET_VALID, f"valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise refused(EXPIRED, f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise refused(MISSING_EKU) from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise refused(WRONG_EKU, ", ".join(u.dotted_string for u in usages))
    try:
        return pki.node_name_from_cert(cert)
    except PKIError as exc:
        raise refused(BAD_NAME, str(exc)) from None


def check_client_der(der: bytes | None, ca: x509.Certificate, now: datetime) -> str:
    """check_client_certificate for what ssl.getpeercert(binary_form=True) returns."""
    if not der:
        raise refused(NO_CERTIFICATE)
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, TypeError) as exc:
        raise refused(UNVERIFIED, f"not valid DER: {exc}") from None
    return check_client_certificate(cert, ca, now)
