"""The resolver's reply parser (``mailprov.dns.resolver.parse_reply``) against dnspython's own message parser.

The checker walks a reply's sections itself, and decodes the records the checks read straight from the
wire (``mailprov.dns.records``), because ``dns.message.from_wire`` builds every section, and dnspython's
records cost a third of the checker's CPU. These tests hold it to dnspython's answers, to the letter of
the zone-file text: the same records (grouped by name, class, type and covered type, RFC 2181 5), names
decompressed per RFC 1035 4.1.4 and escaped as dnspython escapes them, the SOA of the authority section,
the extended rcode of the OPT record (RFC 6891 6.1.3), and no reply at all for a packet that is not the
answer to the question asked (RFC 5452 9.1: ID and question must match), nor from another address.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprov.dns.records import RecordSet
from mailprov.dns.resolver import parse_reply, question_wire, rrset_lines

QNAME = "mx.Alpha.test."


def _response(rdtype: str = "A", *, answer=(), authority=(), additional=(), rcode=dns.rcode.NOERROR, **flags) -> dns.message.Message:
    query = dns.message.make_query(QNAME, rdtype, use_edns=0, payload=1232, **flags)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for section, rrsets in ((response.answer, answer), (response.authority, authority), (response.additional, additional)):
        for name, ttl, rtype, *texts in rrsets:
            section.append(dns.rrset.from_text(name, ttl, "IN", rtype, *texts))
    return response


def _sets(section: list) -> set:
    """A section as zone-file lines: ours (record values) and dnspython's (Rdata) must read the same, to the letter."""
    return {line for rrset in section for line in rrset_lines(rrset)}


def test_a_reply_parses_as_dnspython_parses_it() -> None:
    response = _response(
        "MX",
        answer=[(QNAME, 300, "MX", "10 mail.alpha.test.", "20 mail2.alpha.test."), (QNAME, 300, "RRSIG", _RRSIG_MX)],
        authority=[("alpha.test.", 600, "NS", "ns.alpha.test."), ("alpha.test.", 600, "SOA", "ns.alpha.test. h.alpha.test. 1 2 3 4 300")],
        additional=[("mail.alpha.test.", 300, "A", "192.0.2.1")],
    )
    wire = response.to_wire()  # compressed: owner names are pointers to the question
    ours = parse_reply(wire, question_wire(QNAME.lower(), 15), full_authority=True)
    theirs = dns.message.from_wire(wire)
    assert ours is not None
    assert _sets(ours.answer) == _sets(theirs.answer) and len(ours.answer) == 2
    assert _sets(ours.authority) == _sets(theirs.authority)
    assert ours.rcode == theirs.rcode() == dns.rcode.NOERROR and ours.flags == theirs.flags
    # Without the DNSSEC proofs asked for, the authority section gives only the negative-caching TTL:
    # the SOA's MINIMUM or its TTL, whichever is smaller (RFC 2308 5), read off the wire.
    lean = parse_reply(wire, question_wire(QNAME.lower(), 15))
    assert lean is not None and lean.authority == [] and lean.negative_ttl == ours.negative_ttl == 300
    assert _sets(lean.answer) == _sets(ours.answer)


def test_records_of_one_rrset_apart_in_the_section_are_grouped() -> None:
    response = _response(answer=[(QNAME, 300, "A", "192.0.2.1"), (QNAME, 300, "AAAA", "2001:db8::1")])
    response.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "A", "192.0.2.2"))
    wire = response.to_wire()
    ours = parse_reply(wire, question_wire(QNAME.lower(), 1))
    assert ours is not None and _sets(ours.answer) == _sets(dns.message.from_wire(wire).answer)
    assert sorted(len(r.records) for r in ours.answer) == [1, 2]


def test_names_compressed_into_the_question_and_into_records() -> None:
    """RFC 1035 4.1.4: an owner name may point into the middle of the question's name, or into an earlier record's data."""
    response = _response(
        answer=[
            (QNAME, 300, "CNAME", "host.Beta.test."),
            ("host.beta.test.", 300, "A", "192.0.2.7"),
            ("alpha.test.", 300, "A", "192.0.2.8"),
        ]
    )
    wire = response.to_wire()
    ours = parse_reply(wire, question_wire(QNAME.lower(), 1))
    assert ours is not None and _sets(ours.answer) == _sets(dns.message.from_wire(wire).answer) and len(ours.answer) == 3


