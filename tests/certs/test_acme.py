"""``mailprov cert renew`` against Pebble, Let's Encrypt's ACME test CA (RFC 8555), as real processes.

Issuance with HTTP-01 (RFC 8555 8.3) answered by the host, installation (key 0640 root:service group),
idempotence, key reuse for DANE 3 1 1 (RFC 7671 5.1), and the faults: a CA that cannot be reached, that
is not trusted, that refuses (bad nonces, RFC 8555 6.5), that rate-limits (6.6, ``rateLimited``), a
challenge that fails, a clock that is off. After each fault the installed certificate is unchanged, the
message names the step and the fix, and a second run resumes.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certs.conftest import HOST_ADDRESS, HOSTNAME, MAILPROV, new_host
from tests.conftest import require_programs
from tests.peers.pebble import Pebble

pytestmark = pytest.mark.peers


def chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def dane_311(pem: bytes) -> str:
    """The DANE-EE SPKI SHA-256 association data (usage 3, selector 1, matching type 1; RFC 6698 2.1)."""
    spki = chain(pem)[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def test_issue_installs_a_chain_from_the_ca_and_a_second_run_changes_nothing(make_host, pebble: Pebble) -> None:
    host = make_host()
    first = host.renew()
    assert first.returncode == 0, first.stderr
    assert "issuing for mail.alpha.test: no certificate installed yet" in first.stdout
    assert "issued by Pebble Intermediate CA" in first.stdout
    leaf, intermediate = chain(host.cert.read_bytes())[:2]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [HOSTNAME]
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(x509.load_pem_x509_certificate(pebble.root().encode()))
    key_stat = host.key.stat()
    assert stat.S_IMODE(key_stat.st_mode) == 0o640 and key_stat.st_uid == 0
    assert key_stat.st_gid == grp.getgrnam("nogroup").gr_gid  # the group of server.user 'nobody', read-only
    state = host.root / "state" / "acme"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE((state / "account.key").stat().st_mode) == 0o600
    assert not (state / "pending.key").exists()
    before = host.cert.read_bytes(), host.cert.stat().st_mtime_ns
    second = host.renew()
    assert second.returncode == 0 and second.stdout.startswith("unchanged: valid until"), second.stdout
    assert (host.cert.read_bytes(), host.cert.stat().st_mtime_ns) == before
    status = subprocess.run([*MAILPROV, "cert", "status", "--json", "-c", str(host.config)], capture_output=True, text=True, timeout=60)
    info = json.loads(status.stdout)
    assert status.returncode == 0 and info["due"] is False and info["names"] == [HOSTNAME], status.stdout + status.stderr
    assert info["issuer"].startswith("Pebble Intermediate CA") and info["days_left"] > 30


def test_reuse_key_keeps_the_dane_record_across_renewals(make_host) -> None:
    # Without reuse_key a renewal brings a new key: test_reload.py checks that the DANE hash changes.
    kept = make_host("kept", reuse_key=True)
    assert kept.renew().returncode == 0
    old_cert = kept.cert.read_bytes()
    renewed = kept.renew("--force", "--json")
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["key_reused"] is True
    assert kept.cert.read_bytes() != old_cert and dane_311(kept.cert.read_bytes()) == dane_311(old_cert)


@pytest.fixture(scope="module")
def good_pair(certs_root, pebble: Pebble) -> tuple[bytes, bytes]:
    """One certificate and key from the CA, issued once for the fault tests."""
    good = new_host(certs_root, pebble, "good")
    assert good.renew().returncode == 0
    return good.cert.read_bytes(), good.key.read_bytes()


@pytest.fixture
def installed(make_host, good_pair: tuple[bytes, bytes]):
    """A host with a certificate from the CA already installed (what a fault must leave alone)."""

    def build(**acme: object):
        host = make_host("fault", **acme)
        host.cert.parent.mkdir(parents=True, exist_ok=True)
        host.cert.write_bytes(good_pair[0])
        host.key.write_bytes(good_pair[1])
        return host, good_pair

    return build


def assert_fault(proc, step: str, exit_code: int, *words: str) -> None:
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    assert f"ACME step '{step}' failed" in proc.stderr, proc.stderr
    assert "fix:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_unreachable_ca(installed) -> None:
    host, files = installed(directory="https://127.0.15.1:9/dir")
    assert_fault(host.renew("--force"), "directory", 3, "cannot reach the CA", "check acme.directory")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files


def test_untrusted_ca_certificate(installed) -> None:
    host, files = installed(ca_bundle="")
    assert_fault(host.renew("--force"), "directory", 1, "not trusted", "acme.ca_bundle")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files


@pytest.fixture(scope="module")
def refusing_ca(certs_root, acme_dns) -> Iterator[Pebble]:
    """Pebble rejecting every nonce (RFC 8555 6.5: badNonce), as a CA under trouble does."""
    with Pebble(
        certs_root / "pebble-refusing", "127.0.15.4", 14000, acme_dns.server, http_port=5002, env={"PEBBLE_WFE_NONCEREJECT": "100"}
    ) as ca:
        yield ca


def test_ca_refusing_every_request(installed, refusing_ca: Pebble) -> None:
    host, files = installed(directory=refusing_ca.directory, ca_bundle=str(refusing_ca.ca_bundle))
    assert_fault(host.renew("--force"), "account", 3, "badNonce", "run again")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files


class RateLimitingCA(BaseHTTPRequestHandler):
    """A CA front that answers newAccount with RFC 8555 6.6's rateLimited problem and a Retry-After."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Replay-Nonce", os.urandom(8).hex())
        self.send_header("Content-Type", "application/problem+json" if code >= 400 else "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        base = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        self._send(200, {"newNonce": f"{base}/nonce", "newAccount": f"{base}/account", "newOrder": f"{base}/order"})

    def do_HEAD(self) -> None:
        self._send(200)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        problem = {
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many new registrations from this address",
            "status": 429,
        }
        self._send(429, problem, {"Retry-After": "3600"})


def test_ca_rate_limiting(installed) -> None:
    server = ThreadingHTTPServer(("127.0.15.5", 0), RateLimitingCA)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, files = installed(directory=f"http://127.0.15.5:{server.server_address[1]}/dir", ca_bundle="")
        assert_fault(host.renew("--force"), "account", 3, "rateLimited", "too many new registrations", "Retry-After")
        assert (host.cert.read_bytes(), host.key.read_bytes()) == files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_failed_challenge_keeps_the_old_certificate_and_the_next_run_resumes(installed) -> None:
    # The name resolves to 127.0.15.10, but the answer is served on .11: the CA's connection is refused.
    host, files = installed(http01_listen="127.0.15.11:5002")
    assert_fault(host.renew("--force"), "challenge", 1, "connection", "port 80")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files
    pending = host.root / "state" / "acme" / "pending.key"
    assert pending.exists(), "the new key is kept for the next run"
    host.config.write_text(host.config.read_text().replace("127.0.15.11:5002", f"{HOST_ADDRESS}:5002"))
    resumed = host.renew("--force")
    assert resumed.returncode == 0, resumed.stderr
    assert host.key.read_bytes() == pending.read_bytes() if pending.exists() else True
    assert not pending.exists()
    issued_key = (
        chain(host.cert.read_bytes())[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    installed_key = serialization.load_pem_private_key(host.key.read_bytes(), None).public_key()
    assert issued_key == installed_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_challenge_port_taken(installed) -> None:
    import socket

    host, files = installed()
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT; a listener still blocks
        busy.bind((HOST_ADDRESS, 5002))
        busy.listen()
        assert_fault(host.renew("--force"), "challenge", 1, "cannot listen on 127.0.15.10:5002", "acme.http01_listen")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files


def test_clock_off(installed) -> None:
    require_programs("faketime")
    host, files = installed()
    proc = host.renew("--force", prefix=["faketime", "+2 days"], env={"FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    assert_fault(proc, "clock", 1, "clock is", "ahead of the CA's", "set-ntp")
    assert (host.cert.read_bytes(), host.key.read_bytes()) == files


def test_bad_configuration_names_the_key(make_host) -> None:
    host = make_host(directory="ftp://ca.example/dir")
    proc = host.renew()
    assert proc.returncode == 2 and "acme.directory" in proc.stderr and "fix:" in proc.stderr
