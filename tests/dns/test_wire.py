"""The resolver's reply parser (``mailprov.dns.resolver.parse_reply``) against dnspython's own message parser.

The checker walks a reply's sections itself (dnspython parses each name and record) because
``dns.message.from_wire`` builds every section and costs half of the checker's CPU. These tests hold it
to dnspython's answers: the same RRsets (grouped by name, class, type and covered type, RFC 2181 5), the
SOA of the authority section, the extended rcode of the OPT record (RFC 6891 6.1.3), and no reply at all
for a packet that is not the answer to the question asked (RFC 5452 9.1: ID and question must match).
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

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
