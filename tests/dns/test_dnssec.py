"""``dnssec`` and ``dane`` against real peers: Knot signing zones, Unbound validating, broken cases made for real.

Unbound's own verdict (AD bit, or SERVFAIL for bogus data) is asked beside ours for every case, so the
lab is proven to be what the test says it is (signed, unsigned, bogus) before our checker is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.checker import CheckOptions, check_domains
from mailprov.dns.dnssec import ROOT_ANCHORS, Security, Validator, parse_trust_anchors, signature_problem
from mailprov.dns.resolver import NetworkSource
from mailprov.errors import UsageError
from tests.dns import dnssec_lab as lab
from tests.outbound.pki import TestCA
from tests.peers.unbound import UnboundServer


def unbound_says(unbound: UnboundServer, name: str, rdtype: str) -> str:
    """Unbound's own verdict: 'secure' (AD), 'insecure' (an answer without AD) or 'bogus' (SERVFAIL)."""
    query = dns.message.make_query(name, rdtype, want_dnssec=True)
    response = dns.query.udp(query, unbound.address, port=unbound.port, timeout=5)
    if response.rcode() == dns.rcode.SERVFAIL:
        return "bogus"
    return "secure" if response.flags & dns.flags.AD else "insecure"


def run_check(dnssec_lab: dict, domain: str) -> dict:
    result = CliRunner().invoke(
        app,
        ["check", domain, "--resolver", dnssec_lab["resolver"], "--trust-anchor", str(dnssec_lab["anchor"]), "--format", "json"],
    )
    assert result.exit_code in (0, 1, 3), result.output
    data = json.loads(result.stdout)
    data["exit_code"] = result.exit_code
    return data


def results(data: dict, check_id: str) -> dict[str, dict]:
    return {c["subject"]: c for c in data["domains"][0]["checks"] if c["id"] == check_id}


@pytest.mark.parametrize(
    ("domain", "unbound_verdict"),
    [("good.diag.test", "secure"), ("unsigned.diag.test", "insecure"), ("badds.diag.test", "bogus"), ("expired.diag.test", "bogus")],
)
def test_the_lab_is_what_it_claims(dnssec_lab: dict, domain: str, unbound_verdict: str) -> None:
    """Unbound, validating from the same anchor, agrees with the case's label (RFC 4035 5)."""
    assert unbound_says(dnssec_lab["unbound"], domain, "MX") == unbound_verdict


def test_signed_zone_passes_with_its_chain(dnssec_lab: dict) -> None:
    """A zone whose DS at the parent matches its key, and whose RRsets are signed: pass, with the chain walked."""
    data = run_check(dnssec_lab, "good.diag.test")
    dnssec = results(data, "dnssec")
    assert dnssec["good.diag.test"]["status"] == "pass", dnssec
    assert "diag.test. -> good.diag.test." in dnssec["good.diag.test"]["summary"]
    assert dnssec["mail.good.diag.test"]["status"] == "pass"
    assert data["exit_code"] == 0
    queries = [r["query"] for r in dnssec["good.diag.test"]["records"]]
    assert "diag.test. DNSKEY" in queries and "good.diag.test. DS" in queries and "good.diag.test. DNSKEY" in queries


def test_mx_hosts_aaaa_rrsets_are_validated_too(dnssec_lab: dict) -> None:
    """A DANE sender looks up AAAA as well as A with DNSSEC (RFC 7672 2.2.2): a bogus AAAA fails even beside a valid A."""
    unbound = dnssec_lab["unbound"]
    assert unbound_says(unbound, "mail.six.diag.test", "A") == "secure"
    assert unbound_says(unbound, "mail.six.diag.test", "AAAA") == "bogus"
    assert unbound_says(unbound, "mail6.six.diag.test", "AAAA") == "secure"
    dnssec = results(run_check(dnssec_lab, "six.diag.test"), "dnssec")  # asked with CD: Unbound hands the bogus AAAA over
    bad = dnssec["mail.six.diag.test"]
    assert bad["status"] == "fail", bad
    assert bad["summary"].startswith("mail.six.diag.test. AAAA: bogus:") and "AAAA RRset of mail.six.diag.test." in bad["summary"]
    assert "mail.six.diag.test. AAAA" in [r["query"] for r in bad["records"]]
    assert dnssec["mail6.six.diag.test"]["status"] == "pass"
    assert dnssec["mail6.six.diag.test"]["summary"].startswith("mail6.six.diag.test. A and AAAA: signed and valid")
    assert dnssec["six.diag.test"]["status"] == "pass"


def test_unsigned_zone_warns(dnssec_lab: dict) -> None:
    """A delegation without DS, proven by the parent's signed NSEC (RFC 4035 5.2): insecure, a warning."""
    data = run_check(dnssec_lab, "unsigned.diag.test")
    dnssec = results(data, "dnssec")["unsigned.diag.test"]
    assert dnssec["status"] == "warn"
    assert "without a DS record (proven by NSEC)" in dnssec["summary"]
    assert "sign the zone" in dnssec["fix"]


