"""Receiving and submission against a real ``mailprov serve smtp`` process, driven by Python's smtplib
and raw sockets: ESMTP extensions, SIZE, SMTPUTF8, PIPELINING, STARTTLS, AUTH, sender ownership, trace
headers, loops, and the limits (recipients, errors, connections, AUTH failures).

Server on 127.0.3.11; clients bind 127.0.3.1xx (untrusted: only 127.0.3.200/29 is trusted here).
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.peers.mailprov_server import MailprovTree, run_mailprov

IP = "127.0.3.11"
CLIENT = ("127.0.3.101", 0)
MSG = b"From: someone@remote.test\r\nTo: john@beta.test\r\nSubject: hello\r\n\r\nbody\r\n"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    return ctx


@pytest.fixture(scope="module")
def srv():
    tree = MailprovTree.create(
        hostname="mx.beta.test",
        domains=["beta.test", "alpha.test"],
        ip=IP,
        smtp={
            "trusted_networks": ["127.0.3.200/29"],
            "max_message_size": 20000,
            "max_recipients": 3,
            "max_errors": 4,
            "max_connections_per_client": 3,
            "max_auth_failures": 3,
            "auth_failure_delay": 0.05,
            "max_hops": 10,
        },
        # Remote mail goes to a port nobody listens on: it must wait in the queue, not vanish.
        outbound={"transports": [{"domain": "*", "host": "127.0.3.12", "port": 9, "tls": "none"}]},
    )
    tree.add_user("john@beta.test", "john-secret")
    tree.add_user("alex@alpha.test", "alex-secret")
    tree.add_alias("postmaster@beta.test", "john@beta.test")
    proc = run_mailprov(tree.config_path)
    yield tree
    proc.stop()
    tree.cleanup()


def smtp(tree: MailprovTree, source=CLIENT) -> smtplib.SMTP:
    return smtplib.SMTP(tree.ip, tree.ports["smtp"], source_address=source, timeout=20)


def wait_files(tree: MailprovTree, address: str, count: int, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = tree.maildir_files(address)
        if len(files) >= count:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{address}: {len(tree.maildir_files(address))} of {count} messages arrived")


def find(tree: MailprovTree, address: str, needle: bytes) -> bytes:
    for path in tree.maildir_files(address):
        data = path.read_bytes()
        if needle in data:
            return data
    raise AssertionError(f"no message with {needle!r} for {address}")


def test_ehlo_advertises_the_extensions(srv):
    with smtp(srv) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "starttls"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "20000"
        assert not s.has_extn("auth")  # never before TLS
        s.starttls(context=tls_context())
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        assert not s.has_extn("starttls")


def test_mail_for_a_local_user_lands_in_maildir_with_trace_headers(srv):
    with smtp(srv) as s:
        s.ehlo("client.test")
        assert s.mail("someone@remote.test")[0] == 250
        assert s.rcpt("john+news@beta.test")[0] == 250
        code, reply = s.data(MSG.replace(b"hello", b"trace-test"))
    assert code == 250 and reply.startswith(b"2.0.0 Ok: ")
    queue_id = reply.split()[-1].decode()
    wait_files(srv, "john@beta.test", 1)
    data = find(srv, "john@beta.test", b"trace-test")
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith(
        "Return-Path: <someone@remote.test>\r\nDelivered-To: john@beta.test\r\nReceived: from client.test ([127.0.3.101])"
    )
    assert f"by mx.beta.test (mailprov) with ESMTP id {queue_id}" in head
    assert "for <john+news@beta.test>" in head


def test_unknown_local_user_refused_at_rcpt(srv):
    with smtp(srv) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        code, reply = s.rcpt("nobody@beta.test")
    assert (code, reply.split()[0]) == (550, b"5.1.1")


def test_alias_delivers_to_its_target(srv):
    with smtp(srv) as s:
        s.sendmail("someone@remote.test", ["postmaster@beta.test"], MSG.replace(b"hello", b"alias-test"))
    wait_files(srv, "john@beta.test", 1)
    assert b"Delivered-To: john@beta.test" in find(srv, "john@beta.test", b"alias-test")


def test_size_is_enforced_at_mail_and_during_data(srv):
    with smtp(srv) as s:
        s.ehlo("client.test")
        code, reply = s.mail("someone@remote.test", ["SIZE=30000"])
        assert (code, reply.split()[0]) == (552, b"5.3.4")
        assert s.mail("someone@remote.test")[0] == 250
        assert s.rcpt("john@beta.test")[0] == 250
        big = MSG + b"x" * 70 + b"\r\n"
        code, reply = s.data(big * 400)
        assert code == 552
        s.rset()
        assert s.noop()[0] == 250  # the session goes on


def test_smtputf8(srv):
    with smtp(srv) as s:
        s.ehlo("client.test")
        s.command_encoding = "utf-8"  # send the raw UTF-8 without announcing SMTPUTF8
        code, reply = s.mail("jörg@remote.test")
        assert (code, reply.split()[0]) == (553, b"5.6.7")  # non-ASCII without SMTPUTF8
        s.rset()
        body = "From: jörg@remote.test\r\nSubject: grüße utf8-test\r\n\r\nschön\r\n".encode()
        s.sendmail("jörg@remote.test", ["john@beta.test"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    data = find(srv, "john@beta.test", "grüße utf8-test".encode())
    assert "Return-Path: <jörg@remote.test>".encode() in data
    assert b"with UTF8SMTP id" in data


def test_pipelining(srv):
    with socket.create_connection((srv.ip, srv.ports["smtp"]), source_address=CLIENT, timeout=20) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(b"EHLO pipe.test\r\n")
        while not stream.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<someone@remote.test>\r\nRCPT TO:<john@beta.test>\r\nRCPT TO:<ghost@beta.test>\r\nDATA\r\n")
        replies = [stream.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"550", b"354"]
        sock.sendall(b"Subject: pipelined-test\r\n\r\n.leading dot\r\n.\r\nQUIT\r\n")
        assert stream.readline().startswith(b"250 2.0.0 Ok")
        assert stream.readline().startswith(b"221")
    data = find(srv, "john@beta.test", b"pipelined-test")
    assert data.endswith(b"\r\n\r\nleading dot\r\n")  # dot-stuffing undone


def test_submission_requires_starttls_and_auth_and_owned_sender(srv):
    with smtplib.SMTP(srv.ip, srv.ports["submission"], source_address=CLIENT, timeout=20) as s:
        s.ehlo("laptop.test")
        code, _ = s.mail("alex@alpha.test")
        assert code == 530  # STARTTLS first
        s.starttls(context=tls_context())
        s.ehlo("laptop.test")
        assert s.mail("alex@alpha.test")[0] == 530  # AUTH first
        s.rset()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alex@alpha.test", "wrong")
        s.login("alex@alpha.test", "alex-secret")
        code, reply = s.mail("john@beta.test")
        assert (code, reply.split()[0]) == (553, b"5.7.1")  # not alex's address
        s.rset()
        s.sendmail("alex+work@alpha.test", ["john@beta.test"], b"Subject: submitted-test\r\n\r\nno id, no date\r\n")
    data = find(srv, "john@beta.test", b"submitted-test")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPSA id" in head and b"(using TLSv1." in head
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head


def test_submission_to_a_remote_domain_is_queued_not_lost(srv):
    with smtplib.SMTP(srv.ip, srv.ports["submission"], source_address=CLIENT, timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alex@alpha.test", "alex-secret")
        s.mail("alex@alpha.test")
        s.rcpt("friend@elsewhere.test")
        code, reply = s.data(b"Subject: remote-test\r\n\r\nhi\r\n")
    assert code == 250 and b"queued as" in reply
    queue_id = reply.split()[-1].decode()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (srv.queue_dir / "deferred" / queue_id).exists():
        time.sleep(0.1)
    data = (srv.queue_dir / "deferred" / queue_id).read_bytes()
    assert b'"status":"deferred"' in data and b"Subject: remote-test" in data


def test_implicit_tls_submission_with_auth_login(srv):
    with smtplib.SMTP_SSL(srv.ip, srv.ports["submissions"], source_address=CLIENT, timeout=20, context=tls_context()) as s:
        s.ehlo("laptop.test")
        assert "LOGIN" in s.esmtp_features["auth"]
        s.user, s.password = "alex@alpha.test", "alex-secret"
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        s.sendmail("alex@alpha.test", ["john@beta.test"], b"Subject: smtps-test\r\n\r\nhi\r\n")
    assert b"with ESMTPSA id" in find(srv, "john@beta.test", b"smtps-test")


def test_auth_plain_on_port_25_after_starttls_allows_relay(srv):
    with smtp(srv) as s:
        s.ehlo("laptop.test")
        s.mail("alex@alpha.test")
        assert s.rcpt("friend@elsewhere.test")[0] == 554  # no relay before AUTH
        s.rset()
        s.starttls(context=tls_context())
        s.ehlo("laptop.test")
        token = base64.b64encode(b"\0alex@alpha.test\0alex-secret").decode()
        assert s.docmd("AUTH", f"PLAIN {token}")[0] == 235
        s.mail("alex@alpha.test")
        assert s.rcpt("friend@elsewhere.test")[0] == 250


def test_auth_failures_are_counted_and_end_in_disconnect(srv):
    source = ("127.0.3.102", 0)  # its own address: the failure count is per client
    with smtplib.SMTP(srv.ip, srv.ports["submission"], source_address=source, timeout=20) as s:
        s.starttls(context=tls_context())
        s.ehlo("bad.test")
        codes = []
        for _ in range(3):
            token = base64.b64encode(b"\0alex@alpha.test\0guess").decode()
            codes.append(s.docmd("AUTH", f"PLAIN {token}"))
        assert [c for c, _ in codes[:2]] == [535, 535]
        assert codes[2][0] == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()


def test_too_many_recipients(srv):
    with smtp(srv) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        assert [s.rcpt("john@beta.test")[0] for _ in range(3)] == [250, 250, 250]
        code, reply = s.rcpt("john@beta.test")
        assert (code, reply.split()[0]) == (452, b"4.5.3")


def test_too_many_errors_disconnects(srv):
    source = ("127.0.3.103", 0)
    with smtp(srv, source) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        replies = [s.rcpt(f"ghost{i}@beta.test") for i in range(3)]
        assert [c for c, _ in replies] == [550, 550, 550]
        code, _ = s.rcpt("ghost4@beta.test")  # the 4th error: the reply, then 421 and close
        assert code == 550
        with pytest.raises(smtplib.SMTPServerDisconnected):
            for _ in range(3):
                s.noop()


def test_connections_per_client_are_limited(srv):
    source = "127.0.3.104"
    held = [smtp(srv, (source, 0)) for _ in range(3)]
    try:
        with socket.create_connection((srv.ip, srv.ports["smtp"]), source_address=(source, 0), timeout=20) as sock:
            assert sock.makefile("rb").readline().startswith(b"421 4.7.0")
        with smtp(srv, ("127.0.3.105", 0)) as other:  # another client is unaffected
            assert other.noop()[0] == 250
    finally:
        for s in held:
            s.close()


def test_mail_loop_is_cut(srv):
    looped = b"".join(b"Received: from hop%d by hop%d; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i) for i in range(10)) + MSG
    with smtp(srv) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        s.rcpt("john@beta.test")
        code, reply = s.data(looped)
    assert (code, reply.split()[0]) == (554, b"5.4.6")


def test_bad_input_gets_clear_replies(srv):
    with smtp(srv) as s:
        assert s.docmd("MAIL FROM:<a@b.test>")[0] == 503  # no HELO yet
        s.ehlo("client.test")
        assert s.docmd("RCPT TO:<john@beta.test>")[0] == 503  # no MAIL yet
        assert s.docmd("MAIL FROM:<broken")[0] in (501, 553)
        code, reply = s.docmd("FOO")
        assert code == 500 and reply.startswith(b"5.5.2")
        assert s.docmd("DATA")[0] == 421  # that was the 4th error (smtp.max_errors here): 421, closed
