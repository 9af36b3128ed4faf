"""Unit tests of the pure parts: SPF parsing and lookup counting, DMARC, DKIM, MTA-STS/TLS-RPT, tags, verdicts."""

from __future__ import annotations

import asyncio

import dns.name
import dns.rdatatype
import dns.zone
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailprov.dns.dkim import parse_dkim
from mailprov.dns.dmarc import is_dmarc, parse_dmarc
from mailprov.dns.model import CheckResult, DomainReport, Report, Status
from mailprov.dns.mta_sts import parse_mta_sts, parse_tls_rpt
from mailprov.dns.report import render_junit, render_table
from mailprov.dns.spf import check_spf, check_spf_sender, is_spf, parse_spf
from mailprov.dns.tags import parse_tags
from mailprov.dns.zonefile import ZoneSet, ZoneSource, load_zone
from mailprov.errors import UsageError
from tests.dns.zones import KEY_512, public_key


@pytest.mark.parametrize(
    ("record", "count"),
    [
        ("v=spf1 -all", 0),
        ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all", 0),
        ("v=spf1 a mx ptr exists:%{i}.x.example include:a.example -all", 5),
        ("v=spf1 a/24 mx:mail.example//64 redirect=b.example", 3),
        ("v=spf1 mx redirect=b.example -all", 1),  # redirect is ignored when 'all' is present
        ("v=spf1 exp=explain.example -all", 0),
    ],
)
def test_spf_counts_querying_terms(record: str, count: int) -> None:
    parsed = parse_spf(record)
    assert parsed.errors == []
    assert len(parsed.querying()) == count


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=spf2 -all", "v=spf1"),
        ("v=spf1 ip4:999.1.1.1 -all", "not an IPv4"),
        ("v=spf1 ip4:2001:db8::1 -all", "not an IPv4"),
        ("v=spf1 ip6:192.0.2.1 -all", "not an IPv6"),
        ("v=spf1 ip4:192.0.2.0/33 -all", "prefix"),
        ("v=spf1 include -all", "needs a domain"),
        ("v=spf1 all:foo", "no argument"),
        ("v=spf1 foo:bar -all", "unknown mechanism"),
        ("v=spf1 redirect=a.example redirect=b.example", "more than once"),
        ("v=spf1 a:192.0.2.1 -all", "not a domain"),
        ("v=spf1 ~~all", "not a valid SPF term"),
    ],
)
def test_spf_syntax_errors(record: str, problem: str) -> None:
    errors = parse_spf(record).errors
    assert errors and problem in " ".join(errors)


def test_spf_qualifiers_and_unknown_modifier() -> None:
    parsed = parse_spf("v=spf1 +mx ?a ~all foo=bar")
    assert parsed.errors == []
    assert [(t.name, t.qualifier) for t in parsed.terms if not t.modifier] == [("mx", "+"), ("a", "?"), ("all", "~")]


def test_is_spf() -> None:
    assert is_spf("v=spf1 -all") and is_spf("V=SPF1") and not is_spf("v=spf10 -all") and not is_spf("spf1")


def _source(zone: str) -> ZoneSource:
    return ZoneSource(ZoneSet([dns.zone.from_text(zone, origin="u.test.", relativize=False, check_origin=False)]))


def test_spf_counting_through_includes_and_loops() -> None:
    zone = """
@ 300 IN TXT "v=spf1 include:a.u.test include:b.u.test -all"
a 300 IN TXT "v=spf1 a mx include:c.u.test -all"
b 300 IN TXT "v=spf1 include:u.test -all"
c 300 IN TXT "v=spf1 a a a a a a -all"
"""
    result = asyncio.run(check_spf(_source(zone), "u.test"))
    # 2 at the top, 3 in a, 6 in c, 1 in b: 12; b's include of u.test is a loop and not followed again.
    assert result.status == Status.FAIL and result.summary.startswith("12 DNS-querying terms")


def test_spf_include_without_record_is_permerror() -> None:
    result = asyncio.run(check_spf(_source('@ 300 IN TXT "v=spf1 include:none.u.test -all"\nx 300 IN A 192.0.2.1\n'), "u.test"))
    assert result.status == Status.FAIL and "no SPF record" in result.summary


def test_spf_multi_string_record_is_joined() -> None:
    result = asyncio.run(check_spf(_source('@ 300 IN TXT "v=spf1 ip4:192.0.2.1" " -all"\n'), "u.test"))
    assert result.status == Status.PASS


