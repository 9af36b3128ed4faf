"""Fixtures of the deployment tests: a real sshd, Knot, and one two-host deployment shared by the session.

Declared in tests/conftest.py (imported there), so that tests/deploy and the deploy scenario
(tests/scenarios/t04_deploy_twice) share one instance instead of deploying twice per session.

``lab`` starts the peers; ``deployed`` runs ``mailprov deploy`` once for both hosts, then again (the
idempotence run) and once in check mode, keeping each run's result for the tests to assert on. Teardown
stops every mail service the deployment started, then the peers.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mailprov.deploy.runner import PlaybookResult, run_playbook
from mailprov.deploy.wheel import build as build_wheel
from tests.conftest import require_programs
from tests.deploy import lab
from tests.peers.knot import KnotServer
from tests.peers.sshd import SSHD


@dataclass
class Lab:
    root: Path
    sshd: SSHD
    dns: str
    hosts: list[lab.LabHost]
    inventory: Path
    runs: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def host(self, name: str) -> lab.LabHost:
        return next(h for h in self.hosts if h.name == name)

    def deploy(self, *, check: bool = False, inventory: Path | None = None, **kwargs) -> PlaybookResult:
        return run_playbook("site.yml", str(inventory or self.inventory), check=check, echo=self.log.append, **kwargs)


@pytest.fixture(scope="session")
def lab_root() -> Iterator[Path]:
    # The lab's own files (sshd, Knot, wheels, inventory), private to root; each host's prefix is a
    # directory of its own (lab.host_root).
    root = Path(tempfile.mkdtemp(prefix="mailprov-deploy-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_peers(lab_root: Path) -> Iterator[tuple[SSHD, str]]:
    """sshd on 127.0.6.2 and Knot on 127.0.6.53 serving the lab zones."""
    require_programs("sshd", "knotd", "ssh", "openssl")
    with (
        SSHD(lab_root / "sshd", lab.SSHD_ADDRESS, lab.SSHD_PORT) as sshd,
        KnotServer(lab_root / "knot", lab.DNS_ADDRESS, lab.DNS_PORT, lab.zones()),
    ):
        yield sshd, f"{lab.DNS_ADDRESS}:{lab.DNS_PORT}"


@pytest.fixture(scope="session")
def deployed(lab_root: Path, lab_peers: tuple[SSHD, str]) -> Iterator[Lab]:
    """Check mode on a fresh host, then both hosts deployed over SSH, deployed again, and run in check mode."""
    sshd, dns = lab_peers
    hosts = lab.make_hosts()
    wheel = build_wheel(lab.REPO, lab_root / "wheels")["wheel"]
    inventory = lab.write_inventory(lab_root / "inventory.yml", sshd.ansible_vars(), hosts, dns, wheel)
    the_lab = Lab(lab_root, sshd, dns, hosts, inventory)
    try:
        # Check mode on a fresh host first (one host keeps it short): it must report and touch nothing.
        the_lab.runs["fresh-check"] = the_lab.deploy(check=True, limit="mail.alpha.test")
        the_lab.runs["fresh-check-files"] = sorted(p for h in hosts for p in h.prefix.rglob("*"))  # type: ignore[assignment]
        the_lab.runs["first"] = the_lab.deploy()
        if the_lab.runs["first"].ok:
            the_lab.runs["second"] = the_lab.deploy()
            the_lab.runs["check"] = the_lab.deploy(check=True)
        yield the_lab
    finally:
        lab.stop_services(hosts)
        lab.remove_hosts(hosts)
