"""Postfix (Debian's package) as a peer MTA relaying to mailprov: what an MTA on the internet does when it
sends to us. Postfix on 127.0.3.15 relays everything to mailprov on 127.0.3.16 (its ``relayhost``).
"""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.conftest import require_programs
from tests.peers.mailprov_server import MailprovTree, free_port, run_mailprov
from tests.peers.postfix import PostfixPeer

PEER_IP = "127.0.3.15"
OUR_IP = "127.0.3.16"


@pytest.fixture(scope="module")
def pair():
    require_programs("postfix")
    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=OUR_IP, smtp={"trusted_networks": []})
    tree.add_user("john@beta.test", "pw")
    server = run_mailprov(tree.config_path)
    peer = PostfixPeer(ip=PEER_IP, port=free_port(PEER_IP), hostname="mx.alpha.test", relayhost=f"[{OUR_IP}]:{tree.ports['smtp']}")
    try:
        peer.start()
        yield tree, peer
    finally:
        peer.cleanup()
        server.stop()
        tree.cleanup()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.peers
def test_postfix_relays_into_johns_maildir(pair):
    tree, peer = pair
    with smtplib.SMTP(peer.ip, peer.port, source_address=("127.0.3.150", 0), timeout=20) as s:
        s.sendmail("alex@alpha.test", ["john@beta.test"], b"From: alex@alpha.test\r\nSubject: via-postfix\r\n\r\nhello john\r\n")
    assert wait_for(lambda: any(b"via-postfix" in p.read_bytes() for p in tree.maildir_files("john@beta.test"))), peer.log()
    data = next(p.read_bytes() for p in tree.maildir_files("john@beta.test") if b"via-postfix" in p.read_bytes())
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"Received: from mx.alpha.test ([127.0.3.15])" in head  # our trace header names the peer
    assert b"by mx.alpha.test (Postfix)" in head  # and Postfix's own is below it
    assert wait_for(lambda: "status=sent (250 2.0.0 Ok: delivered as" in peer.log()), peer.log()


@pytest.mark.peers
def test_postfix_sees_our_refusal_for_unknown_users(pair):
    tree, peer = pair
    with smtplib.SMTP(peer.ip, peer.port, source_address=("127.0.3.150", 0), timeout=20) as s:
        s.sendmail("alex@alpha.test", ["nobody@beta.test"], b"Subject: to-nobody\r\n\r\nhello\r\n")
    # Refused at RCPT with 550 5.1.1: Postfix bounces it on its side; we never accepted it (no backscatter).
    assert wait_for(lambda: "said: 550 5.1.1 <nobody@beta.test>" in peer.log()), peer.log()
    assert not any(b"to-nobody" in p.read_bytes() for p in tree.queue_dir.rglob("*") if p.is_file())
