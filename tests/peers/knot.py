"""A private Knot DNS authoritative server for tests: ``with KnotServer(workdir, "127.0.2.1", 0, zones) as ns:``.

Port 0 picks a free port (read it from ``ns.port``), so two runs of the same tests do not clash.

``zones`` maps a zone name to its zone-file text (``$ORIGIN`` is optional: Knot loads each file as the
zone named by its key). On entry the server starts in the foreground as a child process with a generated
configuration (one UDP and one TCP worker, no journal, no zone-file sync) and the context manager waits,
bounded in count and time, until it answers an SOA query for every zone; a zone that fails to load raises
with knotd's log. On exit the process is stopped (SIGTERM, then SIGKILL) and reaped.

Other areas use it to serve MX, A and PTR records (reverse zones such as ``6.0.127.in-addr.arpa``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone

from tests.peers import stop_process

START_ATTEMPTS = 100  # x 0.1 s
STOP_TIMEOUT = 5.0


def free_port(address: str) -> int:
    """A port free for both TCP and UDP on ``address`` right now (the kernel picks it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = tcp.getsockname()[1]
            with socket.socket(tcp.family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port on {address}")


def knotd_path() -> str:
    """The knotd binary (in /usr/sbin on Debian)."""
    return shutil.which("knotd") or "/usr/sbin/knotd"


class KnotServer:
    """Knot serving ``zones`` on ``address``:``port`` (UDP and TCP) for the duration of a ``with`` block."""

    def __init__(self, workdir: Path, address: str, port: int, zones: dict[str, str]) -> None:
        self.workdir = Path(workdir)
        self.address = address
        self.port = port or free_port(address)  # 0: pick a free port (see ns.port)
        self.zones = {name.rstrip(".").lower() or ".": text for name, text in zones.items()}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "knotd.log"

    def _config(self) -> str:
        listen = f"{self.address}@{self.port}"
        zones = "\n".join(f'  - domain: "{name}"\n    file: "{self._zone_file(name)}"' for name in self.zones)
        return f"""server:
    rundir: "{self.workdir}"
    pidfile: "{self.workdir}/knot.pid"
    listen: {listen}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{self.workdir}/db"
template:
  - id: default
    storage: "{self.workdir}/zones"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
log:
  - target: stderr
    any: info
zone:
{zones}
"""

    def _zone_file(self, name: str) -> Path:
        return self.workdir / "zones" / f"{name}.zone"

    def write_zone(self, name: str, text: str) -> None:
        """Write (or replace) a zone's file; call :meth:`reload` to serve the new content."""
        self._zone_file(name).write_text(text if text.endswith("\n") else text + "\n")

    def start(self) -> KnotServer:
        """Write the config and zones, start knotd, wait until every zone answers SOA."""
        (self.workdir / "zones").mkdir(parents=True, exist_ok=True)
        (self.workdir / "db").mkdir(parents=True, exist_ok=True)
        for name, text in self.zones.items():
            self.write_zone(name, text)
        conf = self.workdir / "knot.conf"
        conf.write_text(self._config())
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen([knotd_path(), "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _soa_ok(self, zone: str, serial: int | None = None) -> bool:
        query = dns.message.make_query(zone if zone.endswith(".") else zone + ".", dns.rdatatype.SOA)
        try:
            response = dns.query.udp(query, self.address, port=self.port, timeout=0.2)
        except (OSError, dns.exception.DNSException):
            return False
        if response.rcode() != dns.rcode.NOERROR or not response.answer:
            return False
        return serial is None or response.answer[0][0].serial == serial

    def _wait_ready(self, serials: dict[str, int] | None = None) -> None:
        pending = set(self.zones)
        for _ in range(START_ATTEMPTS):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"knotd exited with {self.process.returncode}:\n{self.log_text()}")
            pending = {z for z in pending if not self._soa_ok(z, (serials or {}).get(z))}
            if not pending:
                return
            time.sleep(0.1)
        raise RuntimeError(f"knotd on {self.address}@{self.port} does not serve {', '.join(sorted(pending))}:\n{self.log_text()}")

    def reload(self) -> None:
        """Make knotd re-read its zone files (SIGHUP) and wait until every zone is served with its file's SOA serial.

        Bump the serial when changing a zone (Knot keeps the old zone otherwise).
        """
        assert self.process is not None
        serials = {}
        for name in self.zones:
            zone = dns.zone.from_text(self._zone_file(name).read_text(), origin=name.rstrip(".") + ".", check_origin=False)
            soa = zone.get_rdataset(zone.origin, dns.rdatatype.SOA)
            if soa is not None:
                serials[name] = soa[0].serial
        self.process.send_signal(signal.SIGHUP)
        self._wait_ready(serials)

    def log_text(self) -> str:
        """knotd's output so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop knotd (SIGTERM, then SIGKILL) and reap it."""
        if self.process is None:
            return
        stop_process(self.process, STOP_TIMEOUT)
        self.process = None
        self.log.close()

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
