"""``dnsbl``: blocklists served by Knot under the real lists' names (loopback only), through Unbound.

127.0.14.10 (the MX of good.diag.test) is clean; 127.0.14.11 is listed (Spamhaus SBL and XBL, SpamCop);
127.0.14.12 gets the answer Spamhaus gives public resolvers; 127.0.14.13 an answer outside 127/8.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.dnsbl import interpret, query_name

ZONES = ["--dnsbl-zone", "zen.spamhaus.org", "--dnsbl-zone", "bl.spamcop.net"]


def dnsbl(dnssec_lab: dict, *args: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(app, ["check", "good.diag.test", "--resolver", dnssec_lab["resolver"], *args, "--format", "json"])
    assert result.exit_code in (0, 1, 3), result.output
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    return result.exit_code, {c["subject"]: c for c in checks if c["id"] == "dnsbl"}


def test_clean_mx_address_passes(dnssec_lab: dict) -> None:
    """NXDOMAIN in every list (RFC 5782 2.3): not listed."""
    code, found = dnsbl(dnssec_lab, *ZONES)
    assert found["127.0.14.10"]["status"] == "pass"
    assert "not listed in zen.spamhaus.org, bl.spamcop.net" in found["127.0.14.10"]["summary"]
    assert code == 0


def test_listed_address_fails_naming_list_meaning_and_removal(dnssec_lab: dict) -> None:
    """A listing names the list, what the return code means, the TXT reason and the removal page."""
    code, found = dnsbl(dnssec_lab, *ZONES, "--ip", "127.0.14.11")
    listed = found["127.0.14.11"]
    assert listed["status"] == "fail"
    assert "Spamhaus ZEN: 127.0.0.2: SBL" in listed["summary"] and "127.0.0.4: XBL" in listed["summary"]
    assert "SpamCop" in listed["summary"] and "https://check.spamhaus.org/sbl/query/SBL1" in listed["summary"]
    assert "https://check.spamhaus.org/" in listed["fix"] and "https://www.spamcop.net/bl.shtml" in listed["fix"]
    assert code == 1


def test_public_resolver_answer_is_an_error_never_listed(dnssec_lab: dict) -> None:
    """127.255.255.254 is Spamhaus refusing the resolver: 'could not check' (error), not 'listed'."""
    _, found = dnsbl(dnssec_lab, "--dnsbl-zone", "zen.spamhaus.org", "--ip", "127.0.14.12")
    refused = found["127.0.14.12"]
    assert refused["status"] == "error"
    assert "could not check: 127.255.255.254: this resolver is refused by the list" in refused["summary"]


def test_rewritten_nxdomain_is_an_error(dnssec_lab: dict) -> None:
    """An answer outside 127.0.0.0/8 is a resolver rewriting NXDOMAIN, not a listing."""
    _, found = dnsbl(dnssec_lab, "--dnsbl-zone", "zen.spamhaus.org", "--ip", "127.0.14.13")
    assert found["127.0.14.13"]["status"] == "error" and "rewrite NXDOMAIN" in found["127.0.14.13"]["summary"]


def test_without_the_option_no_list_is_asked(dnssec_lab: dict) -> None:
    """Blocklists are asked only on request: the defaults are third-party services on the internet."""
    _, found = dnsbl(dnssec_lab)
    assert found == {}


def test_query_names_and_interpretation() -> None:
    """RFC 5782 2.1 (IPv4 octets reversed) and 2.4 (IPv6 nibbles reversed); refusal codes are not listings."""
    assert query_name("192.0.2.99", "zen.spamhaus.org") == "99.2.0.192.zen.spamhaus.org."
    assert query_name("2001:db8::1", "bl.test").startswith("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test.")
    assert interpret("zen.spamhaus.org", []) == ("clean", [])
    assert interpret("zen.spamhaus.org", ["127.0.0.10"])[0] == "listed"
    assert interpret("zen.spamhaus.org", ["127.255.255.252"])[0] == "refused"
    assert interpret("other.test", ["127.0.0.2"]) == ("listed", ["127.0.0.2: listed"])
