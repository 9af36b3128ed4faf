"""Fixtures for the DNS tests: a Knot serving the test zones on 127.0.2.1, the zones as files, a black hole."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.dns import dnssec_lab as lab
from tests.dns import zones as tz
from tests.outbound.pki import ServerCert, TestCA
from tests.peers.knot import KnotServer
from tests.peers.mailprov_server import MailprovTree, run_mailprov
from tests.peers.unbound import UnboundServer

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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA and the certificate of mail.good.diag.test (its TLSA record is in the lab)."""
    return TestCA(tmp_path_factory.mktemp("pki"), "diagnosis test CA")


@pytest.fixture(scope="session")
def good_cert(pki: TestCA, tmp_path_factory: pytest.TempPathFactory):
    """The certificate our MTA serves as mail.good.diag.test (90 days); the lab publishes its TLSA record."""
    return pki.issue("mail.good.diag.test", days=90, directory=tmp_path_factory.mktemp("good-cert"))


@pytest.fixture(scope="session")
def dnssec_lab(tmp_path_factory: pytest.TempPathFactory, pki: TestCA, good_cert) -> Iterator[dict]:
    """Knot signing the lab zones and Unbound validating from the lab's trust anchor; yields where they are."""
    require_programs("knotd", "keymgr", "unbound")
    from cryptography.hazmat.primitives import serialization

    from mailprov.dns.dane import tlsa_for_certificate

    tlsa = f"_25._tcp.mail TLSA {tlsa_for_certificate(good_cert.cert.read_bytes())}"
    # DANE-TA (RFC 7671 5.2): the test CA's public key, and a second record for the next CA (a rollover, RFC 7671 8.1).
    ca_record = tlsa_for_certificate(pki.cert.public_bytes(serialization.Encoding.PEM), usage=2)
    tlsa_ta = f"_25._tcp.mail TLSA {ca_record}\n_25._tcp.mail TLSA 2 1 1 {'5a' * 32}"
    # DANE-TA with the CA's whole public key (2 1 0, RFC 7671 5.2.2): its MX may serve a chain without the CA.
    spki = pki.cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    tlsa_ta += f"\nspki MX 10 mail.spki\nmail.spki A {lab.SPKI_MX_ADDRESS}\n_25._tcp.mail.spki TLSA 2 1 0 {spki.hex()}"
    knot, anchor = lab.start_lab(tmp_path_factory.mktemp("signing-knot"), tlsa, tlsa_ta)
    try:
        stubs = {zone: f"{knot.address}@{knot.port}" for zone in knot.zones}
        with UnboundServer(tmp_path_factory.mktemp("validating-unbound"), lab.UNBOUND_ADDRESS, 0, stubs, trust_anchors=anchor) as unbound:
            anchor_file = tmp_path_factory.mktemp("anchor") / "diag.test.ds"
            anchor_file.write_text("\n".join(anchor) + "\n")
            yield {"resolver": f"{unbound.address}:{unbound.port}", "unbound": unbound, "knot": knot, "anchor": anchor_file}
    finally:
        knot.stop()


@pytest.fixture
def our_mta() -> Iterator:
    """Factory: our MTA as the MX at ``ip`` with the given certificate; stopped afterwards."""
    started = []

    def start(ip: str, hostname: str, cert: ServerCert) -> int:
        tree = MailprovTree.create(
            hostname=hostname, domains=[hostname.split(".", 1)[1]], ip=ip, tls={"cert": str(cert.cert), "key": str(cert.key)}
        )
        started.append((tree, run_mailprov(tree.config_path)))
        return tree.ports["smtp"]

    yield start
    for tree, process in started:
        process.stop()
        tree.cleanup()
