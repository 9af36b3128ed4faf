"""DANE-TA(2): the TLSA record names a CA, and the chain the MX presents must lead from its certificate to that
CA (RFC 7671 5.2, RFC 7672 3.1.2), with name checks (RFC 7672 3.2.2, 3.2.3) and validity dates.

Against a real server: our MTA serves a certificate and the test CA's certificate in its chain; the lab
(tests/dns/dnssec_lab.py, ``ta.diag.test``) publishes ``2 1 1`` with the CA's public key, signed by Knot.
The rules themselves are unit-tested on chains built here (an intermediate CA, a missing anchor, a wrong
name, a wildcard, an expired certificate, a forged signature).
"""

from __future__ import annotations

import datetime
import json

import dns.rdata
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.dane import chain_match, name_matches, tlsa_for_certificate
from tests.dns import dnssec_lab as lab
from tests.outbound.pki import TestCA

NOW = datetime.datetime.now(datetime.UTC)


def test_our_mta_serving_a_chain_to_the_dane_ta_anchor_passes(dnssec_lab: dict, pki: TestCA, tmp_path, our_mta) -> None:
    """No --ca-file: the test CA is unknown to the system, so only DANE-TA can authenticate the MX (RFC 7672 3.1.2)."""
    cert = pki.issue("mail.ta.diag.test", days=90, directory=tmp_path)  # served with the CA in its chain
    port = our_mta(lab.TA_MX_ADDRESS, "mail.ta.diag.test", cert)
    args = ["check", "ta.diag.test", "--resolver", dnssec_lab["resolver"], "--trust-anchor", str(dnssec_lab["anchor"])]
    result = CliRunner().invoke(app, [*args, "--tls", "--smtp-port", str(port), "--timeout", "3", "--format", "json"])
    checks = {f"{c['id']} {c['subject']}": c for c in json.loads(result.stdout)["domains"][0]["checks"]}
    dane = checks["dane mail.ta.diag.test"]
    assert dane["status"] == "pass", dane
    assert "DANE-TA 2 1 1 matches the chain's trust anchor, and the certificate is for mail.ta.diag.test" in dane["summary"]
    tls = checks[f"mx.tls mail.ta.diag.test ({lab.TA_MX_ADDRESS})"]
    assert tls["status"] == "pass", tls
    assert "does not verify" in tls["summary"] and "matches the signed TLSA records (DANE" in tls["summary"]


def test_our_mta_serving_its_certificate_without_the_ca_passes_under_a_full_key_record(
    dnssec_lab: dict, pki: TestCA, tmp_path, our_mta
) -> None:
    """RFC 7671 5.2.2: under ``2 1 0`` (the CA's whole key, signed by Knot) the server may leave the CA out; the
    checker verifies the certificate it sends against the key, and the name (RFC 7672 3.2)."""
    import asyncio

    from mailprov.dns.mx_tls import probe_starttls

    cert = pki.issue("mail.spki.ta.diag.test", days=90, directory=tmp_path)
    pem = cert.cert.read_bytes()
    cert.cert.write_bytes(pem[: pem.index(b"-----END CERTIFICATE-----\n") + 26])  # the leaf alone: no CA in the chain
    port = our_mta(lab.SPKI_MX_ADDRESS, "mail.spki.ta.diag.test", cert)
    probe = asyncio.run(probe_starttls("mail.spki.ta.diag.test", lab.SPKI_MX_ADDRESS, port, timeout=5))
    assert len(probe.chain_der) == 1, "the server must send its certificate alone for this test to mean anything"
    args = ["check", "spki.ta.diag.test", "--resolver", dnssec_lab["resolver"], "--trust-anchor", str(dnssec_lab["anchor"])]
    result = CliRunner().invoke(app, [*args, "--tls", "--smtp-port", str(port), "--timeout", "3", "--format", "json"])
    checks = {f"{c['id']} {c['subject']}": c for c in json.loads(result.stdout)["domains"][0]["checks"]}
    dane = checks["dane mail.spki.ta.diag.test"]
    assert dane["status"] in ("pass", "warn") and "DANE-TA 2 1 0 matches the chain's trust anchor" in dane["summary"], dane
    tls = checks[f"mx.tls mail.spki.ta.diag.test ({lab.SPKI_MX_ADDRESS})"]
    assert tls["status"] == "pass" and "matches the signed TLSA records (DANE" in tls["summary"], tls
    # Another CA's certificate for the same name, also sent alone: the key did not sign it.
    other = TestCA(tmp_path / "other-ca", "another CA").issue("mail.spki.ta.diag.test", days=90, directory=tmp_path / "other")
    pem = other.cert.read_bytes()
    other.cert.write_bytes(pem[: pem.index(b"-----END CERTIFICATE-----\n") + 26])
    port = our_mta(lab.SPKI_MX_ADDRESS, "mail.spki.ta.diag.test", other)
    result = CliRunner().invoke(app, [*args, "--tls", "--smtp-port", str(port), "--timeout", "3", "--format", "json"])
    checks = {f"{c['id']} {c['subject']}": c for c in json.loads(result.stdout)["domains"][0]["checks"]}
    assert "is not signed by the DANE-TA 2 1 0 key" in checks["dane mail.spki.ta.diag.test"]["summary"]
    assert checks[f"mx.tls mail.spki.ta.diag.test ({lab.SPKI_MX_ADDRESS})"]["status"] == "fail"


