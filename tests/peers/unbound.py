"""A private Unbound recursive resolver for tests: ``with UnboundServer(workdir, "127.0.2.2", 0, stubs) as r:``.

``stubs`` maps a zone to the authoritative server(s) to ask for it (``"127.0.2.1@5300"``). Nothing leaves
the machine: every other name is answered from ``local-zone: "." refuse``. Without a validator, without
root hints. The process runs in the foreground as a child; entering waits (bounded) until it answers,
leaving stops and reaps it. A stub pointing at a server that does not serve the zone (a lame delegation)
makes Unbound answer SERVFAIL at once.

Use: a real SERVFAIL (a stub pointing at a server that never answers) and a real cache that keeps an old
answer for its TTL after the authoritative data changed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.peers import stop_process
from tests.peers.knot import free_port

START_ATTEMPTS = 100  # x 0.1 s


class UnboundServer:
    """Unbound listening on ``address``:``port`` (UDP and TCP) for the duration of a ``with`` block."""

    def __init__(
        self,
        workdir: Path,
        address: str,
        port: int,
        stubs: dict[str, str | list[str]],
        *,
        timeout_ms: int = 300,
        trust_anchors: list[str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.address = address
        self.port = port or free_port(address)
        self.stubs = stubs
        self.timeout_ms = timeout_ms
        # DS or DNSKEY records ("zone. DS 1234 13 2 ..."): with them Unbound validates DNSSEC from these anchors.
        self.trust_anchors = list(trust_anchors or [])
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "unbound.log"

    def _config(self) -> str:
        stubs = []
        zones = []
        for zone, servers in self.stubs.items():
            zone = zone.rstrip(".") + "."
            addrs = [servers] if isinstance(servers, str) else servers
            stubs.append(f'stub-zone:\n    name: "{zone}"\n' + "".join(f"    stub-addr: {a}\n" for a in addrs))
            # Allow the stub zones through the catch-all local zone below.
            zones.append(f'    local-zone: "{zone}" transparent\n')
        return (
            "server:\n"
            f"    interface: {self.address}@{self.port}\n"
            "    port: 53\n"
            "    do-daemonize: no\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    directory: "{self.workdir}"\n'
            f'    pidfile: "{self.workdir}/unbound.pid"\n'
            '    logfile: ""\n'
            "    use-syslog: no\n"
            "    verbosity: 1\n"
            "    num-threads: 1\n"
            f'    module-config: "{"validator iterator" if self.trust_anchors else "iterator"}"\n'
            + "".join(f'    trust-anchor: "{anchor}"\n' for anchor in self.trust_anchors)
            + ("    val-log-level: 2\n" if self.trust_anchors else "")
            + "    do-not-query-localhost: no\n"
            "    access-control: 127.0.0.0/8 allow\n"
            "    qname-minimisation: no\n"
            "    harden-referral-path: no\n"
            "    infra-keep-probing: yes\n"
            f"    infra-cache-min-rtt: {self.timeout_ms}\n"
            "    infra-host-ttl: 1\n"
            '    local-zone: "." refuse\n' + "".join(zones) + "".join(stubs)
        )

    def start(self) -> UnboundServer:
        """Write the config, start unbound, wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "unbound.conf"
        conf.write_text(self._config())
        check = subprocess.run([_binary("unbound-checkconf"), str(conf)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"unbound-checkconf rejected the config:\n{check.stdout}{check.stderr}")
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen([_binary("unbound"), "-d", "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        query = dns.message.make_query(".", "SOA")  # refused by the local zone: any answer means it is up
        for _ in range(START_ATTEMPTS):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"unbound exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                dns.query.udp(query, self.address, port=self.port, timeout=0.2)
                return
            except (OSError, dns.exception.DNSException):
                time.sleep(0.1)
        raise RuntimeError(f"unbound on {self.address}@{self.port} does not answer:\n{self.log_text()}")

    def log_text(self) -> str:
        """unbound's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop unbound (SIGTERM, then SIGKILL) and reap it."""
        if self.process is None:
            return
        stop_process(self.process, 5)
        self.process = None
        self.log.close()

    def __enter__(self) -> UnboundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"
