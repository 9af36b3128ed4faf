"""FETCH (RFC 3501 6.4.5, 7.4.2): the attribute list parsed, and one message's response rendered. Pure.

Rendering follows the RFC's grammar to the letter: ENVELOPE and BODYSTRUCTURE as 9.``envelope`` and
9.``body``, header values undecoded, sections returned octet for octet, a partial fetch answered with
its origin only (``BODY[]<0>``).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from mailprov.imap import mime
from mailprov.imap.parser import NIL, Atom, ParseError, Token, format_date_time, quote

_MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
_SIMPLE = {"FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
_SECTION = re.compile(r"^(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$", re.IGNORECASE)
_SECTION_TEXT = re.compile(
    r"^((?:[1-9]\d*\.)*[1-9]\d*)?(?:(?:^|\.)(HEADER|HEADER\.FIELDS|HEADER\.FIELDS\.NOT|TEXT|MIME)(?: \((.*)\))?)?$", re.I
)
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext


@dataclass(frozen=True)
class Item:
    """One FETCH attribute. ``name`` is the simple attribute, or ``BODY[]`` for any section fetch."""

    name: str
    section: tuple[int, ...] = ()
    text: str = ""  # '', HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False

    @cached_property
    def label(self) -> str:
        """The item's name in the response."""
        if self.name != "BODY[]":
            return self.name
        spec = ".".join(str(n) for n in self.section)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{spec}]{origin}"

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this sets \\Seen (RFC 3501 6.4.5: BODY[...] and RFC822 do, PEEK does not)."""
        return (self.name == "BODY[]" and not self.peek) or self.name in ("RFC822", "RFC822.TEXT")

    @property
    def needs_message(self) -> bool:
        """Whether the message's octets are needed to answer."""
        return self.name not in ("FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE")


def parse_items(token: Token, *, uid: bool) -> list[Item]:
    """The attribute list of FETCH (a macro, one attribute or a parenthesized list). UID FETCH always
    returns UID (RFC 3501 6.4.8), so it is added first."""
    if isinstance(token, Atom) and token.upper() in _MACROS:
        items = [Item(n) for n in _MACROS[token.upper()]]
    else:
        tokens = token if isinstance(token, list) else [token]
        if not tokens:
            raise ParseError("Empty FETCH attribute list")
        items = [_parse_item(t) for t in tokens]
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, Item("UID"))
    return items


def _parse_item(token: Token) -> Item:
    if not isinstance(token, Atom):
        raise ParseError("Invalid FETCH attribute")
    upper = token.upper()
    if upper in _SIMPLE:
        return Item(upper)
    match = _SECTION.match(token.value)
    if not match:
        raise ParseError(f"Invalid FETCH attribute {token.value[:60]!r}")
    peek = match.group(1).upper() == "BODY.PEEK"
    spec = match.group(2).strip()
    partial = None
    if match.group(3) is not None:
        partial = (int(match.group(3)), int(match.group(4)))
        if partial[1] == 0 or partial[0] > 0xFFFFFFFF or partial[1] > 0xFFFFFFFF:
            raise ParseError("Invalid partial range")
    sec = _SECTION_TEXT.match(spec)
    if not sec:
        raise ParseError(f"Invalid section {spec[:60]!r}")
    numbers = tuple(int(n) for n in sec.group(1).split(".")) if sec.group(1) else ()
    text = (sec.group(2) or "").upper()
    fields: tuple[str, ...] = ()
    if text.startswith("HEADER.FIELDS"):
        if sec.group(3) is None:
            raise ParseError("HEADER.FIELDS needs a list of field names")
        names = sec.group(3).replace('"', " ").split()
        if not names or not all(_FIELD_NAME.match(n) for n in names):
            raise ParseError("Invalid header field names")
        fields = tuple(n.upper() for n in names)
    elif sec.group(3) is not None:
        raise ParseError("Only HEADER.FIELDS takes a list")
    if text == "MIME" and not numbers:
        raise ParseError("MIME needs a part number")
    return Item("BODY[]", numbers, text, fields, partial, peek)


# --- rendering ---------------------------------------------------------------------------------------


def _nstring(value: str | bytes | None) -> bytes:
    return quote(value)


def _split_fields(header: bytes) -> list[tuple[str, bytes]]:
    """Header block to (lower-case name, raw field with its continuation lines)."""
    out: list[tuple[str, bytes]] = []
    for line in header.split(b"\r\n")[:-1] if header.endswith(b"\r\n") else header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and out:
            name, raw = out[-1]
            out[-1] = (name, raw + line + b"\r\n")
        else:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            out.append((name, line + b"\r\n"))
    return out


