"""TLS for the services: server contexts, and a self-signed certificate when none is configured."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailprov.atomic import atomic_write
from mailprov.config import Config
from mailprov.errors import ConfigError

log = logging.getLogger("mailprov.tls")


def generate_self_signed(hostname: str, cert_path: Path, key_path: Path, *, days: int = 825, addresses: tuple[str, ...] = ()) -> None:
    """Write a self-signed ECDSA P-256 certificate for ``hostname`` (key mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The certificate and key the services use; generates a self-signed pair when none is configured."""
    if config.tls.cert:
        return Path(config.tls.cert), Path(config.tls.key)
    tls_dir = Path(config.paths.state_dir) / "tls"
    cert, key = tls_dir / "selfsigned.crt", tls_dir / "selfsigned.key"
    if not (cert.exists() and key.exists()):
        log.warning(
            "no tls.cert configured: generated a self-signed certificate for %s in %s; clients will not trust it",
            config.server.hostname,
            tls_dir,
        )
        generate_self_signed(config.server.hostname, cert, key)
    return cert, key


def server_context(config: Config) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or newer) with the configured or generated certificate."""
    cert, key = certificate_paths(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls.cert", f"cannot load {cert} / {key}: {exc}", "point tls.cert and tls.key at a readable PEM pair") from None
    return context