class Chain:
    """A root CA, an intermediate CA under it, and leaves under the intermediate."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert("lab root", self.root_key.public_key(), "lab root", self.root_key, ca=True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._cert("lab intermediate", self.inter_key.public_key(), "lab root", self.root_key, ca=True)

    @staticmethod
    def _cert(subject, public_key, issuer, signer, *, ca=False, names=(), days=(-1, 30)) -> x509.Certificate:  # type: ignore[no-untyped-def]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW + datetime.timedelta(days=days[0]))
            .not_valid_after(NOW + datetime.timedelta(days=days[1]))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def leaf(self, *names: str, days: tuple[int, int] = (-1, 30), signer=None) -> x509.Certificate:  # type: ignore[no-untyped-def]
        key = ec.generate_private_key(ec.SECP256R1())
        return self._cert(names[0], key.public_key(), "lab intermediate", signer or self.inter_key, names=names, days=days)


def _der(*certs: x509.Certificate) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def _record(cert: x509.Certificate, usage: int = 2, selector: int = 1, matching: int = 1) -> dns.rdata.Rdata:
    text = tlsa_for_certificate(cert.public_bytes(serialization.Encoding.PEM), usage, selector, matching)
    return dns.rdata.from_text("IN", "TLSA", text)


@pytest.fixture(scope="module")
def ca() -> Chain:
    return Chain()


def test_chain_through_an_intermediate_to_the_named_root(ca: Chain) -> None:
    leaf = ca.leaf("mail.ta.test")
    for record in (_record(ca.root), _record(ca.root, selector=0, matching=2), _record(ca.inter, selector=0, matching=1)):
        ok, how = chain_match([record], _der(leaf, ca.inter, ca.root), "mail.ta.test.", NOW)
        assert ok, how
    # The intermediate as anchor needs no root in the chain; the chain may come in any order after the leaf.
    assert chain_match([_record(ca.inter)], _der(leaf, ca.inter), "mail.ta.test", NOW)[0]
    assert chain_match([_record(ca.root)], _der(leaf, ca.root, ca.inter), "mail.ta.test", NOW)[0]


def test_a_chain_that_is_not_der_is_no_match_not_a_crash(ca: Chain) -> None:
    ok, why = chain_match([_record(ca.root)], [b"not a certificate"], "mail.ta.test", NOW)
    assert not ok and "cannot be read" in why


def test_the_anchor_must_be_sent_by_the_server(ca: Chain) -> None:
    """RFC 7671 5.2.2: a TA certificate (or key digest) the server leaves out of its chain cannot be matched."""
    ok, why = chain_match([_record(ca.root)], _der(ca.leaf("mail.ta.test"), ca.inter), "mail.ta.test", NOW)
    assert not ok and "no certificate the server sent matches the DANE-TA record 2 1 1" in why


def test_a_full_key_record_lets_the_server_leave_its_anchor_out(ca: Chain) -> None:
    """RFC 7671 5.2.2: with ``2 1 0`` (the anchor's whole public key) or ``2 0 0`` (its whole certificate) the server
    may omit the anchor's certificate; the top certificate it sends must then be issued by it. Dates and the MX
    name are still checked."""
    leaf = ca.leaf("mail.ta.test")
    root_key, inter_key = _record(ca.root, matching=0), _record(ca.inter, matching=0)
    ok, how = chain_match([root_key], _der(leaf, ca.inter), "mail.ta.test", NOW)  # the root left out
    assert ok and how.startswith("DANE-TA 2 1 0 matches the chain's trust anchor"), how
    assert chain_match([inter_key], _der(leaf), "mail.ta.test", NOW)[0]  # the leaf alone, under the intermediate's key
    assert chain_match([root_key], _der(leaf, ca.inter, ca.root), "mail.ta.test", NOW)[0]  # sent anyway: matched as before
    ok, why = chain_match([root_key], _der(leaf), "mail.ta.test", NOW)  # the intermediate missing: the root key did not sign the leaf
    assert not ok and "the top of the chain the server sent, is not signed by the DANE-TA 2 1 0 key" in why, why
    stranger = _record(Chain().root, matching=0)
    assert not chain_match([stranger], _der(leaf, ca.inter), "mail.ta.test", NOW)[0]
    ok, why = chain_match([root_key], _der(ca.leaf("other.ta.test"), ca.inter), "mail.ta.test", NOW)
    assert not ok and "(RFC 7672 3.2.3 name check)" in why
    ok, why = chain_match([root_key], _der(ca.leaf("mail.ta.test", days=(-60, -30)), ca.inter), "mail.ta.test", NOW)
    assert not ok and "outside its validity" in why
    # The whole certificate (2 0 0) may be left out too: its key signs, and its subject is the issuer's name.
    root_cert = _record(ca.root, selector=0, matching=0)
    assert chain_match([root_cert], _der(leaf, ca.inter), "mail.ta.test", NOW)[0]
    ok, why = chain_match([root_cert], _der(leaf), "mail.ta.test", NOW)
    assert not ok and "is not signed by the DANE-TA 2 0 0 certificate" in why, why
    # The digest of a key the server left out cannot be checked: only the full key can (RFC 7671 5.2.2).
    ok, why = chain_match([_record(ca.root)], _der(leaf, ca.inter), "mail.ta.test", NOW)
    assert not ok and "the server must send it" in why


@pytest.mark.parametrize("kind", ["rsa-pkcs1", "rsa-pss", "ed25519", "ec-p384"])
def test_full_key_signatures_of_every_key_type_are_checked(kind: str) -> None:
    """The anchor's key checks the signature itself (no certificate to call verify_directly_issued_by on)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    make = {
        "rsa-pkcs1": lambda: rsa.generate_private_key(65537, 2048),
        "rsa-pss": lambda: rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    }[kind]
    anchor_key, other_key = make(), make()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.ta.test")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyed root")]))
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mail.ta.test")]), critical=False)
    )
    algorithm = None if kind == "ed25519" else hashes.SHA384()
    pss = padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.DIGEST_LENGTH) if kind == "rsa-pss" else None
    leaf = builder.sign(anchor_key, algorithm, rsa_padding=pss)
    spki = anchor_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    other = other_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = dns.rdata.from_text("IN", "TLSA", f"2 1 0 {spki.hex()}")
    assert chain_match([record], _der(leaf), "mail.ta.test", NOW)[0]
    assert not chain_match([dns.rdata.from_text("IN", "TLSA", f"2 1 0 {other.hex()}")], _der(leaf), "mail.ta.test", NOW)[0]
    assert not chain_match([dns.rdata.from_text("IN", "TLSA", "2 1 0 00")], _der(leaf), "mail.ta.test", NOW)[0]  # no key at all


