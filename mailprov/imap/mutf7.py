"""IMAP's modified UTF-7 for mailbox names (RFC 3501 5.1.3), as Dovecot also stores folder names on disk.

Printable ASCII other than ``&`` stands for itself; ``&`` is ``&-``; every other run of characters is
``&`` + the modified BASE64 (``,`` instead of ``/``, no padding) of its UTF-16BE + ``-``.
"""

from __future__ import annotations

import base64
import binascii


class MUTF7Error(ValueError):
    """A string that is not valid modified UTF-7."""


def encode(name: str) -> str:
    """The modified UTF-7 form of a Unicode mailbox name."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode(text: str) -> str:
    """The Unicode name of a modified UTF-7 string; raises :class:`MUTF7Error` when it is malformed
    (including non-canonical forms such as an encoded printable ASCII character, RFC 3501 5.1.3)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if not 0x20 <= ord(char) <= 0x7E:
            raise MUTF7Error(f"character {char!r} must be encoded")
        if char != "&":
            out.append(char)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise MUTF7Error("'&' without its closing '-'")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                decoded = raw.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
                raise MUTF7Error(f"bad encoded run {chunk!r}") from exc
            if any(0x20 <= ord(c) <= 0x7E for c in decoded) or encode(decoded) != "&" + chunk + "-":
                raise MUTF7Error(f"non-canonical encoded run {chunk!r}")
            out.append(decoded)
        i = end + 1
    return "".join(out)