def test_unsigned_delegation_proven_by_nsec3_warns(dnssec_lab: dict) -> None:
    """The parent denies the DS with NSEC3 (RFC 5155 8.5, 8.6): the hashed owner matches, NS without DS: insecure."""
    assert unbound_says(dnssec_lab["unbound"], "insecure.n3.diag.test", "MX") == "insecure"
    data = run_check(dnssec_lab, "insecure.n3.diag.test")
    dnssec = results(data, "dnssec")["insecure.n3.diag.test"]
    assert dnssec["status"] == "warn", dnssec
    assert "delegated from n3.diag.test. without a DS record (proven by NSEC3)" in dnssec["summary"]


def test_ds_matching_no_key_fails_naming_both(dnssec_lab: dict) -> None:
    """The parent's DS names a key the child does not have: bogus, naming the DS and the child's keys."""
    data = run_check(dnssec_lab, "badds.diag.test")
    assert data["exit_code"] == 1
    dnssec = results(data, "dnssec")["badds.diag.test"]
    assert dnssec["status"] == "fail"
    assert "matches no DNSKEY of badds.diag.test." in dnssec["summary"]


def test_expired_signature_fails_saying_when(dnssec_lab: dict) -> None:
    """Signatures past their expiration (RFC 4034 3.1.5): bogus, naming the RRset and the expiry date."""
    data = run_check(dnssec_lab, "expired.diag.test")
    dnssec = results(data, "dnssec")["expired.diag.test"]
    assert dnssec["status"] == "fail"
    assert "DNSKEY RRset of expired.diag.test." in dnssec["summary"]
    assert "signature expired" in dnssec["summary"]


def test_no_resolver_for_the_root_is_an_error_not_a_verdict(dnssec_lab: dict) -> None:
    """With the root's anchor, a lab resolver that refuses '.' leaves the check incomplete (exit 3), never 'bogus'."""
    result = CliRunner().invoke(app, ["check", "good.diag.test", "--resolver", dnssec_lab["resolver"], "--dnssec", "--format", "json"])
    assert result.exit_code == 3, result.output
    dnssec = results(json.loads(result.stdout), "dnssec")["good.diag.test"]
    assert dnssec["status"] == "error"
    assert "DNSKEY of ." in dnssec["summary"]


def test_validator_caches_each_zone_walk(dnssec_lab: dict) -> None:
    """Two names under one zone walk the chain once: the DS and DNSKEY queries are not repeated."""
    host, port = dnssec_lab["resolver"].split(":")

    async def run() -> tuple[Security, Security, int]:
        source = NetworkSource([(host, int(port))])
        asked: list[str] = []
        original = source.query_dnssec

        async def counting(name: str, rdtype: str):  # type: ignore[no-untyped-def]
            asked.append(f"{name} {rdtype}")
            return await original(name, rdtype)

        source.query_dnssec = counting  # type: ignore[method-assign]
        validator = Validator(source, parse_trust_anchors(dnssec_lab["anchor"].read_text()))
        try:
            a, b = await asyncio.gather(validator.validate("good.diag.test.", "MX"), validator.validate("mail.good.diag.test.", "A"))
        finally:
            source.close()
        return a.security, b.security, asked.count("good.diag.test. DS")

    first, second, ds_queries = asyncio.run(run())
    assert (first, second) == (Security.SECURE, Security.SECURE)
    assert ds_queries == 1


def test_zone_files_skip_dnssec(zone_files: list[Path]) -> None:
    """Zone files carry no signatures to check: the check says so (skip), it does not guess."""
    report = asyncio.run(check_domains(["alpha.test"], CheckOptions(zone_files=zone_files, dnssec=True)))
    dnssec = [c for c in report.domains[0].checks if c.id == "dnssec"]
    assert [c.status for c in dnssec] == ["skip"]


def test_trust_anchor_parsing() -> None:
    """The built-in root anchors parse; a bad line is a usage error naming the line."""
    anchors = parse_trust_anchors(ROOT_ANCHORS)
    assert [a.zone.to_text() for a in anchors] == ["."]
    assert sorted(d.key_tag for d in anchors[0].ds) == [20326, 38696]
    with pytest.raises(UsageError, match="line 2"):
        parse_trust_anchors("lab. DS 1 13 2 " + "00" * 32 + "\nlab. A 192.0.2.1\n")
    with pytest.raises(UsageError, match="no DS or DNSKEY"):
        parse_trust_anchors("; only a comment\n")


def test_signature_problem_names_a_missing_rrsig() -> None:
    """An RRset of a signed zone without RRSIG is bogus (RFC 4035 5.3): the reason names the RRset."""
    rrset = dns.rrset.from_text("mail.lab.", 300, "IN", "A", "192.0.2.1")
    keys = dns.rrset.from_text("lab.", 300, "IN", "DNSKEY", "257 3 13 " + "A" * 88)
    problem = signature_problem(rrset, None, dns.name.from_text("lab."), keys, 0)
    assert problem == "the A RRset of mail.lab. has no RRSIG, but lab. is signed"