def test_nxdomain_extended_rcode_and_truncation() -> None:
    nx = _response(rcode=dns.rcode.NXDOMAIN, authority=[("alpha.test.", 600, "SOA", "ns.alpha.test. h.alpha.test. 1 2 3 4 300")])
    reply = parse_reply(nx.to_wire(), question_wire(QNAME.lower(), 1))
    assert reply is not None and reply.rcode == dns.rcode.NXDOMAIN and reply.negative_ttl == 300
    short_ttl = _response(rcode=dns.rcode.NXDOMAIN, authority=[("alpha.test.", 60, "SOA", "ns.alpha.test. h.alpha.test. 1 2 3 4 300")])
    reply = parse_reply(short_ttl.to_wire(), question_wire(QNAME.lower(), 1), full_authority=True)
    assert reply is not None and reply.negative_ttl == 60 and reply.authority[0].rdtype == dns.rdatatype.SOA
    badvers = _response(rcode=dns.rcode.BADVERS)  # 16: the upper bits travel in the OPT record
    reply = parse_reply(badvers.to_wire(), question_wire(QNAME.lower(), 1))
    assert reply is not None and reply.rcode == dns.rcode.BADVERS
    truncated = _response()
    truncated.flags |= dns.flags.TC
    reply = parse_reply(truncated.to_wire(), question_wire(QNAME.lower(), 1))
    assert reply is not None and reply.flags & dns.flags.TC


def test_not_the_answer_to_our_question_is_no_reply() -> None:
    wire = _response(answer=[(QNAME, 300, "A", "192.0.2.1")]).to_wire()
    assert parse_reply(wire, question_wire("mx.alpha.test.", 1)) is not None  # names compare case-insensitively
    assert parse_reply(wire, question_wire("mx.beta.test.", 1)) is None  # another name
    assert parse_reply(wire, question_wire("mx.alpha.test.", 28)) is None  # another type
    query = dns.message.make_query(QNAME, "A").to_wire()
    assert parse_reply(query, question_wire("mx.alpha.test.", 1)) is None  # QR clear: a query, not a reply
    assert parse_reply(wire[:-12], question_wire("mx.alpha.test.", 1)) is None  # cut short


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_any_bytes_after_a_matching_header_never_raise_and_agree_with_dnspython(tail: bytes, cut: int) -> None:
    head = _response(answer=[(QNAME, 300, "A", "192.0.2.1")]).to_wire()
    for wire in (head[: 12 + 19] + tail, head[:cut] + tail):
        reply = parse_reply(wire, question_wire("mx.alpha.test.", 1), full_authority=True)  # never raises
        try:
            theirs = dns.message.from_wire(wire)
        except Exception:
            continue
        if reply is not None:  # where both accept the packet, they read the same answer
            assert _sets(reply.answer) == _sets(theirs.answer)


_RRSIG_MX = "MX 13 2 300 20270101000000 20260101000000 12345 alpha.test. " + "A" * 86 + "=="


def test_a_cancelled_first_asker_hands_the_shared_query_over(knot) -> None:  # type: ignore[no-untyped-def]
    """Concurrent askers of one query share it; when the one asking is cancelled, the others ask again and get
    the answer (not its cancellation)."""
    import asyncio

    from mailprov.dns.resolver import NetworkSource

    async def main() -> None:
        source = NetworkSource([(knot.address, knot.port)], timeout=5)
        try:
            first = asyncio.ensure_future(source.query("good.zz.test", "MX"))
            await asyncio.sleep(0)  # the first asker owns the query now
            waiter = asyncio.ensure_future(source.query("GOOD.zz.test.", "MX"))
            await asyncio.sleep(0)  # the second waits for the first's answer
            first.cancel()
            answer = await asyncio.wait_for(waiter, 10)
            assert answer.error is None and [rd.exchange for rd in answer.records] == ["mx.good.zz.test."]
            assert first.cancelled()
            assert (await source.query("good.zz.test", "MX")) is answer  # and it is cached for the rest of the run
        finally:
            source.close()

    asyncio.run(main())


