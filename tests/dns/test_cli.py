"""``mailprov check`` through the CLI: exit codes 0/1/2/3, JSON and JUnit shapes, -f, --strict, --zone globs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailprov.cli import app
from tests.dns import zones as tz

pytestmark = pytest.mark.peers
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "zones"


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["check", *args])


def test_good_domain_exits_0_with_json(resolver: str) -> None:
    result = cli("--resolver", resolver, "--dkim-selector", tz.SELECTOR, "--format", "json", tz.domain("good"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"domains", "verdict"} and data["verdict"] == "pass"
    (domain,) = data["domains"]
    assert set(domain) == {"domain", "verdict", "checks"} and domain["domain"] == "good.zz.test"
    for check in domain["checks"]:
        assert set(check) == {"id", "status", "subject", "summary", "fix", "records"}
        for record in check["records"]:
            assert set(record) == {"query", "server", "rcode", "answer", "ttl"}
    mx = next(c for c in domain["checks"] if c["id"] == "mx")
    assert mx["records"][0] == {
        "query": "good.zz.test. MX",
        "server": resolver,
        "rcode": "NOERROR",
        "answer": ["good.zz.test. 300 IN MX 10 mx.good.zz.test."],
        "ttl": 300,
    }


def test_failure_exits_1(resolver: str) -> None:
    result = cli("--resolver", resolver, tz.domain("spfall"))
    assert result.exit_code == 1, result.output
    assert "FAIL  spf" in result.stdout and "fix: end the record with '-all'" in result.stdout


def test_warnings_pass_unless_strict(resolver: str) -> None:
    assert cli("--resolver", resolver, tz.domain("dmarcnone")).exit_code == 0
    assert cli("--resolver", resolver, "--strict", tz.domain("dmarcnone")).exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["bad..name"],
        ["-bad.example"],
        ["--resolver", "not-an-ip", "good.zz.test"],
        ["--resolver", "127.0.0.1:99999", "good.zz.test"],
        ["--timeout", "0", "good.zz.test"],
        ["--ip", "300.1.1.1", "good.zz.test"],
        ["--host", "bad_host!", "good.zz.test"],
        ["--dkim-selector", "a b", "good.zz.test"],
        ["--format", "xml", "good.zz.test"],
        ["--zone", "/nonexistent.zone", "good.zz.test"],
        ["--zone", str(EXAMPLES / "alpha.test.zone"), "--authoritative", "alpha.test"],
        ["--concurrency", "0", "good.zz.test"],
        ["--ns-port", "0", "good.zz.test"],
        ["-f", "/nonexistent-domains.txt"],
        [],
    ],
)
def test_bad_usage_exits_2_without_traceback(args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_zone_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "broken.test.zone"
    bad.write_text("$ORIGIN broken.test.\n@ 300 IN MX ten\n")
    result = cli("--zone", str(bad), "broken.test")
    assert result.exit_code == 2 and "broken.test.zone" in result.output
    include = tmp_path / "inc.test.zone"
    include.write_text("$ORIGIN inc.test.\n$INCLUDE /nonexistent/file\n")
    result = cli("--zone", str(include), "inc.test")
    assert result.exit_code == 2 and "Traceback" not in result.output
    stray_soa = tmp_path / "x.test.zone"
    stray_soa.write_text("$ORIGIN x.test.\n@ 300 IN NS ns\nsub 300 IN SOA ns hm 1 2 3 4 5\n")
    result = cli("--zone", str(stray_soa), "x.test")
    assert result.exit_code == 2 and "non-origin SOA" in result.output
    nameless = tmp_path / "a..b.zone"
    nameless.write_text("@ 300 IN A 192.0.2.1\n")
    assert cli("--zone", str(nameless), "x.test").exit_code == 2
    comment_only = tmp_path / "c.test.zone"
    comment_only.write_text("; no $ORIGIN here\n@ 300 IN MX 0 .\n")
    result = cli("--zone", str(comment_only), "c.test")
    assert result.exit_code == 1 and "null MX" in result.stdout  # the origin came from the file name
    binary = tmp_path / "bin.test.zone"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert cli("--zone", str(binary), "bin.test").exit_code == 2


def test_silent_resolver_exits_3_naming_server_and_query(blackhole) -> None:
    silent = f"127.0.2.3:{blackhole[1]}"
    result = cli("--resolver", silent, "--timeout", "0.3", tz.domain("good"))
    assert result.exit_code == 3, result.output
    assert silent in result.stdout and "good.zz.test. MX" in result.stdout
    as_json = cli("--resolver", silent, "--timeout", "0.3", "--format", "json", tz.domain("good"))
    assert as_json.exit_code == 3 and json.loads(as_json.stdout)["verdict"] == "error"
    assert silent in as_json.stderr and "could not be completed" in as_json.stderr


def test_refusing_server_exits_3(resolver: str) -> None:
    # Knot is authoritative for zz.test only: it refuses other names, as a broken resolver would.
    result = cli("--resolver", resolver, "example.org")
    assert result.exit_code == 3, result.output
    assert "REFUSED" in result.stdout


def test_junit_one_testcase_per_check(resolver: str) -> None:
    result = cli("--resolver", resolver, "--format", "junit", tz.domain("good"), tz.domain("spfall"))
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout.split("\n", 1)[1])
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["good.zz.test", "spfall.zz.test"]
    spfall = suites[1]
    assert int(spfall.get("tests")) == len(spfall.findall("testcase")) > 5
    failures = [case.get("name") for case in spfall.findall("testcase") if case.find("failure") is not None]
    assert failures == ["spf spfall.zz.test"]
    assert int(spfall.get("failures")) == 1


def test_domains_from_file(resolver: str, tmp_path: Path) -> None:
    listing = tmp_path / "domains.txt"
    listing.write_text(f"# two domains\n{tz.domain('good')}\n\n{tz.domain('nullmx')}  # null MX\n")
    result = cli("--resolver", resolver, "--format", "json", "-f", str(listing))
    data = json.loads(result.stdout)
    assert [d["domain"] for d in data["domains"]] == ["good.zz.test", "nullmx.zz.test"]
    assert result.exit_code == 1


def test_bundled_demo_zones_pass_offline() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.zone"))
    # As the shell expands `--zone examples/zones/*.zone alpha.test beta.test`.
    result = cli("--zone", files[0], *files[1:], "alpha.test", "beta.test")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout and "ERROR" not in result.stdout
    for domain, host, ip in (("alpha.test", "mail.alpha.test", "127.0.6.10"), ("beta.test", "mail.beta.test", "127.0.6.20")):
        result = cli("--zone", files[0], *files[1:], "--host", host, "--ip", ip, "--format", "json", domain)
        assert result.exit_code == 0, result.output
        checks = json.loads(result.stdout)["domains"][0]["checks"]
        assert {(c["id"], c["status"]) for c in checks if c["subject"] == ip} == {
            ("ptr", "pass"),
            ("fcrdns", "pass"),
            ("spf.sender", "pass"),
        }
    # mail.alpha.test is not allowed to send for beta.test.
    result = cli("--zone", files[0], *files[1:], "--host", "mail.alpha.test", "--ip", "127.0.6.10", "beta.test")
    assert result.exit_code == 1 and "FAIL  spf.sender" in result.stdout


def test_zone_mode_without_the_reverse_zone_is_incomplete() -> None:
    result = cli("--zone", str(EXAMPLES / "alpha.test.zone"), "alpha.test")
    assert result.exit_code == 3
    assert "in none of the zone files" in result.stdout and "fix: add the zone file" in result.stdout


def test_closed_port_resolver_exits_3() -> None:
    from tests.peers.knot import free_port

    closed = f"127.0.2.3:{free_port('127.0.2.3')}"  # nothing listens: the kernel answers port unreachable
    result = cli("--resolver", closed, "--timeout", "2", tz.domain("good"))
    assert result.exit_code == 3, result.output
    assert closed in result.stdout


def test_zone_files_first_then_resolver(resolver: str, tmp_path: Path) -> None:
    # The forward zone comes from a file; the reverse zones (not given) from Knot.
    override = tmp_path / "zz.test.zone"
    from tests.dns.zones import forward_zone

    override.write_text(forward_zone().replace('"v=spf1 mx +all"', '"v=spf1 mx -all"'))
    result = cli("--zone", str(override), "--resolver", resolver, "--format", "json", tz.domain("spfall"))
    assert result.exit_code == 0, result.output
    servers = {r["server"] for c in json.loads(result.stdout)["domains"][0]["checks"] for r in c["records"]}
    assert f"zone file {override}" in servers and resolver in servers


def test_verbose_table_shows_evidence(resolver: str) -> None:
    result = cli("--resolver", resolver, "-v", tz.domain("good"))
    assert f"? good.zz.test. MX @ {resolver}: NOERROR ttl=300" in result.stdout
    assert "good.zz.test. 300 IN MX 10 mx.good.zz.test." in result.stdout


def test_internationalised_domain_is_asked_as_punycode(blackhole) -> None:
    result = cli("--resolver", f"127.0.2.3:{blackhole[1]}", "--timeout", "0.2", "--format", "json", "bücher.test")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["domains"][0]["domain"] == "xn--bcher-kva.test"


def test_readme_offline_command_works_in_a_shell() -> None:
    # Exactly as the README has it: the shell expands the glob.
    import subprocess
    import sys

    mailprov = Path(sys.executable).with_name("mailprov")
    command = f"{mailprov} check --zone examples/zones/*.zone alpha.test beta.test"
    result = subprocess.run(["bash", "-c", command], cwd=EXAMPLES.parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: WARN (2 domain(s)" in result.stdout  # only the optional MTA-STS record is missing
