"""Answers from zone files: the offline ``--zone`` mode and the data behind ``dns serve-zones``.

A :class:`ZoneSet` holds parsed zones and answers a query the way an authoritative server would: the
records, a CNAME chain (followed across the zones of the set), NODATA (the name exists, the type does not;
empty non-terminals included), NXDOMAIN, or "not in any zone" (REFUSED). Wildcards and delegations below
a zone apex are not interpreted: the demo and the pre-flight zones do not use them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

from mailprov.dns.resolver import Answer
from mailprov.errors import UsageError

MAX_CNAME_CHAIN = 8


@dataclass
class Lookup:
    """An authoritative lookup's outcome, ready to become a response or an :class:`Answer`."""

    rcode: str  # NOERROR, NXDOMAIN or REFUSED (no zone holds the name)
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    zone: str = ""


def _origin_from_filename(path: Path) -> dns.name.Name:
    name = path.name
    for suffix in (".zone", ".db", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    try:
        return dns.name.from_text(name)
    except dns.exception.DNSException:
        raise UsageError(
            f"zone file {path}: no $ORIGIN, and its name does not give one", fix="add '$ORIGIN example.org.' or name it example.org.zone"
        ) from None


def load_zone(path: Path) -> dns.zone.Zone:
    """Parse a zone file; its origin is its ``$ORIGIN``, else its file name (``alpha.test.zone``)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read zone file {path}: {exc}", fix="give the path of a readable (text) zone file") from None
    # With an $ORIGIN, dnspython takes the first one as the zone's origin; without (or when it is only in
    # a comment, so that the zone ends up with none), the file name gives it.
    zone = None
    if "$ORIGIN" in text.upper():
        with contextlib.suppress(dns.zone.UnknownOrigin):
            zone = _parse(path, text, None)
    if zone is None or zone.origin is None:
        zone = _parse(path, text, _origin_from_filename(path))
    return zone


def _parse(path: Path, text: str, origin: dns.name.Name | None) -> dns.zone.Zone:
    try:
        return dns.zone.from_text(text, origin=origin, relativize=False, filename=str(path), check_origin=False)
    except dns.zone.UnknownOrigin:
        if origin is None:
            raise  # the caller retries with the file name's origin
        raise UsageError(f"zone file {path}: the zone's origin is unknown", fix="add '$ORIGIN example.org.' at the top") from None
    except (dns.exception.DNSException, ValueError) as exc:  # dnspython raises ValueError for e.g. a SOA off the origin
        raise UsageError(f"zone file {path}: {exc}", fix="correct the zone file (BIND master-file syntax, RFC 1035 section 5)") from None
    except OSError as exc:  # an $INCLUDE that cannot be read
        raise UsageError(f"zone file {path}: {exc}", fix="correct the $INCLUDE path") from None


class ZoneSet:
    """Several zones answered together, the most specific zone first."""

    def __init__(self, zones: list[dns.zone.Zone], sources: list[str] | None = None) -> None:
        self.zones = sorted(zones, key=lambda z: len(z.origin.labels), reverse=True)
        names = sources or [z.origin.to_text() for z in zones]
        self._source = {z.origin: s for z, s in zip(zones, names, strict=True)}
        # Every ancestor of every owner name inside its zone: these exist (empty non-terminals) even without records.
        self._existing: dict[dns.name.Name, set[dns.name.Name]] = {}
        for zone in self.zones:
            existing = set()
            for name in zone.nodes:
                while name.is_subdomain(zone.origin) and name not in existing:
                    existing.add(name)
                    if name == zone.origin:
                        break
                    name = name.parent()
            self._existing[zone.origin] = existing

    @classmethod
    def from_files(cls, paths: list[Path]) -> ZoneSet:
        """Load zone files (a UsageError names a file that cannot be read or parsed)."""
        zones = [load_zone(Path(p)) for p in paths]
        return cls(zones, [str(p) for p in paths])

    def zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        """The most specific zone holding ``name``."""
        for zone in self.zones:
            if name.is_subdomain(zone.origin):
                return zone
        return None

    def source_of(self, zone: dns.zone.Zone) -> str:
        """The file a zone came from."""
        return self._source[zone.origin]

    def _wildcard(self, zone: dns.zone.Zone, name: dns.name.Name):  # type: ignore[no-untyped-def]
        """The ``*`` node below the closest encloser of a name that does not exist, if there is one."""
        existing = self._existing[zone.origin]
        if name == zone.origin:
            return None  # an apex without records (an empty zone) has no encloser above it to look under
        encloser = name.parent()
        while encloser not in existing and encloser != zone.origin:
            encloser = encloser.parent()
        return zone.get_node(dns.name.Name(("*", *encloser.labels)))

    def lookup(self, qname: dns.name.Name, rdtype: int) -> Lookup:
        """Answer ``qname``/``rdtype`` authoritatively, following CNAMEs through the set's zones."""
        result = Lookup("NOERROR")
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            zone = self.zone_for(name)
            if zone is None:
                # The start of the chain is out of every zone: refuse; a chain leaving the zones just ends.
                result.rcode = "REFUSED" if name == qname else result.rcode
                return result
            result.zone = result.zone or self.source_of(zone)
            node = zone.get_node(name)
            if node is None and name not in self._existing[zone.origin]:
                node = self._wildcard(zone, name)  # RFC 4592: answers are synthesised with the asked name as owner
            if node is not None:
                rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
                if rdataset is not None:
                    result.answer.append(_rrset(name, rdataset))
                    return result
                cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
                if cname is not None and rdtype != dns.rdatatype.CNAME:
                    result.answer.append(_rrset(name, cname))
                    name = cname[0].target
                    continue
            if node is None and name not in self._existing[zone.origin]:
                result.rcode = "NXDOMAIN"
            soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
            if soa is not None:
                result.authority.append(_rrset(zone.origin, soa))
            return result
        return result


def _rrset(name: dns.name.Name, rdataset) -> dns.rrset.RRset:  # type: ignore[no-untyped-def]
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    rrset.ttl = rdataset.ttl
    return rrset


class ZoneSource:
    """A :class:`~mailprov.dns.resolver.Source` answering from zone files, with an optional network fallback.

    Names outside every zone go to ``fallback`` when one is given, else come back as an error (the check
    cannot be completed offline: give the zone that holds the name, or a resolver).
    """

    def __init__(self, zones: ZoneSet, fallback=None) -> None:  # type: ignore[no-untyped-def]
        self.zones = zones
        self.fallback = fallback
        self.description = "zone files" + (f", then {fallback.description}" if fallback else "")

    def close(self) -> None:
        """Close the fallback's sockets."""
        if self.fallback is not None:
            self.fallback.close()

    async def query(self, name: str, rdtype: str) -> Answer:
        """Answer from the zones, or from the fallback for names they do not hold."""
        qname = dns.name.from_text(name)
        found = self.zones.lookup(qname, dns.rdatatype.from_text(rdtype))
        if found.rcode == "REFUSED":
            if self.fallback is not None:
                return await self.fallback.query(name, rdtype)
            return Answer(
                qname.to_text(),
                rdtype,
                "zone files",
                rcode="ERROR",
                error=f"{qname.to_text()} is in none of the zone files given with --zone (add its zone, or a --resolver to ask)",
            )
        negative_ttl = None
        for rrset in found.authority:
            negative_ttl = min(rrset.ttl, rrset[0].minimum)
        return Answer(qname.to_text(), rdtype, f"zone file {found.zone}", rcode=found.rcode, rrsets=found.answer, negative_ttl=negative_ttl)