# --- The record values (mailprov.dns.records) read straight from the wire, against dnspython -----------------

_LABEL = st.binary(min_size=1, max_size=12)  # any bytes: dots, quotes, backslashes, spaces, control characters
_NAME = st.lists(_LABEL, min_size=0, max_size=4).map(lambda labels: dns.name.Name([*labels, b""]))


def _record(rtype: str, draw) -> dns.rdata.Rdata:  # type: ignore[no-untyped-def]
    import dns.ipv6
    import dns.rdataclass
    from dns.rdtypes.ANY import CAA, CNAME, MX, NS, PTR, SOA, TLSA, TXT
    from dns.rdtypes.IN import AAAA, A

    IN, t = dns.rdataclass.IN, dns.rdatatype.from_text(rtype)
    u8, u16, u32 = st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)
    if rtype == "A":
        return A.A(IN, t, ".".join(str(b) for b in draw(st.binary(min_size=4, max_size=4))))
    if rtype == "AAAA":  # all-zero runs and IPv4-mapped forms are where text forms differ
        raw = draw(st.sampled_from([b"\0" * 10 + b"\xff\xff", b"\0" * 12, b"\x20\x01\x0d\xb8" + b"\0" * 8]))
        return AAAA.AAAA(IN, t, dns.ipv6.inet_ntoa(raw + draw(st.binary(min_size=4, max_size=4))))
    if rtype == "MX":
        return MX.MX(IN, t, draw(u16), draw(_NAME))
    if rtype in ("PTR", "CNAME", "NS"):
        return {"PTR": PTR.PTR, "CNAME": CNAME.CNAME, "NS": NS.NS}[rtype](IN, t, draw(_NAME))
    if rtype == "TXT":
        return TXT.TXT(IN, t, draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3)))
    if rtype == "SOA":
        return SOA.SOA(IN, t, draw(_NAME), draw(_NAME), draw(u32), draw(u32), draw(u32), draw(u32), draw(u32))
    if rtype == "CAA":
        tag = draw(st.from_regex(rb"\A[a-zA-Z0-9]{1,15}\Z"))
        return CAA.CAA(IN, t, draw(u8), tag, draw(st.binary(max_size=40)))
    mtype = draw(st.sampled_from([0, 1, 2, 255]))
    size = {1: 32, 2: 64}.get(mtype)  # digests have their size; full data any (> 64 octets: hex in chunks)
    return TLSA.TLSA(IN, t, draw(u8), draw(u8), mtype, draw(st.binary(min_size=size or 0, max_size=size or 100)))


_TYPES = ["A", "AAAA", "MX", "PTR", "CNAME", "NS", "TXT", "SOA", "CAA", "TLSA"]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_record_values_read_as_dnspython_reads_them(data) -> None:  # type: ignore[no-untyped-def]
    """Every type the checks read, with names and strings of any bytes, compressed (RFC 1035 4.1.4) as a server
    compresses them: the values' zone-file text is dnspython's, to the letter (escapes included)."""
    response = _response("ANY")
    for _ in range(data.draw(st.integers(1, 4))):
        rtype = data.draw(st.sampled_from(_TYPES))
        owner = data.draw(st.sampled_from([QNAME, "alpha.test.", "x.mx.alpha.test."]))
        name, rdtype = dns.name.from_text(owner), dns.rdatatype.from_text(rtype)
        rrset = response.find_rrset(response.answer, name, dns.rdataclass.IN, rdtype, create=True)
        rrset.add(_record(rtype, data.draw), data.draw(st.integers(0, 2**31 - 1)))
    wire = response.to_wire()
    ours = parse_reply(wire, question_wire(QNAME.lower(), 255))
    assert ours is not None
    assert _sets(ours.answer) == _sets(dns.message.from_wire(wire).answer)
    assert all(isinstance(rrset, RecordSet) and rrset.records for rrset in ours.answer)


