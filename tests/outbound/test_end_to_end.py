"""End to end through the queue: alex's server relays by MX to john's; deferral, retry, bounce, expiry,
delay warnings and a restart, against real peers (our own MTA, scripted aiosmtpd peers) and Knot."""

from __future__ import annotations

import smtplib
import ssl

import dkim
import pytest

from mailprov.queue.store import parse
from tests.conftest import require_programs
from tests.outbound.conftest import BETA_IP, DKIM_SELECTOR, SMTP_PORT
from tests.outbound.e2e import alpha_tree, dsn_parts, knot_txt, lines_for, queue_id_of, relay, wait_until
from tests.outbound.scripted import Script, ScriptedPeer
from tests.peers.mailprov_server import MailprovTree

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def test_alex_to_john_by_mx_dkim_signed(knot, servers):
    """The acceptance story: submission with AUTH, MX lookup, relay, Maildir; DKIM verified by dkimpy."""
    require_programs("knotd")
    beta = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=BETA_IP, smtp={"listen": [f"{BETA_IP}:{SMTP_PORT}"]})
    beta.add_user("john@beta.test", "john-pw")
    alpha = alpha_tree(knot, port=SMTP_PORT, outbound={"dkim_selector": DKIM_SELECTOR, "dkim_key": str(knot.dkim_key)})
    servers(beta)
    alpha_proc = servers(alpha)

    body = (
        "From: Alex <alex@alpha.test>\r\nTo: John <john@beta.test>\r\nSubject: lunch\r\n"
        "Message-ID: <lunch-1@alpha.test>\r\nDate: Fri, 27 Nov 2026 07:00:00 +0000\r\n\r\nNoon?\r\n"
    )
    with smtplib.SMTP(alpha.ip, alpha.ports["submission"], timeout=10) as client:
        client.starttls(context=ssl._create_unverified_context())  # the test server's self-signed certificate
        client.login("alex@alpha.test", "alex-pw")
        client.sendmail("alex@alpha.test", ["john@beta.test"], body)

    (path,) = wait_until(lambda: beta.maildir_files("john@beta.test"), what="john's mail")
    data = path.read_bytes()
    assert b"Subject: lunch" in data and b"Noon?" in data
    assert data.startswith(b"Return-Path: <alex@alpha.test>") or b"DKIM-Signature:" in data
    assert b"d=alpha.test" in data and f"s={DKIM_SELECTOR}".encode() in data
    # The receiving side verifies the signature against the key published in DNS.
    signed = data[data.index(b"DKIM-Signature:") :]
    assert dkim.verify(signed, dnsfunc=knot_txt)
    assert not dkim.verify(signed.replace(b"Noon?", b"Nine?"), dnsfunc=knot_txt)

    log_text = wait_until(lambda: "status=sent" in alpha_proc.log() and alpha_proc.log(), what="alpha's log")
    sent = [line for line in log_text.splitlines() if "to=<john@beta.test>" in line and "status=sent" in line]
    assert sent and "relay=mx.beta.test[127.0.5.101]:2525" in sent[0] and "dsn=2.0.0" in sent[0]


def test_4xx_then_5xx_defers_retries_and_bounces_to_the_sender(knot, servers):
    replies = iter(["451 4.7.1 greylisted, come back later"] + ["550 5.1.1 <john@a.out.test>: no such mailbox"] * 5)
    alpha = alpha_tree(knot, port=SMTP_PORT)
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=lambda a: next(replies))) as peer:
        proc = servers(alpha)
        relay(alpha, ["john@a.out.test"], subject="greylist me")
        (bounce,) = wait_until(lambda: alpha.maildir_files("alex@alpha.test"), what="the bounce")
    msg, status = dsn_parts(bounce)
    assert msg["From"].startswith("MAILER-DAEMON") or "mailer-daemon" in msg["From"].lower()
    assert msg.get_content_type() == "multipart/report"
    assert "Final-Recipient: rfc822; john@a.out.test" in status and "Action: failed" in status
    assert "Status: 5.1.1" in status and "Remote-MTA: dns; mx.a.out.test" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status and "no such mailbox" in status
    assert peer.handler.received == []
    log_text = proc.log()
    deferred = [line for line in log_text.splitlines() if "status=deferred" in line and "john@a.out.test" in line]
    bounced = [line for line in log_text.splitlines() if "status=bounced" in line and "john@a.out.test" in line]
    assert deferred and "greylisted" in deferred[0] and "relay=mx.a.out.test[127.0.5.21]:2525" in deferred[0]
    assert bounced and "dsn=5.1.1" in bounced[0]
    story = lines_for(log_text, queue_id_of(deferred[0]))
    assert any("from=<alex@alpha.test>" in line for line in story) and any("removed" in line for line in story)
    print("\n".join(story))