@pytest.mark.parametrize(
    ("record", "errors", "warnings"),
    [
        ("v=DMARC1; p=reject; rua=mailto:d@example.org", 0, 0),
        ("v=DMARC1; p=none", 0, 1),
        ("v=DMARC1; p=quarantine; pct=50", 0, 1),
        ("v=DMARC1; p=bogus", 1, 0),
        ("v=DMARC1", 1, 0),
        ("p=reject; v=DMARC1", 1, 0),
        ("v=DMARC1; p=reject; sp=maybe; adkim=x; pct=101; rua=http://x", 4, 0),
        ("v=DMARC1; p=reject; p=none", 1, 0),
        ("v=DMARC1; p=reject; fo=1:d; ri=86400; rua=mailto:a@x.example!10m,mailto:b@y.example", 0, 0),
    ],
)
def test_dmarc_parsing(record: str, errors: int, warnings: int) -> None:
    parsed = parse_dmarc(record)
    assert (len(parsed.errors), len(parsed.warnings)) == (errors, warnings), (parsed.errors, parsed.warnings)


def test_is_dmarc() -> None:
    assert is_dmarc("v=DMARC1; p=none") and is_dmarc("v=DMARC1") and not is_dmarc("v=DMARC10; p=none") and not is_dmarc("p=none")


def test_dkim_parsing() -> None:
    assert parse_dkim(f"v=DKIM1; k=rsa; p={public_key(2048)}").bits == 2048
    assert parse_dkim(f"p={public_key(1024)}").bits == 1024
    assert parse_dkim(f"v=DKIM1; p={KEY_512}").bits == 512
    assert parse_dkim("v=DKIM1; p=").revoked
    assert parse_dkim("v=DKIM1; p=!!!").errors
    assert parse_dkim("v=DKIM1; k=ed25519; p=" + "A" * 43 + "=").errors == []
    assert parse_dkim("k=dsa; p=AAAA").errors
    assert parse_dkim("v=DKIM1; k=rsa").errors
    assert parse_dkim(f"p={public_key(2048)}; t=y").warnings


def test_mta_sts_and_tls_rpt() -> None:
    assert parse_mta_sts("v=STSv1; id=20260101T000000") == []
    assert parse_mta_sts("v=STSv1; id=") and parse_mta_sts("v=STSv1") and parse_mta_sts("id=1; v=STSv1")
    assert parse_tls_rpt("v=TLSRPTv1; rua=mailto:t@example.org,https://r.example/x") == []
    assert parse_tls_rpt("v=TLSRPTv1; rua=ftp://x") and parse_tls_rpt("v=TLSRPTv1")


def test_tags() -> None:
    assert parse_tags(" v = DKIM1 ; p=abc; ") == ({"v": "DKIM1", "p": "abc"}, [])
    assert parse_tags("a=1; a=2")[1] and parse_tags("junk")[1] and parse_tags("1a=x")[1]


@given(st.text(max_size=300))
def test_parsers_never_raise(text: str) -> None:
    parse_spf("v=spf1 " + text)
    parse_dmarc("v=DMARC1; " + text)
    parse_dkim(text)
    parse_mta_sts(text)
    parse_tls_rpt(text)


def _report(*statuses: Status) -> Report:
    return Report([DomainReport("x.test", [CheckResult(f"c{i}", s, "x.test", "s", "f") for i, s in enumerate(statuses)])])


@pytest.mark.parametrize(
    ("statuses", "code", "strict_code", "verdict"),
    [
        ((Status.PASS, Status.SKIP), 0, 0, Status.PASS),
        ((Status.PASS, Status.WARN), 0, 1, Status.WARN),
        ((Status.FAIL, Status.WARN), 1, 1, Status.FAIL),
        ((Status.ERROR, Status.WARN), 3, 1, Status.ERROR),
        ((Status.ERROR, Status.FAIL), 1, 1, Status.FAIL),
    ],
)
def test_exit_codes_and_verdicts(statuses, code: int, strict_code: int, verdict: Status) -> None:
    report = _report(*statuses)
    assert report.exit_code() == code and report.exit_code(strict=True) == strict_code and report.verdict == verdict