def test_name_checks_apply_to_dane_ta_but_not_to_dane_ee(ca: Chain) -> None:
    """RFC 7672 3.2.2: DANE-TA needs the MX name in the certificate; DANE-EE (3.1.1) ignores names and dates."""
    wrong = ca.leaf("other.ta.test")
    ok, why = chain_match([_record(ca.root)], _der(wrong, ca.inter, ca.root), "mail.ta.test", NOW)
    assert not ok and "is not for mail.ta.test (RFC 7672 3.2.3 name check)" in why
    expired_wrong = ca.leaf("other.ta.test", days=(-60, -30))
    assert chain_match([_record(expired_wrong, usage=3)], _der(expired_wrong), "mail.ta.test", NOW)[0]


def test_wildcards_stand_for_one_whole_left_most_label(ca: Chain) -> None:
    """RFC 6125 6.4.3, as RFC 7672 3.2.3 applies it."""
    wild = ca.leaf("*.ta.test")
    assert name_matches(wild, "mail.ta.test.") and name_matches(wild, "MAIL.TA.TEST")
    assert not name_matches(wild, "a.mail.ta.test") and not name_matches(wild, "ta.test")
    assert not name_matches(ca.leaf("m*.ta.test"), "mail.ta.test")
    assert chain_match([_record(ca.inter)], _der(wild, ca.inter), "mail.ta.test", NOW)[0]


def test_dates_and_signatures_below_the_anchor_are_checked(ca: Chain) -> None:
    expired = ca.leaf("mail.ta.test", days=(-60, -30))
    ok, why = chain_match([_record(ca.root)], _der(expired, ca.inter, ca.root), "mail.ta.test", NOW)
    assert not ok and "outside its validity" in why
    forged = ca.leaf("mail.ta.test", signer=ec.generate_private_key(ec.SECP256R1()))  # the intermediate's name, another key
    ok, why = chain_match([_record(ca.root)], _der(forged, ca.inter, ca.root), "mail.ta.test", NOW)
    assert not ok and "is not signed by a CA certificate the server sent" in why
    # A leaf is no CA: a certificate issued under it does not chain to the anchor through it.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    not_ca = Chain._cert("mail.ta.test", leaf_key.public_key(), "lab intermediate", ca.inter_key, names=("mail.ta.test",))
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    below = Chain._cert("mail.ta.test", other_key, "mail.ta.test", leaf_key, names=("mail.ta.test",))
    assert not chain_match([_record(ca.root)], _der(below, not_ca, ca.inter, ca.root), "mail.ta.test", NOW)[0]
