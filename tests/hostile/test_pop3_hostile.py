"""Hostile input against POP3: the pure state machine (many examples) and a live server (fewer).

Properties: no exception; every response is ``+OK``/``-ERR`` (or the SASL ``+ `` continuation) ending in
CRLF, multi-line ones end with the ``.`` line; commands out of order get ``-ERR`` and change nothing;
nothing is deleted without QUIT; a password never comes back in a reply; a live server keeps serving.
"""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailprov.pop3.mailbox import Message
from mailprov.pop3.protocol import Close, Login, LoginOutcome, Reply, Session, StartTLS, State, Update
from mailprov.users import UserDB
from tests.hostile.conftest import RawClient, next_ip
from tests.peers.pop3_server import POP3Thread, pop3_sections

SECRET = "s3cr3t-Passw0rd"
RESPONSE = re.compile(rb"^(\+OK|-ERR)( [^\r\n]*)?\r\n|^\+ [^\r\n]*\r\n")
MULTI = (b"CAPA", b"LIST", b"UIDL", b"RETR", b"TOP", b"AUTH")

commands = st.sampled_from(
    [b"USER", b"PASS", b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP", b"DELE", b"NOOP", b"RSET", b"CAPA", b"STLS", b"AUTH", b"APOP", b""]
)
args = st.one_of(
    st.sampled_from([b"", b"1", b"2", b"0", b"-1", b"99999999999", b"1 5", b"alice", b"PLAIN", b"PLAIN =", b"*", SECRET.encode()]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
lines = st.one_of(
    st.tuples(commands, st.sampled_from([b" ", b"  ", b""]), args).map(b"".join),
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"\x00", b"QUIT\x00", b"retr 1\r", "ÜSER x".encode(), b"\xff\xfe", b"A" * 3000]),
)


def _check(actions: list, fed: bytes) -> None:
    for action in actions:
        if isinstance(action, Reply):
            data = action.data
            assert RESPONSE.match(data), f"bad response {data[:80]!r} to {fed[:60]!r}"
            assert SECRET.encode() not in data, "a password was echoed"
            if len(data.split(b"\r\n")) > 2 and not data.startswith(b"-ERR"):
                assert data.endswith(b"\r\n.\r\n"), f"unterminated multi-line response {data[-40:]!r}"


@settings(max_examples=400, deadline=None)
@given(
    feed=st.lists(lines, max_size=30),
    secure=st.booleans(),
    plaintext_ok=st.booleans(),
    outcome=st.sampled_from(list(LoginOutcome)),
)
def test_state_machine_answers_everything(feed: list[bytes], secure: bool, plaintext_ok: bool, outcome: LoginOutcome) -> None:
    session = Session(hostname="pop.hostile.test", secure=secure, tls_available=not secure, plaintext_ok=plaintext_ok)
    messages = [Message(f"name{i}", "new", 100 + i, f"uid{i}") for i in range(3)]
    _check(session.greeting(), b"")
    for line in feed:
        before = session.state
        actions = session.feed(line[:2048])
        _check(actions, line)
        if before in (State.AUTHORIZATION, State.TRANSACTION) and not any(isinstance(a, (Login, Update)) for a in actions):
            assert any(isinstance(a, Reply) for a in actions), f"no answer to {line[:60]!r}"
        for action in actions:
            if isinstance(action, Login):
                assert SECRET not in repr(action)
                _check(session.login_result(outcome, action.user, messages), line)
            elif isinstance(action, StartTLS):
                _check(session.tls_started(), line)
            elif isinstance(action, Update):
                pytest.fail("UPDATE without QUIT")  # never fed QUIT here
        if any(isinstance(a, Close) for a in actions):
            break


@pytest.fixture(scope="module")
def pop3_live(tmp_path_factory):
    from mailprov import config as config_mod

    root = tmp_path_factory.mktemp("pop3-hostile")
    config = config_mod.from_dict(
        {
            "server": {"hostname": "pop.hostile.test", "domains": ["hostile.test"]},
            "paths": {
                "queue_dir": str(root / "queue"),
                "mail_dir": str(root / "mail"),
                "state_dir": str(root / "state"),
                "users_file": str(root / "etc" / "users"),
                "aliases_file": str(root / "etc" / "aliases"),
            },
            "pop3": pop3_sections(next_ip(), trusted=True, max_auth_failures=1000, auth_failure_delay=0.01),
        }
    )
    UserDB(config.paths.users_file).add("alice@hostile.test", SECRET)
    box = root / "mail" / "hostile.test" / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    for i in range(3):
        (box / "new" / f"17000000{i}.M1P1Q{i}.pop,S=20").write_bytes(f"Subject: {i}\r\n\r\n.dot\r\n".encode())
    errors: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record)

    handler = Collect()
    logging.getLogger("mailprov.pop3").addHandler(handler)
    with POP3Thread(config) as pop:
        yield pop, box, errors
    logging.getLogger("mailprov.pop3").removeHandler(handler)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(feed=st.lists(lines, max_size=12), pipelined=st.booleans(), login=st.booleans())
def test_live_server_answers_everything(pop3_live, feed: list[bytes], pipelined: bool, login: bool) -> None:
    pop, box, errors = pop3_live
    client = RawClient(*pop.plain, source="127.0.0.1")
    try:
        assert (client._line() or b"").startswith(b"+OK")
        prefix = [b"USER alice@hostile.test", b"PASS " + SECRET.encode()] if login else []
        sent = [*prefix, *feed]
        if pipelined:
            client.send(b"".join(line + b"\r\n" for line in sent))
        for line in sent:
            if not pipelined:
                client.send(line + b"\r\n")
            if line.upper().startswith(b"STLS"):
                break
            first = client._line()
            if first is None:
                break
            assert first.startswith((b"+OK", b"-ERR", b"+ ")), f"bad response {first!r} to {line[:60]!r}"
            assert SECRET.encode() not in first
            if first.startswith(b"+ "):
                client.send(b"*\r\n")
                assert (client._line() or b"-ERR").startswith(b"-ERR")
            verb = line[:4].upper()
            if first.startswith(b"+OK") and verb in MULTI and not (verb in (b"LIST", b"UIDL") and line[4:].strip()):
                for _ in range(100_000):  # read the body to its terminating dot line
                    body = client._line()
                    if body is None or body == b".\r\n":
                        break
    finally:
        client.close()
    assert not errors, [r.getMessage() for r in errors]
    assert len(list((box / "new").iterdir())) + len(list((box / "cur").iterdir())) == 3, "a message was deleted without QUIT"
