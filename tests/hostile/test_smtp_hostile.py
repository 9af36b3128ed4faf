"""Hostile input against a live MTA: random bytes, NUL, bare CR/LF, invalid UTF-8, overlong lines,
commands out of order, pipelined garbage.

Properties, per example (a fresh connection): every reply is a well-formed SMTP reply (three digits, a
space or dash); no command goes unanswered; the server never answers with its internal-error reply and
never logs a traceback; no recipient outside the local domain is ever accepted (the client is not
trusted and not authenticated: an open relay would show here); afterwards the server still greets.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import REPLY_LINE, RawClient, alive

LOCAL_OK = re.compile(rb"^<?alice(\+[^@>]*)?@hostile\.test>?$", re.I)

addresses = st.one_of(
    st.sampled_from(
        [
            b"<alice@hostile.test>",
            b"<ALICE+tag@Hostile.Test>",
            b"<victim@elsewhere.test>",
            b"<victim%elsewhere.test@hostile.test>",
            b"<elsewhere.test!victim@hostile.test>",
            b'<"victim@elsewhere.test"@hostile.test>',
            b"<@relay.test:victim@elsewhere.test>",
            b"<victim@[127.0.0.1]>",
            b"<victim@hostile.test.>",
            b"<>",
            b"<alice@hostile.test> SIZE=99999999",
            b"<alice@hostile.test> BODY=8BITMIME SMTPUTF8",
            "<j\u00f6rg@hostile.test>".encode(),
            b"<\xff\xfe@hostile.test>",
        ]
    ),
    st.binary(max_size=80).map(lambda b: b"<" + b.replace(b"\n", b"") + b">"),
)
verbs = st.sampled_from(
    [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"AUTH", b"BDAT", b"XCLIENT"]
)
garbage = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))
line_body = st.one_of(
    st.tuples(verbs, st.sampled_from([b"", b" "]), st.one_of(addresses, garbage)).map(b"".join),
    garbage,
    st.sampled_from([b"\x00", b"EHLO \x00evil", b"MAIL FROM:<a@b>\rRCPT TO:<c@d>", b"\r", b"EHLO a\x85b", b"AUTH PLAIN AGFsaWNlAHg="]),
    st.integers(min_value=990, max_value=5000).map(lambda n: b"NOOP " + b"A" * n),  # around and over the limit
)
endings = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
sessions = st.lists(st.tuples(line_body, endings).map(b"".join), min_size=1, max_size=15)


def _check_reply(reply: list[bytes], sent: bytes) -> None:
    for line in reply:
        assert REPLY_LINE.match(line) and line.endswith(b"\r\n"), f"malformed reply {line!r} to {sent[:80]!r}"
    assert not reply[-1].startswith(b"451 4.3.0 Internal"), f"internal error on {sent[:80]!r}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=sessions)
@example(lines=[b"MAIL FROM: <U\x80\x9e@a.b>\r\n", b"RCPT TO:<\xff\r@x>\r\n"])  # once crashed the reply (surrogates)
@example(lines=[b"MAIL FROM:<a\xb6b@c.d> SMTPUTF8\r\n"])  # once crashed the parser (invalid UTF-8 under SMTPUTF8)
def test_every_command_gets_a_protocol_reply(hostile_mta, lines: list[bytes]) -> None:
    tree, server = hostile_mta
    client = RawClient(tree.ip, tree.ports["smtp"])
    try:
        banner = client.reply()
        assert banner and banner[0].startswith(b"220 ")
        in_data = False
        for line in [b"EHLO fuzz.test\r\n", *lines, b"\r\n.\r\n", b"QUIT\r\n"]:
            if client.closed:
                break
            client.send(line)
            if in_data:  # message content: the only reply comes after the lone dot
                if line.rstrip(b"\r\n") != b".":
                    continue
                in_data = False
            if line.upper().startswith(b"STARTTLS"):
                break  # the next bytes would have to be a TLS handshake
            reply = client.reply()
            if reply is None:
                break  # the server hung up (421 after too many errors, or QUIT)
            _check_reply(reply, line)
            code = reply[-1][:3]
            if code == b"354":
                in_data = True
            if code == b"334":  # AUTH challenge: cancel it
                client.send(b"*\r\n")
                cancel = client.reply()
                if cancel is None:
                    break
                _check_reply(cancel, b"*")
            if line.upper().startswith(b"RCPT TO:") and code == b"250":
                arg = line[8:].strip().split(b" ", 1)[0]
                assert LOCAL_OK.match(arg), f"relay: an untrusted, unauthenticated client got 250 for {arg!r}"
            if code == b"221" or reply[-1].startswith(b"421"):
                break
    finally:
        client.close()
    assert "Traceback" not in server.log() and "session error" not in server.log(), server.log()[-3000:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=sessions)
def test_pipelined_garbage_in_one_write(hostile_mta, lines: list[bytes]) -> None:
    """Everything in one write: each reply still well formed, the server still serves the next client."""
    tree, server = hostile_mta
    client = RawClient(tree.ip, tree.ports["smtp"])
    try:
        client.send(b"EHLO pipe.test\r\n" + b"".join(lines) + b"QUIT\r\n")
        replies = 0
        while replies < 200 and (reply := client.reply()) is not None:
            for line in reply:
                assert REPLY_LINE.match(line), f"malformed reply {line!r}"
            replies += 1
            if reply[-1][:3] in (b"221", b"421"):
                break
        assert replies >= 2  # banner and at least the EHLO answer
    finally:
        client.close()
    assert "Traceback" not in server.log(), server.log()[-3000:]
    assert alive(tree.ip, tree.ports["smtp"])
