"""t04: deploying twice is safe. ``mailprov deploy`` (site.yml over a real sshd, DNS pre-flight against
Knot) sets up both hosts of the lab, then runs again: the second run checks every task on both hosts
and changes nothing, so no handler restarts a service, and both MTAs still answer with their banner.

Reuses the session's two-host deployment (tests/deploy/fixtures.py, declared in tests/conftest.py): the
runs happen once per session, for tests/deploy and this scenario alike.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.deploy import lab

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]  # the session deployment, if built here


def test_a_second_deploy_changes_nothing_and_the_hosts_keep_serving(deployed) -> None:
    first, second = deployed.runs["first"], deployed.runs.get("second")
    assert first.ok, first.summary()
    assert all(first.hosts[h.name].get("changed", 0) > 0 for h in deployed.hosts), first.summary()
    assert second is not None and second.ok, "the second run must succeed"
    assert sorted(second.hosts) == sorted(h.name for h in deployed.hosts)
    for host in deployed.hosts:
        stats = second.hosts[host.name]
        assert stats.get("ok", 0) > 0 and stats.get("changed", 0) == 0 and stats.get("failed", 0) == 0, (host.name, stats)
    assert second.changed_tasks() == []
    for host in deployed.hosts:
        with smtplib.SMTP(host.address, lab.PORTS["smtp"], timeout=20) as smtp:
            code, banner = smtp.noop()
            assert code == 250, (host.name, banner)
