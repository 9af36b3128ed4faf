"""Every certificate the project and its tests make passes OpenSSL's strict verification.

Python 3.13 (Debian 13) turns on ``ssl.VERIFY_X509_STRICT`` in ``ssl.create_default_context``: OpenSSL then
holds a chain to RFC 5280 and refuses, for instance, a certificate without an Authority Key Identifier
("Missing Authority Key Identifier", 4.2.1.1) or a CA without a Subject Key Identifier (4.2.1.2). Python
3.11 (Debian 12) does not set the flag, so these tests set it explicitly: they fail on either release
when a generator leaves an extension out. The handshakes run over memory buffers (no socket).

Generators covered: the tests' CA (tests/outbound/pki.py, also used by the DNS lab), the self-signed
certificate the services make when none is configured (mailprov/tls.py, also Pebble's HTTPS certificate
in the ACME tests), and the self-signed certificate the mailprov_tls role makes with openssl.
"""

from __future__ import annotations

import datetime
import ssl
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailprov.pkix import verifying_context
from mailprov.tls import generate_self_signed
from tests.conftest import require_programs
from tests.outbound.pki import TestCA

REPO = Path(__file__).resolve().parents[2]


def strict_client(ca_file: Path) -> ssl.SSLContext:
    """The product's verifying context (mailprov.pkix: the courier, MTA-STS fetches, ``check --tls``),
    trusting ``ca_file`` only: strict X.509 verification whatever the Python."""
    context = verifying_context(str(ca_file))
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    return context


def handshake(client: ssl.SSLContext, cert: Path, key: Path, hostname: str) -> None:
    """A TLS handshake between ``client`` and a server presenting ``cert``/``key``, over memory BIOs;
    raises ssl.SSLCertVerificationError when the client refuses the chain."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes a few round trips; bounded all the same
        for name, side in (("client", tls_client), ("server", tls_server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError(f"handshake did not finish: {done}")


def test_the_test_ca_issues_certificates_that_pass_strict_verification(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca", "strict test CA")
    leaf = ca.issue("mx.strict.test", addresses=("127.0.19.1",), days=90, directory=tmp_path / "leaf")
    handshake(strict_client(ca.ca_file), leaf.cert, leaf.key, "mx.strict.test")


def test_a_certificate_without_authority_key_identifier_fails_strict_verification_only(tmp_path: Path) -> None:
    """The control: the flag takes effect on this OpenSSL, and is what refused the DNS lab's old certificates;
    mailprov's own verifying context refuses such a chain on Python 3.11 as 3.13 does."""
    ca = TestCA(tmp_path / "ca", "strict test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    bare = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare.strict.test")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bare.strict.test")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert, key_file = tmp_path / "bare.crt", tmp_path / "bare.key"
    cert.write_bytes(bare.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ssl.SSLCertVerificationError, match="Missing Authority Key Identifier"):
        handshake(strict_client(ca.ca_file), cert, key_file, "bare.strict.test")
    lenient = strict_client(ca.ca_file)
    lenient.verify_flags &= ~ssl.VERIFY_X509_STRICT
    handshake(lenient, cert, key_file, "bare.strict.test")


def test_the_services_self_signed_certificate_passes_strict_verification(tmp_path: Path) -> None:
    cert, key = tmp_path / "selfsigned.crt", tmp_path / "selfsigned.key"
    generate_self_signed("mx.strict.test", cert, key, addresses=("127.0.19.2",))
    handshake(strict_client(cert), cert, key, "mx.strict.test")


def test_the_tls_roles_generated_certificate_passes_strict_verification(tmp_path: Path) -> None:
    """The role's own openssl command line (roles/mailprov_tls/tasks/main.yml), rendered and run here."""
    require_programs("openssl")
    tasks = yaml.safe_load((REPO / "roles" / "mailprov_tls" / "tasks" / "main.yml").read_text())
    (task,) = [t for t in tasks if t.get("name") == "Generate a self-signed certificate"]
    cert, key = tmp_path / "role.crt", tmp_path / "role.key"
    values = {
        "mailprov_tls_openssl": "openssl",
        "mailprov_tls_days": 30,
        "mailprov_base_hostname": "mx.strict.test",
        "mailprov_tls_subject_alt_names": ["DNS:mx.strict.test"],
        "mailprov_base_tls_key": str(key),
        "mailprov_base_tls_cert": str(cert),
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    argv = [env.from_string(arg).render(values) for arg in task["ansible.builtin.command"]["argv"]]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    handshake(strict_client(cert), cert, key, "mx.strict.test")
