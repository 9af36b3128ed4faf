"""Pure decisions and bookkeeping: relay rules, sender ownership, hops, limits, retry timing, log lines."""

from __future__ import annotations

from mailprov import maillog
from mailprov.limits import ConnectionLimiter, FailureThrottle
from mailprov.queue.runner import retry_delay
from mailprov.smtp import policy
from mailprov.smtp.address import parse_address
from mailprov.smtp.handler import has_bare_newline, header_end, header_names
from mailprov.smtp.server import add_enhanced_code
from mailprov.users import Resolution

LOCAL_USER = Resolution(mailboxes=("john@beta.test",))


def rcpt(text, **kw):
    args = {"local_domain": False, "resolution": None, "relay_allowed": False, "count": 0, "max_recipients": 100}
    args.update(kw)
    return policy.recipient_decision(parse_address(text), **args)


def test_local_user_accepted_from_anyone():
    assert rcpt("john@beta.test", local_domain=True, resolution=LOCAL_USER).accepted


def test_unknown_local_user_refused_at_rcpt():
    d = rcpt("nobody@beta.test", local_domain=True, resolution=Resolution())
    assert (d.code, d.enhanced) == (550, "5.1.1")


def test_remote_refused_without_auth_or_trust():
    d = rcpt("x@elsewhere.test")
    assert (d.code, d.enhanced) == (554, "5.7.1")
    assert "Relay access denied" in d.reply()


def test_remote_accepted_when_relay_allowed():
    assert rcpt("x@elsewhere.test", relay_allowed=True).accepted


def test_ip_literal_is_never_local():
    d = rcpt("john@[127.0.3.1]", local_domain=True, resolution=LOCAL_USER)
    assert d.code == 554


def test_too_many_recipients_is_temporary():
    d = rcpt("john@beta.test", local_domain=True, resolution=LOCAL_USER, count=100, max_recipients=100)
    assert (d.code, d.enhanced, d.temporary) == (452, "4.5.3", True)


def test_may_relay_trusted_networks_and_auth():
    nets = ["127.0.3.200/29", "2001:db8::/32"]
    assert policy.may_relay(authenticated=False, client_ip="127.0.3.201", trusted_networks=nets)
    assert policy.may_relay(authenticated=False, client_ip="::ffff:127.0.3.202", trusted_networks=nets)
    assert not policy.may_relay(authenticated=False, client_ip="127.0.3.100", trusted_networks=nets)
    assert not policy.may_relay(authenticated=False, client_ip="garbage", trusted_networks=nets)
    assert policy.may_relay(authenticated=True, client_ip="127.0.3.100", trusted_networks=nets)


def test_sender_ownership():
    alex = parse_address("alex@alpha.test")
    assert policy.sender_decision(alex, auth_user="alex@alpha.test", owns_sender=True).accepted
    d = policy.sender_decision(alex, auth_user="john@beta.test", owns_sender=False)
    assert (d.code, d.enhanced) == (553, "5.7.1")
    assert policy.sender_decision(None, auth_user="john@beta.test", owns_sender=False).accepted  # <>
    assert policy.sender_decision(alex, auth_user=None, owns_sender=False).accepted  # port 25


def test_hops():
    assert policy.hops_decision(49, 50) is None
    assert policy.hops_decision(50, 50).code == 554


def test_enhanced_codes_added_once():
    assert add_enhanced_code("503 Error: need MAIL command") == "503 5.5.1 Error: need MAIL command"
    assert add_enhanced_code("250 OK") == "250 2.0.0 OK"
    assert add_enhanced_code("250 2.1.5 Recipient OK") == "250 2.1.5 Recipient OK"
    assert add_enhanced_code("354 End data with <CR><LF>.<CR><LF>").startswith("354 End")
    assert add_enhanced_code("552 Error: Too much mail data") == "552 5.3.4 Error: Too much mail data"


def test_auth_limiter_grows_and_blocks_and_forgets():
    now = [0.0]
    limiter = FailureThrottle(1.0, 3, window=60, clock=lambda: now[0])
    assert [limiter.fail("a"), limiter.fail("a")] == [1.0, 2.0]
    assert not limiter.blocked("a") and not limiter.blocked("b")
    limiter.fail("a")
    assert limiter.blocked("a")
    now[0] = 61
    assert not limiter.blocked("a")


def test_connection_limiter():
    limits = ConnectionLimiter(total=3, per_client=2)
    assert limits.acquire("a") is None and limits.acquire("a") is None
    assert "your address" in limits.acquire("a")
    assert limits.acquire("b") is None
    assert "Too many connections" in limits.acquire("c")
    limits.release("a")
    assert limits.acquire("c") is None


def test_retry_delay_backs_off_with_jitter_and_cap():
    assert retry_delay(1, 300, 3600, 0.5) == 300
    assert retry_delay(2, 300, 3600, 0.5) == 600
    assert retry_delay(3, 300, 3600, 0.0) == 960  # 1200 * 0.8
    assert retry_delay(10, 300, 3600, 0.99) == 3600  # capped
    assert retry_delay(1, 300, 3600, 0.0) != retry_delay(1, 300, 3600, 0.9)


def test_header_helpers():
    msg = b"Received: a\r\n\tb\r\nSubject: x\r\n\r\nReceived: not a header\r\n"
    assert header_names(msg) == [b"received", b"subject"]
    assert msg[header_end(msg) :] == b"\r\nReceived: not a header\r\n"
    assert header_end(b"\r\nbody") == 0


def test_log_lines_have_the_shape_operators_grep_for():
    line = maillog.delivery_line(
        "ABC",
        to="john@beta.test",
        orig_to="j@beta.test",
        relay="local",
        delay=0.5,
        delays=(0.1, 0.2, 0, 0.2),
        dsn="2.0.0",
        status="sent",
        reply="delivered\r\nforged: line",
    )
    assert line.startswith("ABC: to=<john@beta.test>, orig_to=<j@beta.test>, relay=local, delay=0.5, delays=")
    assert "dsn=2.0.0, status=sent (delivered  forged: line)" in line
    assert "\n" not in line
    assert maillog.reject_line("RCPT", "unknown[127.0.3.9]", "554 5.7.1 no", sender="a@b", rcpt="c@d").startswith(
        "NOQUEUE: reject: RCPT from unknown[127.0.3.9]: 554 5.7.1 no; from=<a@b> to=<c@d>"
    )


def test_helo_decision_refuses_control_characters():
    """RFC 5321 4.1.1.1: a domain or an address literal; a NUL or CR would reach Received headers and logs."""
    for bad in ("evil\x00.test", "a\rb", "tab\there", "del\x7f"):
        decision = policy.helo_decision(bad)
        assert decision is not None and decision.code == 501
    for good in ("client.test", "[192.0.2.1]", "[IPv6:2001:db8::1]", "localhost", None, ""):
        assert policy.helo_decision(good) is None


def test_bare_newline_detection():
    """RFC 5321 2.3.8: CRLF only."""
    assert not has_bare_newline(b"a\r\nb\r\n")
    assert not has_bare_newline(b"")
    assert has_bare_newline(b"a\nb\r\n")
    assert has_bare_newline(b"a\r\n\n.\n")
    assert not has_bare_newline(b"a\rb\r\n")  # a bare CR is not a line end, and is not refused here
