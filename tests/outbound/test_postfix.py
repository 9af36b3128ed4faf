"""Postfix from Debian as the receiving peer: found by MX in Knot, demanding STARTTLS, checking DKIM."""

from __future__ import annotations

import asyncio
import smtplib
import time

import dkim
import pytest

from mailprov.delivery.base import Envelope, Outcome
from mailprov.delivery.remote import RemoteCourier
from tests.conftest import require_programs
from tests.outbound.conftest import DKIM_SELECTOR, DNS_ADDR, DNS_PORT, POSTFIX_IP, SMTP_PORT
from tests.outbound.e2e import alpha_tree, knot_txt, wait_until
from tests.peers.postfix import PostfixPeer

pytestmark = pytest.mark.peers


def maildir_files(peer: PostfixPeer, address: str) -> list:
    local, _, domain = address.rpartition("@")
    folder = peer.mail_dir / domain / local / "new"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def postfix(test_ca, knot):
    """Postfix for gamma.test on 127.0.5.102:2525 that refuses mail without STARTTLS (encrypt)."""
    require_programs("postfix")
    cert = test_ca.issue("mx.gamma.test")
    tls = {
        "smtpd_tls_cert_file": str(cert.cert),
        "smtpd_tls_key_file": str(cert.key),
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_loglevel": "1",
    }
    with PostfixPeer(
        ip=POSTFIX_IP,
        port=SMTP_PORT,
        hostname="mx.gamma.test",
        domains=("gamma.test",),
        users=("john@gamma.test", "ann@gamma.test"),
        extra=tls,
    ) as pf:
        yield pf


def deliver(config, rcpt: str, message: bytes, sender: str = "alex@alpha.test", **kwargs):
    async def run():
        courier = RemoteCourier(config, **kwargs)
        try:
            return await courier.deliver(Envelope("PF1", sender, (rcpt,), time.time()), message)
        finally:
            await courier.close()

    return asyncio.run(run())[rcpt]


def test_courier_finds_postfix_by_mx_and_verifies_its_certificate(knot, postfix, out_config, test_ca):
    config = out_config({"tls_policies": {"gamma.test": "verify"}})
    message = b"From: alex@alpha.test\r\nTo: ann@gamma.test\r\nSubject: to postfix\r\n\r\nover verified TLS\r\n"
    result = deliver(config, "ann@gamma.test", message, ca_file=str(test_ca.ca_file))
    assert result.ok, result
    assert result.relay == f"mx.gamma.test[{POSTFIX_IP}]:{SMTP_PORT}" and "queued as" in result.message
    (path,) = wait_until(lambda: maildir_files(postfix, "ann@gamma.test"), what="Postfix's delivery")
    assert b"over verified TLS" in path.read_bytes()
    assert "TLS connection established from" in postfix.log()
    # Postfix offers CHUNKING: the message went as one BDAT chunk (smtpd counts the commands it saw).
    assert "bdat=1" in postfix.log() and " data=1" not in postfix.log()


def test_tls_requiring_postfix_refuses_plain_text(knot, postfix, out_config):
    # Our policy 'none' never tries STARTTLS: Postfix (smtpd_tls_security_level=encrypt) refuses the mail.
    result = deliver(out_config({"tls": "none"}), "ann@gamma.test", b"Subject: plain\r\n\r\nno\r\n")
    assert result.outcome is Outcome.PERMANENT and result.code == 530 and "STARTTLS" in result.message


def test_alex_to_postfix_through_the_queue_signed_and_encrypted(knot, postfix, servers, test_ca):
    """alex's mailprov server relays to Postfix found by MX; DKIM checked by dkimpy on the received copy."""
    alpha = alpha_tree(
        knot,
        port=SMTP_PORT,
        # (outbound.tls rather than tls_policies: the test helper's TOML writer does not quote dotted keys)
        outbound={"dkim_selector": DKIM_SELECTOR, "dkim_key": str(knot.dkim_key), "tls": "verify"},
    )
    proc = servers(alpha, env={"SSL_CERT_FILE": str(test_ca.ca_file)})  # verify trusts the test CA
    body = (
        "From: Alex <alex@alpha.test>\r\nTo: john@gamma.test\r\nSubject: via postfix\r\n"
        "Message-ID: <pf-1@alpha.test>\r\nDate: Fri, 27 Nov 2026 07:10:00 +0000\r\n\r\nSigned and sealed.\r\n"
    )
    with smtplib.SMTP(alpha.ip, alpha.ports["smtp"], timeout=10) as client:
        client.sendmail("alex@alpha.test", ["john@gamma.test"], body)
    (path,) = wait_until(lambda: maildir_files(postfix, "john@gamma.test"), what="john's mail at Postfix")
    data = path.read_bytes()
    signed = data[data.index(b"DKIM-Signature:") :]
    assert dkim.verify(signed, dnsfunc=knot_txt)
    log_text = proc.log()
    assert "Verified TLS" in log_text and "mx.gamma.test[127.0.5.102]:2525" in log_text
    assert any("to=<john@gamma.test>" in line and "status=sent" in line for line in log_text.splitlines())
    assert f"{DNS_ADDR}:{DNS_PORT}" in alpha.config_path.read_text()  # found by MX through Knot, no transport
    assert "transports" not in alpha.config_path.read_text()
