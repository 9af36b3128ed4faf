"""``spf`` void lookups, ``ipv6`` and ``caa`` from zone files (offline), and the DMARC report authorisation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailprov.dns.caa import check_caa
from mailprov.dns.checker import CheckOptions, check_domains
from mailprov.dns.model import Status
from mailprov.dns.zonefile import ZoneSet, ZoneSource

ZONE = """$ORIGIN ext.test.
$TTL 300
@ SOA ns hostmaster 1 3600 600 86400 300
@ NS ns
ns A 192.0.2.1
@ MX 10 mx1
@ MX 20 mx2
mx1 A 192.0.2.10
mx1 AAAA 2001:db8::10
mx2 A 192.0.2.11
@ TXT "v=spf1 mx a:gone1.ext.test -all"
three TXT "v=spf1 a:gone1.ext.test mx:gone2.ext.test exists:gone3.ext.test -all"
three MX 10 mx1
six MX 10 mx1
six AAAA 2001:db8::10
@ CAA 0 issue "letsencrypt.org"
mx2 CAA 0 issue ";"
_dmarc TXT "v=DMARC1; p=reject; rua=mailto:reports@other.test"
"""


@pytest.fixture
def zone(tmp_path: Path) -> Path:
    path = tmp_path / "ext.test.zone"
    path.write_text(ZONE)
    return path


def run(zone: Path, domain: str) -> dict[str, list]:
    report = asyncio.run(check_domains([domain], CheckOptions(zone_files=[zone])))
    out: dict[str, list] = {}
    for c in report.domains[0].checks:
        out.setdefault(c.id, []).append(c)
    return out


def test_one_void_lookup_warns(zone: Path) -> None:
    """RFC 7208 4.6.4: a term whose name has no records is a void lookup; one is allowed but worth fixing."""
    spf = run(zone, "ext.test")["spf"][0]
    assert spf.status == Status.WARN and "'a:gone1.ext.test'" in spf.summary


def test_three_void_lookups_fail(zone: Path) -> None:
    """RFC 7208 4.6.4: more than two void lookups is a permerror."""
    spf = run(zone, "three.ext.test")["spf"][0]
    assert spf.status == Status.FAIL and spf.summary.startswith("3 void lookups")


def test_ipv6_on_some_mx_hosts_warns(zone: Path) -> None:
    """An IPv6-only sender can reach only the MX hosts with AAAA records."""
    ipv6 = run(zone, "ext.test")["ipv6"][0]
    assert ipv6.status == Status.WARN and ipv6.summary.startswith("mx2.ext.test has no AAAA")


def test_ipv6_everywhere_passes_and_none_skips(zone: Path, tmp_path: Path) -> None:
    assert run(zone, "three.ext.test")["ipv6"][0].status == Status.PASS
    v4only = tmp_path / "v4.test.zone"
    v4only.write_text("$ORIGIN v4.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ MX 10 mx\nmx A 192.0.2.20\n")
    assert run(v4only, "v4.test")["ipv6"][0].status == Status.SKIP


def test_dmarc_external_report_address_needs_authorisation(zone: Path, tmp_path: Path) -> None:
    """RFC 7489 7.1: a rua in another domain needs ``DOMAIN._report._dmarc.OTHER TXT "v=DMARC1"``."""
    other = tmp_path / "other.test.zone"
    head = "$ORIGIN other.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n"
    other.write_text(head)
    report = asyncio.run(check_domains(["ext.test"], CheckOptions(zone_files=[zone, other])))
    dmarc = next(c for c in report.domains[0].checks if c.id == "dmarc")
    assert dmarc.status == Status.WARN and "ext.test._report._dmarc.other.test" in dmarc.fix
    other.write_text(head + 'ext.test._report._dmarc TXT "v=DMARC1"\n')
    report = asyncio.run(check_domains(["ext.test"], CheckOptions(zone_files=[zone, other])))
    assert next(c for c in report.domains[0].checks if c.id == "dmarc").status == Status.PASS


def test_caa_closest_record_applies(zone: Path) -> None:
    """RFC 8659 3: the CAA set closest to the name applies; 'issue ";"' allows no CA."""
    source = ZoneSource(ZoneSet.from_files([zone]))
    inherited = asyncio.run(check_caa(source, "mx1.ext.test."))
    assert inherited.status == Status.PASS and "inherited from ext.test." in inherited.summary and "letsencrypt.org" in inherited.summary
    closed = asyncio.run(check_caa(source, "mx2.ext.test."))
    assert closed.status == Status.WARN and "allows no CA" in closed.summary


def test_every_check_id_has_a_docs_entry() -> None:
    """Each id the checks can emit has its row (what, why, fix) in docs/dns.md."""
    import re

    root = Path(__file__).resolve().parents[2]
    source = "\n".join(p.read_text() for p in (root / "mailprov" / "dns").glob("*.py"))
    ids = set(re.findall(r'(?:CheckResult|as_error|verdict_result)\(\s*"([a-z0-9_.]+)"', source))
    ids |= set(re.findall(r'await _check\(source, domain, "([a-z0-9_.]+)"', source))
    assert {"dnssec", "dane", "mx.tls", "mta_sts.policy", "dnsbl", "ipv6", "caa", "mta_sts", "tls_rpt"} <= ids
    docs = (root / "docs" / "dns.md").read_text()
    missing = sorted(i for i in ids if f"| `{i}` |" not in docs)
    assert not missing, f"no row in docs/dns.md for {missing}"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--trust-anchor", "/nonexistent/anchor.ds"], "cannot read trust anchor file"),
        (["--tls", "--smtp-port", "0"], "--smtp-port 0 is out of range"),
        (["--tls", "--https-port", "70000"], "--https-port 70000 is out of range"),
        (["--tls", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (["--dnsbl-zone", "bad..zone"], "--dnsbl-zone"),
    ],
)
def test_bad_options_of_the_new_checks_exit_2(args: list[str], says: str) -> None:
    """Bad usage exits 2 before any query, naming the option."""
    from typer.testing import CliRunner

    from mailprov.cli import app

    result = CliRunner().invoke(app, ["check", "ext.test", "--resolver", "127.0.14.250:9", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output
