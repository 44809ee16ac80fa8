"""The shared client-certificate policy, on real certificates (no sockets)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509

from shared import certpolicy, pki
from shared.errors import CertificateRefused
from tests.helpers.certs import CLIENT_EKU, SERVER_EKU, issue

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
CA_KEY, CA = pki.create_ca("test CA", NOW - 10 * DAY)


def leaf(name: str = "node-1", **kw: Any) -> x509.Certificate:
    args: dict[str, Any] = {"not_before": NOW - DAY, "not_after": NOW + DAY, "eku": CLIENT_EKU}
    args.update(kw)
    return issue(CA_KEY, CA, name, **args)[1]


def reason_of(cert: x509.Certificate | None) -> str:
    with pytest.raises(CertificateRefused) as info:
        certpolicy.check_client_certificate(cert, CA, NOW)
    return info.value.reason


def test_a_node_certificate_from_the_ca_yields_its_name() -> None:
    assert certpolicy.check_client_certificate(leaf(), CA, NOW) == "node-1"


def test_certificates_issued_at_join_pass_the_policy() -> None:
    key = pki.generate_key()
    cert = pki.sign_node_csr(CA_KEY, CA, pki.create_csr(key, "joined"), "joined", NOW)
    assert certpolicy.check_client_certificate(cert, CA, NOW) == "joined"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"not_before": NOW + DAY, "not_after": NOW + 2 * DAY}, certpolicy.NOT_YET_VALID),
        ({"not_before": NOW - 2 * DAY, "not_after": NOW - DAY}, certpolicy.EXPIRED),
        ({"eku": None}, certpolicy.MISSING_EKU),
        ({"eku": SERVER_EKU}, certpolicy.WRONG_EKU),
    ],
    ids=["not-yet-valid", "expired", "no-eku", "server-auth-only"],
)
def test_each_defect_is_refused_with_its_reason(kwargs: dict[str, object], reason: str) -> None:
    assert reason_of(leaf(**kwargs)) == reason


def test_a_certificate_of_another_ca_is_foreign() -> None:
    other_key, other = pki.create_ca("other CA", NOW - DAY)
    cert = issue(other_key, other, "node-1", not_before=NOW - DAY, not_after=NOW + DAY)[1]
    assert reason_of(cert) == certpolicy.FOREIGN_CA


def test_a_forged_issuer_name_with_another_key_is_foreign() -> None:
    """Same issuer name as our CA, signed by another key: the signature check catches it."""
    other_key, _ = pki.create_ca("test CA", NOW - DAY)
    cert = issue(other_key, CA, "node-1", not_before=NOW - DAY, not_after=NOW + DAY)[1]
    assert cert.issuer == CA.subject
    assert reason_of(cert) == certpolicy.FOREIGN_CA


def test_no_certificate_and_a_cn_that_is_no_node_name_are_refused() -> None:
    assert reason_of(None) == certpolicy.NO_CERTIFICATE
    assert reason_of(leaf("Not A Node!")) == certpolicy.BAD_NAME
    with pytest.raises(CertificateRefused) as info:
        certpolicy.check_client_der(b"not der", CA, NOW)
    assert info.value.reason == certpolicy.UNVERIFIED


def test_messages_tell_the_operator_what_to_do() -> None:
    with pytest.raises(CertificateRefused) as info:
        certpolicy.check_client_certificate(leaf(eku=None), CA, NOW)
    assert "re-join the node" in str(info.value)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (9, certpolicy.NOT_YET_VALID),
        (10, certpolicy.EXPIRED),
        (26, certpolicy.WRONG_EKU),
        (20, certpolicy.FOREIGN_CA),
        (None, certpolicy.UNVERIFIED),
        (9999, certpolicy.UNVERIFIED),
    ],
)
def test_openssl_verify_codes_map_onto_the_same_reasons(code: int | None, reason: str) -> None:
    assert certpolicy.reason_for_openssl_code(code) == reason
