"""Where answers come from: a :class:`Source` answers ``(name, type)`` with an :class:`Answer`, never raising.

:class:`NetworkSource` asks DNS servers (recursive resolvers, or a domain's own name servers) on asyncio:
UDP over a small pool of connected sockets per server (random source ports and IDs; an answer must match
the question), TCP (dnspython's asyncquery) when truncated, each server in turn, a bounded number of
queries in flight, and each ``(name, type)`` asked once per run (concurrent askers share the one query).
Replies are read by :func:`parse_reply`: the records the checks read become :mod:`mailprov.dns.records`
values, decoded from the wire; DNSSEC answers and other types are parsed by dnspython. dnspython's own
stub resolver is not used: it opens a socket per query and does not say which server gave which answer,
and the evidence must.
:class:`mailprov.dns.zonefile.ZoneSource` answers from zone files instead, so records can be checked
before they are published. A query that cannot be completed (timeout, SERVFAIL, REFUSED) comes back as an
Answer with ``error`` set, naming the server and the query.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from mailprov.dns.model import CheckResult, Evidence, Status
from mailprov.dns.records import RecordSet, Value, decode, from_rdata, read_name
from mailprov.errors import UsageError

DEFAULT_TIMEOUT = 5.0
DEFAULT_CONCURRENCY = 256
SOCKETS_PER_SERVER = 4


@dataclass
class Answer:
    """The answer to one query: the rcode, the answer section (CNAME chain included), or why there is none."""

    qname: str
    rdtype: str
    server: str
    rcode: str = "NOERROR"
    # The answer section: RecordSets of mailprov.dns.records values from a reply, or dnspython RRsets (zone files,
    # TCP, DNSSEC answers, whose signatures the validator checks). The checks read them through the properties below.
    rrsets: list[RecordSet | dns.rrset.RRset] = field(default_factory=list)
    error: str | None = None  # set when the query could not be completed
    negative_ttl: int | None = None  # from the SOA in the authority section of NXDOMAIN / NODATA
    authority: list[dns.rrset.RRset] = field(default_factory=list)  # kept for DNSSEC answers (NSEC proofs, RRSIGs)
    _evidence: Evidence | None = field(default=None, init=False, repr=False, compare=False)  # formatted once, shared by the results
    _records: list | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def nxdomain(self) -> bool:
        """The name does not exist."""
        return self.error is None and self.rcode == "NXDOMAIN"

    @property
    def records(self) -> list[Value | dns.rdata.Rdata]:
        """Records of the asked type (at the end of any CNAME chain), as :mod:`mailprov.dns.records` values."""
        if self._records is None:
            want = _rdtype(self.rdtype)
            self._records = [rd for rrset in self.rrsets if rrset.rdtype == want for rd in _values(rrset)]
        return self._records

    @property
    def cnames(self) -> list[tuple[str, str]]:
        """The CNAME chain as (alias, target) pairs, when the asked name is an alias."""
        if self.rdtype == "CNAME":
            return []
        return [(str(rrset.name), rd.target) for rrset in self.rrsets if rrset.rdtype == dns.rdatatype.CNAME for rd in _values(rrset)]

    @property
    def ttl(self) -> int | None:
        """TTL of the records asked for, or the negative-caching TTL of a NODATA / NXDOMAIN."""
        want = _rdtype(self.rdtype)
        ttls = [rrset.ttl for rrset in self.rrsets if rrset.rdtype == want]
        return min(ttls) if ttls else self.negative_ttl

    def texts(self) -> list[str]:
        """TXT records as strings (the character-strings of each record joined without spaces)."""
        return [b"".join(rd.strings).decode("utf-8", errors="replace") for rd in self.records if rd.rdtype == dns.rdatatype.TXT]

    def as_error(self, check_id: str, subject: str) -> CheckResult:
        """The result of a check that could not be completed because this query failed."""
        return CheckResult(
            check_id,
            Status.ERROR,
            subject,
            f"could not complete: {self.error}",
            fix=(
                "add the zone file that holds the name with --zone, or give a --resolver to ask for it"
                if self.server == "zone files"
                else "check that the resolver (or name server) is reachable and answering, or raise --timeout, then run again"
            ),
            records=[self.evidence()],
        )

    def evidence(self) -> Evidence:
        """This answer as report evidence (one object per answer: results that cite it share it, and nobody changes it)."""
        if self._evidence is not None:
            return self._evidence
        answer = []
        for rrset in self.rrsets:
            answer += rrset_lines(rrset)
        self._evidence = Evidence(
            query=f"{self.qname} {self.rdtype}",
            server=self.server,
            rcode="ERROR" if self.error else self.rcode,
            answer=answer if not self.error else [self.error],
            ttl=self.ttl,
        )
        return self._evidence


class Source(Protocol):
    """Anything that answers DNS queries for the checks."""

    description: str

    async def query(self, name: str, rdtype: str) -> Answer:
        """Answer ``name``/``rdtype``; never raises (failures are in ``Answer.error``)."""
        ...


def parse_server(value: str, default_port: int = 53) -> tuple[str, int]:
    """Parse ``IP``, ``IP:PORT``, ``[V6]`` or ``[V6]:PORT`` (a resolver or name server address)."""
    text = value.strip()
    host, port = text, default_port
    if m := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", text):
        host, port = m.group(1), int(m.group(2) or default_port)
    elif m := re.fullmatch(r"([0-9.]+):(\d{1,5})", text):
        host, port = m.group(1), int(m.group(2))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"resolver {value!r} is not an IP address with an optional port", fix="write 192.0.2.53, 192.0.2.53:5353 or [2001:db8::53]:53"
        ) from None
    if not 0 < port < 65536:
        raise UsageError(f"resolver {value!r}: port {port} is out of range", fix="use a port from 1 to 65535")
    return host, port


def system_resolvers() -> list[tuple[str, int]]:
    """The system's resolvers from /etc/resolv.conf (port 53)."""
    try:
        servers = dns.resolver.Resolver(configure=True).nameservers
    except dns.resolver.NoResolverConfiguration:
        servers = []
    return [(str(s), 53) for s in servers]


