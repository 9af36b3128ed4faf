"""The pure POP3 state machine, without sockets."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from mailprov.pop3.mailbox import Message
from mailprov.pop3.protocol import MAX_ERRORS, Close, Login, LoginOutcome, Reply, Retrieve, Session, StartTLS, State, Update


def session(**kw) -> Session:
    args = {"hostname": "mail.example.test", "secure": False, "tls_available": True, "plaintext_ok": False}
    args.update(kw)
    return Session(**args)


def text(actions) -> str:
    return "".join(a.data.decode() for a in actions if isinstance(a, Reply))


def logged_in(count: int = 3) -> tuple[Session, list[Message]]:
    s = session(secure=True)
    msgs = [Message(f"name{i}", "new", 100 + i, f"uid{i}") for i in range(1, count + 1)]
    s.feed(b"USER john@example.test")
    (login,) = s.feed(b"PASS pw")
    assert isinstance(login, Login)
    s.login_result(LoginOutcome.OK, login.user, msgs)
    return s, msgs


def test_greeting_has_no_apop_timestamp():
    assert text(session().greeting()) == "+OK mail.example.test POP3 server ready\r\n"


def test_capa_before_tls_offers_stls_but_no_login():
    caps = text(session().feed(b"CAPA")).split("\r\n")
    assert "STLS" in caps and "USER" not in caps and "SASL PLAIN" not in caps
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"):
        assert cap in caps
    assert caps[-2:] == [".", ""]


def test_no_password_before_tls_unless_trusted():
    s = session()
    for line in (b"USER john", b"PASS x", b"AUTH PLAIN AGpvaG4AeA=="):
        reply = text(s.feed(line))
        assert reply.startswith("-ERR [AUTH]") and "STLS" in reply
    trusted = session(plaintext_ok=True)
    assert text(trusted.feed(b"USER john")).startswith("+OK")
    assert isinstance(trusted.feed(b"PASS x")[0], Login)


def test_stls_then_fresh_authorization_state():
    s = session(plaintext_ok=True)
    s.feed(b"USER john@example.test")
    actions = s.feed(b"STLS")
    assert text(actions) == "+OK Begin TLS negotiation\r\n" and isinstance(actions[-1], StartTLS)
    assert s.feed(b"NOOP") == []  # nothing is read while the handshake runs
    s.tls_started()
    assert "-ERR" in text(s.feed(b"PASS x"))  # the USER from before TLS is forgotten
    caps = text(s.feed(b"CAPA"))
    assert "STLS" not in caps and "USER" in caps
    assert text(s.feed(b"STLS")).startswith("-ERR")


def test_stls_not_offered_on_implicit_tls():
    s = session(secure=True, tls_available=False)
    assert "STLS" not in text(s.feed(b"CAPA"))
    assert text(s.feed(b"STLS")).startswith("-ERR")


def test_login_action_hides_the_password_and_names_bare_users():
    s = session(secure=True, default_domain="example.test")
    s.feed(b"USER John")
    (login,) = s.feed(b"PASS two words")
    assert login == Login("john@example.test", "two words")
    assert "two words" not in repr(login)


def test_login_outcomes_and_response_codes():
    for outcome, expected in (
        (LoginOutcome.BAD, "-ERR [AUTH] Authentication failed\r\n"),
        (LoginOutcome.BUSY, "-ERR [IN-USE]"),
        (LoginOutcome.ERROR, "-ERR [SYS/TEMP]"),
    ):
        s = session(secure=True)
        s.feed(b"USER a@b")
        s.feed(b"PASS c")
        actions = s.login_result(outcome, "a@b")
        assert text(actions).startswith(expected) and s.state is State.AUTHORIZATION
        assert not any(isinstance(a, Close) for a in actions)
    s = session(secure=True)
    s.feed(b"USER a@b")
    s.feed(b"PASS c")
    actions = s.login_result(LoginOutcome.BAD_DISCONNECT, "a@b")
    assert isinstance(actions[-1], Close) and text(actions).startswith("-ERR [AUTH]")


def test_auth_plain_initial_and_continued():
    s = session(secure=True)
    token = base64.b64encode(b"\0john@example.test\0secret").decode()
    (login,) = s.feed(f"AUTH PLAIN {token}".encode())
    assert login == Login("john@example.test", "secret")
    s = session(secure=True)
    assert text(s.feed(b"AUTH PLAIN")) == "+ \r\n"
    (login,) = s.feed(token.encode())
    assert login == Login("john@example.test", "secret")


def test_auth_plain_cancel_garbage_and_proxy():
    s = session(secure=True)
    s.feed(b"AUTH PLAIN")
    assert text(s.feed(b"*")).startswith("-ERR")
    assert text(s.feed(b"AUTH PLAIN !!!notbase64")).startswith("-ERR")
    assert text(s.feed(b"AUTH PLAIN " + base64.b64encode(b"only-one-part"))).startswith("-ERR")
    assert text(s.feed(b"AUTH CRAM-MD5")).startswith("-ERR")
    # Acting as another user (authzid) is refused by failing the login, like a wrong password.
    (login,) = s.feed(b"AUTH PLAIN " + base64.b64encode(b"mary@example.test\0john@example.test\0pw"))
    assert login.password is None
    assert "PLAIN" in text(session().feed(b"AUTH"))


def test_apop_is_refused():
    assert text(session(secure=True).feed(b"APOP john 0123456789abcdef")).startswith("-ERR")
    assert "APOP" not in text(session(secure=True).feed(b"CAPA"))


def test_transaction_commands():
    s, msgs = logged_in()
    assert text(s.feed(b"STAT")) == "+OK 3 306\r\n"
    assert text(s.feed(b"LIST")) == "+OK 3 messages (306 octets)\r\n1 101\r\n2 102\r\n3 103\r\n.\r\n"
    assert text(s.feed(b"LIST 2")) == "+OK 2 102\r\n"
    assert text(s.feed(b"UIDL")) == "+OK unique-id listing follows\r\n1 uid1\r\n2 uid2\r\n3 uid3\r\n.\r\n"
    assert text(s.feed(b"uidl 3")) == "+OK 3 uid3\r\n"
    assert s.feed(b"RETR 1") == [Retrieve(msgs[0])] and msgs[0].retrieved
    assert s.feed(b"TOP 2 5") == [Retrieve(msgs[1], 5)] and not msgs[1].retrieved
    assert text(s.feed(b"DELE 2")).startswith("+OK")
    assert text(s.feed(b"STAT")) == "+OK 2 204\r\n"
    assert text(s.feed(b"LIST")) == "+OK 2 messages (204 octets)\r\n1 101\r\n3 103\r\n.\r\n"
    for line in (b"RETR 2", b"DELE 2", b"LIST 2", b"UIDL 2", b"TOP 2 1"):
        assert text(s.feed(line)).startswith("-ERR")
    assert text(s.feed(b"RSET")) == "+OK maildrop has 3 messages (306 octets)\r\n"
    assert not msgs[1].deleted
    assert text(s.feed(b"NOOP")) == "+OK\r\n"
    s.feed(b"DELE 3")
    assert s.feed(b"QUIT") == [Update()]
    actions = s.update_result(1, True)
    assert text(actions).startswith("+OK") and isinstance(actions[-1], Close)


def test_bad_message_numbers():
    s, _ = logged_in()
    for arg in (b"0", b"4", b"-1", b"+1", b"abc", b"\xef\xbc\x91", b"99999999999999", b""):
        assert text(s.feed(b"RETR " + arg)).startswith("-ERR"), arg
        s._errors = 0
    assert text(s.feed(b"TOP 1")).startswith("-ERR")
    assert text(s.feed(b"TOP 1 x")).startswith("-ERR")


def test_commands_in_the_wrong_state():
    s = session(secure=True)
    assert text(s.feed(b"STAT")) == "-ERR STAT is not allowed now\r\n"
    s2, _ = logged_in()
    assert text(s2.feed(b"USER john")) == "-ERR USER is not allowed now\r\n"
    assert text(s2.feed(b"FROB")) == "-ERR unknown command\r\n"


def test_update_failure_is_an_err():
    s, _ = logged_in()
    s.feed(b"QUIT")
    assert text(s.update_result(0, False)).startswith("-ERR [SYS/TEMP]")


def test_too_many_errors_closes():
    s = session()
    actions = []
    for _ in range(MAX_ERRORS):
        actions = s.feed(b"BOGUS")
    assert isinstance(actions[-1], Close) and s.state is State.DONE
    assert s.feed(b"CAPA") == []


def test_quit_in_authorization():
    actions = session().feed(b"QUIT")
    assert text(actions).startswith("+OK") and isinstance(actions[-1], Close)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60) | st.sampled_from([b"USER a", b"PASS b", b"AUTH PLAIN", b"CAPA", b"STLS", b"QUIT"]), max_size=30))
def test_hostile_input_never_raises(lines):
    """Any sequence of lines gets well-formed replies and never an exception."""
    for s in (session(), session(secure=True), logged_in()[0]):
        for line in lines:
            for action in s.feed(line.replace(b"\n", b"")):
                if isinstance(action, Reply):
                    assert action.data.endswith(b"\r\n")
                    assert action.data[:1] in (b"+", b"-")


def test_only_protocol_errors_count_toward_the_limit():
    """A well-behaved client asking for messages that are not there (RFC 1939 5: "-ERR no such message")
    is not hung up on: only protocol errors (unknown commands, bad syntax) count, as in Dovecot."""
    s, _ = logged_in(2)
    for _ in range(MAX_ERRORS * 3):
        for line in (b"RETR 9", b"LIST 3", b"UIDL 7", b"TOP 5 0", b"DELE 4"):
            assert text(s.feed(line)).startswith("-ERR no such message")
    s.feed(b"DELE 1")
    for _ in range(MAX_ERRORS * 3):
        assert text(s.feed(b"RETR 1")) == "-ERR message 1 is deleted\r\n"
    assert s.state is State.TRANSACTION
    assert text(s.feed(b"STAT")).startswith("+OK")
    for _ in range(MAX_ERRORS - 1):
        assert not any(isinstance(a, Close) for a in s.feed(b"RETR x"))  # bad syntax: counted
    actions = s.feed(b"BOGUS")
    assert isinstance(actions[-1], Close) and s.state is State.DONE


def test_refusals_before_login_do_not_count():
    """Asking for a password without TLS, or cancelling AUTH, is refused but is not a protocol error."""
    s = session()
    for _ in range(MAX_ERRORS * 2):
        assert text(s.feed(b"USER john")).startswith("-ERR [AUTH]")
    trusted = session(plaintext_ok=True)
    for _ in range(MAX_ERRORS * 2):
        assert text(trusted.feed(b"AUTH PLAIN")) == "+ \r\n"
        assert text(trusted.feed(b"*")) == "-ERR authentication cancelled\r\n"
    assert s.state is State.AUTHORIZATION and trusted.state is State.AUTHORIZATION
