"""``mailprov dns plan``: the planned records, served by Knot, make ``mailprov check`` pass."""

from __future__ import annotations

import json
from pathlib import Path

import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.plan import key_mode, make_plan, txt_strings
from tests.conftest import require_programs
from tests.peers.knot import KnotServer

HEAD = """$TTL 300
@ SOA ns.plan.test. hostmaster.plan.test. 1 3600 600 86400 60
@ NS ns.plan.test.
"""


def plan_cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["dns", "plan", *args])


def test_txt_strings_at_most_255_bytes() -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    parts = txt_strings(value)
    assert [len(p) for p in parts] == [255, 255, 108] and "".join(parts) == value


def test_dkim_key_written_0600_and_reused(tmp_path: Path) -> None:
    first = make_plan("plan.test", "mail.plan.test", ["192.0.2.60"], dkim_selector="s1", dkim_key_dir=tmp_path / "keys")
    path = tmp_path / "keys" / "s1._domainkey.plan.test.key"
    assert first.dkim_key_file == str(path) and first.dkim_key_created
    assert key_mode(path) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert key.key_size == 2048
    second = make_plan("plan.test", "mail.plan.test", ["192.0.2.60"], dkim_selector="s1", dkim_key_dir=tmp_path / "keys")
    assert not second.dkim_key_created
    dkim = [r for r in first.records if r.name.startswith("s1._domainkey")]
    assert dkim == [r for r in second.records if r.name.startswith("s1._domainkey")]
    assert len(dkim[0].strings) == 2 and all(len(s) <= 255 for s in dkim[0].strings)


@pytest.mark.parametrize(
    "args",
    [
        ["bad..domain", "--host", "mail.plan.test", "--ip", "192.0.2.60"],
        ["plan.test", "--host", "mail.plan.test", "--ip", "nope"],
        ["plan.test", "--host", "mail.plan.test"],
        ["plan.test", "--host", "mail.plan.test", "--ip", "192.0.2.60", "--dkim-bits", "512", "--dkim-selector", "s"],
        ["plan.test", "--host", "mail.plan.test", "--ip", "192.0.2.60", "--format", "yaml"],
    ],
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    result = plan_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


@pytest.mark.peers
def test_published_plan_passes_check(tmp_path: Path) -> None:
    require_programs("knotd")
    keys = tmp_path / "keys"
    base = ["plan.test", "--host", "mail.plan.test", "--ip", "192.0.2.60", "--ip", "2001:db8::60", "--dkim-selector", "s1"]
    snippet = plan_cli(*base, "--dkim-key-dir", str(keys), "--mta-sts")
    assert snippet.exit_code == 0, snippet.output
    planned = plan_cli(*base, "--dkim-key-dir", str(keys), "--format", "json")
    data = json.loads(planned.stdout)
    # The zone snippet parses as zone-file text once a SOA and NS are added.
    forward = HEAD + "ns A 192.0.2.53\n" + snippet.stdout.split("wrote DKIM", 1)[0]
    dns.zone.from_text(forward, origin="plan.test.", relativize=False, check_origin=False)
    reverse4 = HEAD + "".join(f"{p['name']} {p['ttl']} IN PTR {p['value']}\n" for p in data["ptr"] if p["name"].endswith("in-addr.arpa."))
    reverse6 = HEAD + "".join(f"{p['name']} {p['ttl']} IN PTR {p['value']}\n" for p in data["ptr"] if p["name"].endswith("ip6.arpa."))
    zones = {"plan.test": forward, "2.0.192.in-addr.arpa": reverse4, "8.b.d.0.1.0.0.2.ip6.arpa": reverse6}
    with KnotServer(tmp_path / "knot", "127.0.2.9", 0, zones) as ns:
        args = ["--resolver", f"127.0.2.9:{ns.port}", "--host", "mail.plan.test", "--ip", "192.0.2.60", "--ip", "2001:db8::60"]
        result = CliRunner().invoke(app, ["check", *args, "--dkim-selector", "s1", "--strict", "--format", "json", "plan.test"])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    assert {c["id"] for c in checks} >= {"mx", "ptr", "fcrdns", "host.address", "spf", "dmarc", "dkim", "mta_sts", "tls_rpt"}
    assert {c["status"] for c in checks} == {"pass"}
    assert next(c for c in checks if c["id"] == "dkim")["summary"] == "selector 's1': RSA 2048 bits"
