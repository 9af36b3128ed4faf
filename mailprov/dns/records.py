"""Records as the checks read them: small immutable values, decoded straight from a reply's wire format.

The checks read a handful of record types: A, AAAA (RFC 3596), MX, TXT, PTR, CNAME, NS, SOA (RFC 1035 3.3),
CAA (RFC 8659) and TLSA (RFC 6698). :func:`decode` turns their rdata into the values below without
building dnspython objects, which cost about a third of the checker's CPU on a fast resolver (a Name
object per name, an Rdata per record, its hash computed through its wire form when it joins an RRset).
Every other type (the DNSSEC ones: RRSIG, DNSKEY, DS, NSEC, NSEC3; anything rare) is left to dnspython,
and so are the replies the DNSSEC validator reads. :func:`from_rdata` gives the same values for records
that dnspython parsed (zone files, TCP answers), so the checks see one shape whatever the source.

Names are read per RFC 1035 4.1.4: a compression pointer must point before the start of the part of the
name that holds it (so a chain of pointers can only go back, and ends), at most 16 hops, a name at most
255 octets and a label at most 63. A malformed record raises :class:`dns.exception.FormError`, as
dnspython does. ``to_text()`` of each value is exactly what dnspython's ``to_text()`` gives for the record
(the report's evidence does not change with the parser; tests/dns/test_wire.py holds them to it).
"""

from __future__ import annotations

import binascii
import re
import struct
from typing import NamedTuple

import dns.exception
import dns.ipv6
import dns.rdata
import dns.rdataclass
import dns.rdatatype

MAX_POINTER_HOPS = 16  # as dnspython (dns.name.MAX_COMPRESSION_POINTER_CHAIN)
_NAME_SPECIAL = re.compile(rb'[^\x21-\x7e]|["().;\\@$]')  # a label byte dnspython writes escaped
_STRING_SPECIAL = re.compile(rb'[^\x20-\x7e]|["\\]')  # a character-string byte dnspython writes escaped
_SOA_TAIL = struct.Struct("!IIIII")
_DIGEST_SIZE = {1: 32, 2: 64}  # TLSA matching types SHA2-256 and SHA2-512 (RFC 6698 2.1.3)


class A(NamedTuple):
    """An IPv4 address (RFC 1035 3.4.1)."""

    address: str
    rdtype = dns.rdatatype.A

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return self.address


class AAAA(NamedTuple):
    """An IPv6 address (RFC 3596 2.2), in dnspython's text form."""

    address: str
    rdtype = dns.rdatatype.AAAA

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return self.address


class MX(NamedTuple):
    """A mail exchanger (RFC 1035 3.3.9); ``exchange`` is absolute, with its final dot."""

    preference: int
    exchange: str
    rdtype = dns.rdatatype.MX

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return f"{self.preference} {self.exchange}"


class _Target(NamedTuple):
    target: str

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return self.target


class PTR(_Target):
    """A pointer (RFC 1035 3.3.12); ``target`` is absolute, with its final dot."""

    __slots__ = ()
    rdtype = dns.rdatatype.PTR


class CNAME(_Target):
    """An alias (RFC 1035 3.3.1); ``target`` is the canonical name, absolute."""

    __slots__ = ()
    rdtype = dns.rdatatype.CNAME


class NS(_Target):
    """A name server (RFC 1035 3.3.11); ``target`` is absolute."""

    __slots__ = ()
    rdtype = dns.rdatatype.NS


class TXT(NamedTuple):
    """Text (RFC 1035 3.3.14): one or more character-strings, as bytes."""

    strings: tuple[bytes, ...]
    rdtype = dns.rdatatype.TXT

    def to_text(self) -> str:
        """The record's data in zone-file form (each string quoted, as dnspython writes it)."""
        return " ".join(f'"{_quoted(s)}"' for s in self.strings)


class SOA(NamedTuple):
    """A zone's start of authority (RFC 1035 3.3.13)."""

    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    rdtype = dns.rdatatype.SOA

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return f"{self.mname} {self.rname} {self.serial} {self.refresh} {self.retry} {self.expire} {self.minimum}"


