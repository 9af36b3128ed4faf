"""The pure decisions of certificate management: renewal due, clock skew, ACME problems, probe validity."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailprov.acme.decisions import clock_skew, explain, problem_type, read_certificate, renewal_due
from mailprov.deploy.probe import cert_validity_status
from mailprov.dns.model import Status

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)


def make_cert(names: list[str], days: float, *, self_signed: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA R1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_no_certificate_is_due() -> None:
    assert renewal_due(None, ["mail.example.org"], NOW, 30) == (True, "no certificate installed yet")


def test_unreadable_certificate_is_due() -> None:
    assert renewal_due(b"not a pem", ["mail.example.org"], NOW, 30)[0]


def test_self_signed_certificate_is_replaced() -> None:
    due, reason = renewal_due(make_cert(["mail.example.org"], 800, self_signed=True), ["mail.example.org"], NOW, 30)
    assert due and "self-signed" in reason


def test_other_names_are_due() -> None:
    due, reason = renewal_due(make_cert(["mail.example.org"], 80), ["mail.example.org", "smtp.example.org"], NOW, 30)
    assert due and "covers mail.example.org" in reason


def test_fresh_certificate_is_not_due_and_an_old_one_is() -> None:
    due, reason = renewal_due(make_cert(["mail.example.org"], 80), ["MAIL.example.org"], NOW, 30)
    assert not due and "80 days left" in reason
    due, reason = renewal_due(make_cert(["mail.example.org"], 29.5), ["mail.example.org"], NOW, 30)
    assert due and "29.5 days left" in reason


def test_certificate_state_names_issuer_and_expiry() -> None:
    state = read_certificate(make_cert(["b.example.org", "a.example.org"], 10))
    assert state.names == ("a.example.org", "b.example.org")
    assert state.issuer == "Test CA R1" and not state.self_signed
    assert round(state.days_left(NOW)) == 10


def test_clock_skew_from_the_date_header() -> None:
    # RFC 9110 5.6.7 IMF-fixdate, as an ACME server's responses carry it.
    assert clock_skew("Mon, 30 Nov 2026 12:10:00 GMT", NOW) == 600
    assert clock_skew("Mon, 30 Nov 2026 11:00:00 GMT", NOW) == -3600
    assert clock_skew(None, NOW) is None
    assert clock_skew("yesterday", NOW) is None


def test_problem_types_name_the_step_and_the_fix() -> None:
    # RFC 8555 6.7: error types are URNs urn:ietf:params:acme:error:TYPE.
    assert problem_type("urn:ietf:params:acme:error:rateLimited") == "rateLimited"
    message, fix = explain("order", "urn:ietf:params:acme:error:rateLimited", "too many certificates")
    assert message == "ACME step 'order' failed: rateLimited: too many certificates"
    assert "Retry-After" in fix
    message, fix = explain("challenge", "urn:ietf:params:acme:error:connection", "mail.example.org: refused")
    assert "step 'challenge'" in message and "port 80" in fix
    message, fix = explain("account", "urn:example:unknown", "odd")
    assert "old certificate stays" in fix


def test_probe_warns_under_14_days_and_fails_when_expired() -> None:
    assert cert_validity_status(60)[0] is Status.PASS
    assert cert_validity_status(13.9)[0] is Status.WARN
    assert cert_validity_status(-0.1)[0] is Status.FAIL
