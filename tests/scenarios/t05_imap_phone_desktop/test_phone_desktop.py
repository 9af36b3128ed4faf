"""The IMAP story with real processes: alex@alpha.test sends to john@beta.test; john's phone, idling on his
INBOX over IMAPS (993-style implicit TLS), is told at once; his desktop (STARTTLS) moves the message to a
folder; the phone, still idling, sees it leave the INBOX, and finds it in the folder.

Two ``mailprov serve`` processes on 127.0.13.230/231 (alpha: smtp; beta: all, IMAP included); alpha
routes beta.test with an ``outbound.transports`` entry (no DNS needed here).
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import time

import pytest
from imapclient import IMAPClient

from tests.peers.mailprov_server import MailprovTree, run_mailprov

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ALPHA_IP, BETA_IP = "127.0.13.230", "127.0.13.231"
MESSAGE = (
    b"From: Alex <alex@alpha.test>\r\nTo: John <john@beta.test>\r\nSubject: trip to Lisbon\r\n"
    b"Message-ID: <t05@alpha.test>\r\n\r\nTickets attached.\r\n"
)


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # john's programs would trust the deployed certificate; not the point here
    return context


@pytest.fixture
def trees():
    made: list[tuple[MailprovTree, object]] = []
    yield made
    for tree, proc in made:
        proc.stop()
        tree.cleanup()


def test_phone_idles_desktop_moves_phone_sees_the_move(trees):
    beta = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=BETA_IP)
    beta.add_user("john@beta.test", "john-imap-secret")
    beta_proc = run_mailprov(beta.config_path, services="all")
    trees.append((beta, beta_proc))
    alpha = MailprovTree.create(
        hostname="mx.alpha.test",
        domains=["alpha.test"],
        ip=ALPHA_IP,
        smtp={"trusted_networks": []},
        outbound={"transports": [{"domain": "beta.test", "host": BETA_IP, "port": beta.ports["smtp"], "tls": "opportunistic"}]},
    )
    alpha.add_user("alex@alpha.test", "alex-smtp-secret")
    alpha_proc = run_mailprov(alpha.config_path, services="smtp")
    trees.append((alpha, alpha_proc))

    phone = IMAPClient(BETA_IP, port=beta.ports["imaps"], ssl=True, ssl_context=insecure(), timeout=30)
    phone.login("john@beta.test", "john-imap-secret")
    phone.select_folder("INBOX")
    phone.idle()

    with smtplib.SMTP(ALPHA_IP, alpha.ports["submission"], timeout=30) as smtp:
        smtp.starttls(context=insecure())
        smtp.login("alex@alpha.test", "alex-smtp-secret")
        assert smtp.sendmail("alex@alpha.test", ["john@beta.test"], MESSAGE) == {}
    sent = time.monotonic()
    seen = []
    while time.monotonic() - sent < 30 and not seen:  # relay + delivery + IDLE push, bounded
        seen = [r for r in phone.idle_check(timeout=1) if r[1] == b"EXISTS"]
    assert seen == [(1, b"EXISTS")], "the phone was not told of the new message"
    arrival = time.monotonic() - sent

    desktop = imaplib.IMAP4(BETA_IP, beta.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in desktop.capabilities  # not from a plaintext network: TLS first
    desktop.starttls(ssl_context=insecure())
    desktop.login("john@beta.test", "john-imap-secret")
    assert desktop.create("Travel")[0] == "OK"
    desktop.select("INBOX")
    assert b"trip to Lisbon" in desktop.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1]
    assert desktop.uid("MOVE", "1", "Travel")[0] == "OK"
    desktop.logout()

    gone = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gone:
        gone = [r for r in phone.idle_check(timeout=1) if r[1] == b"EXPUNGE"]
    phone.idle_done()
    assert gone == [(1, b"EXPUNGE")], "the phone did not see the message leave the INBOX"
    assert phone.search(["ALL"]) == []
    phone.select_folder("Travel")
    fetched = phone.fetch([1], ["ENVELOPE"])
    assert next(iter(fetched.values()))[b"ENVELOPE"].subject == b"trip to Lisbon"
    phone.logout()
    print(f"submission to the phone's EXISTS: {arrival:.2f} s (SMTP relay and delivery included)")