class CAA(NamedTuple):
    """Certification authority authorization (RFC 8659 4.1): flags, tag and value as bytes."""

    flags: int
    tag: bytes
    value: bytes
    rdtype = dns.rdatatype.CAA

    def to_text(self) -> str:
        """The record's data in zone-file form."""
        return f'{self.flags} {_quoted(self.tag)} "{_quoted(self.value)}"'


class TLSA(NamedTuple):
    """A DANE TLSA record (RFC 6698 2.1): usage, selector, matching type and the association data."""

    usage: int
    selector: int
    mtype: int
    cert: bytes
    rdtype = dns.rdatatype.TLSA

    def to_text(self) -> str:
        """The record's data in zone-file form (hex in chunks of 128 digits, as dnspython writes it)."""
        digits = binascii.hexlify(self.cert).decode()
        return f"{self.usage} {self.selector} {self.mtype} " + " ".join(digits[i : i + 128] for i in range(0, len(digits), 128))


Value = A | AAAA | MX | PTR | CNAME | NS | TXT | SOA | CAA | TLSA


class RecordSet(NamedTuple):
    """The records of one owner name, type (and covered type, for RRSIG) in one section, as RFC 2181 5 groups them.

    ``name`` is the owner as the reply spells it (absolute, final dot); ``ttl`` the smallest of the records'.
    """

    name: str
    ttl: int
    rdtype: int
    records: tuple  # of Value, or dnspython Rdata for the types decoded by dnspython
    covers: int = 0


def read_name(wire: bytes, cur: int, end: int) -> tuple[str, int]:
    """The name at ``cur`` (text, absolute, escaped as dnspython escapes it) and the offset just after it.

    The uncompressed part must lie before ``end`` (the end of the record data or of the message). RFC 1035
    4.1.4: each pointer must point before the start of the part of the name that holds it, and what it
    points at must end before that start: no loop, no overlap. FormError on a bad pointer or label type,
    a name longer than 255 octets, or one running past ``end``.
    """
    labels: list[bytes] = []
    after = -1
    start = cur  # where the part of the name being read begins
    size = 1  # octets in wire form, the root label included
    hops = 0
    while True:
        if cur >= end:
            raise dns.exception.FormError("name runs past the end of its data")
        length = wire[cur]
        if length == 0:
            break
        if length < 64:
            cur += 1
            if cur + length > end:
                raise dns.exception.FormError("label runs past the end of its data")
            labels.append(wire[cur : cur + length])
            cur += length
            size += length + 1
            if size > 255:
                raise dns.exception.FormError("name longer than 255 octets")
        elif length >= 0xC0:
            if cur + 1 >= end:
                raise dns.exception.FormError("compression pointer cut short")
            target = (length & 0x3F) << 8 | wire[cur + 1]
            if after < 0:
                after = cur + 2
            hops += 1
            if target >= start or hops > MAX_POINTER_HOPS:
                raise dns.exception.FormError("bad compression pointer")
            end, start, cur = start, target, target
        else:
            raise dns.exception.FormError("bad label type")
    if after < 0:
        after = cur + 1
    if not labels:
        return ".", after
    if _NAME_SPECIAL.search(b"".join(labels)):  # labels side by side: a "." inside one is found too
        return ".".join(map(_escaped_label, labels)) + ".", after
    return b".".join(labels).decode("ascii") + ".", after


