"""A throw-away certificate authority for TLS tests: a CA and server certificates it signs.

Every certificate passes OpenSSL's strict verification (``ssl.VERIFY_X509_STRICT``, on by default in
Python 3.13's ``ssl.create_default_context``), which follows RFC 5280: the CA has a Subject Key Identifier
(4.2.1.2), a critical basicConstraints (4.2.1.9) and keyUsage keyCertSign (4.2.1.3); each certificate it
signs names it by Authority Key Identifier (4.2.1.1). tests/unit/test_strict_certificates.py proves it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class ServerCert:
    cert: Path
    key: Path


class TestCA:
    """A CA in ``directory``; ``ca_file`` is its PEM certificate (the trust anchor tests pass around)."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "mailprov outbound test CA") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str, addresses: tuple[str, ...] = (), days: float = 1, directory: Path | None = None) -> ServerCert:
        """A server certificate for ``names`` (first is the file name), signed by this CA, valid until
        ``days`` from now (negative: already expired); written to ``directory`` (default: the CA's)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        not_after = now + datetime.timedelta(days=days)
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now - datetime.timedelta(hours=1), not_after - datetime.timedelta(days=30)))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        directory = Path(directory) if directory is not None else self.dir
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{names[0]}.crt"
        key_path = directory / f"{names[0]}.key"
        # Chain file: leaf then CA, as servers send it.
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_path.chmod(0o600)
        return ServerCert(cert_path, key_path)
