"""RFC points a client or an attacker can tell apart, each against a live ``mailprov serve smtp`` and, where
Postfix's behaviour is the reference, against a private Postfix fed the same bytes.

* RFC 3207 4.2: no STARTTLS inside TLS;
* RFC 5321 4.5.1 (syntax 4.1.1.3): ``RCPT TO:<postmaster>`` without a domain, any case;
* RFC 5321 2.3.8: CRLF only, in commands and in DATA; compared with Postfix's
  ``smtpd_forbid_bare_newline = reject`` (docs/security.md, "Line endings");
* RFC 5321 4.1.1.1: a NUL in the EHLO argument is refused;
* RFC 5321 4.5.3.1.10: the 101st RCPT gets 452 4.5.3 and the session goes on.

Addresses in 127.0.16.0/24: mailprov .10, Postfix .20, clients bind .101 (trusted by neither).
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.conftest import require_programs
from tests.peers.mailprov_server import MailprovTree, free_port, run_mailprov
from tests.peers.postfix import PostfixPeer

IP = "127.0.16.10"
POSTFIX_IP = "127.0.16.20"
CLIENT = "127.0.16.101"
MSG = b"From: a@remote.test\r\nTo: john@beta.test\r\nSubject: conformance\r\n\r\nbody\r\n"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed test certificate
    return ctx


@pytest.fixture(scope="module")
def srv() -> Iterator[MailprovTree]:
    """mailprov with its default limits (100 recipients, 10 errors) and a postmaster alias."""
    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test", "alpha.test"], ip=IP, smtp={"trusted_networks": []})
    tree.add_user("john@beta.test", "john-secret")
    tree.add_alias("postmaster@beta.test", "john@beta.test")
    proc = run_mailprov(tree.config_path)
    yield tree
    proc.stop()
    tree.cleanup()


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixPeer]:
    """Postfix as the reference, receiving for beta.test, in ``smtpd_forbid_bare_newline = reject`` mode."""
    require_programs("postfix")
    peer = PostfixPeer(
        ip=POSTFIX_IP,
        port=free_port(POSTFIX_IP),
        hostname="mx.beta.test",
        domains=("beta.test",),
        users=("john@beta.test", "postmaster@beta.test"),
        extra={"smtpd_forbid_bare_newline": "reject", "mynetworks": "127.0.16.250/32", "myorigin": "beta.test"},
    )
    peer.start()
    yield peer
    peer.cleanup()


class Dialogue:
    """Raw bytes to a server; ``say`` sends and returns the replies that arrive (codes and texts)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5, source_address=(CLIENT, 0))
        self.buffer = b""
        self.closed = False
        self.banner = self.replies(1)

    def replies(self, count: int, wait: float = 5.0) -> list[bytes]:
        """Up to ``count`` complete replies (their last lines), waiting at most ``wait`` seconds."""
        out: list[bytes] = []
        deadline = time.monotonic() + wait
        while len(out) < count and time.monotonic() < deadline and not self.closed:
            match = re.search(rb"^\d{3} [^\r\n]*\r\n", self.buffer, re.M)
            if match:
                out.append(match.group(0).rstrip(b"\r\n"))
                self.buffer = self.buffer[match.end() :]
                continue
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.buffer += chunk
        return out

    def say(self, data: bytes, expect: int = 1, wait: float = 5.0) -> list[bytes]:
        self.sock.sendall(data)
        return self.replies(expect, wait)

    def close(self) -> None:
        self.sock.close()


def shape(reply: bytes, host: bytes = b"mx.beta.test") -> bytes:
    """A reply as compared between servers: the codes, plus the text of the bare-LF refusal."""
    if b"bare <LF>" in reply:
        return reply.replace(host, b"HOST")
    parts = reply.split()
    return b" ".join(parts[:2]) if len(parts) > 1 and re.fullmatch(rb"[245]\.\d{1,3}\.\d{1,3}", parts[1]) else parts[0]


