"""IMAP command syntax (RFC 3501 section 9, LITERAL+ RFC 7888), pure: no sockets, no mailbox.

Two layers:

* :class:`CommandReader` frames the byte stream into whole commands. A command is a line, and each line
  that ends in a literal announcement ``{N}`` or ``{N+}`` is followed by N octets and more of the line.
  The reader tells the caller when to send ``+`` (a synchronizing literal), and refuses overlong lines
  and literals above the limit without reading them into memory.
* :func:`parse_command` turns a framed command into a tag, a command name and a list of tokens
  (atoms, strings, literals, parenthesized lists), and small helpers interpret the tokens one command
  needs: sequence sets, flags, dates, mailbox names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone

MAX_LINE = 64 * 1024  # octets in one line of a command (RFC 7162 advises servers to accept at least 8,192)
MAX_LITERAL = 64 * 1024  # a literal in any command but APPEND (logins, search strings)

_LITERAL_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n$")
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0, 32)) | {127}
_ATOM_BREAK = frozenset(b'(){ "]') | frozenset(range(0, 32)) | {127}  # lenient: '\\', '%', '*' allowed (flags, patterns, sets)
_TAG_BAD = frozenset(b'(){ %*"\\+') | frozenset(range(0, 32)) | {127}


class ParseError(Exception):
    """The command does not follow the grammar; answered ``BAD`` with this message."""


# --- framing ---------------------------------------------------------------------------------------


@dataclass
class RawCommand:
    """A framed command: its lines and literals in order (``parts[0]`` is a line, literals at odd
    indexes follow the line that announced them)."""

    parts: list[bytes] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Octets in the command."""
        return sum(len(p) for p in self.parts)


@dataclass(frozen=True)
class Continue:
    """Send ``+ Ready for literal data`` now: the client waits for it before sending the literal."""


@dataclass(frozen=True)
class TooBig:
    """A line or literal above the limits. ``tag`` names the command when it could be read; ``fatal``
    when the client will send the data anyway (a non-synchronizing literal): close the connection."""

    tag: str | None
    message: str
    fatal: bool


@dataclass(frozen=True)
class Complete:
    """A whole command is here."""

    command: RawCommand


Event = Continue | TooBig | Complete


def _tag_of(line: bytes) -> str | None:
    tag = line.split(b" ", 1)[0]
    if tag and not any(c in _TAG_BAD for c in tag) and len(tag) <= 64:
        return tag.decode("ascii", "replace")
    return None


class CommandReader:
    """Feed bytes; get :class:`Event` objects. ``literal_limit(first_line)`` says how large a literal
    the command may carry (APPEND allows the APPENDLIMIT, others :data:`MAX_LITERAL`)."""

    def __init__(self, *, max_line: int = MAX_LINE, literal_limit: int = 50 * 1024 * 1024) -> None:
        self.max_line = max_line
        self.append_limit = literal_limit
        self.buffer = bytearray()
        self._current: RawCommand | None = None
        self._need = 0  # literal octets still to come
        self._discard = 0  # octets of a refused literal to drop
        self._discard_line = False  # inside an overlong line: drop until its end

    @property
    def in_command(self) -> bool:
        """Whether part of a command has been read (a disconnect now abandons it)."""
        return self._current is not None or bool(self.buffer)

    def limit_for(self, first_line: bytes) -> int:
        """The largest literal the command starting with ``first_line`` may carry."""
        words = first_line.split(b" ", 3)
        verb = words[1].upper() if len(words) > 1 else b""
        return self.append_limit if verb == b"APPEND" else MAX_LITERAL

    def feed(self, data: bytes) -> None:
        """Add received bytes (events come from :meth:`events`)."""
        self.buffer += data

    def next_line(self) -> bytes | None:
        """Take one raw line (up to and including LF) from the buffer, for IDLE's ``DONE``."""
        end = self.buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def events(self) -> Iterable[Event]:
        """What the buffered bytes amount to, in order; stops when more input is needed. A caller that
        acts on a :class:`Complete` (runs the command) may stop iterating and call again later."""
        while True:
            if self._discard:
                n = min(self._discard, len(self.buffer))
                del self.buffer[:n]
                self._discard -= n
                if self._discard:
                    return
            if self._need:
                assert self._current is not None
                if len(self.buffer) < self._need:
                    return
                self._current.parts.append(bytes(self.buffer[: self._need]))
                del self.buffer[: self._need]
                self._need = 0
            end = self.buffer.find(b"\n")
            if self._discard_line:
                if end < 0:
                    self.buffer.clear()
                    return
                del self.buffer[: end + 1]
                self._discard_line = False
                continue
            if end < 0:
                if len(self.buffer) > self.max_line:
                    tag = _tag_of(bytes(self._current.parts[0]) if self._current else bytes(self.buffer))
                    self.buffer.clear()
                    self._current = None
                    self._discard_line = True
                    yield TooBig(tag, "Line too long", False)
                return
            if end + 1 > self.max_line:
                tag = _tag_of(bytes(self._current.parts[0]) if self._current else bytes(self.buffer[:end]))
                del self.buffer[: end + 1]
                self._current = None
                yield TooBig(tag, "Line too long", False)
                continue
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            if self._current is None:
                self._current = RawCommand()
            self._current.parts.append(line)
            match = _LITERAL_END.search(line)
            if not match:
                command, self._current = self._current, None
                yield Complete(command)
                continue
            size, plus = int(match.group(1)), bool(match.group(2))
            limit = self.limit_for(self._current.parts[0])
            if size > limit or self._current.size + size > limit + self.max_line * 4:
                tag = _tag_of(self._current.parts[0])
                self._current = None
                if plus:  # RFC 7888 section 4: the data follows regardless; drop it and hang up
                    self._discard = size
                    yield TooBig(tag, f"Literal of {size} octets is over the limit of {limit}", True)
                    return
                yield TooBig(tag, f"Literal of {size} octets is over the limit of {limit}", False)
                continue
            self._need = size
            if not plus:
                yield Continue()


