"""``mailprov probe``: the host name is resolved through ``--resolver`` (exit 3 when it cannot), and a port
counts only when mailprov answers it, not another server holding the port.

Peers: Knot on 127.0.10.53 serving probe.test (mail.probe.test A 127.0.10.60, nothing listening there);
Postfix's ``smtp-sink`` on 127.0.10.61 as the foreign SMTP server.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailprov.deploy.probe import Prober, ProbeTarget, is_mailprov
from tests.conftest import require_programs
from tests.peers import stop_process
from tests.peers.knot import KnotServer, free_port

pytestmark = pytest.mark.timeout(300)
DNS_ADDRESS = "127.0.10.53"
HOST_ADDRESS = "127.0.10.60"
FOREIGN_ADDRESS = "127.0.10.61"
ZONE = f"$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A {DNS_ADDRESS}\nmail A {HOST_ADDRESS}\n"


@pytest.mark.parametrize(
    ("service", "greeting", "implementation", "ours"),
    [
        ("smtp", "mail.alpha.test ESMTP mailprov", "", True),
        ("submissions", "mail.alpha.test ESMTP mailprov", "", True),
        ("smtp", "mail ESMTP Exim 4.96 Mon, 30 Nov 2026 10:00:00 +0000", "", False),
        ("smtp", "mail.example.org ESMTP Postfix (Debian/GNU)", "", False),
        ("smtp", "mail.example.org ESMTP not-mailprov", "", False),
        ("pop3", "+OK mail.alpha.test POP3 server ready", "mailprov", True),
        ("pop3s", "+OK Dovecot (Debian) ready.", "", False),
        ("pop3", "+OK mailprov POP3 server ready", "dovecot", False),  # the greeting is free text: CAPA decides
    ],
)
def test_is_mailprov(service: str, greeting: str, implementation: str, ours: bool) -> None:
    assert is_mailprov(service, greeting, implementation) is ours


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_programs("knotd")
    port = free_port(DNS_ADDRESS)
    with KnotServer(tmp_path_factory.mktemp("knot"), DNS_ADDRESS, port, {"probe.test": ZONE}):
        yield f"{DNS_ADDRESS}:{port}"


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mailprov.deploy", "probe", *args, "--format", "table"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_probe_resolves_the_host_through_the_given_resolver(dns: str) -> None:
    """mail.probe.test exists only in the lab's Knot: the probe reaches its address (where nothing listens)."""
    proc = _probe("mail.probe.test", "--resolver", dns, "--smtp-port", "3901", "--pop3-port", "3904")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"smtp {HOST_ADDRESS}:3901" in proc.stdout


def test_probe_exits_3_when_the_resolver_cannot_resolve_the_host(dns: str) -> None:
    proc = _probe("mail.nowhere.test", "--resolver", dns)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot resolve 'mail.nowhere.test' through" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_foreign_smtp_server_on_the_port_fails_the_port_check(tmp_path: Path) -> None:
    """smtp-sink (Postfix's test server) answers on the SMTP port: probe.port fails naming its greeting."""
    require_programs("smtp-sink")
    port = free_port(FOREIGN_ADDRESS)
    sink = subprocess.Popen(
        ["/usr/sbin/smtp-sink", "-u", "nobody", "-h", "foreign.example", f"{FOREIGN_ADDRESS}:{port}", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        prober = Prober(ProbeTarget("mail.probe.test", FOREIGN_ADDRESS, smtp_port=port, io_timeout=5))
        for _ in range(100):  # bounded wait for smtp-sink to listen
            up = prober.ports()
            if not any("Connection refused" in r.summary for r in prober.results if r.subject.startswith("smtp ")):
                break
            prober.results.clear()
            time.sleep(0.05)
        smtp = next(r for r in prober.results if r.subject == f"smtp {FOREIGN_ADDRESS}:{port}")
        assert up["smtp"] is False
        assert smtp.status.value == "fail" and "another server answers" in smtp.summary and "foreign.example" in smtp.summary, smtp
    finally:
        stop_process(sink)
