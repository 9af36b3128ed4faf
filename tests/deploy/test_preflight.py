"""The DNS pre-flight stops a deploy before any host is changed, and says why.

Knot on 127.0.6.54 serves the lab zones with one broken record: 127.0.6.10's PTR names the other host, mail.beta.test.
Only the pre-flight play runs (it fails first), so the hosts' prefixes must stay empty.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailprov.cli import app
from tests.conftest import require_programs
from tests.deploy import lab
from tests.peers.knot import KnotServer

pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]


@pytest.fixture
def broken_dns(tmp_path: Path):
    require_programs("knotd")
    with KnotServer(tmp_path / "knot", lab.BROKEN_DNS_ADDRESS, lab.DNS_PORT, lab.zones(ptr_10="mail.beta.test.")) as knot:
        yield f"{knot.address}:{knot.port}"


def test_broken_ptr_stops_the_deploy_before_any_host_is_changed(tmp_path: Path, broken_dns: str, request: pytest.FixtureRequest) -> None:
    hosts = lab.make_hosts()
    request.addfinalizer(lambda: lab.remove_hosts(hosts))
    # Unreachable hosts on purpose: the pre-flight runs on the controller, so no connection is ever needed.
    sshd_vars = {"ansible_host": "127.0.6.3", "ansible_port": "1", "ansible_connection": "ssh"}
    inventory = lab.write_inventory(tmp_path / "inventory.yml", sshd_vars, hosts, broken_dns, "/nonexistent.whl")
    result = CliRunner().invoke(app, ["deploy", "-i", str(inventory)])
    assert result.exit_code == 1, result.output
    assert "DNS pre-flight failed for mail.alpha.test" in result.output
    assert "127.0.6.10 (--ip) has PTR mail.beta.test" in result.output  # the report names the bad PTR...
    assert "FAIL  fcrdns" in result.output  # ...and the check it breaks
    assert "nothing was changed" in result.output
    assert "mail.alpha.test" in result.output and "failed=1" in result.output
    for host in hosts:
        assert list(host.prefix.iterdir()) == [], f"{host.name} was touched"


def test_allow_failure_is_explicit(tmp_path: Path, broken_dns: str, request: pytest.FixtureRequest) -> None:
    """With mailprov_preflight_allow_failure the pre-flight reports and lets the play go on (preflight.yml only)."""
    hosts = lab.make_hosts()
    request.addfinalizer(lambda: lab.remove_hosts(hosts))
    sshd_vars = {"ansible_host": "127.0.6.3", "ansible_port": "1", "ansible_connection": "ssh"}
    inventory = lab.write_inventory(
        tmp_path / "inventory.yml", sshd_vars, hosts, broken_dns, "/nonexistent.whl", mailprov_preflight_allow_failure=True
    )
    result = CliRunner().invoke(app, ["deploy", "-i", str(inventory), "--playbook", "preflight.yml"])
    assert result.exit_code == 0, result.output
    assert "has PTR mail.beta.test" in result.output
