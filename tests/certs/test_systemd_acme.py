"""The ACME role and its renewal timer on a real systemd host: a booted Debian 12 container (systemd as PID 1).

mail.alpha.test (127.0.15.40, a container of the systemd lab, tests/deploy/systemd_lab.py) is deployed over
SSH as root with ``mailprov_tls_source: acme``; Pebble (127.0.15.6) validates HTTP-01 on port 80 of the
host's address, where ``mailprov cert renew`` answers inside the container. Then, as the timer would,
``systemctl start mailprov-cert-renew.service`` renews a certificate that is due, and the running services
(not restarted: same main pids) serve the new one to ``mailprov probe --expect-cert``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mailprov.deploy.runner import PlaybookResult, run_playbook
from mailprov.deploy.wheel import build as build_wheel
from tests.conftest import require_programs
from tests.deploy import lab as pidfile_lab
from tests.deploy.systemd_lab import SSH_PORT, Container, host_vars, image
from tests.peers.knot import KnotServer
from tests.peers.pebble import Pebble

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1800)]

ADDRESS, NAME = "127.0.15.40", "mail.alpha.test"
DNS_ADDRESS, DNS_PORT = "127.0.15.55", 3553
CA_ADDRESS = "127.0.15.6"
PROBE_SOURCE = "127.0.15.99"
WHEEL_CACHE = Path("/var/tmp/mailprov-certs-wheels")  # the offline wheelhouse, kept between runs
TIMINGS: dict[str, float] = {}


def zones() -> dict[str, str]:
    return {
        "alpha.test": (
            f"$TTL 300\n@ SOA ns.alpha.test. hostmaster.alpha.test. 1 3600 600 86400 300\n@ NS ns.alpha.test.\n"
            f'ns A {ADDRESS}\n@ MX 10 {NAME}.\nmail A {ADDRESS}\n@ TXT "v=spf1 mx -all"\n_dmarc TXT "v=DMARC1; p=reject"\n'
        ),
        "15.0.127.in-addr.arpa": (
            "$TTL 300\n@ SOA ns.alpha.test. hostmaster.alpha.test. 1 3600 600 86400 300\n@ NS ns.alpha.test.\n"
            f"{ADDRESS.rsplit('.', 1)[1]} PTR {NAME}.\n"
        ),
    }


class Host:
    def __init__(self, container: Container, deploy: PlaybookResult, log: list[str]) -> None:
        self.container, self.deploy, self.log = container, deploy, log

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.container.run(*argv, check=check)

    @property
    def cert(self) -> Path:
        return self.container.root / "etc" / "mailprov" / "tls" / f"{NAME}.crt"


@pytest.fixture(scope="module")
def acme_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    require_programs("systemd-nspawn", "mmdebstrap", "nsenter", "ssh", "knotd", "pebble")
    root = tmp_path_factory.mktemp("systemd-acme")
    image()
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailprov-certs", "-f", str(key)], check=True)
    container = Container(root / "alpha", NAME, ADDRESS)
    started = time.monotonic()
    wheel = build_wheel(pidfile_lab.REPO, root / "wheels")["wheel"]
    try:
        with (
            KnotServer(root / "knot", DNS_ADDRESS, DNS_PORT, zones()),
            Pebble(root / "pebble", CA_ADDRESS, 14000, f"{DNS_ADDRESS}:{DNS_PORT}", http_port=80) as ca,
        ):
            container.prepare(key.with_suffix(".pub").read_text())
            TIMINGS["boot"] = container.boot()
            known_hosts = root / "known_hosts"
            known_hosts.write_text(f"[{ADDRESS}]:{SSH_PORT} {container.host_key}\n")
            dns = f"{DNS_ADDRESS}:{DNS_PORT}"
            group_vars = host_vars(
                key=key, known_hosts=known_hosts, wheel=wheel, wheel_cache=WHEEL_CACHE, dns=dns, probe_source=PROBE_SOURCE
            )
            group_vars |= {
                "mailprov_tls_source": "acme",
                "mailprov_tls_acme_directory": ca.directory,
                "mailprov_tls_acme_ca_bundle_src": str(ca.ca_bundle),
                "mailprov_tls_acme_http01_listen": "{{ ansible_host }}:80",
                "mailprov_tls_acme_email": "postmaster@alpha.test",
            }
            inventory = root / "inventory.yml"
            hosts = {
                NAME: {
                    "ansible_host": ADDRESS,
                    "ansible_port": SSH_PORT,
                    "mailprov_users_list": [{"address": "alex@alpha.test", "password": "alex-acme-secret"}],
                }
            }
            inventory.write_text(yaml.safe_dump({"all": {"children": {"mailprov": {"hosts": hosts, "vars": group_vars}}}}, sort_keys=False))
            log: list[str] = []
            started = time.monotonic()
            result = run_playbook("site.yml", str(inventory), echo=log.append)
            TIMINGS["first deploy with ACME (systemd host)"] = time.monotonic() - started
            yield Host(container, result, log)
    finally:
        print("\nsystemd ACME timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
        container.remove()


def test_deploy_issues_from_the_ca_and_enables_the_renewal_timer(acme_host: Host) -> None:
    assert acme_host.deploy.ok, "\n".join(acme_host.log[-60:]) + str(acme_host.deploy.failures)
    issuer = subprocess.run(["openssl", "x509", "-noout", "-issuer", "-in", str(acme_host.cert)], capture_output=True, text=True).stdout
    assert "Pebble Intermediate CA" in issuer
    assert acme_host.run("systemctl", "is-enabled", "mailprov-cert-renew.timer").stdout.strip() == "enabled"
    assert acme_host.run("systemctl", "is-active", "mailprov-cert-renew.timer").stdout.strip() == "active"
    stat = acme_host.run("stat", "-c", "%a %U:%G", f"/etc/mailprov/tls/{NAME}.key", "/var/lib/mailprov/acme/account.key").stdout.split("\n")
    assert stat[:2] == ["640 root:mailprov", "600 root:root"], stat


def test_the_timers_unit_renews_and_the_running_services_serve_the_new_certificate(acme_host: Host) -> None:
    assert acme_host.deploy.ok
    units = ("mailprov-smtp", "mailprov-pop3", "mailprov-imap")
    pids = {u: acme_host.run("systemctl", "show", "-p", "MainPID", "--value", u).stdout.strip() for u in units}
    old = acme_host.cert.read_bytes()
    # Make the installed certificate due (Pebble's last 5 years), then run the unit as the timer does.
    acme_host.run("sed", "-i", "s/^renew_before_days = .*/renew_before_days = 3650/", "/etc/mailprov/acme.toml")
    started = time.monotonic()
    acme_host.run("systemctl", "start", "mailprov-cert-renew.service")
    TIMINGS["renewal by mailprov-cert-renew.service"] = time.monotonic() - started
    journal = acme_host.run("journalctl", "-u", "mailprov-cert-renew.service", "--no-pager", "-o", "cat").stdout
    assert "issued by Pebble Intermediate CA" in journal, journal[-2000:]
    assert acme_host.cert.read_bytes() != old
    deadline = time.monotonic() + 60  # tls.reload_interval is 30 s by default: an upper bound
    while True:
        probe = subprocess.run(
            [
                sys.executable, "-m", "mailprov.deploy", "probe", NAME, "--address", ADDRESS,
                "--resolver", f"{DNS_ADDRESS}:{DNS_PORT}", "--source-address", PROBE_SOURCE,
                "--expect-cert", str(acme_host.cert), "--format", "json",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        checks = json.loads(probe.stdout)["domains"][0]["checks"]
        tls = [c for c in checks if c["id"] == "probe.tls"]
        if (len(tls) == 7 and all(c["status"] == "pass" for c in tls)) or time.monotonic() > deadline:
            break
        time.sleep(2)
    TIMINGS["renewal seen by probe, no restart"] = time.monotonic() - started
    assert len(tls) == 7 and all(c["status"] == "pass" for c in tls), tls
    assert all(c["status"] == "pass" for c in checks if c["id"] == "probe.cert")
    after = {u: acme_host.run("systemctl", "show", "-p", "MainPID", "--value", u).stdout.strip() for u in pids}
    assert after == pids, "the services loaded the certificate without a restart"
