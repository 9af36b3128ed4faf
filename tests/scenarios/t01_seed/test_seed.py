"""The seed's story, end to end with real processes: alex@alpha.test submits a message with SMTP AUTH to
his server; it relays to john's server; the MDA drops it into john's Maildir; john fetches it with
POP3 over TLS and gets the message byte for byte (after the trace headers the servers prepend).

alpha routes beta.test to john's server with an ``outbound.transports`` entry so this test stays on
127.0.4.0/24 without a DNS server; the MX lookup itself is covered by tests/outbound/test_end_to_end.py.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import ssl
import time

import pytest

from mailprov.config import parse_hostport
from tests.peers.mailprov_server import MailprovTree, run_mailprov
from tests.peers.pop3_server import client_tls_context

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ALPHA_IP, BETA_IP = "127.0.4.230", "127.0.4.231"
TRACE = re.compile(rb"^(Return-Path|Delivered-To|Received|DKIM-Signature):", re.IGNORECASE)

MESSAGE = (
    b"From: Alex <alex@alpha.test>\r\n"
    b"To: John <john@beta.test>\r\n"
    b"Subject: seed scenario\r\n"
    b"Message-ID: <seed-1@alpha.test>\r\n"
    b"Date: Fri, 27 Nov 2026 06:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello John,\r\n"
    b".a line starting with a dot\r\n"
    b"..and one with two\r\n"
    b"\r\n"
    b"trailing spaces stay   \r\n"
    b"-- \r\n"
    b"Alex\r\n"
)


@pytest.fixture
def trees():
    made: list[tuple[MailprovTree, object]] = []
    yield made
    for tree, proc in made:
        proc.stop()
        tree.cleanup()


def test_submit_relay_deliver_and_fetch_byte_for_byte(trees):
    beta = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=BETA_IP)
    beta.add_user("john@beta.test", "john-pop-secret")
    beta_proc = run_mailprov(beta.config_path, services="all")
    trees.append((beta, beta_proc))
    alpha = MailprovTree.create(
        hostname="mx.alpha.test",
        domains=["alpha.test"],
        ip=ALPHA_IP,
        smtp={"trusted_networks": []},  # alex must authenticate to relay
        outbound={"transports": [{"domain": "beta.test", "host": BETA_IP, "port": beta.ports["smtp"], "tls": "opportunistic"}]},
    )
    alpha.add_user("alex@alpha.test", "alex-smtp-secret")
    alpha_proc = run_mailprov(alpha.config_path, services="smtp")
    trees.append((alpha, alpha_proc))

    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # alex's client would pin alpha's certificate; not the point here
    with smtplib.SMTP(ALPHA_IP, alpha.ports["submission"], timeout=30) as smtp:
        smtp.starttls(context=insecure)
        smtp.login("alex@alpha.test", "alex-smtp-secret")
        refused = smtp.sendmail("alex@alpha.test", ["john@beta.test"], MESSAGE)
    assert refused == {}

    deadline = time.monotonic() + 60
    while not beta.maildir_files("john@beta.test") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert beta.maildir_files("john@beta.test"), f"not delivered\n{alpha_proc.log()}\n{beta_proc.log()}"

    host, port = parse_hostport(beta.config.pop3.tls_listen[0], key="pop3.tls_listen")
    pop = poplib.POP3_SSL(host, port, context=client_tls_context(beta.config), timeout=30)
    pop.user("john@beta.test")
    pop.pass_("john-pop-secret")
    assert pop.stat()[0] == 1
    listed = int(pop.list(1).split()[2])
    _, lines, octets = pop.retr(1)
    pop.dele(1)
    assert pop.quit().startswith(b"+OK")

    fetched = b"".join(line + b"\r\n" for line in lines)
    assert octets == listed == len(fetched)  # LIST's size is what RETR sends
    assert fetched.endswith(MESSAGE), fetched
    prefix = fetched[: -len(MESSAGE)]
    header_lines = [line for line in prefix.split(b"\r\n") if line and not line[:1].isspace()]
    assert header_lines and all(TRACE.match(line) for line in header_lines), prefix
    assert not beta.maildir_files("john@beta.test") and not beta.maildir_files("john@beta.test", "cur")
