"""``--authoritative``: a record right at the source but not yet visible is "published, not yet propagated".

Two real Knot instances: the resolver path (127.0.2.4) still serves the old zone, without an MX, as a
cache would until the TTL runs out; the zone's NS record points at the domain's own server (127.0.2.5),
which already has the MX.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mailprov.cli import app
from tests.conftest import require_programs
from tests.peers.knot import KnotServer, free_port

pytestmark = pytest.mark.peers

COMMON = """$ORIGIN fresh.test.
$TTL 300
@ SOA ns hostmaster {serial} 3600 600 86400 120
@ NS ns
ns A 127.0.2.5
@ TXT "v=spf1 mx -all"
_dmarc TXT "v=DMARC1; p=reject"
mx A 192.0.2.10
"""
STALE = COMMON.format(serial=1)
FRESH = COMMON.format(serial=2) + "@ MX 10 mx\n"
REVERSE = """$ORIGIN 2.0.192.in-addr.arpa.
@ 300 SOA ns.fresh.test. hostmaster.fresh.test. 1 3600 600 86400 60
@ 300 NS ns.fresh.test.
10 300 PTR mx.fresh.test.
"""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    require_programs("knotd")
    base = tmp_path_factory.mktemp("auth")
    with (
        KnotServer(base / "resolver", "127.0.2.4", 0, {"fresh.test": STALE, "2.0.192.in-addr.arpa": REVERSE}) as cache,
        KnotServer(base / "source", "127.0.2.5", 0, {"fresh.test": FRESH}) as source,
    ):
        yield f"127.0.2.4:{cache.port}", source.port


def check(servers, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["check", "--resolver", servers[0], "--format", "json", *args, "fresh.test"])


def test_without_authoritative_the_missing_mx_fails(servers) -> None:
    result = check(servers)
    assert result.exit_code == 1
    mx = next(c for c in json.loads(result.stdout)["domains"][0]["checks"] if c["id"] == "mx")
    assert mx["status"] == "fail"


def test_authoritative_reports_published_not_yet_propagated(servers) -> None:
    result = check(servers, "--authoritative", "--ns-port", str(servers[1]))
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    mx = next(c for c in checks if c["id"] == "mx")
    assert mx["status"] == "warn"
    assert mx["summary"].startswith("published, not yet propagated (TTL 120 s)")
    assert "MX: 10 mx.fresh.test." in mx["summary"]
    servers_asked = {r["server"] for r in mx["records"]}
    assert servers_asked == {servers[0], f"127.0.2.5:{servers[1]}"}
    auth = next(c for c in checks if c["id"] == "authoritative")
    assert auth["status"] == "pass" and f"127.0.2.5:{servers[1]}" in auth["summary"]
    # What the resolvers already see correctly stays a plain pass.
    assert next(c for c in checks if c["id"] == "spf")["status"] == "pass"


def test_authoritative_with_unreachable_name_server_is_incomplete(servers) -> None:
    silent = free_port("127.0.2.5")  # nothing listens there
    result = check(servers, "--authoritative", "--ns-port", str(silent), "--timeout", "0.3")
    assert result.exit_code == 1  # the resolvers' view still fails the MX: a definite failure outranks the error
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    assert next(c for c in checks if c["id"] == "mx")["status"] == "fail"
    auth = next(c for c in checks if c["id"] == "authoritative")
    assert auth["status"] == "error" and f"127.0.2.5:{silent}" in auth["summary"]
