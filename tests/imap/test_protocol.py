"""The pure IMAP modules without sockets: framing, grammar, FETCH rendering, SEARCH (RFC sections cited)."""

from __future__ import annotations

import pytest

from mailprov.imap import fetch, mime
from mailprov.imap.parser import (
    NIL,
    Atom,
    CommandReader,
    Complete,
    Continue,
    ParseError,
    RawCommand,
    String,
    TooBig,
    parse_command,
    parse_date_time,
    parse_sequence_set,
    quote,
    resolve_sequence,
    resolve_uids,
)
from mailprov.imap.search import Candidate, Context, matches, parse_search


def cmd(line: bytes, *literals: bytes):
    parts = [line]
    for lit in literals:
        parts.append(lit)
    return parse_command(RawCommand(parts))


def framed(data: bytes, *, limit: int = 1000) -> list:
    reader = CommandReader(literal_limit=limit)
    reader.feed(data)
    return list(reader.events())


def test_synchronizing_literal_asks_for_continuation_rfc3501_7_5():
    reader = CommandReader()
    reader.feed(b"a LOGIN {4}\r\n")
    events = list(reader.events())
    assert events == [Continue()]
    reader.feed(b"john {2}\r\npw\r\n")
    events = list(reader.events())
    assert isinstance(events[0], Continue) and isinstance(events[1], Complete)
    parsed = parse_command(events[1].command)
    assert parsed.name == "LOGIN" and parsed.args == [String(b"john", True), String(b"pw", True)]


def test_non_synchronizing_literal_needs_no_continuation_rfc7888():
    events = framed(b"a APPEND INBOX {5+}\r\nhello\r\n")
    assert len(events) == 1 and isinstance(events[0], Complete)
    assert parse_command(events[0].command).args[-1] == String(b"hello", True)


def test_literal_over_the_limit_is_refused_without_reading_it():
    events = framed(b"a APPEND INBOX {5000}\r\nb NOOP\r\n", limit=1000)
    assert isinstance(events[0], TooBig) and events[0].tag == "a" and not events[0].fatal
    assert isinstance(events[1], Complete)  # the session goes on: the client never sent the literal


def test_non_synchronizing_literal_over_the_limit_is_fatal_rfc7888_4():
    events = framed(b"a APPEND INBOX {5000+}\r\n", limit=1000)
    assert isinstance(events[0], TooBig) and events[0].fatal


def test_overlong_line_is_refused_and_the_next_command_works():
    reader = CommandReader(max_line=100)
    reader.feed(b"a NOOP " + b"x" * 500)
    events = list(reader.events())
    assert isinstance(events[0], TooBig)
    reader.feed(b"yyy\r\nb NOOP\r\n")
    events = list(reader.events())
    assert [type(e) for e in events] == [Complete]
    assert parse_command(events[0].command).tag == "b"


@pytest.mark.parametrize(
    "line",
    [b"NOOP\r\n", b"a\r\n", b"a  NOOP\r\n", b'a LOGIN "unterminated\r\n', b"a LOGIN (a b\r\n", b"* NOOP\r\n", b"a+b NOOP\r\n"],
)
def test_bad_syntax_raises_parse_error(line):
    with pytest.raises(ParseError):
        cmd(line)


