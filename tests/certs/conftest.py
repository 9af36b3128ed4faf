"""Fixtures of the certificate tests: Pebble (the ACME CA) with its mock DNS, on 127.0.15.0/24.

Every name resolves to 127.0.15.10 (``pebble-challtestsrv`` on 127.0.15.53:8053); Pebble
(https://127.0.15.1:14000/dir) validates HTTP-01 on port 5002 of that address, where ``mailprov cert
renew`` answers (``acme.http01_listen``). Both peers live for the session of this folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.mailprov_server import render_toml
from tests.peers.pebble import ChallTestSrv, Pebble

HOST_ADDRESS = "127.0.15.10"
HTTP01_PORT = 5002
HOSTNAME = "mail.alpha.test"
MAILPROV = [sys.executable, "-c", "from mailprov.cli import main; main()"]


@pytest.fixture(scope="session")
def certs_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mailprov-certs-"))
    root.chmod(0o755)  # the mail server of the reload test drops to 'nobody' and reads its files here
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def acme_dns(certs_root: Path) -> Iterator[ChallTestSrv]:
    with ChallTestSrv(certs_root / "dns", "127.0.15.53", 8053, HOST_ADDRESS) as dns:
        yield dns


@pytest.fixture(scope="session")
def pebble(certs_root: Path, acme_dns: ChallTestSrv) -> Iterator[Pebble]:
    with Pebble(certs_root / "pebble", "127.0.15.1", 14000, acme_dns.server, http_port=HTTP01_PORT) as ca:
        yield ca


@dataclass
class Host:
    """One host's ACME configuration file and where its certificate goes."""

    root: Path
    config: Path

    @property
    def cert(self) -> Path:
        return self.root / "tls" / f"{HOSTNAME}.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls" / f"{HOSTNAME}.key"

    def renew(self, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """``mailprov cert renew -c CONFIG ARGS`` as a real process (bounded)."""
        return subprocess.run(
            [*(prefix or []), *MAILPROV, "cert", "renew", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )


def new_host(root_dir: Path, pebble: Pebble, name: str = "host", **acme: object) -> Host:
    """A fresh host directory with an ACME configuration for Pebble; ``acme`` keys override."""
    root = root_dir / f"{name}-{os.urandom(4).hex()}"
    root.mkdir(mode=0o755)
    host = Host(root, root / "acme.toml")
    settings: dict[str, object] = {
        "directory": pebble.directory,
        "ca_bundle": str(pebble.ca_bundle),
        "http01_listen": f"{HOST_ADDRESS}:{HTTP01_PORT}",
    }
    settings.update(acme)
    host.config.write_text(
        render_toml(
            {
                "server": {"hostname": HOSTNAME, "domains": ["alpha.test"], "user": "nobody"},
                "paths": {"state_dir": str(root / "state")},
                "tls": {"cert": str(host.cert), "key": str(host.key)},
                "acme": settings,
            }
        )
    )
    return host


@pytest.fixture
def make_host(certs_root: Path, pebble: Pebble):
    """``make_host(name, **acme)``: a fresh host configured for Pebble."""

    def build(name: str = "host", **acme: object) -> Host:
        return new_host(certs_root, pebble, name, **acme)

    return build
