"""Envelope address parsing that defeats the classic relay tricks.

aiosmtpd hands us the path of ``MAIL FROM`` / ``RCPT TO`` as an addr-spec string (it has already dropped
an RFC 5321 source route, ``<@a,@b:user@c>``, keeping ``user@c`` — which RFC 5321 4.1.1.3 allows, and which
is harmless: the real destination ``c`` is what the relay check sees). This module then accepts only
plain ``local@domain`` addresses whose parts mean exactly one thing:

* percent hack ``user%elsewhere@here`` and bang paths ``elsewhere!user@here``: refused (routing
  characters in the local part); some software still routes on them, so they never enter the queue;
* quoted local parts: ``"john"@here`` is the same as ``john@here`` and is accepted as that; a quoted part
  with anything a dot-atom cannot hold (``"user@elsewhere"@here``, spaces, ``%``, ``!``) is refused;
* trailing dots, empty labels, ``..``: refused (RFC 5321's domain grammar has none);
* IP literals ``user@[192.0.2.1]``: parsed as an ``ip_literal`` domain that is never local, so the relay
  rules apply to it like any other remote destination;
* non-ASCII addresses only with SMTPUTF8 (RFC 6531); otherwise 553 5.6.7.

Errors carry the SMTP reply (code, enhanced code, text): they are decisions, not exceptions to log.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 5322 atext, plus UTF-8 (RFC 6532) for SMTPUTF8 sessions.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_ATOM = re.compile(rf"^[{_ATEXT}\u0080-\U0010ffff]+(\.[{_ATEXT}\u0080-\U0010ffff]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9\u0080-\U0010ffff]([A-Za-z0-9\u0080-\U0010ffff-]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?$")
_ROUTING = set("%!@:,")
MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


class AddressError(ValueError):
    """An address refused, with the SMTP reply to give."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True)
class Address:
    """A parsed envelope address: ``local`` keeps its case (remote systems may care), ``domain`` is lower
    case (without brackets for a literal)."""

    local: str
    domain: str
    ip_literal: bool = False

    def __str__(self) -> str:
        if self.ip_literal:  # RFC 5321 4.1.3: an IPv6 literal keeps its "IPv6:" tag (the router needs it too)
            return f"{self.local}@[IPv6:{self.domain}]" if ":" in self.domain else f"{self.local}@[{self.domain}]"
        return f"{self.local}@{self.domain}"


def _unquote(local: str) -> str:
    """``"john"`` -> ``john``; refuses quoted strings that a dot-atom could not hold."""
    inner = local[1:-1]
    text = re.sub(r"\\(.)", r"\1", inner)
    if not text or not _DOT_ATOM.match(text) or _ROUTING & set(text):
        raise AddressError(553, "5.1.3", "Quoted local parts with special characters are not accepted")
    return text


def _split(address: str) -> tuple[str, str]:
    """Split at the ``@`` that ends the local part, honouring a quoted local part."""
    if address.startswith('"'):
        match = re.match(r'^("(?:[^"\\]|\\.)*")@(.*)$', address, re.S)
        if not match:
            raise AddressError(553, "5.1.3", "Bad address syntax")
        return match.group(1), match.group(2)
    local, at, domain = address.rpartition("@")
    if not at:
        raise AddressError(553, "5.1.3", "Address must be local-part@domain")
    return local, domain


def parse_domain(domain: str) -> tuple[str, bool]:
    """Validate a domain or an address literal; returns (normalized domain, is_ip_literal)."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
            try:
                ip = ipaddress.IPv6Address(literal)
            except ValueError:
                raise AddressError(553, "5.1.2", "Bad address literal") from None
        else:
            try:
                ip = ipaddress.IPv4Address(literal)
            except ValueError:
                raise AddressError(553, "5.1.2", "Bad address literal") from None
        return str(ip), True
    if not domain:
        raise AddressError(553, "5.1.2", "Missing domain")
    if domain.endswith("."):
        raise AddressError(553, "5.1.2", "Domain must not end with a dot")
    if len(domain) > MAX_DOMAIN:
        raise AddressError(553, "5.1.2", "Domain too long")
    labels = domain.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise AddressError(553, "5.1.2", "Bad domain syntax")
    return domain.lower(), False


def parse_address(text: str, *, smtputf8: bool = False) -> Address:
    """Parse an envelope address (without angle brackets) strictly; raises AddressError."""
    if len(text) > MAX_PATH:
        raise AddressError(553, "5.1.3", "Address too long")
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise AddressError(553, "5.1.3", "Control characters or spaces in address")
    if not text.isascii() and not smtputf8:
        raise AddressError(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
    if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):  # undecodable bytes (surrogateescape)
        raise AddressError(553, "5.6.7", "Address is not valid UTF-8")
    local, domain = _split(text)
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = _unquote(local)
    elif not _DOT_ATOM.match(local):
        raise AddressError(553, "5.1.3", "Bad local part syntax")
    if "%" in local or "!" in local:
        raise AddressError(553, "5.7.1", "Routing characters (% or !) in the local part are not accepted")
    if len(local.encode()) > MAX_LOCAL:
        raise AddressError(553, "5.1.3", "Local part too long")
    name, literal = parse_domain(domain)
    return Address(local, name, literal)


def parse_recipient(text: str, *, smtputf8: bool = False, postmaster_domain: str) -> Address:
    """Like parse_address, but ``<postmaster>`` without a domain (any case) is the postmaster of
    ``postmaster_domain``: RFC 5321 4.5.1 says every server MUST accept it (4.1.1.3 gives the syntax)."""
    if text.lower() == "postmaster":
        return Address("postmaster", postmaster_domain.lower())
    return parse_address(text, smtputf8=smtputf8)


def parse_sender(text: str, *, smtputf8: bool = False) -> Address | None:
    """Like parse_address, but ``<>`` (given as ``""`` or ``"<>"``) is the null sender (None)."""
    if text in ("", "<>"):
        return None
    return parse_address(text, smtputf8=smtputf8)