def _rich_reply() -> bytes:
    return _response(
        "ANY",
        answer=[
            (QNAME, 300, "CNAME", "mail.Alpha.test."),
            ("mail.alpha.test.", 300, "MX", "10 mx1.alpha.test.", "20 mx\\.2.alpha.test."),
            ("mail.alpha.test.", 300, "TXT", '"v=spf1 -all" "tw\\"o"'),
            ("mail.alpha.test.", 300, "SOA", "ns.alpha.test. h\\@x.alpha.test. 1 2 3 4 5"),
            ("mail.alpha.test.", 300, "CAA", '0 issue "ca.test; x=\\001"'),
            ("mail.alpha.test.", 300, "TLSA", "3 1 1 " + "ab" * 32),
            ("mail.alpha.test.", 300, "AAAA", "::ffff:192.0.2.1"),
            ("mail.alpha.test.", 300, "PTR", "mail.alpha.test."),
            ("mail.alpha.test.", 300, "NS", "ns.alpha.test."),
            ("mail.alpha.test.", 300, "A", "192.0.2.1"),
        ],
        authority=[("alpha.test.", 600, "SOA", "ns.alpha.test. h.alpha.test. 1 2 3 4 300")],
    ).to_wire()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(12, 600), st.integers(0, 255)), min_size=1, max_size=4))
def test_a_damaged_reply_never_raises_and_never_reads_otherwise_than_dnspython(damage) -> None:  # type: ignore[no-untyped-def]
    """Bytes of a compressed reply holding every type the checks read, overwritten at random (lengths, pointers,
    label types): the parser never raises, and when both parsers accept the packet they read the same answer."""
    wire = bytearray(_rich_reply())
    for at, byte in damage:
        if at < len(wire):
            wire[at] = byte
    for full in (False, True):
        ours = parse_reply(bytes(wire), question_wire(QNAME.lower(), 255), full_authority=full)
        try:
            theirs = dns.message.from_wire(bytes(wire))
        except Exception:
            continue
        if ours is not None:
            assert _sets(ours.answer) == _sets(theirs.answer)


def test_compression_loops_and_forward_pointers_are_refused() -> None:
    """RFC 1035 4.1.4: a pointer points to a prior occurrence of a name; one pointing at itself, forward, or into
    a loop makes the record malformed (the reply is dropped), and a name over 255 octets too."""
    from mailprov.dns.records import read_name

    head = _response().to_wire()[:12 + 19]  # header and question (mx.alpha.test. A IN) of a NOERROR reply
    header = bytearray(head[:12])
    header[6:8] = b"\0\x01"  # one answer record
    header[10:12] = b"\0\0"  # no additional records
    question = bytes(head[12:])

    def reply_with_owner(owner: bytes, at: int | None = None) -> bytes:
        return bytes(header) + question + owner + b"\0\x01\0\x01\0\0\x01\x2c\0\x04\xc0\x00\x02\x01"

    q = question_wire("mx.alpha.test.", 1)
    assert parse_reply(reply_with_owner(b"\xc0\x0c"), q) is not None  # a pointer back to the question's name
    here = len(header) + len(question)
    assert parse_reply(reply_with_owner(bytes((0xC0 | here >> 8, here & 0xFF))), q) is None  # to itself
    assert parse_reply(reply_with_owner(bytes((0xC0, here + 2))), q) is None  # forward
    assert parse_reply(reply_with_owner(b"\x80\x0c"), q) is None  # label type 10 (RFC 1035 4.1.4: reserved)
    # Two pointers pointing at each other: the second goes forward from where the first led.
    loop = b"\x00" * 12 + b"\xc0\x0e\xc0\x0c"
    with pytest.raises(dns.exception.FormError):
        read_name(loop, 14, len(loop))
    with pytest.raises(dns.exception.FormError):
        read_name(loop, 12, len(loop))
    long_name = b"\x3f" + b"a" * 63
    with pytest.raises(dns.exception.FormError):  # 4 x 64 + 1 = 257 octets
        read_name(long_name * 4 + b"\0", 0, 257)
    assert read_name(long_name * 3 + b"\x3d" + b"a" * 61 + b"\0", 0, 255)[1] == 255  # 255 exactly is allowed
    assert read_name(b"\x03a.b\x02\\@\x00", 0, 8) == ("a\\.b.\\\\\\@.", 8)  # escaped as dnspython writes them