def header_fields(header: bytes, names: Iterable[str], *, negate: bool) -> bytes:
    """The fields of ``header`` named (or, negated, not named) in ``names``, then the blank line."""
    wanted = {n.lower() for n in names}
    picked = [raw for name, raw in _split_fields(header) if (name in wanted) != negate]
    return b"".join(picked) + b"\r\n"


def section_data(root: mime.Part, item: Item) -> bytes | None:
    """The octets a BODY[section] names, or None when the part does not exist (RFC 3501 6.4.5)."""
    if not item.section:
        header, body = root.header, root.body
        if not item.text:
            return header + body
    else:
        part = mime.find(root, list(item.section))
        if part is None:
            return None
        if item.text == "MIME":
            return part.header
        if not item.text:
            return part.body  # the part's content, without its MIME header
        if part.inner is None:  # HEADER and TEXT of a part exist only for a message/rfc822 part
            return None
        header, body = part.inner.header, part.inner.body
    if item.text == "HEADER":
        return header
    if item.text == "TEXT":
        return body
    return header_fields(header, item.fields, negate=item.text == "HEADER.FIELDS.NOT")


def _addresses(value: str | None) -> bytes:
    if value is None:
        return b"NIL"
    out: list[bytes] = []
    for group, members in _address_groups(value):
        if group is not None:
            out.append(b"(NIL NIL " + quote(group) + b" NIL)")
        for name, addr in members:
            local, at, host = addr.rpartition("@")
            if not at:
                local, host = addr, ""
            out.append(b"(" + _nstring(name or None) + b" NIL " + _nstring(local or None) + b" " + _nstring(host or None) + b")")
        if group is not None:
            out.append(b"(NIL NIL NIL NIL)")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def _address_groups(value: str) -> list[tuple[str | None, list[tuple[str, str]]]]:
    """Split an address list into groups (RFC 5322 3.4: ``name: a, b;``) of (display name, address)."""
    groups: list[tuple[str | None, list[tuple[str, str]]]] = []
    buf: list[str] = []
    quoted = False
    depth = 0  # comments
    angle = False
    group: str | None = None
    chunks: list[str] = []

    def flush_address() -> None:
        text = "".join(buf).strip()
        buf.clear()
        if text:
            chunks.append(text)

    def close(name: str | None) -> None:
        members = [pair for pair in email.utils.getaddresses(chunks) if pair[1] or pair[0]]
        chunks.clear()
        if name is not None or members:
            groups.append((name, [(n, a) for n, a in members if a]))

    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            buf.append(c)
            if c == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif depth:
            buf.append(c)
            depth += c == "("
            depth -= c == ")"
        elif c == '"':
            quoted = True
            buf.append(c)
        elif c == "(":
            depth = 1
            buf.append(c)
        elif c == "<":
            angle = True
            buf.append(c)
        elif c == ">":
            angle = False
            buf.append(c)
        elif c == ":" and not angle and group is None:
            name = "".join(buf).strip()  # the text since the last comma is the group's display name
            buf.clear()
            close(None)  # addresses before the group stand alone
            group = name
        elif c == ";" and not angle and group is not None:
            flush_address()
            close(group.strip('"'))
            group = None
        elif c == "," and not angle:
            flush_address()
        else:
            buf.append(c)
        i += 1
    flush_address()
    close(group.strip('"') if group is not None else None)
    return [(g, m) for g, m in groups if g is not None or m]


def envelope(part: mime.Part) -> bytes:
    """ENVELOPE (RFC 3501 7.4.2): date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to,
    message-id; sender and reply-to default to from."""
    get = part.header_value
    sender_from = get("From")
    fields = [
        _nstring(get("Date")),
        _nstring(get("Subject")),
        _addresses(sender_from),
        _addresses(get("Sender") or sender_from),
        _addresses(get("Reply-To") or sender_from),
        _addresses(get("To")),
        _addresses(get("Cc")),
        _addresses(get("Bcc")),
        _nstring(get("In-Reply-To")),
        _nstring(get("Message-ID")),
    ]
    return b"(" + b" ".join(fields) + b")"


def _params(pairs: list[tuple[str, str]]) -> bytes:
    if not pairs:
        return b"NIL"
    return b"(" + b" ".join(quote(k) + b" " + quote(v) for k, v in pairs) + b")"