def transcript(host: str, port: int, steps: list[tuple[bytes, int]]) -> tuple[list[bytes], bool]:
    """Replay ``steps`` (bytes, replies expected); (every reply's shape, whether the server hung up)."""
    dialogue = Dialogue(host, port)
    out: list[bytes] = []
    try:
        for data, expect in steps:
            if dialogue.closed:
                break
            out += [shape(r) for r in dialogue.say(data, expect, wait=1.0 if expect == 0 else 5.0)]
        dialogue.replies(1, wait=0.5)
        return out, dialogue.closed
    finally:
        dialogue.close()


# -- RFC 3207 4.2 -------------------------------------------------------------------------------------


def test_starttls_inside_tls_is_refused(srv):
    """RFC 3207 4.2: "A client MUST NOT attempt to start a TLS session if a TLS session is already active."
    The server refuses it as Postfix does, and the session stays usable."""
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(CLIENT, 0), timeout=10) as s:
        s.starttls(context=tls_context())
        s.ehlo()
        assert s.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")
        assert s.noop()[0] == 250
    with smtplib.SMTP_SSL(srv.ip, srv.ports["submissions"], source_address=(CLIENT, 0), timeout=10, context=tls_context()) as s:
        s.ehlo()
        assert s.docmd("STARTTLS") == (554, b"5.5.1 Error: TLS already active")


# -- RFC 5321 4.5.1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postmaster", "Postmaster", "POSTMASTER"])
def test_rcpt_postmaster_without_domain(srv, postfix, name):
    """RFC 5321 4.5.1: "the reserved mailbox name "postmaster" may be used in a RCPT command without domain
    qualification (see Section 4.1.1.3) and MUST be accepted if so used" (case-insensitive, 4.1.1.3)."""
    steps = [(b"EHLO client.test\r\n", 1), (b"MAIL FROM:<a@remote.test>\r\n", 1), (f"RCPT TO:<{name}>\r\n".encode(), 1)]
    ours, _ = transcript(srv.ip, srv.ports["smtp"], steps)
    theirs, _ = transcript(postfix.ip, postfix.port, steps)
    assert ours[-1] == theirs[-1] == b"250 2.1.5"
    before = len(srv.maildir_files("john@beta.test"))
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(CLIENT, 0), timeout=10) as s:
        assert s.sendmail("a@remote.test", [name], MSG + name.encode() + b"\r\n") == {}
    deadline = time.monotonic() + 10
    while len(srv.maildir_files("john@beta.test")) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(name.encode() in p.read_bytes() for p in srv.maildir_files("john@beta.test"))  # via the postmaster alias


# -- RFC 5321 2.3.8: CRLF only ----------------------------------------------------------------------


def test_bare_lf_in_a_command_line_is_refused_like_postfix(srv, postfix):
    """RFC 5321 2.3.8: lines end in CRLF only. ``NOOP<LF>NOOP<CRLF>`` is not two commands: Postfix
    (``smtpd_forbid_bare_newline = reject``) answers 550 5.5.2 "bare <LF> received" and hangs up; so do we."""
    steps = [(b"EHLO client.test\r\n", 1), (b"NOOP\nNOOP\r\n", 2), (b"NOOP\r\n", 1)]
    ours, ours_closed = transcript(srv.ip, srv.ports["smtp"], steps)
    theirs, theirs_closed = transcript(postfix.ip, postfix.port, steps)
    assert ours == theirs == [b"250", b"550 5.5.2 HOST Error: bare <LF> received"]
    assert ours_closed and theirs_closed


def test_bare_lf_in_data_is_refused_like_postfix(srv, postfix):
    """RFC 5321 2.3.8 and 4.1.1.4: a message whose content has a bare LF is refused at the end of data with
    550 5.5.2 (nothing stored), and the session goes on, as in Postfix's ``reject`` mode."""
    before = len(srv.maildir_files("john@beta.test"))
    steps = [
        (b"EHLO client.test\r\n", 1),
        (b"MAIL FROM:<a@remote.test>\r\n", 1),
        (b"RCPT TO:<john@beta.test>\r\n", 1),
        (b"DATA\r\n", 1),
        (b"Subject: bare lf\r\n\r\nline one\nline two\r\n.\r\n", 1),
        (b"NOOP\r\n", 1),
    ]
    ours, ours_closed = transcript(srv.ip, srv.ports["smtp"], steps)
    theirs, theirs_closed = transcript(postfix.ip, postfix.port, steps)
    assert ours[-2:] == theirs[-2:] == [b"550 5.5.2 HOST Error: bare <LF> received", b"250 2.0.0"]
    assert [r[:3] for r in ours] == [r[:3] for r in theirs]
    assert not ours_closed and not theirs_closed
    time.sleep(0.3)
    assert len(srv.maildir_files("john@beta.test")) == before