def test_plan_tlsa_from_certificates_is_what_dane_matches(tmp_path: Path, pki: TestCA, good_cert) -> None:
    """``dns plan --tlsa-from`` prints 3 1 1 records (current key, then the next) that match the certificates (RFC 7671 5.1)."""
    from cryptography import x509

    from mailprov.dns.dane import load_certificate, tlsa_matches

    next_cert = pki.issue("next.mail.good.diag.test")
    result = CliRunner().invoke(
        app,
        [*PLAN, "--no-tls-rpt", "--tlsa-from", str(good_cert.cert), "--tlsa-from", str(next_cert.cert), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    tlsa = [r for r in json.loads(result.stdout)["records"] if r["type"] == "TLSA"]
    assert [r["name"] for r in tlsa] == ["_25._tcp.mail.good.diag.test."] * 2
    for record, cert in zip(tlsa, (good_cert.cert, next_cert.cert), strict=True):
        usage, selector, mtype, data = record["value"].split()
        assert (usage, selector, mtype) == ("3", "1", "1")
        leaf: x509.Certificate = load_certificate(cert.read_bytes())
        assert tlsa_matches(3, 1, 1, bytes.fromhex(data), leaf)
    assert "next key" in tlsa[1]["comment"]
    bad = CliRunner().invoke(
        app, ["dns", "plan", "good.diag.test", "--host", "mail.good.diag.test", "--ip", "127.0.14.10", "--tlsa-from", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "cannot read certificate" in bad.output


PLAN = ["dns", "plan", "good.diag.test", "--host", "mail.good.diag.test", "--ip", lab.GOOD_MX_ADDRESS]


def test_tlsa_record_problems_for_smtp() -> None:
    """RFC 7672 3.1.3: PKIX usages are unusable for SMTP; RFC 6698 2.1: digests have fixed lengths."""
    from mailprov.dns.dane import record_problems
    from mailprov.dns.model import Status

    assert record_problems(3, 1, 1, b"x" * 32) is None
    assert record_problems(2, 0, 2, b"x" * 64) is None
    assert record_problems(1, 1, 1, b"x" * 32)[0] == Status.FAIL
    assert record_problems(3, 1, 1, b"x" * 20)[0] == Status.FAIL
    assert record_problems(3, 1, 0, b"x" * 300)[0] == Status.WARN
    # RFC 7671 5.2.2: 2 1 0 lets the server omit the anchor; the advice is then not just "use a digest".
    status, why = record_problems(2, 1, 0, b"x" * 300)
    assert status == Status.WARN and "'2 1 1' with the trust anchor's certificate in the served chain" in why
    assert record_problems(4, 1, 1, b"x" * 32)[0] == Status.FAIL


def test_junit_reports_the_bogus_chain_as_a_failure(dnssec_lab: dict) -> None:
    """The new checks render like the others: JUnit failure for bogus, exit 1."""
    import xml.etree.ElementTree as ET

    args = ["check", "badds.diag.test", "--resolver", dnssec_lab["resolver"], "--trust-anchor", str(dnssec_lab["anchor"])]
    result = CliRunner().invoke(app, [*args, "--format", "junit"])
    assert result.exit_code == 1
    case = next(c for c in ET.fromstring(result.stdout).iter("testcase") if c.get("name") == "dnssec badds.diag.test")
    assert case.get("classname") == "badds.diag.test.dnssec"
    failure = case.find("failure")
    assert failure is not None and "matches no DNSKEY" in failure.get("message", "")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(
                ["lab.", ".", "IN", "300", "DS", "DNSKEY", "20326", "8", "2", "257", "3", "13", "E06D44B8", "AwEAAa==", ";", "é", "x" * 70]
            ),
            max_size=8,
        ),
        max_size=4,
    ),
    st.text(max_size=30),
)
def test_trust_anchor_parser_raises_only_usage_errors(lines: list[list[str]], noise: str) -> None:
    """Whatever the file holds, the answer is anchors or a UsageError naming the line, never a traceback."""
    with contextlib.suppress(UsageError):
        parse_trust_anchors("\n".join([*(" ".join(words) for words in lines), noise]))


def test_resolver_dropping_signatures_is_an_error_not_bogus(dnssec_lab: dict) -> None:
    """A resolver that ignores DO (no RRSIG even for the anchor's keys) leaves the check incomplete: it says nothing of the domain."""
    from mailprov.dns.resolver import Answer

    host, port = dnssec_lab["resolver"].split(":")

    async def run() -> tuple[Security, str]:
        source = NetworkSource([(host, int(port))])
        original = source.query_dnssec

        async def stripping(name: str, rdtype: str) -> Answer:
            answer = await original(name, rdtype)
            return Answer(
                answer.qname, answer.rdtype, answer.server, answer.rcode, [r for r in answer.rrsets if r.rdtype != dns.rdatatype.RRSIG]
            )

        source.query_dnssec = stripping  # type: ignore[method-assign]
        try:
            verdict = await Validator(source, parse_trust_anchors(dnssec_lab["anchor"].read_text())).validate("good.diag.test.", "MX")
        finally:
            source.close()
        return verdict.security, verdict.reason

    security, reason = asyncio.run(run())
    assert security == Security.ERROR and "does not pass DNSSEC records" in reason
