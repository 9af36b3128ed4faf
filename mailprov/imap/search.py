"""SEARCH (RFC 3501 6.4.4): the keys parsed into a tree, and evaluated on one message. Pure.

Strings match as case-insensitive substrings (RFC 3501 says so), header values after RFC 2047
decoding; dates compare by day, INTERNALDATE in UTC and the Date: header in its own zone (sent date,
RFC 3501 6.4.4 SENTBEFORE).
"""

from __future__ import annotations

import contextlib
import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from mailprov.imap import mime
from mailprov.imap.parser import (
    Atom,
    ParseError,
    SeqRange,
    String,
    Token,
    astring,
    is_sequence_set,
    parse_date,
    parse_flags,
    parse_sequence_set,
)

CHARSETS = ("UTF-8", "US-ASCII")
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


@dataclass
class Key:
    """One search key: ``op`` with its operands (``children`` for AND/OR/NOT)."""

    op: str
    arg: object = None
    arg2: object = None
    children: list[Key] = field(default_factory=list)

    @property
    def needs_message(self) -> bool:
        """Whether evaluating it reads the message (headers or text)."""
        if self.op in ("HEADER", "BODY", "TEXT", "SENT"):
            return True
        return any(c.needs_message for c in self.children)


@dataclass
class Candidate:
    """What a key is evaluated on."""

    seq: int
    uid: int
    flags: frozenset[str]
    recent: bool
    size: int
    internaldate: float
    message: Callable[[], bytes]
    _root: mime.Part | None = None

    def root(self) -> mime.Part:
        """The parsed message (loaded on first use)."""
        if self._root is None:
            self._root = mime.parse(self.message())
        return self._root


def parse_search(args: list[Token]) -> tuple[str, Key]:
    """The arguments of SEARCH: the charset (``CHARSET UTF-8``, US-ASCII by default) and the key tree
    (all top-level keys ANDed). An unknown charset is ``NO [BADCHARSET]`` (raised as LookupError)."""
    charset = "US-ASCII"
    pos = 0
    if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        charset = astring(args[1], "charset").decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            raise LookupError(charset)
        pos = 2
    rest = args[pos:]
    if not rest:
        raise ParseError("Missing search key")
    keys: list[Key] = []
    while rest:
        key, rest = _parse_key(rest, charset)
        keys.append(key)
    return charset, keys[0] if len(keys) == 1 else Key("AND", children=keys)


def _text(token: Token, charset: str) -> str:
    raw = astring(token, "search string")
    try:
        return raw.decode("utf-8" if charset == "UTF-8" else "ascii").lower()
    except UnicodeDecodeError as exc:
        raise ParseError("The search string does not match its charset") from exc


def _number(token: Token) -> int:
    if not isinstance(token, Atom) or not token.value.isdigit() or len(token.value) > 20:
        raise ParseError("Expected a number")
    return int(token.value)


def _parse_key(args: list[Token], charset: str) -> tuple[Key, list[Token]]:
    token, rest = args[0], args[1:]

    def need(n: int) -> list[Token]:
        if len(rest) < n:
            raise ParseError("Missing search argument")
        return rest[:n]

    if isinstance(token, list):
        if not token:
            raise ParseError("Empty search group")
        keys: list[Key] = []
        inner = token
        while inner:
            key, inner = _parse_key(inner, charset)
            keys.append(key)
        return Key("AND", children=keys), rest
    if not isinstance(token, Atom):
        raise ParseError("Expected a search key")
    if is_sequence_set(token):
        return Key("SEQ", parse_sequence_set(token)), rest
    name = token.upper()
    if name == "ALL":
        return Key("ALL"), rest
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return Key("FLAG", flag, present), rest
    if name in ("NEW", "OLD", "RECENT"):
        return Key(name), rest
    if name in ("KEYWORD", "UNKEYWORD"):
        (arg,) = need(1)
        flags = parse_flags(arg)
        return Key("FLAG", flags[0], name == "KEYWORD"), rest[1:]
    if name in _HEADER_KEYS:
        (arg,) = need(1)
        return Key("HEADER", _HEADER_KEYS[name], _text(arg, charset)), rest[1:]
    if name == "HEADER":
        field_name, value = need(2)
        return Key("HEADER", astring(field_name, "header name").decode("ascii", "replace").lower(), _text(value, charset)), rest[2:]
    if name in ("BODY", "TEXT"):
        (arg,) = need(1)
        return Key(name, _text(arg, charset)), rest[1:]
    if name in _DATE_KEYS:
        (arg,) = need(1)
        day = parse_date(arg)
        if name.startswith("SENT"):
            return Key("SENT", name[4:], day), rest[1:]
        return Key("DATE", name, day), rest[1:]
    if name in ("LARGER", "SMALLER"):
        (arg,) = need(1)
        return Key(name, _number(arg)), rest[1:]
    if name == "UID":
        (arg,) = need(1)
        return Key("UID", parse_sequence_set(arg)), rest[1:]
    if name == "NOT":
        need(1)
        key, after = _parse_key(rest, charset)
        return Key("NOT", children=[key]), after
    if name == "OR":
        need(2)
        first, after = _parse_key(rest, charset)
        if not after:
            raise ParseError("OR needs two keys")
        second, after = _parse_key(after, charset)
        return Key("OR", children=[first, second]), after
    raise ParseError(f"Unknown search key {token.value[:40]}")


