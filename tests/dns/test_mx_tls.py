"""``check --tls`` (``mx.tls``) against real MX hosts: our MTA, Postfix, and servers with a wrong-name or expired certificate.

The lab's names (tests/dns/dnssec_lab.py) point the MX hosts at 127.0.14.10-13; each test starts the
server it needs there on a free port and gives that port with ``--smtp-port``.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.model import Status
from mailprov.dns.mx_tls import TlsProbe, judge
from tests.conftest import require_programs
from tests.dns import dnssec_lab as lab
from tests.outbound.pki import ServerCert, TestCA
from tests.peers.knot import free_port
from tests.peers.postfix import PostfixPeer


def check(resolver: str, domain: str, port: int, pki: TestCA, *extra: str) -> tuple[int, dict[str, dict]]:
    """Run ``mailprov check --tls``; returns the exit code and the mx.tls / dane results by check id and subject."""
    result = CliRunner().invoke(
        app,
        [
            "check",
            domain,
            "--resolver",
            resolver,
            "--tls",
            "--smtp-port",
            str(port),
            "--ca-file",
            str(pki.ca_file),
            "--timeout",
            "3",
            "--format",
            "json",
            *extra,
        ],
    )
    assert result.exit_code in (0, 1, 3), result.output
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    return result.exit_code, {f"{c['id']} {c['subject']}": c for c in checks if c["id"] in ("mx.tls", "dane")}


def knot_resolver(dnssec_lab: dict) -> str:
    """The lab's Knot asked directly: it answers for the bogus zones too (it does not validate)."""
    return f"{dnssec_lab['knot'].address}:{dnssec_lab['knot'].port}"


def test_our_mta_passes_and_matches_its_tlsa_record(dnssec_lab: dict, pki: TestCA, good_cert: ServerCert, our_mta) -> None:
    """Our MTA as the MX: STARTTLS, TLS 1.2+ (RFC 8996), a certificate for the MX name; DANE compares the served key."""
    port = our_mta(lab.GOOD_MX_ADDRESS, "mail.good.diag.test", good_cert)
    code, found = check(dnssec_lab["resolver"], "good.diag.test", port, pki, "--trust-anchor", str(dnssec_lab["anchor"]))
    tls = found["mx.tls mail.good.diag.test (127.0.14.10)"]
    assert tls["status"] == "pass", tls
    assert "TLSv1.3" in tls["summary"] or "TLSv1.2" in tls["summary"]
    assert "banner 'mail.good.diag.test" in tls["summary"]
    assert any(line.startswith("S: 220") for line in tls["records"][0]["answer"])
    dane = found["dane mail.good.diag.test"]
    assert "the certificate served over STARTTLS matches" in dane["summary"]
    assert code != 1  # nothing fails (the single TLSA record is a warning; no MTA-STS policy server here: error)


def test_postfix_as_mx_passes(dnssec_lab: dict, pki: TestCA, tmp_path: Path) -> None:
    """Postfix with STARTTLS (smtpd_tls_security_level=may) and a certificate for its name: pass."""
    require_programs("postfix")
    cert = pki.issue("mail.unsigned.diag.test", days=90, directory=tmp_path)
    port = free_port("127.0.14.11")
    extra = {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(cert.cert), "smtpd_tls_key_file": str(cert.key)}
    with PostfixPeer(ip="127.0.14.11", port=port, hostname="mail.unsigned.diag.test", extra=extra):
        _, found = check(knot_resolver(dnssec_lab), "unsigned.diag.test", port, pki)
    tls = found["mx.tls mail.unsigned.diag.test (127.0.14.11)"]
    assert tls["status"] == "pass", tls
    assert "EHLO 'mail.unsigned.diag.test'" in tls["summary"]


def test_postfix_without_starttls_fails(dnssec_lab: dict, pki: TestCA, tmp_path: Path) -> None:
    """No STARTTLS in the EHLO answer: mail travels in clear text, a failure."""
    require_programs("postfix")
    port = free_port("127.0.14.11")
    with PostfixPeer(ip="127.0.14.11", port=port, hostname="mail.unsigned.diag.test"):
        code, found = check(knot_resolver(dnssec_lab), "unsigned.diag.test", port, pki)
    tls = found["mx.tls mail.unsigned.diag.test (127.0.14.11)"]
    assert tls["status"] == "fail" and "STARTTLS is not offered" in tls["summary"]
    assert code == 1


def test_expired_certificate_fails(dnssec_lab: dict, pki: TestCA, tmp_path: Path, our_mta) -> None:
    """A certificate past its notAfter: fail, naming the verification error."""
    cert = pki.issue("mail.expired.diag.test", days=-2, directory=tmp_path)
    port = our_mta("127.0.14.12", "mail.expired.diag.test", cert)
    code, found = check(knot_resolver(dnssec_lab), "expired.diag.test", port, pki)
    tls = found["mx.tls mail.expired.diag.test (127.0.14.12)"]
    assert tls["status"] == "fail", tls
    assert "certificate has expired" in tls["summary"]
    assert code == 1


def test_wrong_name_certificate_fails(dnssec_lab: dict, pki: TestCA, tmp_path: Path, our_mta) -> None:
    """A valid certificate for another name (RFC 6125): fail, saying it is not valid for the MX name."""
    cert = pki.issue("somewhere-else.test", days=30, directory=tmp_path)
    port = our_mta("127.0.14.13", "mail.badds.diag.test", cert)
    _, found = check(knot_resolver(dnssec_lab), "badds.diag.test", port, pki)
    tls = found["mx.tls mail.badds.diag.test (127.0.14.13)"]
    assert tls["status"] == "fail", tls
    assert "not valid for mail.badds.diag.test" in tls["summary"] and "mismatch" in tls["summary"].lower()


def test_certificate_expiring_soon_warns(pki: TestCA, tmp_path: Path) -> None:
    """Valid, but expiring within 14 days: a warning to renew (judged from the certificate a probe fetched)."""
    from mailprov.dns.dane import load_certificate

    cert = pki.issue("mail.good.diag.test", days=5, directory=tmp_path)
    leaf = load_certificate(cert.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    probe = TlsProbe("mail.good.diag.test", lab.GOOD_MX_ADDRESS, 25, stage="done", banner="mail", ehlo=["mail"], starttls_offered=True)
    probe.tls_version, probe.cipher, probe.leaf_der = "TLSv1.3", "TLS_AES_256_GCM_SHA384", leaf
    result = judge(probe)
    assert result.status == Status.WARN and "expires in 4 day(s)" in result.summary


def test_refused_connection_is_an_error_saying_where(dnssec_lab: dict, pki: TestCA) -> None:
    """Nothing listening: the check is incomplete (error, exit 3), never a failure, and names the step."""
    port = free_port(lab.GOOD_MX_ADDRESS)
    code, found = check(knot_resolver(dnssec_lab), "good.diag.test", port, pki)
    tls = found["mx.tls mail.good.diag.test (127.0.14.10)"]
    assert tls["status"] == "error" and "stuck at connect with 127.0.14.10" in tls["summary"]
    assert code == 3


def test_judge_names_old_tls_versions() -> None:
    """TLS 1.0 and 1.1 are deprecated (RFC 8996 2, 3): a session on them fails."""
    probe = TlsProbe("mx.lab", "192.0.2.1", 25, stage="done", banner="mx.lab ESMTP", ehlo=["mx.lab"], starttls_offered=True)
    probe.tls_version, probe.cipher = "TLSv1.1", "ECDHE-RSA-AES128-SHA"
    result = judge(probe)
    assert result.status == Status.FAIL and "RFC 8996" in result.summary
