"""Tests for shared.pki: certificate issuance, CSR checks and join tokens."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared import pki
from shared.errors import JoinError, PKIError

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
SKEW = timedelta(minutes=5)


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return pki.create_ca("edgesync test CA", NOW)


@pytest.fixture(scope="module")
def other_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return pki.create_ca("some other CA", NOW)


def _csr_pem(
    key: CertificateIssuerPrivateKeyTypes,
    subject: list[x509.NameAttribute[str]],
    **ext: x509.ExtensionType,
) -> bytes:
    """A CSR built by hand, to send the CA things create_csr would never produce."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    for value in ext.values():
        builder = builder.add_extension(value, critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _basic(cert: x509.Certificate) -> x509.BasicConstraints:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


# --------------------------------------------------------------------------- keys and PEM


def test_generate_key_is_p256() -> None:
    key = pki.generate_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_key_pem_round_trip() -> None:
    key = pki.generate_key()
    pem = pki.key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    loaded = pki.load_key_pem(pem)
    assert loaded.private_numbers() == key.private_numbers()


def test_cert_pem_round_trip(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    _, cert = ca
    pem = pki.cert_to_pem(cert)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert pki.load_cert_pem(pem) == cert


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_load_key_pem_garbage(data: bytes) -> None:
    with pytest.raises(PKIError, match="not a valid PEM private key"):
        pki.load_key_pem(data)


def test_load_key_pem_rejects_rsa() -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(PKIError, match="expected an EC private key"):
        pki.load_key_pem(rsa_pem)


def test_load_key_pem_rejects_encrypted() -> None:
    pem = pki.generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2"),
    )
    with pytest.raises(PKIError, match="encrypted"):
        pki.load_key_pem(pem)


def test_load_cert_pem_garbage() -> None:
    with pytest.raises(PKIError, match="not a valid PEM certificate"):
        pki.load_cert_pem(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(PKIError):
        pki.load_cert_pem(pki.key_to_pem(pki.generate_key()))


# --------------------------------------------------------------------------- CA and server cert


def test_ca_properties(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key, cert = ca
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is True
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert not usage.digital_signature
    assert _ski(cert) == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edgesync test CA"
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.not_valid_before_utc == NOW - SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_cert_expires_at_is_aware_utc(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    expires = pki.cert_expires_at(ca[1])
    assert expires.tzinfo is not None
    assert expires.utcoffset() == timedelta(0)
    assert expires == NOW + timedelta(days=3650)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.create_ca("x", datetime(2025, 1, 1))


def test_non_utc_now_is_normalised() -> None:
    plus_two = timezone(timedelta(hours=2))
    _, cert = pki.create_ca("x", NOW.astimezone(plus_two), days=1)
    assert cert.not_valid_before_utc == NOW - SKEW


def test_server_cert_properties(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    key, cert = pki.create_server_cert(
        ca_key, ca_cert, ["cloud.example.com", "10.0.0.5", "::1"], NOW
    )
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["cloud.example.com"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cloud.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    # An IP must not also be listed as a DNS name: clients match IPs only against IP SANs.
    assert "10.0.0.5" not in san.get_values_for_type(x509.DNSName)
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _basic(cert).ca is False
    assert _aki(cert) == _ski(ca_cert)
    assert cert.issuer == ca_cert.subject
    assert cert.not_valid_before_utc == NOW - SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=825)
    cert.verify_directly_issued_by(ca_cert)


def test_server_cert_cn_is_first_host_even_if_ip(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    _, cert = pki.create_server_cert(ca[0], ca[1], ["192.168.1.10"], NOW)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "192.168.1.10"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []


def test_server_cert_does_not_verify_against_other_ca(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    other_ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    _, cert = pki.create_server_cert(ca[0], ca[1], ["cloud"], NOW)
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(other_ca[1])


def test_server_cert_needs_hosts(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pki.create_server_cert(ca[0], ca[1], [], NOW)


def test_issuing_with_mismatched_ca_key_is_refused(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    other_ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    with pytest.raises(PKIError, match="does not belong"):
        pki.create_server_cert(other_ca[0], ca[1], ["cloud"], NOW)


# --------------------------------------------------------------------------- CSR and node certs


def test_create_csr_subject_and_signature() -> None:
    key = pki.generate_key()
    csr = x509.load_pem_x509_csr(pki.create_csr(key, "pi-01"))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-01"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == pki.NODE_ORG


def test_create_csr_validates_name() -> None:
    with pytest.raises(ValueError, match="invalid node name"):
        pki.create_csr(pki.generate_key(), "Bad_Name")


def test_sign_node_csr_happy_path(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    ca_key, ca_cert = ca
    node_key = pki.generate_key()
    cert = pki.sign_node_csr(ca_key, ca_cert, pki.create_csr(node_key, "jetson-7"), "jetson-7", NOW)
    assert cert.subject == x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "jetson-7"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.NODE_ORG),
        ]
    )
    assert cert.issuer == ca_cert.subject
    assert cert.public_key() == node_key.public_key()
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    assert _aki(cert) == _ski(ca_cert)
    assert cert.not_valid_before_utc == NOW - SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    cert.verify_directly_issued_by(ca_cert)
    assert pki.node_name_from_cert(cert) == "jetson-7"


def test_sign_node_csr_serials_are_random(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    csr = pki.create_csr(pki.generate_key(), "n1")
    a = pki.sign_node_csr(ca[0], ca[1], csr, "n1", NOW)
    b = pki.sign_node_csr(ca[0], ca[1], csr, "n1", NOW)
    assert a.serial_number != b.serial_number
    assert a.serial_number > 0


def test_sign_node_csr_cn_mismatch(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    csr = pki.create_csr(pki.generate_key(), "node-x")
    with pytest.raises(
        JoinError, match="CSR subject CN 'node-x' does not match the token's node 'node-y'"
    ):
        pki.sign_node_csr(ca[0], ca[1], csr, "node-y", NOW)


def test_sign_node_csr_tampered_signature(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    # Rewrite the CN inside the signed body: still parses, CN now matches, signature does not.
    csr = x509.load_pem_x509_csr(pki.create_csr(pki.generate_key(), "node-a"))
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"node-a") == 1
    tampered = x509.load_der_x509_csr(der.replace(b"node-a", b"node-b"))
    pem = tampered.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(JoinError, match="signature is invalid"):
        pki.sign_node_csr(ca[0], ca[1], pem, "node-b", NOW)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_sign_node_csr_garbage(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], data: bytes
) -> None:
    with pytest.raises(JoinError, match="not a valid PEM CSR"):
        pki.sign_node_csr(ca[0], ca[1], data, "node-a", NOW)


def test_sign_node_csr_truncated_pem(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    pem = pki.create_csr(pki.generate_key(), "node-a")
    lines = pem.splitlines(keepends=True)
    truncated = b"".join([lines[0], lines[1][:20] + b"\n", lines[-1]])
    with pytest.raises(JoinError):
        pki.sign_node_csr(ca[0], ca[1], truncated, "node-a", NOW)


def test_sign_node_csr_rejects_rsa(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = _csr_pem(key, [x509.NameAttribute(NameOID.COMMON_NAME, "node-a")])
    with pytest.raises(JoinError, match="must use EC P-256"):
        pki.sign_node_csr(ca[0], ca[1], csr, "node-a", NOW)


def test_sign_node_csr_rejects_p384(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = _csr_pem(key, [x509.NameAttribute(NameOID.COMMON_NAME, "node-a")])
    with pytest.raises(JoinError, match="secp384r1"):
        pki.sign_node_csr(ca[0], ca[1], csr, "node-a", NOW)


def test_sign_node_csr_rejects_multiple_cns(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    csr = _csr_pem(
        pki.generate_key(),
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "node-a"),
            x509.NameAttribute(NameOID.COMMON_NAME, "node-b"),
        ],
    )
    with pytest.raises(JoinError, match="exactly one subject CN"):
        pki.sign_node_csr(ca[0], ca[1], csr, "node-a", NOW)


def test_sign_node_csr_ignores_csr_subject_extras_and_extensions(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    csr = _csr_pem(
        pki.generate_key(),
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "node-a"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"),
        ],
        san=x509.SubjectAlternativeName([x509.DNSName("cloud.example.com")]),
        basic=x509.BasicConstraints(ca=True, path_length=None),
    )
    cert = pki.sign_node_csr(ca[0], ca[1], csr, "node-a", NOW)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        pki.NODE_ORG
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME) == []
    assert len(list(cert.subject)) == 2
    assert _basic(cert).ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_sign_node_csr_invalid_expected_node(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    csr = _csr_pem(pki.generate_key(), [x509.NameAttribute(NameOID.COMMON_NAME, "NODE")])
    with pytest.raises(ValueError, match="invalid node name"):
        pki.sign_node_csr(ca[0], ca[1], csr, "NODE", NOW)


def test_node_cert_never_outlives_ca() -> None:
    ca_key, ca_cert = pki.create_ca("short CA", NOW, days=10)
    cert = pki.sign_node_csr(
        ca_key, ca_cert, pki.create_csr(pki.generate_key(), "n1"), "n1", NOW, days=365
    )
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_expired_ca_refuses_to_sign() -> None:
    ca_key, ca_cert = pki.create_ca("old CA", NOW, days=1)
    csr = pki.create_csr(pki.generate_key(), "n1")
    with pytest.raises(PKIError, match="expired"):
        pki.sign_node_csr(ca_key, ca_cert, csr, "n1", NOW + timedelta(days=2))


# --------------------------------------------------------------------------- identity extraction


def test_node_name_from_der(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    cert = pki.sign_node_csr(
        ca[0], ca[1], pki.create_csr(pki.generate_key(), "rpi-3"), "rpi-3", NOW
    )
    assert pki.node_name_from_der(cert.public_bytes(serialization.Encoding.DER)) == "rpi-3"


def test_node_name_from_der_garbage() -> None:
    with pytest.raises(PKIError, match="not valid DER"):
        pki.node_name_from_der(b"\x30\x03\x02\x01\x01")


def _self_signed(subject: list[x509.NameAttribute[str]]) -> x509.Certificate:
    key = pki.generate_key()
    name = x509.Name(subject)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_node_name_from_cert_missing_or_multiple_cn() -> None:
    no_cn = _self_signed([x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.NODE_ORG)])
    with pytest.raises(PKIError, match="exactly one subject CN"):
        pki.node_name_from_cert(no_cn)
    two_cn = _self_signed(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "a"),
            x509.NameAttribute(NameOID.COMMON_NAME, "b"),
        ]
    )
    with pytest.raises(PKIError, match="exactly one subject CN"):
        pki.node_name_from_cert(two_cn)


def test_node_name_from_cert_rejects_non_node_cn(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    with pytest.raises(PKIError, match="not a node name"):
        pki.node_name_from_cert(ca[1])  # CN "edgesync test CA" has spaces and capitals


def test_ca_fingerprint(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    der = ca[1].public_bytes(serialization.Encoding.DER)
    assert pki.ca_fingerprint(ca[1]) == "sha256:" + hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------- join tokens


def test_join_token_round_trip(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> None:
    token = pki.new_join_token(ca[1], "pi-4.lab")
    text = str(token)
    assert re.fullmatch(r"es1\.[0-9a-f]{64}\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.pi-4\.lab", text)
    assert token.node == "pi-4.lab"
    assert "sha256:" + token.ca_hash == pki.ca_fingerprint(ca[1])
    assert pki.parse_join_token(text) == token
    assert pki.parse_join_token(f"  {text}\n") == token


def test_join_tokens_are_unique_and_repr_hides_secret(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    a, b = pki.new_join_token(ca[1], "pi-4.lab"), pki.new_join_token(ca[1], "pi-4.lab")
    assert a.token_id != b.token_id
    assert a.secret != b.secret
    assert a.secret not in repr(a)
    assert a.token_id in repr(a)


_GOOD_HASH = "ab" * 32
_GOOD_ID = "0123456789abcdef"
_GOOD_SECRET = "A" * 42 + "_"
_NODE = "edge-1.site"


def test_good_token_parts_parse() -> None:
    # Guards the malformed cases below: each differs from this valid token in one part.
    token = pki.parse_join_token(f"es1.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}")
    assert (token.ca_hash, token.token_id, token.secret, token.node) == (
        _GOOD_HASH,
        _GOOD_ID,
        _GOOD_SECRET,
        _NODE,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "5 dot-separated parts"),
        (f"es2.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}", "must start with 'es1.'"),
        (f"{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}", "got 3"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}", "got 4"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}.Bad_Node", "node name"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}.", "node name"),
        (f"es1.{_GOOD_HASH[:-2]}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}", "CA hash"),
        (f"es1.{_GOOD_HASH.upper()}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}", "CA hash"),
        (f"es1.{'g' * 64}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}", "CA hash"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}00.{_GOOD_SECRET}.{_NODE}", "token id"),
        (f"es1.{_GOOD_HASH}.{'z' * 16}.{_GOOD_SECRET}.{_NODE}", "token id"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET[:-1]}.{_NODE}", "secret"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{'A' * 42}+.{_NODE}", "secret"),
        (f"es1.{_GOOD_HASH}.{_GOOD_ID}.{'A' * 42}=.{_NODE}", "secret"),
        (f"es1 .{_GOOD_HASH}.{_GOOD_ID}.{_GOOD_SECRET}.{_NODE}", "must start with"),
    ],
)
def test_malformed_join_tokens(text: str, reason: str) -> None:
    with pytest.raises(JoinError, match="malformed join token") as info:
        pki.parse_join_token(text)
    assert reason in str(info.value)
    assert _GOOD_SECRET not in str(info.value)  # never echo a secret into logs


def test_token_secret_hash_and_match() -> None:
    secret = pki.new_join_token(pki.create_ca("c", NOW)[1], "n1").secret
    stored = pki.hash_token_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", stored)
    assert secret not in stored
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    assert pki.token_secret_matches(secret, stored) is True
    assert (
        pki.token_secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored) is False
    )
    assert pki.token_secret_matches(secret, pki.hash_token_secret("other")) is False
    assert pki.token_secret_matches(secret, "é" * 64) is False  # no TypeError on odd input


def test_verify_ca_matches_token(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    other_ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    token = pki.new_join_token(ca[1], "pi-4.lab")
    pki.verify_ca_matches_token(ca[1], token)  # no exception
    with pytest.raises(JoinError, match="wrong cloud or man-in-the-middle") as info:
        pki.verify_ca_matches_token(other_ca[1], token)
    message = str(info.value)
    assert pki.ca_fingerprint(other_ca[1]) in message
    assert f"sha256:{token.ca_hash}" in message


def test_new_admin_token() -> None:
    a, b = pki.new_admin_token(), pki.new_admin_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", a)
    assert a != b


# --------------------------------------------------------------------------- node names


@pytest.mark.parametrize("name", ["a", "0", "pi-01", "jetson.lab-2", "a" * 63, "n1.site-3.example"])
def test_validate_node_name_good(name: str) -> None:
    assert pki.validate_node_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-pi",
        "pi-",
        ".pi",
        "pi.",
        "Pi",
        "pi_01",
        "pi 01",
        "a" * 64,
        "pi\n",
        "pi/../etc",
        "système",
    ],
)
def test_validate_node_name_bad(name: str) -> None:
    with pytest.raises(ValueError, match="invalid node name"):
        pki.validate_node_name(name)