def _compare(day: date, op: str, wanted: date) -> bool:
    if op in ("BEFORE", "SENTBEFORE") or op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted  # SINCE


def _in(value: int, ranges: list[SeqRange], largest: int) -> bool:
    for lo, hi in ranges:
        a = largest if lo is None else lo
        b = largest if hi is None else hi
        if min(a, b) <= value <= max(a, b):
            return True
    return False


@dataclass
class Context:
    """Folder-wide facts a key needs: the highest sequence number and UID (the values of ``*``)."""

    largest_seq: int
    largest_uid: int


def matches(key: Key, msg: Candidate, ctx: Context) -> bool:
    """Whether ``msg`` satisfies ``key``."""
    op = key.op
    if op == "AND":
        return all(matches(c, msg, ctx) for c in key.children)
    if op == "OR":
        return any(matches(c, msg, ctx) for c in key.children)
    if op == "NOT":
        return not matches(key.children[0], msg, ctx)
    if op == "ALL":
        return True
    if op == "FLAG":
        return (key.arg in msg.flags) == key.arg2
    if op == "RECENT":
        return msg.recent
    if op == "NEW":
        return msg.recent and "\\Seen" not in msg.flags
    if op == "OLD":
        return not msg.recent
    if op == "SEQ":
        return _in(msg.seq, key.arg, ctx.largest_seq)  # type: ignore[arg-type]
    if op == "UID":
        return _in(msg.uid, key.arg, ctx.largest_uid)  # type: ignore[arg-type]
    if op == "LARGER":
        return msg.size > key.arg  # type: ignore[operator]
    if op == "SMALLER":
        return msg.size < key.arg  # type: ignore[operator]
    if op == "DATE":
        day = datetime.fromtimestamp(msg.internaldate, UTC).date()
        return _compare(day, key.arg, key.arg2)  # type: ignore[arg-type]
    if op == "SENT":
        value = msg.root().header_value("Date")
        if not value:
            return False
        try:
            sent = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return False
        return _compare(sent.date(), "BEFORE" if key.arg == "BEFORE" else key.arg, key.arg2)  # type: ignore[arg-type]
    if op == "HEADER":
        root = msg.root()
        values = root.headers.get_all(key.arg) or []  # type: ignore[arg-type]
        needle = key.arg2
        if not values:
            return False
        return any(needle in mime.decode_words(" ".join(str(v).split())).lower() for v in values)  # type: ignore[operator]
    if op == "BODY":
        return _body_contains(msg.root(), key.arg)  # type: ignore[arg-type]
    if op == "TEXT":
        root = msg.root()
        return key.arg in mime.decode_words(root.header.decode("utf-8", "replace")).lower() or _body_contains(root, key.arg)  # type: ignore[operator]
    raise AssertionError(op)


def _body_contains(part: mime.Part, needle: str) -> bool:
    """Substring search in the decoded text of every leaf part (transfer encodings undone)."""
    if part.children:
        return any(_body_contains(c, needle) for c in part.children)
    if part.inner is not None:
        return _body_contains(part.inner, needle) or needle in part.inner.header.decode("utf-8", "replace").lower()
    encoding = (part.header_value("Content-Transfer-Encoding") or "").lower()
    data = part.body
    if encoding in ("base64", "quoted-printable"):
        msg = email.message.Message()
        msg["Content-Transfer-Encoding"] = encoding
        msg.set_payload(data)
        with contextlib.suppress(ValueError, TypeError):
            data = msg.get_payload(decode=True) or b""
    charset = dict(part.params()).get("charset", "utf-8")
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    return needle in text.lower()


__all__ = ["Candidate", "Context", "Key", "String", "matches", "parse_search"]
