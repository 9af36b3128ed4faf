"""A renewed certificate reaches new connections of a running server without dropping a session or a message.

``mailprov serve all`` (SMTP with two worker processes, POP3, IMAP) runs with the certificate from Pebble; a
forced renewal (new key) replaces the files; within ``tls.reload_interval`` every new TLS connection
(STARTTLS on SMTP and IMAP, implicit TLS on 465, 995 and 993) presents the new certificate, while an SMTP session that
began its transaction under the old one completes it (250, RFC 5321 4.1.1.4) and the message is in the
Maildir. ``mailprov probe --expect-cert`` then sees the new one and reports its issuer and days left.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certs.conftest import HOST_ADDRESS, HOSTNAME, MAILPROV
from tests.certs.test_acme import dane_311
from tests.peers.mailprov_server import MailprovTree, run_mailprov

pytestmark = pytest.mark.peers
RELOAD_WAIT = 20.0  # seconds: an upper bound, not a speed assertion


def leaf_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_starttls(port: int) -> bytes:
    with smtplib.SMTP(HOST_ADDRESS, port, timeout=10) as smtp:
        smtp.starttls(context=no_verify())
        return smtp.sock.getpeercert(binary_form=True)


def served_imap_starttls(port: int) -> bytes:
    client = imaplib.IMAP4(HOST_ADDRESS, port, timeout=10)
    try:
        client.starttls(ssl_context=no_verify())
        return client.sock.getpeercert(binary_form=True)
    finally:
        client.logout()


def served_implicit(port: int) -> bytes:
    with socket.create_connection((HOST_ADDRESS, port), timeout=10) as raw, no_verify().wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


def test_renewal_reaches_new_connections_and_the_open_session_finishes(make_host) -> None:
    host = make_host("reload")
    assert host.renew().returncode == 0
    old_pem = host.cert.read_bytes()
    tree = MailprovTree.create(
        hostname=HOSTNAME,
        domains=["alpha.test"],
        ip=HOST_ADDRESS,
        tls={"cert": str(host.cert), "key": str(host.key), "reload_interval": 0.5},
        smtp={"processes": 2, "trusted_networks": []},
    )
    tree.add_user("john@alpha.test", "john-secret")
    pop3s_port = int(tree.data["pop3"]["tls_listen"][0].rsplit(":", 1)[1])
    server = run_mailprov(tree.config_path, services="all")
    try:
        session = smtplib.SMTP(HOST_ADDRESS, tree.ports["smtp"], timeout=30)
        session.ehlo("client.example")
        session.starttls(context=no_verify())
        session.ehlo("client.example")
        assert session.sock.getpeercert(binary_form=True) == leaf_der(old_pem)
        assert session.mail("sender@example.net")[0] == 250
        assert session.rcpt("john@alpha.test")[0] == 250

        renewed = host.renew("--force")
        assert renewed.returncode == 0, renewed.stderr
        new_pem = host.cert.read_bytes()
        assert dane_311(new_pem) != dane_311(old_pem), "a renewal without acme.reuse_key brings a new key"

        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline and served_starttls(tree.ports["smtp"]) != leaf_der(new_pem):
            time.sleep(0.2)
        # Two workers: each new connection may land on either; every one must now serve the new certificate.
        for _ in range(4):
            assert served_starttls(tree.ports["smtp"]) == leaf_der(new_pem)
            assert served_starttls(tree.ports["submission"]) == leaf_der(new_pem)
            assert served_implicit(tree.ports["submissions"]) == leaf_der(new_pem)
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline and served_implicit(pop3s_port) != leaf_der(new_pem):
            time.sleep(0.2)
        assert served_implicit(pop3s_port) == leaf_der(new_pem)
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline and served_implicit(tree.ports["imaps"]) != leaf_der(new_pem):
            time.sleep(0.2)
        assert served_implicit(tree.ports["imaps"]) == leaf_der(new_pem)
        assert served_imap_starttls(tree.ports["imap"]) == leaf_der(new_pem)

        # The session that began under the old certificate keeps it and completes its message.
        assert session.sock.getpeercert(binary_form=True) == leaf_der(old_pem)
        code, reply = session.data(b"Subject: across a renewal\r\n\r\nstill here\r\n")
        assert code == 250, reply
        session.quit()
        assert len(tree.maildir_files("john@alpha.test")) == 1

        probe = subprocess.run(
            [
                *MAILPROV,
                "probe",
                HOSTNAME,
                "--address",
                HOST_ADDRESS,
                "--smtp-port",
                str(tree.ports["smtp"]),
                "--submission-port",
                str(tree.ports["submission"]),
                "--submissions-port",
                str(tree.ports["submissions"]),
                "--pop3-port",
                tree.data["pop3"]["listen"][0].rsplit(":", 1)[1],
                "--pop3s-port",
                str(pop3s_port),
                "--imap-port",
                str(tree.ports["imap"]),
                "--imaps-port",
                str(tree.ports["imaps"]),
                "--resolver",
                "127.0.15.53:8053",
                "--expect-cert",
                str(host.cert),
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        checks = json.loads(probe.stdout)["domains"][0]["checks"]
        tls = [c for c in checks if c["id"] == "probe.tls"]
        assert len(tls) == 7 and all(c["status"] == "pass" for c in tls), tls
        certs = [c for c in checks if c["id"] == "probe.cert"]
        assert certs and all(c["status"] == "pass" and "issued by Pebble Intermediate CA" in c["summary"] for c in certs), certs
        assert "loaded the new certificate" in server.log()
    finally:
        server.stop()
        tree.cleanup()