def fmt_server(host: str, port: int) -> str:
    """``host:port`` with brackets around IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _wire_name(qname: str) -> bytes:
    """A name in wire format (fast path for plain names; dnspython for escapes)."""
    if "\\" in qname or qname == ".":
        return dns.name.from_text(qname).to_wire()  # type: ignore[return-value]
    out = bytearray()
    for label in qname.rstrip(".").split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeError:
            raise dns.exception.SyntaxError(f"non-ASCII label in {qname!r}") from None
        if not 0 < len(raw) < 64:
            raise dns.exception.SyntaxError(f"bad label in {qname!r}")
        out += bytes((len(raw),)) + raw
    return bytes(out) + b"\0"


def question_wire(qname: str, rdtype: int) -> bytes:
    """The question section of a query for ``qname``/``rdtype`` (class IN) in wire format."""
    return _wire_name(qname) + struct.pack("!HH", rdtype, dns.rdataclass.IN)


def query_wire(qname: str, rdtype: int, qid: int, *, recursion: bool = True, payload: int = 1232, dnssec: bool = False) -> bytes:
    """A query message in wire format with EDNS0 (built directly: dnspython's builder costs as much as the query).

    ``dnssec`` sets DO (send the RRSIGs and NSEC proofs, RFC 4035 3.2.1) and CD (checking disabled, RFC 4035
    3.2.2): a validating resolver then hands over bogus data instead of SERVFAIL, so that the checker can
    say what is wrong with it.
    """
    return _query(question_wire(qname, rdtype), qid, recursion=recursion, payload=payload, dnssec=dnssec)


def _query(question: bytes, qid: int, *, recursion: bool, payload: int = 1232, dnssec: bool = False) -> bytes:
    flags = (0x0100 if recursion else 0) | (0x0010 if dnssec else 0)
    opt = b"\0" + _RR.pack(dns.rdatatype.OPT, payload, 0x8000 if dnssec else 0, 0)
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + question + opt


@dataclass
class Reply:
    """The parts of a response the checks use: flags, rcode, the answer section, the authority section."""

    flags: int
    rcode: int
    answer: list[RecordSet] | list[dns.rrset.RRset]  # dnspython's RRsets when the whole authority section was asked for
    authority: list[dns.rrset.RRset]
    negative_ttl: int | None = None  # from the SOA in the authority section (RFC 2308 5)


def _skip_name(wire: bytes, cur: int) -> int:
    """The offset after the (possibly compressed) name at ``cur``, without building it."""
    for _ in range(128):  # a name has at most 127 labels
        length = wire[cur]
        if length == 0:
            return cur + 1
        if length >= 0xC0:
            return cur + 2
        if length > 63:
            raise dns.exception.FormError("bad label type")
        cur += length + 1
    raise dns.exception.FormError("name too long")


def parse_reply(wire: bytes, question: bytes, *, full_authority: bool = False) -> Reply | None:
    """Parse an answer to the query whose question section is ``question`` (wire format), or None when it is not one.

    This walks the message's sections (RFC 1035 4.1) itself, because ``dns.message.from_wire`` builds every
    record of every section, the OPT record and the additional section included, and that cost about half of
    the checker's CPU on a fast resolver. The answer section's records of the types the checks read become
    :mod:`mailprov.dns.records` values (grouped in :class:`~mailprov.dns.records.RecordSet`); of the authority
    section only the negative-caching TTL (RFC 2308 5: the smaller of the SOA record's TTL and its MINIMUM,
    the rdata's last 4 bytes) is read; of the additional section only the OPT record's extended rcode.
    With ``full_authority`` (DNSSEC: the validator needs the RRSIGs and the NSEC/NSEC3 proofs) both the answer
    and the authority sections are parsed by dnspython (:func:`dns.name.from_wire`, :func:`dns.rdata.from_wire`)
    into ``dns.rrset.RRset`` objects. Records of one name, class and type (and covered type) form one set,
    as ``dns.message.from_wire`` groups them. A response that is not a reply (QR clear), whose question
    differs (names compared case-insensitively, RFC 1035 2.3.3) or that is malformed gives None.
    """
    try:
        _qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(wire)
        end = 12 + len(question)
        if (
            not flags & 0x8000
            or qdcount != 1
            or wire[12 : end - 4].lower() != question[:-4].lower()
            or wire[end - 4 : end] != question[-4:]
        ):
            return None
        if full_authority:
            answer, cur, _ = _rrsets(wire, end, ancount)
            authority, cur, negative_ttl = _rrsets(wire, cur, nscount)
        else:
            answer, cur = _record_sets(wire, end, ancount)
            authority = []
            cur, negative_ttl = _negative_ttl(wire, cur, nscount)
        rcode = flags & 0x000F
        for _ in range(arcount):
            cur = _skip_name(wire, cur)
            rdtype, _rdclass, ttl, rdlen = _RR.unpack_from(wire, cur)
            if rdtype == dns.rdatatype.OPT:
                rcode |= (ttl >> 24) << 4  # the extended rcode (RFC 6891 6.1.3)
            cur += 10 + rdlen
        if cur > len(wire):
            return None
    except (dns.exception.DNSException, IndexError, struct.error, ValueError):
        return None  # a malformed or forged packet
    return Reply(flags, rcode, answer, authority, negative_ttl)


def _record_sets(wire: bytes, cur: int, count: int) -> tuple[list[RecordSet], int]:
    """``count`` records from ``cur`` as record sets of :mod:`mailprov.dns.records` values, and the offset after them."""
    names: dict[int, str] = {}  # offset -> the name there: most owner names are a pointer to the question's
    sets: dict[tuple, list] = {}  # (owner in lower case, class, type, covered type) -> [owner, ttl, {record: None}]
    size = len(wire)
    for _ in range(count):
        at = (wire[cur] & 0x3F) << 8 | wire[cur + 1] if wire[cur] >= 0xC0 else cur  # a bare pointer: the name it points at
        name = names.get(at)
        if name is None:
            name, cur = read_name(wire, cur, size)
            names[at] = name
        else:
            cur = _skip_name(wire, cur)
        rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, cur)
        ttl = ttl if ttl <= _MAX_TTL else 0
        cur += 10
        if cur + rdlen > size:
            raise dns.exception.FormError("record beyond the end of the message")
        value = decode(rdtype, wire, cur, rdlen) if rdclass == dns.rdataclass.IN else None
        covers = 0
        if value is None:  # a type (or class) the checks do not read: dnspython parses it
            value = dns.rdata.from_wire(rdclass, rdtype, wire, cur, rdlen)
            covers = value.covers()
        cur += rdlen
        key = (name.lower(), rdclass, rdtype, covers)
        entry = sets.get(key)
        if entry is None:
            sets[key] = [name, ttl, {value: None}]
        else:
            entry[1] = min(entry[1], ttl)
            entry[2][value] = None  # a record repeated in the section is one record (RFC 2181 5)
    return [RecordSet(name, ttl, key[2], tuple(values), key[3]) for key, (name, ttl, values) in sets.items()], cur


def _negative_ttl(wire: bytes, cur: int, count: int) -> tuple[int, int | None]:
    """Skip ``count`` records; the offset after them and the negative-caching TTL of the first SOA among them."""
    negative_ttl = None
    for _ in range(count):
        cur = _skip_name(wire, cur)
        rdtype, _rdclass, ttl, rdlen = _RR.unpack_from(wire, cur)
        cur += 10 + rdlen
        if rdtype == dns.rdatatype.SOA and rdlen >= 22 and negative_ttl is None:
            negative_ttl = min(ttl if ttl <= _MAX_TTL else 0, int.from_bytes(wire[cur - 4 : cur], "big"))
    return cur, negative_ttl


def _rrsets(wire: bytes, cur: int, count: int) -> tuple[list[dns.rrset.RRset], int, int | None]:
    """``count`` records from ``cur`` parsed by dnspython into RRsets (for DNSSEC), the offset after them, and the
    negative-caching TTL of the first SOA among them."""
    negative_ttl = None
    names: dict[int, dns.name.Name] = {}
    rrsets: dict[tuple, dns.rrset.RRset] = {}
    for _ in range(count):
        at = (wire[cur] & 0x3F) << 8 | wire[cur + 1] if wire[cur] >= 0xC0 else cur
        name = names.get(at)
        if name is None:
            name, used = dns.name.from_wire(wire, cur)
            names[at] = name
            cur += used
        else:
            cur = _skip_name(wire, cur)
        rdtype, rdclass, ttl, rdlen = _RR.unpack_from(wire, cur)
        ttl = ttl if ttl <= _MAX_TTL else 0
        cur += 10
        if cur + rdlen > len(wire):
            raise dns.exception.FormError("record beyond the end of the message")
        rd = dns.rdata.from_wire(rdclass, rdtype, wire, cur, rdlen)
        cur += rdlen
        if rdtype == dns.rdatatype.SOA and negative_ttl is None:
            negative_ttl = min(ttl, rd.minimum)  # type: ignore[attr-defined]
        covers = rd.covers()
        key = (name, rdclass, rdtype, covers)
        rrset = rrsets.get(key)
        if rrset is None:
            rrset = rrsets[key] = dns.rrset.RRset(name, rdclass, rdtype, covers)
        rrset.add(rd, ttl)
    return list(rrsets.values()), cur, negative_ttl


def _reply_of(message: dns.message.Message) -> Reply:
    """A :class:`Reply` from a message dnspython parsed (the TCP retry)."""
    soa = next((r for r in message.authority if r.rdtype == dns.rdatatype.SOA), None)
    negative_ttl = min(soa.ttl, soa[0].minimum) if soa is not None and len(soa) else None
    return Reply(int(message.flags), message.rcode(), list(message.answer), list(message.authority), negative_ttl)


@functools.cache
def _rdtype(text: str) -> int:
    return dns.rdatatype.from_text(text)


@functools.cache
def _type_text(rdtype: int) -> str:
    return dns.rdatatype.to_text(rdtype)


def rrset_lines(rrset: RecordSet | dns.rrset.RRset) -> list[str]:
    """The records of a set in zone-file form, one line each (``name ttl IN TYPE data``), as the evidence shows them."""
    head = f"{rrset.name} {rrset.ttl} IN {_type_text(rrset.rdtype)} "
    return [head + rd.to_text() for rd in _values(rrset)]


def _values(rrset: RecordSet | dns.rrset.RRset) -> tuple | list:
    """The records of a set as :mod:`mailprov.dns.records` values (dnspython's Rdata for the types it keeps)."""
    if isinstance(rrset, RecordSet):
        return rrset.records
    return [from_rdata(rd) for rd in rrset]


_HEADER = struct.Struct("!HHHHHH")
_MAX_TTL = 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set counts as zero (as dnspython reads it)
_RR = struct.Struct("!HHIH")


class _Mux(asyncio.DatagramProtocol):
    """One connected UDP socket to one server, shared by concurrent queries; answers matched by ID and question.

    Creating a socket per query costs more than the query itself against a fast server; a small pool of
    these (random source ports, random IDs, answers checked against the question) keeps that cost once.
    """

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # query ID -> (question section in wire format, keep the whole authority section, the waiting future)
        self.pending: dict[int, tuple[bytes, bool, asyncio.Future[Reply]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        entry = self.pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
        if entry is None:
            return
        question, full_authority, future = entry
        reply = parse_reply(data, question, full_authority=full_authority)
        if reply is not None and not future.done():  # None: malformed, forged or not ours: keep waiting for the real answer
            future.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable) on the connected socket: every query in flight on it fails now.
        for _, _, future in self.pending.values():
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("socket closed"))


class Slots:
    """At most ``limit`` holders at once; the others wait in line (first come, first served).

    Used as ``await slots.acquire()`` ... ``slots.release()``. An uncontended acquire does not yield to the
    loop. It replaces ``asyncio.Semaphore``, whose ``acquire`` on Python 3.11 scans every waiter
    (``locked()``) each time: with hundreds of queries waiting that cost a tenth of the checker's CPU.
    A released slot passes straight to the first waiter; a waiter cancelled after it was handed one
    passes it on, so no slot is ever lost.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Take a slot, waiting for one if all are held."""
        if self.held < self.limit and not self._waiters:
            self.held += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: ``held`` does not change
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.held -= 1


class _Abandoned(Exception):
    """The asker of a shared query was cancelled before the answer came: the others ask again."""


_MAX_HANDOVERS = 8  # how many cancelled first askers one waiter follows before asking without the cache


class NetworkSource:
    """Asks DNS servers in order, with a per-server timeout, caching and a cap on queries in flight."""

    def __init__(
        self,
        servers: list[tuple[str, int]],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        recursion: bool = True,
        cache: bool = True,
    ) -> None:
        if not servers:
            raise UsageError("no DNS resolver to ask (none in /etc/resolv.conf)", fix="give one with --resolver IP[:PORT]")
        self.servers = servers
        self.timeout = timeout
        self.recursion = recursion
        self.description = ", ".join(fmt_server(h, p) for h, p in servers)
        self._limit = Slots(concurrency)
        self._cache: dict[tuple[str, str, bool], asyncio.Future[Answer]] | None = {} if cache else None
        self._muxes: dict[tuple[str, int], list[_Mux]] = {}
        self._next = 0

    async def _mux(self, host: str, port: int) -> _Mux:
        pool = self._muxes.setdefault((host, port), [])
        if len(pool) < SOCKETS_PER_SERVER:
            loop = asyncio.get_running_loop()
            _, mux = await loop.create_datagram_endpoint(_Mux, remote_addr=(host, port))
            pool.append(mux)
            return mux
        self._next += 1
        return pool[self._next % len(pool)]

    async def _udp(self, qname: str, rdtype: str, host: str, port: int, dnssec: bool = False) -> Reply:
        """Send over a pooled socket; on a truncated answer, ask again over TCP."""
        mux = await self._mux(host, port)
        assert mux.transport is not None
        while True:
            qid = secrets.randbits(16)
            if qid not in mux.pending:
                break
        question = question_wire(qname, _rdtype(rdtype))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        mux.pending[qid] = (question, dnssec, future)
        # A timer on the future rather than asyncio.wait_for: the same bound, without a wrapper per query.
        timer = loop.call_later(self.timeout, _expire, future)
        try:
            mux.transport.sendto(_query(question, qid, recursion=self.recursion, dnssec=dnssec))
            reply = await future
        finally:
            timer.cancel()
            mux.pending.pop(qid, None)
        if reply.flags & dns.flags.TC:
            request = dns.message.make_query(qname, rdtype, use_edns=0, payload=1232, want_dnssec=dnssec)
            if dnssec:
                request.flags |= dns.flags.CD
            if not self.recursion:
                request.flags &= ~dns.flags.RD
            reply = _reply_of(await dns.asyncquery.tcp(request, host, timeout=self.timeout, port=port))
        return reply

    def close(self) -> None:
        """Close the pooled sockets."""
        for pool in self._muxes.values():
            for mux in pool:
                if mux.transport is not None:
                    mux.transport.close()
        self._muxes.clear()

    async def query(self, name: str, rdtype: str) -> Answer:
        """Answer from the cache, or ask the servers (concurrent askers of one query share it)."""
        return await self._cached(name, rdtype, False)

    async def query_dnssec(self, name: str, rdtype: str) -> Answer:
        """Like :meth:`query`, with DO and CD set: the answer keeps its RRSIGs and the authority's NSEC proofs."""
        return await self._cached(name, rdtype, True)

    async def _cached(self, name: str, rdtype: str, dnssec: bool) -> Answer:
        qname = name.lower() if name.endswith(".") else name.lower() + "."
        if self._cache is None:
            return await self._ask(qname, rdtype, dnssec)
        key = (qname, rdtype, dnssec)
        for _ in range(_MAX_HANDOVERS):
            future = self._cache.get(key)
            if future is None:
                # The first asker asks from its own task (a new task per query would cost a tenth of the CPU) and
                # hands the answer to those who asked meanwhile. If it is cancelled, they ask again themselves.
                future = self._cache[key] = asyncio.get_running_loop().create_future()
                try:
                    answer = await self._ask(qname, rdtype, dnssec)
                except BaseException:
                    del self._cache[key]
                    future.set_exception(_Abandoned())
                    future.exception()  # retrieved: no "never retrieved" warning when nobody was waiting
                    raise
                future.set_result(answer)
                return answer
            if future.done() and not future.exception():
                return future.result()
            try:
                return await asyncio.shield(future)  # a waiter's cancellation must not cancel the shared query
            except _Abandoned:
                continue
        return await self._ask(qname, rdtype, dnssec)

    async def _ask(self, qname: str, rdtype: str, dnssec: bool = False) -> Answer:
        failures: list[str] = []
        await self._limit.acquire()
        try:
            for host, port in self.servers:
                server = fmt_server(host, port)
                try:
                    reply = await self._udp(qname, rdtype, host, port, dnssec)
                except dns.exception.Timeout:
                    failures.append(f"{server}: no answer within {self.timeout:g} s")
                    continue
                except (OSError, dns.exception.DNSException) as exc:
                    failures.append(f"{server}: {exc.__class__.__name__}: {exc}")
                    continue
                if reply.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    failures.append(f"{server}: {dns.rcode.to_text(reply.rcode)}")
                    continue
                return _from_reply(qname, rdtype, server, reply, dnssec)
        finally:
            self._limit.release()
        return Answer(qname, rdtype, self.description, rcode="ERROR", error=f"query {qname} {rdtype} failed: " + "; ".join(failures))


def _expire(future: asyncio.Future[Reply]) -> None:
    if not future.done():
        future.set_exception(dns.exception.Timeout())


def _from_reply(qname: str, rdtype: str, server: str, reply: Reply, dnssec: bool = False) -> Answer:
    """An Answer from a reply: the answer section, and the negative TTL from the SOA in authority."""
    return Answer(
        qname,
        rdtype,
        server,
        rcode="NXDOMAIN" if reply.rcode == dns.rcode.NXDOMAIN else "NOERROR",
        rrsets=reply.answer,
        negative_ttl=reply.negative_ttl,
        authority=reply.authority if dnssec else [],
    )
