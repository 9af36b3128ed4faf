"""Every check against a real Knot (network mode) and the same zones as files (offline --zone mode)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailprov.dns.checker import CheckOptions, check_domains
from mailprov.dns.model import DomainReport, Report, Status
from tests.dns import zones as tz
from tests.peers.knot import KnotServer

pytestmark = pytest.mark.peers
MODES = ["network", "zonefile"]


def run(options: CheckOptions, domains: list[str]) -> Report:
    return asyncio.run(check_domains(domains, options))


@pytest.fixture(scope="module")
def reports(knot: KnotServer, zone_files: list[Path]) -> dict[str, dict[str, DomainReport]]:
    """One run over every case per mode: mode -> domain -> report."""
    domains = [tz.domain("good"), *(tz.domain(label) for label in tz.CASES)]
    out = {}
    for mode in MODES:
        if mode == "network":
            options = CheckOptions(resolvers=[(knot.address, knot.port)], dkim_selector=tz.SELECTOR, timeout=2)
        else:
            options = CheckOptions(zone_files=zone_files, dkim_selector=tz.SELECTOR)
        out[mode] = {d.domain: d for d in run(options, domains).domains}
    out["knot"] = knot
    return out


@pytest.mark.parametrize("mode", MODES)
def test_good_domain_passes_every_check(reports, mode: str) -> None:
    report = reports[mode][tz.domain("good")]
    assert {c.status for c in report.checks} == {Status.PASS}, [(c.id, c.subject, c.summary) for c in report.checks if c.status != "pass"]
    ids = {c.id for c in report.checks}
    assert ids == {"domain.exists", "mx", "mx.target", "mx.address", "ptr", "fcrdns", "spf", "dmarc", "dkim", "mta_sts", "tls_rpt", "ipv6"}
    # Both addresses of the MX host get reverse DNS checks.
    assert {c.subject for c in report.checks if c.id == "fcrdns"} == {"192.0.2.10", "2001:db8::10"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label", sorted(tz.CASES))
def test_case(reports, mode: str, label: str) -> None:
    domain = tz.domain(label)
    report = reports[mode][domain]
    for (check_id, subject), expected in tz.CASES[label].items():
        found = [c for c in report.checks if c.id == check_id and c.subject == (subject or domain)]
        assert found, f"no {check_id} result about {subject or domain}: {[(c.id, c.subject) for c in report.checks]}"
        result = found[0]
        assert result.status == expected, f"{check_id}: {result.status} {result.summary}"
        if expected != "pass" and expected != "skip":
            assert result.fix, f"{check_id} has no fix"
        if expected in ("fail", "warn") and result.records:
            assert result.records[0].server  # the evidence names the server asked


def test_nxdomain_stops_the_other_checks(reports) -> None:
    report = reports["network"][tz.domain("missing")]
    knot = reports["knot"]
    assert [c.id for c in report.checks] == ["domain.exists"]
    assert report.checks[0].records[0].rcode == "NXDOMAIN"
    assert report.checks[0].records[0].server == f"{knot.address}:{knot.port}"


def test_spf_counts_lookups_through_includes(reports) -> None:
    result = next(c for c in reports["network"][tz.domain("spfmany")].checks if c.id == "spf")
    assert "12 DNS-querying terms" in result.summary


def test_null_mx_explains_rfc7505(reports) -> None:
    result = next(c for c in reports["network"][tz.domain("nullmx")].checks if c.id == "mx")
    assert "RFC 7505" in result.summary


def test_host_and_ip_options(knot: KnotServer) -> None:
    base = {"resolvers": [(knot.address, knot.port)], "timeout": 2}
    good = run(CheckOptions(host="mx.good.zz.test", ips=["192.0.2.10", "2001:db8::10"], **base), [tz.domain("good")])
    host = next(c for c in good.domains[0].checks if c.id == "host.address")
    assert host.status == Status.PASS
    # An address the host's A records lack.
    missing = run(CheckOptions(host="mx.good.zz.test", ips=["192.0.2.99"], **base), [tz.domain("good")])
    host = next(c for c in missing.domains[0].checks if c.id == "host.address")
    assert host.status == Status.FAIL and "192.0.2.99" in host.summary
    assert next(c for c in missing.domains[0].checks if c.id == "ptr" and c.subject == "192.0.2.99").status == Status.FAIL
    # The PTR of 192.0.2.10 is mx.good, not the host name given.
    other = run(CheckOptions(host="other.zz.test", ips=["192.0.2.10"], **base), [tz.domain("good")])
    fcrdns = next(c for c in other.domains[0].checks if c.id == "fcrdns" and c.subject == "192.0.2.10")
    assert fcrdns.status == Status.FAIL and "not the host name other.zz.test" in fcrdns.summary
    # --host alone: its own addresses get the reverse checks.
    alone = run(CheckOptions(host="mx.noptr.zz.test", **base), [tz.domain("good")])
    assert next(c for c in alone.domains[0].checks if c.id == "ptr" and c.subject == "192.0.2.30").status == Status.FAIL


def test_unanswered_queries_are_errors_naming_server_and_query(blackhole) -> None:
    report = run(CheckOptions(resolvers=[blackhole], timeout=0.3), [tz.domain("good")])
    result = report.domains[0].checks[0]
    assert result.status == Status.ERROR
    assert f"127.0.2.3:{blackhole[1]}" in result.summary and "good.zz.test. MX" in result.summary
    assert report.exit_code() == 3


def test_second_resolver_is_asked_when_the_first_is_silent(knot: KnotServer, blackhole) -> None:
    report = run(CheckOptions(resolvers=[blackhole, (knot.address, knot.port)], timeout=0.3), [tz.domain("good")])
    assert report.domains[0].checks[0].status == Status.PASS


def test_dmarc_external_report_address_needs_authorisation(reports) -> None:
    result = next(c for c in reports["network"][tz.domain("dmarcext")].checks if c.id == "dmarc")
    assert "elsewhere.zz.test" in result.summary and "reports.zz.test," not in result.summary
    assert "dmarcext.zz.test._report._dmarc.elsewhere.zz.test." in result.fix