def test_forged_and_stray_replies_are_dropped() -> None:
    """RFC 5452 9.1: an answer counts only if it comes from the server asked, to the port asked from, with the
    query's ID and question. A spoofed copy from another address, a wrong ID, another question and a
    query (QR clear) arriving first are all ignored; the real answer, last, is the one used. IDs and source
    ports are random (RFC 5452 4 and 10)."""
    import asyncio

    from mailprov.dns.records import A
    from mailprov.dns.resolver import NetworkSource

    server_address, attacker_address = "127.0.24.1", "127.0.24.2"

    def answer_to(query: bytes, address: str, *, qid: int | None = None, name: str | None = None, qr: bool = True) -> bytes:
        request = dns.message.from_wire(query)
        if name is not None:
            request = dns.message.make_query(name, "A", id=request.id)
        response = dns.message.make_response(request)
        response.id = request.id if qid is None else qid
        response.answer.append(dns.rrset.from_text(request.question[0].name, 300, "IN", "A", address))
        if not qr:
            response.flags &= ~dns.flags.QR
        return response.to_wire()

    class Server(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int]] = []  # (query ID, client port)

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
            qid = int.from_bytes(data[:2], "big")
            self.seen.append((qid, addr[1]))
            if dns.message.from_wire(data).question[0].name.to_text() == "forged.test.":
                attacker.sendto(answer_to(data, "192.0.2.66"), addr)  # right ID and question, wrong sender
                self.transport.sendto(answer_to(data, "192.0.2.67", qid=qid ^ 0x5A5A), addr)  # wrong ID
                self.transport.sendto(answer_to(data, "192.0.2.68", name="other.test."), addr)  # another question
                self.transport.sendto(answer_to(data, "192.0.2.69", qr=False), addr)  # not a response
            self.transport.sendto(answer_to(data, "192.0.2.1"), addr)

    async def main() -> None:
        nonlocal attacker
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(Server, local_addr=(server_address, 0))
        attacker, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(attacker_address, 0))
        source = NetworkSource([(server_address, transport.get_extra_info("sockname")[1])], timeout=5)
        try:
            answer = await asyncio.wait_for(source.query("forged.test", "A"), 10)
            assert answer.error is None and answer.records == [A("192.0.2.1")]
            answers = await asyncio.wait_for(asyncio.gather(*(source.query(f"n{i}.test", "A") for i in range(20))), 10)
            assert all(a.records == [A("192.0.2.1")] for a in answers)
        finally:
            source.close()
            transport.close()
            attacker.close()
        ids, ports = {qid for qid, _ in server.seen}, {port for _, port in server.seen}
        assert len(server.seen) == 21 and len(ids) >= 19 and len(ports) >= 2 and min(ports) >= 1024

    attacker = None
    asyncio.run(main())


def test_query_slots_are_bounded_first_come_first_served_and_never_lost() -> None:
    """The resolver's cap on queries in flight: waiters are served in order, and a waiter cancelled before or after
    it was handed a slot loses no slot (the cap would otherwise shrink for the rest of the run)."""
    import asyncio

    from mailprov.dns.resolver import Slots

    async def main() -> None:
        slots = Slots(2)
        await slots.acquire()
        await slots.acquire()
        assert slots.held == 2
        order: list[str] = []

        async def take(name: str) -> None:
            await slots.acquire()
            order.append(name)

        waiting = {n: asyncio.ensure_future(take(n)) for n in ("a", "b", "c", "d")}
        await asyncio.sleep(0)
        waiting["b"].cancel()  # cancelled while waiting: leaves the line
        await asyncio.sleep(0)
        slots.release()  # to a
        slots.release()  # to c (b is gone) ...
        waiting["c"].cancel()  # ... but c is cancelled before it runs: it passes the slot on to d
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert order == ["a", "d"] and slots.held == 2
        slots.release()
        slots.release()
        assert slots.held == 0
        await slots.acquire()  # free again at once
        assert slots.held == 1

    asyncio.run(main())
