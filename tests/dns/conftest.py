"""Fixtures for the DNS tests: a Knot serving the test zones on 127.0.2.1, the zones as files, a black hole."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.dns import zones as tz
from tests.peers.knot import KnotServer

KNOT_ADDRESS = "127.0.2.1"
BLACKHOLE_ADDRESS = "127.0.2.3"


@pytest.fixture(scope="session")
def test_zones() -> dict[str, str]:
    """The test zones (generated once per session: the DKIM keys take time)."""
    return tz.zones()


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory, test_zones: dict[str, str]) -> Iterator[KnotServer]:
    """Knot serving the test zones on 127.0.2.1 (a free port: ``knot.port``)."""
    require_programs("knotd")
    with KnotServer(tmp_path_factory.mktemp("knot"), KNOT_ADDRESS, 0, test_zones) as ns:
        yield ns


@pytest.fixture(scope="session")
def resolver(knot: KnotServer) -> str:
    """The Knot fixture as a --resolver argument."""
    return f"{knot.address}:{knot.port}"


@pytest.fixture(scope="session")
def zone_files(tmp_path_factory: pytest.TempPathFactory, test_zones: dict[str, str]) -> list[Path]:
    """The test zones written as zone files (for the offline --zone mode)."""
    directory = tmp_path_factory.mktemp("zonefiles")
    paths = []
    for name, text in test_zones.items():
        path = directory / f"{name}.zone"
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.fixture
def blackhole() -> Iterator[tuple[str, int]]:
    """A 'resolver' that never answers: a bound UDP socket nobody reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((BLACKHOLE_ADDRESS, 0))
    try:
        yield sock.getsockname()
    finally:
        sock.close()