def test_renderers() -> None:
    report = _report(Status.PASS, Status.WARN, Status.SKIP)
    table = render_table(report, colour=True)
    assert "\x1b[33mWARN" in table and "fix: f" in table
    assert "\x1b[" not in render_table(report, colour=False)
    assert "<failure" not in render_junit(report) and "<failure" in render_junit(report, strict=True)
    assert "<skipped" in render_junit(report)


SENDER_ZONE = """
@ 300 IN SOA ns hostmaster 1 3600 600 86400 60
@ 300 IN MX 10 mx
mx 300 IN A 192.0.2.10
mx 300 IN AAAA 2001:db8::10
@ 300 IN TXT "v=spf1 mx a:web.u.test/28 include:inc.u.test ~all"
web 300 IN A 192.0.2.100
inc 300 IN TXT "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:1::/48 -all"
redir 300 IN TXT "v=spf1 redirect=u.test"
badredir 300 IN TXT "v=spf1 redirect=nothing.u.test"
macro 300 IN TXT "v=spf1 exists:%{i}.bl.u.test ?all"
neutral 300 IN TXT "v=spf1 ip4:192.0.2.1"
voids 300 IN TXT "v=spf1 a:n1.u.test a:n2.u.test mx:n3.u.test mx -all"
twovoids 300 IN TXT "v=spf1 a:n1.u.test exists:n2.u.test mx:u.test -all"
"""


@pytest.mark.parametrize(
    ("domain", "address", "status", "words"),
    [
        ("u.test", "192.0.2.10", Status.PASS, "'mx in u.test'"),
        ("u.test", "2001:db8::10", Status.PASS, "'mx in u.test'"),
        ("u.test", "192.0.2.107", Status.PASS, "'a:web.u.test/28 in u.test'"),
        ("u.test", "198.51.100.7", Status.PASS, "'ip4:198.51.100.0/24 in inc.u.test'"),
        ("u.test", "2001:db8:1::5", Status.PASS, "inc.u.test"),
        ("u.test", "203.0.113.1", Status.FAIL, "softfail"),
        ("redir.u.test", "192.0.2.10", Status.PASS, "'mx in u.test'"),
        ("badredir.u.test", "192.0.2.10", Status.FAIL, "permerror"),
        ("macro.u.test", "192.0.2.10", Status.WARN, "macros"),
        ("neutral.u.test", "192.0.2.10", Status.WARN, "neutral"),
        ("mx.u.test", "192.0.2.10", Status.WARN, "none"),
        ("voids.u.test", "192.0.2.10", Status.FAIL, "more than 2 lookups found nothing"),
        ("twovoids.u.test", "192.0.2.10", Status.PASS, "'mx:u.test in twovoids.u.test'"),
    ],
)
def test_spf_sender_evaluation(domain: str, address: str, status: Status, words: str) -> None:
    result = asyncio.run(check_spf_sender(_source(SENDER_ZONE), domain, address))
    assert result.status == status and words in result.summary, result.summary


def test_spf_ptr_mechanism_warns() -> None:
    result = asyncio.run(check_spf(_source('@ 300 IN TXT "v=spf1 ptr -all"\n'), "u.test"))
    assert result.status == Status.WARN and "RFC 7208 5.5" in result.summary


_ZONE_TOKENS = st.sampled_from(
    (
        "$ORIGIN",
        "$TTL",
        "$INCLUDE",
        "@",
        "x",
        "*",
        "x.test.",
        "300",
        "IN",
        "CH",
        "SOA",
        "NS",
        "MX",
        "A",
        "AAAA",
        "TXT",
        "CNAME",
        "DNAME",
        "TYPE65534",
        "10",
        "1.2.3.4",
        "::1",
        "(",
        ")",
        ";c",
        ".",
        "-1",
        "99999999999",
        "ns",
        "\\# 2 abcd",
        '"txt"',
        "\n",
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_ZONE_TOKENS, max_size=25))
def test_zone_files_load_or_give_a_usage_error(tmp_path_factory, tokens: list[str]) -> None:
    path = tmp_path_factory.mktemp("fz") / "x.test.zone"
    path.write_text(" ".join(tokens))
    try:
        zone = load_zone(path)
    except UsageError:
        return
    zones = ZoneSet([zone])
    for name in ("x.test.", "a.x.test.", "b.a.x.test."):
        for rdtype in ("A", "MX", "TXT", "CNAME", "SOA"):
            zones.lookup(dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
