"""A message's MIME structure over its exact octets, for FETCH sections, ENVELOPE and BODYSTRUCTURE.

IMAP addresses parts by number and returns their octets unchanged (RFC 3501 6.4.5), so the tree keeps
byte slices of the original (CRLF) message; the standard library's :mod:`email` package decodes what
needs decoding (Content-Type parameters, RFC 2047 words for SEARCH).
"""

from __future__ import annotations

import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from functools import cached_property

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_MAX_DEPTH = 20  # nesting of multiparts and message/rfc822 parts followed


@dataclass
class Part:
    """One entity: ``header`` is its header block with the blank line that ends it, ``body`` the rest."""

    header: bytes
    body: bytes
    children: list[Part] = field(default_factory=list)  # multipart/* parts
    inner: Part | None = None  # the message inside a message/rfc822 part
    default_type: str = "text/plain"

    @cached_property
    def headers(self) -> email.message.Message:
        """The header fields, parsed by :mod:`email` (values undecoded)."""
        return _HEADER_PARSER.parsebytes(self.header)

    @property
    def content_type(self) -> tuple[str, str]:
        """(type, subtype) in lower case, with RFC 2045's defaults."""
        value = self.headers.get("Content-Type")
        if value is None:
            full = self.default_type
        else:
            full = str(value).split(";", 1)[0].strip().lower()
            if full.count("/") != 1 or not all(full.split("/")):
                full = "text/plain"
        main, sub = full.split("/")
        return main, sub

    def params(self) -> list[tuple[str, str]]:
        """Content-Type parameters, RFC 2231 decoded, charset defaulting to us-ascii for text."""
        out: list[tuple[str, str]] = []
        if self.headers.get("Content-Type") is not None:
            for key, value in self.headers.get_params(header="content-type", failobj=[])[1:]:
                out.append((key, email.utils.collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)))
        if not out and self.content_type[0] == "text":
            out.append(("charset", "us-ascii"))
        return out

    def header_value(self, name: str) -> str | None:
        """The raw value of a header field (first occurrence, unfolded), None if absent."""
        value = self.headers.get(name)
        if value is None:
            return None
        return re.sub(r"\r?\n[ \t]", " ", str(value)).strip()


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    if data.startswith(b"\r\n"):
        return b"\r\n", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[: end + 4], data[end + 4 :]


def _boundary_of(part: Part) -> bytes | None:
    boundary = part.headers.get_param("boundary", header="content-type")
    if isinstance(boundary, tuple):
        boundary = email.utils.collapse_rfc2231_value(boundary)
    if not boundary or not isinstance(boundary, str):
        return None
    try:
        return boundary.strip('"').encode("ascii")
    except UnicodeEncodeError:
        return None


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` lines (RFC 2046 5.1.1); the CRLF before a delimiter belongs to it."""
    delim = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for match in delim.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match.group(1):
            return parts
        start = match.end()
    if start is not None:
        parts.append(body[start:])
    return parts


def parse(data: bytes, *, default_type: str = "text/plain", depth: int = 0) -> Part:
    """The MIME tree of ``data`` (CRLF line endings)."""
    header, body = _split_header(data)
    part = Part(header, body, default_type=default_type)
    if depth >= _MAX_DEPTH:
        return part
    main, sub = part.content_type
    if main == "multipart":
        boundary = _boundary_of(part)
        if boundary:
            child_type = "message/rfc822" if sub == "digest" else "text/plain"
            part.children = [parse(p, default_type=child_type, depth=depth + 1) for p in _split_multipart(body, boundary)]
    elif (main, sub) in (("message", "rfc822"), ("message", "global")):
        part.inner = parse(body, depth=depth + 1)
    return part


def find(root: Part, numbers: list[int]) -> Part | None:
    """The part a section number (``1.2.3``) names; ``root`` is the message (RFC 3501 6.4.5). Inside a
    message/rfc822 part, further numbers address the parts of the message it encapsulates."""
    part = root
    for i, n in enumerate(numbers):
        if i > 0 and part.inner is not None:
            part = part.inner
        if part.children:
            if not 1 <= n <= len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1:
            return None  # a single-part entity has only part 1: its body
    return part


def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words decoded (for SEARCH); undecodable text kept."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value