def test_lf_dot_lf_never_ends_data(srv, postfix):
    """RFC 5321 4.1.1.4: the end of data is <CRLF>.<CRLF> only. ``<LF>.<LF>`` followed by a command (the
    SMTP smuggling pattern) gets no reply: it is content. At the real end of data the message is refused
    (bare LF), so the smuggled MAIL FROM never runs and nothing is stored; Postfix does the same."""
    before = len(srv.maildir_files("john@beta.test"))
    smuggled = b"Subject: smuggle\r\n\r\nhello\r\n\n.\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<john@beta.test>\r\nDATA\r\n"
    steps = [
        (b"EHLO client.test\r\n", 1),
        (b"MAIL FROM:<a@remote.test>\r\n", 1),
        (b"RCPT TO:<john@beta.test>\r\n", 1),
        (b"DATA\r\n", 1),
        (smuggled, 0),  # no reply may come: still in DATA
        (b"more\r\n.\r\n", 1),
        (b"NOOP\r\n", 1),
    ]
    ours, _ = transcript(srv.ip, srv.ports["smtp"], steps)
    theirs, _ = transcript(postfix.ip, postfix.port, steps)
    assert [r[:3] for r in ours] == [r[:3] for r in theirs] == [b"250", b"250", b"250", b"354", b"550", b"250"]
    assert ours[4] == theirs[4] == b"550 5.5.2 HOST Error: bare <LF> received"
    time.sleep(0.3)
    assert len(srv.maildir_files("john@beta.test")) == before


# -- RFC 5321 4.1.1.1 -----------------------------------------------------------------------------------


def test_nul_in_ehlo_argument_is_refused(srv):
    """RFC 5321 4.1.1.1: the EHLO argument is a domain or an address literal; a NUL (or any control) would
    end up in Received headers and logs. 501, and a proper EHLO still works."""
    dialogue = Dialogue(srv.ip, srv.ports["smtp"])
    try:
        assert dialogue.say(b"EHLO evil\x00.test\r\n")[0].startswith(b"501 ")
        assert dialogue.say(b"HELO evil\x00.test\r\n")[0].startswith(b"501 ")
        assert dialogue.say(b"EHLO client.test\r\n")[0].startswith(b"250 ")
    finally:
        dialogue.close()


# -- RFC 5321 4.5.3.1.10 ----------------------------------------------------------------------------------


def test_recipients_over_the_limit_get_452_and_the_session_goes_on(srv):
    """RFC 5321 4.5.3.1.10: over the recipient limit (100) the server MUST answer 452 (4.5.3, RFC 3463), and
    the client sends the rest in a new transaction. smtplib does exactly that on one connection."""
    rcpts = [f"john+{i}@beta.test" for i in range(150)]
    before = len(srv.maildir_files("john@beta.test"))
    with smtplib.SMTP(srv.ip, srv.ports["smtp"], source_address=(CLIENT, 0), timeout=30) as s:
        refused = s.sendmail("a@remote.test", rcpts, MSG)
        assert sorted(refused) == sorted(rcpts[100:])
        assert set(refused.values()) == {(452, b"4.5.3 Too many recipients")}
        assert s.sendmail("a@remote.test", list(refused), MSG) == {}  # the same session, the next transaction
        assert s.noop()[0] == 250
    deadline = time.monotonic() + 10
    while len(srv.maildir_files("john@beta.test")) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(srv.maildir_files("john@beta.test")) == before + 2