# --- tokens ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom, or a FETCH attribute with its ``[section]<partial>`` (kept as written)."""

    value: str

    def upper(self) -> str:
        """The atom in upper case (commands and keywords are case-insensitive)."""
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal, as octets."""

    value: bytes
    literal: bool = False


class Nil:
    """The ``NIL`` atom."""

    def __repr__(self) -> str:
        return "NIL"


NIL = Nil()
Token = Atom | String | Nil | list  # a list holds Tokens


@dataclass
class Command:
    """A parsed command: ``name`` in upper case (``UID FETCH`` for UID commands), ``args`` the rest."""

    tag: str
    name: str
    args: list[Token]


class _Lexer:
    def __init__(self, raw: RawCommand) -> None:
        self.parts = raw.parts
        self.index = 0
        self.text = self._strip(raw.parts[0])
        self.pos = 0

    @staticmethod
    def _strip(line: bytes) -> bytes:
        return line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self.index >= len(self.parts) - 1

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def space(self) -> None:
        if self.peek() != 0x20:
            raise ParseError("Expected a space")
        self.pos += 1
        if self.peek() == 0x20:
            raise ParseError("Two spaces in a row")

    def tokens(self, closing: int | None = None) -> list[Token]:
        out: list[Token] = []
        while True:
            c = self.peek()
            if c is None:
                if closing is not None:
                    raise ParseError("Unclosed parenthesis")
                if self.index < len(self.parts) - 1:
                    raise ParseError("Unexpected literal")
                return out
            if c == closing:
                self.pos += 1
                return out
            if out:
                self.space()
                c = self.peek()
                if c == closing and closing is not None:
                    raise ParseError("Space before closing parenthesis")
            out.append(self.token())

    def token(self) -> Token:
        c = self.peek()
        if c is None:
            raise ParseError("Missing argument")
        if c == 0x28:  # (
            self.pos += 1
            return self.tokens(0x29)
        if c == 0x22:  # "
            return self.quoted()
        if c == 0x7B:  # {
            return self.literal()
        return self.atom()

    def quoted(self) -> String:
        out = bytearray()
        self.pos += 1
        while True:
            c = self.peek()
            if c is None:
                raise ParseError("Unterminated quoted string")
            self.pos += 1
            if c == 0x22:
                return String(bytes(out))
            if c == 0x5C:
                e = self.peek()
                if e not in (0x22, 0x5C):
                    raise ParseError("Bad escape in quoted string")
                self.pos += 1
                c = e
            elif c in (0x0D, 0x0A):
                raise ParseError("Line break in quoted string")
            out.append(c)

    def literal(self) -> String:
        match = re.match(rb"\{(\d+)\+?\}$", self.text[self.pos :])
        if not match or self.index + 2 >= len(self.parts):
            raise ParseError("Bad literal")
        data = self.parts[self.index + 1]
        if len(data) != int(match.group(1)):
            raise ParseError("Bad literal size")
        self.index += 2
        self.text = self._strip(self.parts[self.index])
        self.pos = 0
        return String(data, literal=True)

    def atom(self) -> Atom | Nil:
        start = self.pos
        depth = 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if depth:
                if c == 0x5D:
                    depth -= 1
                elif c in (0x0D, 0x0A):
                    break
                self.pos += 1
                continue
            if c == 0x5B:  # [ : a FETCH section, spaces and parentheses allowed until ]
                depth += 1
                self.pos += 1
                continue
            if c in _ATOM_BREAK:
                break
            self.pos += 1
        if depth:
            raise ParseError("Unclosed bracket")
        if self.pos == start:
            raise ParseError(f"Unexpected character {chr(self.text[self.pos])!r}")
        raw = self.text[start : self.pos]
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            value = raw.decode("utf-8", "replace")
        return NIL if value.upper() == "NIL" else Atom(value)


def parse_command(raw: RawCommand) -> Command:
    """Split a framed command into tag, name and arguments; raises :class:`ParseError`."""
    first = raw.parts[0]
    tag = _tag_of(first)
    if tag is None or not first.startswith(tag.encode() + b" "):
        raise ParseError("Missing or invalid tag")
    lexer = _Lexer(raw)
    lexer.pos = len(tag) + 1
    start = lexer.pos
    while lexer.peek() is not None and lexer.peek() != 0x20:
        lexer.pos += 1
    name = lexer.text[start : lexer.pos].decode("ascii", "replace").upper()
    if not name.isalnum():
        raise ParseError("Missing or invalid command")
    if name == "UID":
        lexer.space()
        start = lexer.pos
        while lexer.peek() is not None and lexer.peek() != 0x20:
            lexer.pos += 1
        name = "UID " + lexer.text[start : lexer.pos].decode("ascii", "replace").upper()
    args: list[Token] = []
    if lexer.peek() is not None or lexer.index < len(lexer.parts) - 1:
        lexer.space()
        args = lexer.tokens()
    return Command(tag, name, args)


# --- argument helpers ------------------------------------------------------------------------------


def astring(token: Token, what: str = "argument") -> bytes:
    """An astring (atom, quoted string or literal) as octets."""
    if isinstance(token, String):
        return token.value
    if isinstance(token, Atom):
        if "[" in token.value and not token.value.endswith("]"):
            raise ParseError(f"Invalid {what}")
        return token.value.encode()
    if token is NIL:
        return b"NIL"
    raise ParseError(f"Expected a string for the {what}")


def text_arg(token: Token, what: str = "argument") -> str:
    """An astring decoded as UTF-8 (invalid octets refused)."""
    try:
        return astring(token, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"The {what} is not valid UTF-8") from exc


def expect(args: Sequence[Token], low: int, high: int | None = None) -> None:
    """Check the number of arguments."""
    high = low if high is None else high
    if not low <= len(args) <= high:
        raise ParseError("Wrong number of arguments")


SeqRange = tuple[int | None, int | None]  # None is '*'
_SEQ = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")


def parse_sequence_set(token: Token) -> list[SeqRange]:
    """A sequence set (``1:4,7,9:*``), ``*`` as None. RFC 3501 9: numbers are nz-number."""
    if not isinstance(token, Atom):
        raise ParseError("Expected a sequence set")
    ranges: list[SeqRange] = []
    for piece in token.value.split(","):
        match = _SEQ.match(piece)
        if not match:
            raise ParseError(f"Invalid sequence set {token.value[:50]!r}")
        values: list[int | None] = []
        for g in match.groups():
            if g is None:
                continue
            if g == "*":
                values.append(None)
            else:
                n = int(g)
                if n == 0 or n > 0xFFFFFFFF:
                    raise ParseError(f"Invalid number {g} in the sequence set")
                values.append(n)
        ranges.append((values[0], values[-1]))
    return ranges


def is_sequence_set(token: Token) -> bool:
    """Whether the token reads as a sequence set (SEARCH keys start with one)."""
    return isinstance(token, Atom) and all(_SEQ.match(p) for p in token.value.split(","))


def resolve_sequence(ranges: Iterable[SeqRange], largest: int) -> set[int]:
    """Expand ranges against ``largest`` (the value of ``*``); a range past the end is clipped
    (RFC 3501 6.4.8: ``UID 5:*`` with no UID >= 5 still matches the last message; ``n:m`` is ``m:n``)."""
    out: set[int] = set()
    if largest <= 0:
        return out
    for lo, hi in ranges:
        a = largest if lo is None else lo
        b = largest if hi is None else hi
        if a > b:
            a, b = b, a
        out.update(range(a, min(b, largest) + 1))
    return out


def resolve_uids(ranges: Iterable[SeqRange], uids: Sequence[int]) -> list[int]:
    """The UIDs of ``uids`` (ascending) inside the ranges, ``*`` being the largest UID in use."""
    if not uids:
        return []
    largest = uids[-1]
    bounds = []
    for lo, hi in ranges:
        a = largest if lo is None else lo
        b = largest if hi is None else hi
        bounds.append((min(a, b), max(a, b)))
    if len(bounds) == 1:
        a, b = bounds[0]
        import bisect

        return list(uids[bisect.bisect_left(uids, a) : bisect.bisect_right(uids, b)])
    return [u for u in uids if any(a <= u <= b for a, b in bounds)]


SYSTEM_FLAGS = {"\\seen": "\\Seen", "\\answered": "\\Answered", "\\flagged": "\\Flagged", "\\deleted": "\\Deleted", "\\draft": "\\Draft"}
_KEYWORD = re.compile(r"^[!#$&'+,\-./0-9:;<=>?@A-Z^_`a-z|}~]+$")


def parse_flags(token: Token, *, allow_recent: bool = False) -> list[str]:
    """A flag list (or one flag): system flags in their canonical spelling, keywords as written."""
    items = token if isinstance(token, list) else [token]
    out: list[str] = []
    for item in items:
        if not isinstance(item, Atom):
            raise ParseError("Flags must be atoms")
        value = item.value
        if value.startswith("\\"):
            canonical = SYSTEM_FLAGS.get(value.lower())
            if canonical is None:
                if value.lower() == "\\recent" and allow_recent:
                    continue
                raise ParseError(f"Invalid flag {value[:40]}")
            out.append(canonical)
        elif _KEYWORD.match(value) and len(value) <= 100:
            out.append(value)
        else:
            raise ParseError(f"Invalid keyword {value[:40]!r}")
    return out


MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")
_DATE_TIME = re.compile(r"^( \d|\d\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$")


def _month(name: str) -> int:
    try:
        return [m.lower() for m in MONTHS].index(name.lower()) + 1
    except ValueError:
        raise ParseError(f"Invalid month {name!r}") from None


def parse_date(token: Token) -> date:
    """A SEARCH date (``1-Feb-1994``, RFC 3501 9 ``date``), quoted or not."""
    text = astring(token, "date").decode("ascii", "replace")
    match = _DATE.match(text)
    if not match:
        raise ParseError(f"Invalid date {text[:30]!r}")
    try:
        return date(int(match.group(3)), _month(match.group(2)), int(match.group(1)))
    except ValueError as exc:
        raise ParseError(f"Invalid date {text[:30]!r}") from exc


def parse_date_time(token: Token) -> float:
    """An APPEND date-time (``"17-Jul-1996 02:44:25 -0700"``) as epoch seconds."""
    if not isinstance(token, String):
        raise ParseError("The date-time must be a quoted string")
    text = token.value.decode("ascii", "replace")
    match = _DATE_TIME.match(text)
    if not match:
        raise ParseError(f"Invalid date-time {text[:40]!r}")
    day, mon, year, hh, mm, ss, sign, zh, zm = match.groups()
    try:
        offset = timedelta(hours=int(zh), minutes=int(zm)) * (1 if sign == "+" else -1)
        moment = datetime(int(year), _month(mon), int(day), int(hh), int(mm), int(ss), tzinfo=timezone(offset))
    except ValueError as exc:
        raise ParseError(f"Invalid date-time {text[:40]!r}") from exc
    return moment.timestamp()


def format_date_time(epoch: float) -> str:
    """INTERNALDATE text (RFC 3501 9 ``date-time``), in UTC."""
    moment = datetime.fromtimestamp(int(epoch), UTC)
    return f"{moment.day:2d}-{MONTHS[moment.month - 1]}-{moment.year:04d} {moment:%H:%M:%S} +0000"


# --- output ----------------------------------------------------------------------------------------

_QUOTABLE = re.compile(rb"^[\x01-\x09\x0b\x0c\x0e-\x7f]*$")


def quote(value: bytes | str | None) -> bytes:
    """A string as IMAP output: NIL, a quoted string when it can be one, else a literal."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if len(value) < 1024 and _QUOTABLE.match(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n%s" % (len(value), value)


def astring_out(value: str) -> bytes:
    """A mailbox name or other astring for output (an atom when safe, else quoted)."""
    raw = value.encode("utf-8", "surrogateescape")
    if raw and all(c not in _ATOM_SPECIALS and c < 128 for c in raw) and raw.upper() != b"NIL":
        return raw
    return quote(raw)