def _disposition(part: mime.Part) -> bytes:
    value = part.headers.get("Content-Disposition")
    if value is None:
        return b"NIL"
    kind = str(value).split(";", 1)[0].strip()
    if not kind:
        return b"NIL"
    pairs = []
    for key, val in part.headers.get_params(header="content-disposition", failobj=[])[1:]:
        pairs.append((key, email.utils.collapse_rfc2231_value(val) if isinstance(val, tuple) else str(val)))
    return b"(" + quote(kind) + b" " + _params(pairs) + b")"


def _language(part: mime.Part) -> bytes:
    value = part.header_value("Content-Language")
    if not value:
        return b"NIL"
    tags = [t.strip() for t in value.split(",") if t.strip()]
    if len(tags) == 1:
        return quote(tags[0])
    return b"(" + b" ".join(quote(t) for t in tags) + b")"


def body_structure(part: mime.Part, *, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY: RFC 3501 7.4.2 and 9 ``body``."""
    main, sub = part.content_type
    if main == "multipart" and part.children:
        out = b"(" + b"".join(body_structure(c, extended=extended) for c in part.children) + b" " + quote(sub.upper())
        if extended:
            params = [(k, v) for k, v in part.params()]
            out += (
                b" "
                + _params(params)
                + b" "
                + _disposition(part)
                + b" "
                + _language(part)
                + b" "
                + _nstring(part.header_value("Content-Location"))
            )
        return out + b")"
    if main == "multipart":  # no parts found (bad boundary): show it as an opaque entity
        main, sub = "application", "octet-stream"
    encoding = (part.header_value("Content-Transfer-Encoding") or "7BIT").upper()
    fields = [
        quote(main.upper()),
        quote(sub.upper()),
        _params(part.params()),
        _nstring(part.header_value("Content-ID")),
        _nstring(part.header_value("Content-Description")),
        quote(encoding),
        str(len(part.body)).encode(),
    ]
    # Text lines: a last line without its line break still counts (as Dovecot counts them).
    lines = str(part.body.count(b"\n") + (1 if part.body and not part.body.endswith(b"\n") else 0)).encode()
    if part.inner is not None:
        fields += [envelope(part.inner), body_structure(part.inner, extended=extended), lines]
    elif main == "text":
        fields.append(lines)
    if extended:
        fields += [
            _nstring(part.header_value("Content-MD5")),
            _disposition(part),
            _language(part),
            _nstring(part.header_value("Content-Location")),
        ]
    return b"(" + b" ".join(fields) + b")"


def flags_list(flags: Iterable[str]) -> bytes:
    """A parenthesized flag list."""
    return b"(" + " ".join(flags).encode() + b")"


def render(
    seq: int,
    uid: int,
    items: list[Item],
    *,
    flags: Iterable[str],
    size: int,
    internaldate: float,
    message: Callable[[], bytes],
) -> bytes:
    """One ``* SEQ FETCH (...)`` response line (with literals), ``message()`` loaded only if needed."""
    data: bytes | None = None
    root: mime.Part | None = None
    out: list[bytes] = []
    for item in items:
        name = item.name
        if name == "FLAGS":
            value = flags_list(flags)
        elif name == "UID":
            value = str(uid).encode()
        elif name == "RFC822.SIZE":
            value = str(size).encode()
        elif name == "INTERNALDATE":
            value = b'"' + format_date_time(internaldate).encode() + b'"'
        else:
            if data is None:
                data = message()
            if name == "RFC822":
                value = b"{%d}\r\n%s" % (len(data), data)
            elif name == "BODY[]" and not item.section and not item.text:
                value = _literal(data, item.partial)
            else:
                if root is None:
                    root = mime.parse(data)
                if name == "ENVELOPE":
                    value = envelope(root)
                elif name == "BODYSTRUCTURE":
                    value = body_structure(root, extended=True)
                elif name == "BODY":
                    value = body_structure(root, extended=False)
                elif name == "RFC822.HEADER":
                    value = _literal(root.header, None)
                elif name == "RFC822.TEXT":
                    value = _literal(root.body, None)
                else:
                    part = section_data(root, item)
                    value = _literal(part if part is not None else b"", item.partial)
        out.append(item.label.encode() + b" " + value)
    return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(out))


def _literal(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is not None:
        start, length = partial
        data = data[start : start + length]
    return b"{%d}\r\n%s" % (len(data), data)


__all__ = ["NIL", "Item", "body_structure", "envelope", "flags_list", "header_fields", "parse_items", "render", "section_data"]
