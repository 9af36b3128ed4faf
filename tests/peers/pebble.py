"""Pebble, Let's Encrypt's ACME test CA (Debian's ``pebble``), and its DNS companion ``pebble-challtestsrv``.

:class:`ChallTestSrv` is a DNS server that answers every A query with one address (the host the CA must
reach). :class:`Pebble` runs the CA on a loopback address with its own HTTPS certificate (generated here:
the Debian package ships none), resolving names through the given DNS server and validating HTTP-01 on
``http_port`` of the address a name resolves to. ``env`` passes Pebble's fault switches
(``PEBBLE_WFE_NONCEREJECT``, ``PEBBLE_AUTHZREUSE``, ...). Both run in the foreground as children of the
test and are stopped by it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import requests

from mailprov.tls import generate_self_signed
from tests.conftest import require_programs
from tests.peers import stop_process

START_TIMEOUT = 20.0  # an upper bound on start-up, not an assertion on speed


def _wait_port(proc: subprocess.Popen, address: str, port: int, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{what} did not listen on {address}:{port} within {START_TIMEOUT}s")


class _ForegroundPeer:
    """A peer program run in the foreground as our child, logging to WORKDIR/NAME.log; stopped by us."""

    name = "peer"

    def __init__(self, workdir: Path, address: str, port: int) -> None:
        self.workdir, self.address, self.port = Path(workdir), address, port
        self._proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], ready_port: int, env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{self.name}.log"
        self._log = open(log, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, env=env)
        _wait_port(self._proc, self.address, ready_port, log, self.name)

    def start(self) -> _ForegroundPeer:
        raise NotImplementedError

    def stop(self) -> None:
        if self._proc:
            stop_process(self._proc)
            self._log.close()
        self._proc = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ChallTestSrv(_ForegroundPeer):
    """Mock DNS on ``address:port`` answering every A query with ``answer`` (no challenge servers)."""

    name = "pebble-challtestsrv"

    def __init__(self, workdir: Path, address: str, port: int, answer: str) -> None:
        super().__init__(workdir, address, port)
        self.answer = answer

    def start(self) -> ChallTestSrv:
        require_programs("pebble-challtestsrv")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            "pebble-challtestsrv",
            "-dns01",
            f"{self.address}:{self.port}",
            "-defaultIPv4",
            self.answer,
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            f"{self.address}:{self.port + 1}",
        ]
        self._spawn(cmd, self.port + 1)
        return self

    @property
    def server(self) -> str:
        return f"{self.address}:{self.port}"


class Pebble(_ForegroundPeer):
    """The ACME CA on ``https://ADDRESS:PORT/dir``; validation connects to ``http_port`` of each name's address."""

    name = "pebble"

    def __init__(self, workdir: Path, address: str, port: int, dns: str, *, http_port: int, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, address, port)
        self.dns, self.http_port = dns, http_port
        self.env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", **(env or {})}
        self.ca_bundle = self.workdir / "pebble-https.crt"

    @property
    def directory(self) -> str:
        return f"https://{self.address}:{self.port}/dir"

    def start(self) -> Pebble:
        require_programs("pebble")
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "pebble-https.key"
        generate_self_signed("localhost", self.ca_bundle, key, days=30, addresses=(self.address,))
        config = self.workdir / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{self.address}:{self.port}",
                        "managementListenAddress": f"{self.address}:{self.port + 1}",
                        "certificate": str(self.ca_bundle),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": self.http_port + 1,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        self._spawn(["pebble", "-config", str(config), "-dnsserver", self.dns], self.port, env={**os.environ, **self.env})
        return self

    def root(self) -> str:
        """The PEM root that signs Pebble's certificates (random for each start)."""
        return requests.get(f"https://{self.address}:{self.port + 1}/roots/0", verify=str(self.ca_bundle), timeout=10).text
