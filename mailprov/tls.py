"""TLS for the services: server contexts, and a self-signed certificate when none is configured."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
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
    """Write a self-signed ECDSA P-256 certificate for ``hostname`` (key mode 0600).

    Its extensions are those RFC 5280 asks of a server certificate, so a client that trusts it passes
    OpenSSL's strict verification (``ssl.VERIFY_X509_STRICT``, Python 3.13's default): key identifiers
    (4.2.1.1, 4.2.1.2), keyUsage digitalSignature (4.2.1.3), serverAuth (4.2.1.12).
    """
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
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
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
    return watch(config, context)


class CertificateReloader:
    """Keeps the services' TLS contexts in step with the certificate and key files (a renewal replaced them).

    Loading a chain into an existing :class:`ssl.SSLContext` changes what new handshakes present;
    connections already established keep theirs, so no session or message is dropped. A pair that cannot
    be loaded (a renewal between writing the key and the chain, a key the service user cannot read) is
    logged and the current certificate stays; the next change is tried again.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.contexts: list[ssl.SSLContext] = []
        self.on_hangup: list[Callable[[], None]] = []  # also told on SIGHUP (the SMTP master tells its workers)
        self._stamp = self._files_stamp()

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in (self.cert.stat(), self.key.stat()))
        except OSError:
            return None

    def check(self, *, force: bool = False) -> bool:
        """Load the files into every context when they changed (or ``force``); True when a new pair was loaded."""
        stamp = self._files_stamp()
        if stamp is None or (stamp == self._stamp and not force):
            return False
        self._stamp = stamp
        try:
            for context in self.contexts:
                context.load_cert_chain(os.fspath(self.cert), os.fspath(self.key))
        except (OSError, ssl.SSLError) as exc:
            log.warning("new certificate %s not loaded, the current one stays in use: %s", self.cert, exc)
            return False
        log.info("loaded the new certificate %s for new connections", self.cert)
        return True

    def hangup(self) -> None:
        """SIGHUP: load the files now, and pass the signal on."""
        self.check(force=True)
        for listener in self.on_hangup:
            listener()

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled (0: never; SIGHUP still calls :meth:`check`)."""
        import asyncio

        while interval > 0:
            await asyncio.sleep(interval)
            self.check()


_reloader: CertificateReloader | None = None
_tasks: set[object] = set()  # the running reload task (kept referenced)


def reloader(config: Config) -> CertificateReloader | None:
    """This process's reloader for ``tls.cert``/``tls.key`` (None when the certificate is generated)."""
    global _reloader
    if not config.tls.cert:
        return None
    if _reloader is None or _reloader.cert != Path(config.tls.cert):
        _reloader = CertificateReloader(Path(config.tls.cert), Path(config.tls.key))
    return _reloader


def watch(config: Config, context: ssl.SSLContext) -> ssl.SSLContext:
    """Register ``context`` for reloading when tls.cert and tls.key change; returns it."""
    watcher = reloader(config)
    if watcher is not None and context not in watcher.contexts:
        watcher.contexts.append(context)
    return context


def start_reloading(config: Config) -> None:
    """In a running event loop: check the files every ``tls.reload_interval`` seconds, and at once on SIGHUP."""
    import asyncio
    import signal

    watcher = reloader(config)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
        # Always handled: SIGHUP's default action would end the process (and drop its sessions).
        loop.add_signal_handler(signal.SIGHUP, watcher.hangup if watcher else lambda: log.info("SIGHUP: no tls.cert to reload"))
    if watcher is None or not watcher.contexts:
        return
    task = loop.create_task(watcher.run(config.tls.reload_interval), name="tls-reload")
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