def test_stalling_peer_and_dead_host_defer_then_expire(knot, servers):
    # a.out.test stalls past the command timeout; dead.out.test has nothing listening.
    alpha = alpha_tree(knot, port=SMTP_PORT, outbound={"command_timeout": 1}, queue={"max_lifetime": 4})
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(stall_data=2)):
        proc = servers(alpha)
        relay(alpha, ["john@a.out.test", "mary@dead.out.test"], subject="will expire")
        bounce = wait_until(lambda: alpha.maildir_files("alex@alpha.test"), timeout=40, what="the expiry bounce")
    texts = [dsn_parts(p)[1] for p in bounce]
    joined = "\n".join(texts)
    assert "john@a.out.test" in joined and "mary@dead.out.test" in joined
    assert "expired" in joined
    log_text = proc.log()
    assert any("timed out" in line and "john@a.out.test" in line and "status=deferred" in line for line in log_text.splitlines())
    assert any("Connection refused" in line and "mary@dead.out.test" in line for line in log_text.splitlines())


def test_delay_warning_then_delivery(knot, servers):
    replies = iter(["451 4.3.0 busy"] * 3 + [None] * 10)
    alpha = alpha_tree(knot, port=SMTP_PORT, queue={"delay_warning": 1})
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=lambda a: next(replies))) as peer:
        servers(alpha)
        relay(alpha, ["john@a.out.test"], subject="slow")
        wait_until(lambda: peer.handler.received, timeout=40, what="the delivery after retries")
    (warning,) = wait_until(lambda: alpha.maildir_files("alex@alpha.test"), what="the delay warning")
    _msg, status = dsn_parts(warning)
    assert "Action: delayed" in status and "john@a.out.test" in status


def test_restart_keeps_each_recipients_state(knot, servers):
    """One recipient delivered, one deferred; the server restarts; only the deferred one is retried."""
    answers = {"mode": "451 4.3.0 not now"}
    alpha = alpha_tree(knot, port=SMTP_PORT, queue={"retry_min": 3, "retry_max": 3})
    with (
        ScriptedPeer("127.0.5.21", SMTP_PORT) as good,
        ScriptedPeer("127.0.5.22", SMTP_PORT, Script(rcpt=lambda a: answers["mode"])) as flaky,
    ):
        proc = servers(alpha)
        relay(alpha, ["john@a.out.test", "mary@b.out.test"], subject="restart")
        wait_until(lambda: alpha.queue_files("deferred"), what="the deferred queue file")
        (path,) = alpha.queue_files("deferred")
        item, _ = parse(path.read_bytes())
        states = {r.address: r.status for r in item.recipients}
        assert states == {"john@a.out.test": "sent", "mary@b.out.test": "deferred"}
        proc.stop()

        answers["mode"] = None
        proc2 = servers(alpha)
        wait_until(lambda: flaky.handler.received, timeout=30, what="the retry after the restart")
        wait_until(lambda: not alpha.queue_files("deferred") and not alpha.queue_files("active"), what="an empty queue")
    assert len(good.handler.received) == 1  # not sent again after the restart
    assert [r.recipients for r in flaky.handler.received] == [["mary@b.out.test"]]
    assert "status=sent" in proc2.log()


def test_a_bounce_is_never_bounced(knot, servers):
    alpha = alpha_tree(knot, port=SMTP_PORT)
    with ScriptedPeer("127.0.5.21", SMTP_PORT, Script(rcpt=lambda a: "550 5.1.1 no such user")):
        proc = servers(alpha)
        with smtplib.SMTP(alpha.ip, alpha.ports["smtp"], timeout=10) as client:
            client.sendmail("", ["john@a.out.test"], "From: MAILER-DAEMON@elsewhere.test\r\nSubject: a bounce\r\n\r\nx\r\n")
        wait_until(lambda: "status=bounced" in proc.log(), what="the permanent failure")
        wait_until(lambda: "removed" in proc.log(), what="the message to leave the queue")
    assert "the sender is <>" in proc.log()
    assert alpha.maildir_files("alex@alpha.test") == []
    assert not alpha.queue_files("incoming") and not alpha.queue_files("deferred")
