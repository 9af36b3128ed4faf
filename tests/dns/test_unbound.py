"""Through a real recursive resolver (Unbound in front of Knot): a pass, a real SERVFAIL, a real stale cache.

The stale-cache case is the one ``--authoritative`` exists for: Unbound has cached "no MX" for the
domain; the MX is then published at the source (Knot); until the cached answer's TTL runs out, the
resolver path still fails while the domain's own name server already has the record.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mailprov.cli import app
from tests.conftest import require_programs
from tests.dns import zones as tz
from tests.peers.knot import KnotServer
from tests.peers.unbound import UnboundServer

pytestmark = pytest.mark.peers

FRESH = """$ORIGIN fresh.test.
$TTL 300
@ SOA ns hostmaster {serial} 3600 600 86400 120
@ NS ns
ns A 127.0.2.1
@ TXT "v=spf1 mx -all"
_dmarc TXT "v=DMARC1; p=reject"
mx A 192.0.2.10
"""


def check(resolver: str, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["check", "--resolver", resolver, "--timeout", "3", *args])


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, test_zones: dict[str, str]):  # type: ignore[no-untyped-def]
    require_programs("knotd", "unbound")
    base = tmp_path_factory.mktemp("unbound")
    zones = {**test_zones, "fresh.test": FRESH.format(serial=1)}
    with KnotServer(base / "knot", "127.0.2.1", 0, zones) as knot:
        at = f"127.0.2.1@{knot.port}"
        # lame.test is delegated to Knot, which does not serve it: Unbound answers SERVFAIL.
        stubs = {name: at for name in zones} | {"lame.test": at}
        with UnboundServer(base / "unbound", "127.0.2.2", 0, stubs) as resolver:
            yield knot, f"127.0.2.2:{resolver.port}"


def test_good_domain_passes_through_a_recursive_resolver(unbound) -> None:
    _, resolver = unbound
    result = check(resolver, "--dkim-selector", tz.SELECTOR, tz.domain("good"))
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout and "WARN" not in result.stdout


def test_servfail_exits_3_naming_server_and_query(unbound) -> None:
    _, resolver = unbound
    result = check(resolver, "lame.test")
    assert result.exit_code == 3, result.output
    assert f"{resolver}: SERVFAIL" in result.stdout and "lame.test. MX" in result.stdout


def test_cached_old_answer_is_published_not_yet_propagated(unbound) -> None:
    knot, resolver = unbound
    before = check(resolver, "fresh.test")  # Unbound now caches "fresh.test has no MX" for 120 s
    assert before.exit_code == 1 and "no MX record and no address" in before.stdout

    knot.write_zone("fresh.test", FRESH.format(serial=2) + "@ MX 10 mx\n")
    knot.reload()

    stale = check(resolver, "fresh.test")
    assert stale.exit_code == 1, "the resolver should still serve its cached answer"
    fresh = check(resolver, "--authoritative", "--ns-port", str(knot.port), "--format", "json", "fresh.test")
    assert fresh.exit_code == 0, fresh.output
    checks = json.loads(fresh.stdout)["domains"][0]["checks"]
    mx = next(c for c in checks if c["id"] == "mx")
    assert mx["status"] == "warn"
    assert mx["summary"].startswith("published, not yet propagated (TTL ")
    ttl = int(mx["summary"].split("(TTL ")[1].split(" ")[0])
    assert 0 < ttl <= 120  # what is left of Unbound's negative-cache TTL
    assert {r["server"] for r in mx["records"]} == {resolver, f"127.0.2.1:{knot.port}"}
