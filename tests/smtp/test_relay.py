"""Relay control with real clients: a battery of the classic relay tricks from an untrusted client, all
refused; the same destinations accepted from a trusted network and after AUTH. swaks (Debian's package)
drives plain delivery, STARTTLS + AUTH PLAIN on 587, implicit TLS + AUTH LOGIN on 465, and PIPELINING.

Server on 127.0.3.13; untrusted clients bind 127.0.3.110-119, the trusted network is 127.0.3.200/29.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import time

import pytest

from tests.conftest import require_perl_modules, require_programs
from tests.peers.mailprov_server import MailprovTree, run_mailprov

IP = "127.0.3.13"
UNTRUSTED = "127.0.3.110"
TRUSTED = "127.0.3.201"

TRICKS = [
    "<victim@elsewhere.test>",
    "<victim@ELSEWHERE.TEST>",
    "victim@elsewhere.test",  # no angle brackets
    "<victim%elsewhere.test@beta.test>",  # percent hack
    "<victim%elsewhere.test%beta.test@beta.test>",
    "<elsewhere.test!victim@beta.test>",  # bang path (UUCP)
    "<beta.test!elsewhere.test!victim@beta.test>",
    '<"victim@elsewhere.test"@beta.test>',  # quoted local part hiding an address
    '<"victim%elsewhere.test"@beta.test>',
    '<"elsewhere.test!victim"@beta.test>',
    "<@beta.test:victim@elsewhere.test>",  # source route
    "<@beta.test,@mx.beta.test:victim@elsewhere.test>",
    "<victim@elsewhere.test.>",  # trailing dot
    "<victim@beta.test.>",
    "<victim@elsewhere.test@beta.test>",  # two at-signs
    "<victim@beta.test@elsewhere.test>",
    "<victim@[127.0.3.99]>",  # IP literals
    "<victim@[IPv6:::1]>",
    "<john@[127.0.3.13]>",  # our own address as a literal: still not a local domain
    "<victim@beta.test.elsewhere.test>",
    "<victim@elsewhere.test> NOTIFY=NEVER",
]


@pytest.fixture(scope="module")
def srv():
    tree = MailprovTree.create(
        hostname="mx.beta.test",
        domains=["beta.test", "alpha.test"],
        ip=IP,
        # One process here (the in-process server path); the other modules run with worker processes.
        smtp={"trusted_networks": ["127.0.3.200/29"], "auth_failure_delay": 0.05, "processes": 1},
        outbound={"transports": [{"domain": "*", "host": "127.0.3.14", "port": 9, "tls": "none"}]},
    )
    tree.add_user("john@beta.test", "john-secret")
    tree.add_user("alex@alpha.test", "alex-secret")
    proc = run_mailprov(tree.config_path)
    yield tree
    proc.stop()
    tree.cleanup()


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("path", TRICKS)
def test_relay_trick_refused_from_untrusted_client(srv, path):
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(UNTRUSTED, 0), timeout=20) as s:
        s.ehlo("spammer.test")
        assert s.docmd("MAIL FROM:<spammer@evil.test>")[0] == 250
        code, reply = s.docmd(f"RCPT TO:{path}")
        assert code >= 500, (path, code, reply)
        assert s.docmd("DATA")[0] == 503  # nothing was accepted


def test_null_sender_to_local_user_is_accepted_from_anyone(srv):
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(UNTRUSTED, 0), timeout=20) as s:
        s.ehlo("bounce.test")
        assert s.docmd("MAIL FROM:<>")[0] == 250
        assert s.docmd("RCPT TO:<john@beta.test>")[0] == 250


def test_trusted_network_may_relay(srv):
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(TRUSTED, 0), timeout=20) as s:
        s.ehlo("app.internal")
        assert s.docmd("MAIL FROM:<app@beta.test>")[0] == 250
        assert s.docmd("RCPT TO:<victim@elsewhere.test>")[0] == 250
        assert s.docmd("RCPT TO:<victim%elsewhere.test@beta.test>")[0] >= 500  # tricks stay refused


def test_authenticated_user_may_relay(srv):
    with smtplib.SMTP(srv.ip, srv.ports["submission"], source_address=(UNTRUSTED, 0), timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alex@alpha.test", "alex-secret")
        assert s.mail("alex@alpha.test")[0] == 250
        assert s.rcpt("friend@elsewhere.test")[0] == 250


def swaks(srv: MailprovTree, *args: str) -> subprocess.CompletedProcess[str]:
    require_programs("swaks")
    require_perl_modules("Net::SSLeay", "Authen::SASL")  # for --tls and --tlsc, --auth
    cmd = ["swaks", "--local-interface", UNTRUSTED, "--timeout", "20", "--helo", "swaks.test", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def arrived(srv: MailprovTree, marker: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker.encode() in p.read_bytes() for p in srv.maildir_files("john@beta.test")):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.peers
def test_swaks_plain_delivery(srv):
    result = swaks(
        srv,
        "--server",
        f"{srv.ip}:{srv.ports['smtp']}",
        "--from",
        "x@remote.test",
        "--to",
        "john@beta.test",
        "--header",
        "Subject: swaks-plain",
    )
    assert result.returncode == 0, result.stdout
    assert arrived(srv, "swaks-plain")


@pytest.mark.peers
def test_swaks_pipelining(srv):
    result = swaks(
        srv,
        "--server",
        f"{srv.ip}:{srv.ports['smtp']}",
        "--pipeline",
        "--from",
        "x@remote.test",
        "--to",
        "john@beta.test",
        "--header",
        "Subject: swaks-pipe",
    )
    assert result.returncode == 0, result.stdout
    assert arrived(srv, "swaks-pipe")


@pytest.mark.peers
def test_swaks_relay_attempt_refused(srv):
    result = swaks(srv, "--server", f"{srv.ip}:{srv.ports['smtp']}", "--from", "x@remote.test", "--to", "victim@elsewhere.test")
    assert result.returncode != 0
    assert "554 5.7.1" in result.stdout and "Relay access denied" in result.stdout


@pytest.mark.peers
def test_swaks_starttls_auth_plain_on_submission(srv):
    result = swaks(
        srv,
        "--server", f"{srv.ip}:{srv.ports['submission']}",
        "--tls", "--auth", "PLAIN", "--auth-user", "alex@alpha.test", "--auth-password", "alex-secret",
        "--from", "alex@alpha.test", "--to", "john@beta.test", "--header", "Subject: swaks-587",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "235 2.7.0" in result.stdout
    assert arrived(srv, "swaks-587")


@pytest.mark.peers
def test_swaks_implicit_tls_auth_login_on_submissions(srv):
    result = swaks(
        srv,
        "--server", f"{srv.ip}:{srv.ports['submissions']}",
        "--tls-on-connect", "--auth", "LOGIN", "--auth-user", "alex@alpha.test", "--auth-password", "alex-secret",
        "--from", "alex@alpha.test", "--to", "john@beta.test", "--header", "Subject: swaks-465",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert arrived(srv, "swaks-465")


@pytest.mark.peers
def test_swaks_wrong_password_refused(srv):
    result = swaks(
        srv,
        "--server", f"{srv.ip}:{srv.ports['submission']}",
        "--tls", "--auth", "PLAIN", "--auth-user", "alex@alpha.test", "--auth-password", "wrong",
        "--from", "alex@alpha.test", "--to", "john@beta.test",
    )  # fmt: skip
    assert result.returncode != 0
    assert "535 5.7.8" in result.stdout
    assert "wrong" not in srv.config_path.with_suffix(".smtp.log").read_text()  # never logged