def test_parse_nested_lists_strings_and_sections():
    parsed = cmd(b'A1 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100> "q\\"x" NIL)\r\n')
    assert parsed.tag == "A1" and parsed.name == "UID FETCH"
    assert parsed.args[0] == Atom("1:*")
    assert parsed.args[1] == [Atom("FLAGS"), Atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>"), String(b'q"x'), NIL]


def test_sequence_sets_rfc3501_9():
    assert parse_sequence_set(Atom("1:3,5,7:*")) == [(1, 3), (5, 5), (7, None)]
    assert resolve_sequence(parse_sequence_set(Atom("4:2,*")), 10) == {2, 3, 4, 10}
    with pytest.raises(ParseError):
        parse_sequence_set(Atom("0:3"))


def test_uid_range_beyond_the_last_uid_rfc3501_6_4_8():
    uids = [3, 7, 9]
    assert resolve_uids(parse_sequence_set(Atom("10:*")), uids) == [9]  # n:* always includes the last
    assert resolve_uids(parse_sequence_set(Atom("10:20")), uids) == []
    assert resolve_uids(parse_sequence_set(Atom("1:7,9")), uids) == [3, 7, 9]


def test_date_time_and_quoting():
    assert parse_date_time(String(b"17-Jul-1996 02:44:25 -0700")) == 837596665.0
    assert quote(b'a"b') == b'"a\\"b"'
    assert quote("é") == b"{2}\r\n\xc3\xa9"
    assert quote(None) == b"NIL"


MESSAGE = (
    b'From: "Alex A" <alex@alpha.test>\r\nTo: john@beta.test, team: a@x.test, b@y.test;\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n'
    b"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <m1@alpha.test>\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello there\r\n"
    b"--b1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n"
)


def render(spec: bytes, data: bytes = MESSAGE) -> bytes:
    items = fetch.parse_items(cmd(b"a FETCH 1 " + spec + b"\r\n").args[1], uid=False)
    return fetch.render(1, 42, items, flags=["\\Seen"], size=len(data), internaldate=0.0, message=lambda: data)


def test_fetch_sections_rfc3501_6_4_5():
    assert render(b"BODY[1]") == b"* 1 FETCH (BODY[1] {11}\r\nhello there)\r\n"
    assert render(b"BODY[2.HEADER]") == b"* 1 FETCH (BODY[2.HEADER] {18}\r\nSubject: inner\r\n\r\n)\r\n"
    assert render(b"BODY[2.1]") == b"* 1 FETCH (BODY[2.1] {10}\r\ninner body)\r\n"
    assert render(b"BODY[1.MIME]") == b"* 1 FETCH (BODY[1.MIME] {43}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n)\r\n"
    assert (
        render(b"BODY[HEADER.FIELDS (message-id)]")
        == b"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {31}\r\nMessage-ID: <m1@alpha.test>\r\n\r\n)\r\n"
    )
    assert render(b"BODY[]<0.4>") == b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\n"  # the origin only (7.4.2)
    assert render(b"BODY[]<5000.10>") == b"* 1 FETCH (BODY[]<5000> {0}\r\n)\r\n"
    assert render(b"BODY[3]") == b"* 1 FETCH (BODY[3] {0}\r\n)\r\n"


def test_fetch_peek_does_not_set_seen_but_body_does_rfc3501_6_4_5():
    peek = fetch.parse_items(Atom("BODY.PEEK[]"), uid=False)[0]
    body = fetch.parse_items(Atom("BODY[TEXT]"), uid=False)[0]
    assert not peek.sets_seen and body.sets_seen
    assert fetch.parse_items(Atom("RFC822"), uid=False)[0].sets_seen


def test_uid_fetch_always_returns_uid_rfc3501_6_4_8():
    items = fetch.parse_items(Atom("FLAGS"), uid=True)
    assert [i.name for i in items] == ["UID", "FLAGS"]


def test_envelope_with_groups_rfc3501_7_4_2():
    env = fetch.envelope(mime.parse(MESSAGE))
    assert env == (
        b'("Mon, 30 Nov 2026 10:00:00 +0100" "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" (("Alex A" NIL "alex" "alpha.test")) '
        b'(("Alex A" NIL "alex" "alpha.test")) (("Alex A" NIL "alex" "alpha.test")) '
        b'((NIL NIL "john" "beta.test")(NIL NIL "team" NIL)(NIL NIL "a" "x.test")(NIL NIL "b" "y.test")(NIL NIL NIL NIL)) '
        b'NIL NIL NIL "<m1@alpha.test>")'
    )


def test_bodystructure_multipart_with_message_rfc822():
    out = fetch.body_structure(mime.parse(MESSAGE), extended=True)
    assert out.startswith(
        b'(("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28 ('
    )
    assert out.endswith(b' "MIXED" ("boundary" "b1") NIL NIL NIL)')
    assert b'("attachment" NIL)' in out
    basic = fetch.body_structure(mime.parse(MESSAGE), extended=False)
    assert basic.endswith(b' "MIXED")')


def search(args: bytes, **kw) -> bool:
    _charset, key = parse_search(cmd(b"a SEARCH " + args + b"\r\n").args)
    base = dict(seq=1, uid=5, flags=frozenset({"\\Seen"}), recent=False, size=len(MESSAGE), internaldate=1796025600.0)
    base.update(kw)
    return matches(key, Candidate(message=lambda: MESSAGE, **base), Context(3, 9))


def test_search_keys_rfc3501_6_4_4():
    assert search(b"ALL") and search(b"SEEN") and not search(b"UNSEEN")
    with pytest.raises(ParseError):  # US-ASCII is the default charset: 8-bit octets do not fit it
        search(b"SUBJECT gr\xc3\xbc\xc3\x9f")
    assert search(b'CHARSET UTF-8 SUBJECT "GR\xc3\x9c\xc3\x9f"')  # decoded RFC 2047, case-insensitive
    assert search(b"FROM alex") and search(b"TO john@beta") and not search(b"CC john")
    assert search(b"BODY there") and not search(b"BODY nowhere")
    assert search(b"TEXT inner") and search(b'HEADER Message-ID "m1@"')
    assert search(b"OR DELETED LARGER 10") and search(b"NOT DELETED")
    assert search(b"UID 5") and not search(b"UID 6:8") and search(b"UID 9:*", uid=9)
    assert search(b"1:*") and search(b"(SEEN FROM alex)")
    assert search(b"SENTON 30-Nov-2026") and search(b"SENTSINCE 1-Nov-2026") and not search(b"SENTBEFORE 30-Nov-2026")
    assert search(b"SINCE 30-Nov-2026") and search(b"ON 30-Nov-2026") and not search(b"BEFORE 30-Nov-2026")


def test_search_unknown_charset_and_bad_keys():
    with pytest.raises(LookupError):
        parse_search(cmd(b"a SEARCH CHARSET KOI8-R ALL\r\n").args)
    for bad in (b"FROOM x", b"OR SEEN", b"LARGER x", b"SINCE 31-Foo-2020"):
        with pytest.raises(ParseError):
            parse_search(cmd(b"a SEARCH " + bad + b"\r\n").args)


def test_metadata_fetch_fast_path_renders_like_the_general_one(tmp_path):
    """FETCH of FLAGS/UID/RFC822.SIZE/INTERNALDATE skips reading messages; its lines equal fetch.render's."""
    from mailprov.imap.session import Session
    from mailprov.imap.store import Store

    store = Store(tmp_path / "m", host="test")
    folder = store.open("INBOX")
    folder.append(b"Subject: a\r\n\r\nx\r\n", ["\\Seen", "$Work"], 1700000000.0)
    folder.append(b"Subject: b\r\n\r\ny\r\n", [], 1700000100.0)
    folder.close()
    session = Session(hostname="h", secure=True, tls_available=False, plaintext_ok=False, append_limit=100, open_store=lambda _u: store)
    session.state, session.store = "auth", store

    class Out(list):
        def write(self, data: bytes) -> None:
            self.append(data)

    session.execute(cmd(b"a SELECT INBOX\r\n"), Out())
    out = Out()
    session.execute(cmd(b"b UID FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)\r\n"), out)
    sel = session.selected
    items = fetch.parse_items(cmd(b"b FETCH 1 (FLAGS UID RFC822.SIZE INTERNALDATE)\r\n").args[1], uid=True)
    expected = b"".join(
        fetch.render(i + 1, u, items, flags=sel.flags(u), size=sel.infos[u].size, internaldate=sel.infos[u].internaldate, message=bytes)
        for i, u in enumerate(sel.uids)
    )
    assert b"".join(out[:-1]) == expected
    assert b"FLAGS (\\Seen $Work)" in expected and b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in expected