def decode(rdtype: int, wire: bytes, cur: int, rdlen: int) -> Value | None:
    """The value of the class IN record whose data is ``wire[cur:cur + rdlen]``, or None for a type left to dnspython.

    FormError when the data is malformed (wrong length, a bad name, data left over), as dnspython would.
    """
    end = cur + rdlen
    if rdtype == 1:  # A
        if rdlen != 4:
            raise dns.exception.FormError("A record data is not 4 octets")
        return A(f"{wire[cur]}.{wire[cur + 1]}.{wire[cur + 2]}.{wire[cur + 3]}")
    if rdtype == 16:  # TXT
        strings = []
        while cur < end:
            length = wire[cur]
            cur += 1 + length
            if cur > end:
                raise dns.exception.FormError("TXT string runs past the record data")
            strings.append(wire[cur - length : cur])
        if not strings:
            raise dns.exception.FormError("TXT record without a string")
        return TXT(tuple(strings))
    if rdtype == 15:  # MX
        if rdlen < 3:
            raise dns.exception.FormError("MX record data too short")
        name, after = read_name(wire, cur + 2, end)
        _whole(after, end)
        return MX(wire[cur] << 8 | wire[cur + 1], name)
    if rdtype in _TARGETS:
        name, after = read_name(wire, cur, end)
        _whole(after, end)
        return _TARGETS[rdtype](name)
    if rdtype == 28:  # AAAA
        if rdlen != 16:
            raise dns.exception.FormError("AAAA record data is not 16 octets")
        return AAAA(dns.ipv6.inet_ntoa(wire[cur:end]))
    if rdtype == 6:  # SOA
        mname, cur = read_name(wire, cur, end)
        rname, cur = read_name(wire, cur, end)
        if end - cur != 20:
            raise dns.exception.FormError("SOA record data of the wrong length")
        return SOA(mname, rname, *_SOA_TAIL.unpack_from(wire, cur))
    if rdtype == 257:  # CAA
        if rdlen < 2 or cur + 2 + wire[cur + 1] > end:
            raise dns.exception.FormError("CAA record data too short")
        tag = wire[cur + 2 : cur + 2 + wire[cur + 1]]
        if not tag.isalnum():  # dnspython's rule (RFC 8659 4.1: letters and digits)
            raise dns.exception.FormError("CAA tag is not alphanumeric")
        return CAA(wire[cur], tag, wire[cur + 2 + len(tag) : end])
    if rdtype == 52:  # TLSA
        if rdlen < 3:
            raise dns.exception.FormError("TLSA record data too short")
        if _DIGEST_SIZE.get(wire[cur + 2], rdlen - 3) != rdlen - 3:  # as dnspython refuses it
            raise dns.exception.FormError("TLSA digest of the wrong length for its matching type")
        return TLSA(wire[cur], wire[cur + 1], wire[cur + 2], wire[cur + 3 : end])
    return None


def from_rdata(rd: dns.rdata.Rdata) -> Value | dns.rdata.Rdata:
    """The value for a record dnspython parsed (zone files, TCP), or the Rdata itself for the other types and classes."""
    t = rd.rdtype if rd.rdclass == dns.rdataclass.IN else 0
    if t == 1:
        return A(rd.address)  # type: ignore[attr-defined]
    if t == 28:
        return AAAA(rd.address)  # type: ignore[attr-defined]
    if t == 15:
        return MX(rd.preference, rd.exchange.to_text())  # type: ignore[attr-defined]
    if t == 16:
        return TXT(tuple(rd.strings))  # type: ignore[attr-defined]
    if t in _TARGETS:
        return _TARGETS[t](rd.target.to_text())  # type: ignore[attr-defined]
    if t == 6:
        return SOA(rd.mname.to_text(), rd.rname.to_text(), rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum)  # type: ignore[attr-defined]
    if t == 257:
        return CAA(rd.flags, rd.tag, rd.value)  # type: ignore[attr-defined]
    if t == 52:
        return TLSA(rd.usage, rd.selector, rd.mtype, rd.cert)  # type: ignore[attr-defined]
    return rd


_TARGETS: dict[int, type[_Target]] = {dns.rdatatype.PTR: PTR, dns.rdatatype.CNAME: CNAME, dns.rdatatype.NS: NS}


def _whole(after: int, end: int) -> None:
    if after != end:
        raise dns.exception.FormError("record data left over after the name")


def _escaped_label(label: bytes) -> str:
    # dnspython's dns.name._escapify for bytes labels: specials backslashed, other bytes outside 0x21-0x7e as \DDD
    return "".join(
        "\\" + chr(c) if c in b'"().;\\@$' else chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}" for c in label
    )


def _quoted(data: bytes) -> str:
    # dnspython's dns.rdata._escapify: '"' and backslash backslashed, bytes outside 0x20-0x7e as \DDD
    if not _STRING_SPECIAL.search(data):
        return data.decode("ascii")
    return "".join("\\" + chr(c) if c in b'"\\' else chr(c) if 0x20 <= c < 0x7F else f"\\{c:03d}" for c in data)
