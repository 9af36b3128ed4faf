"""Issue or renew the host's certificate from an ACME CA (RFC 8555) with the ``acme`` library (certbot's).

One run, ``mailprov cert renew``, walks named steps; a failure at any of them raises a
:class:`~mailprov.errors.MailprovError` naming the step and the fix, and leaves the installed certificate
and key untouched (the services keep using them):

  check      is a certificate due? (none, self-signed, other names, or fewer than acme.renew_before_days left)
  directory  fetch the CA's directory (acme.directory, HTTPS trusted through acme.ca_bundle)
  clock      compare this host's clock with the CA's Date header (acme.max_clock_skew)
  account    register the account key, or find the account it already has (RFC 8555 7.3, 7.3.1)
  order      a new order for every name of acme.names (7.4)
  challenge  answer HTTP-01 (8.3) on acme.http01_listen for each pending authorization and wait for the CA
  finalize   send the CSR, wait for the certificate (7.4)
  install    write the key, then the chain, atomically, where tls.key and tls.cert point

State lives in ``STATE_DIR/acme`` (mode 0700): ``account.key`` (the account's RSA key, 0600) and, between a
failed run and the next, ``pending.key``: the new certificate's key, reused by the next run so a second
run resumes with the same key (and a CA that reuses valid authorizations need not validate again). With
``acme.reuse_key`` the installed key is kept across renewals (a DANE ``3 1 1`` record stays valid).
The installed key is mode 0640, group of ``server.user`` (the services read it, nobody else); the
services notice the new files and load them for new connections (``tls.reload_interval``).
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
import requests
from acme import challenges, client, crypto_util, messages, standalone
from acme import errors as acme_errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailprov.acme.decisions import clock_skew, explain, problem_type, read_certificate, renewal_due
from mailprov.atomic import atomic_write
from mailprov.config import Config, ConfigError, parse_hostport
from mailprov.errors import IncompleteError, MailprovError, UsageError

log = logging.getLogger("mailprov.acme")
USER_AGENT = "mailprov"
# Problems worth running again later without changing anything here: exit 3 (could not be completed).
TRANSIENT = {"rateLimited", "badNonce", "serverInternal"}


@dataclass
class Outcome:
    """What a run did."""

    action: str  # issued | unchanged
    reason: str
    names: list[str]
    issuer: str = ""
    not_after: str = ""
    key_reused: bool = False
    seconds: float = 0.0


@contextlib.contextmanager
def step(name: str, directory: str = "") -> Iterator[None]:
    """Turn whatever goes wrong inside the step into one MailprovError naming it and the fix."""
    try:
        yield
    except MailprovError:
        raise
    except messages.Error as exc:
        message, fix = explain(name, exc.typ, exc.detail or str(exc))
        cls = IncompleteError if problem_type(exc.typ) in TRANSIENT else MailprovError
        raise cls(message, fix=fix) from None
    except acme_errors.ValidationError as exc:
        problems = [
            (authz.body.identifier.value, c.error) for authz in exc.failed_authzrs for c in authz.body.challenges if c.error is not None
        ]
        name_, error = problems[0] if problems else ("?", None)
        message, fix = explain(name, error.typ if error else None, f"{name_}: {error.detail if error else 'authorization invalid'}")
        raise MailprovError(message, fix=fix) from None
    except acme_errors.TimeoutError as exc:
        raise IncompleteError(
            f"ACME step '{name}' timed out: {exc}", fix="the CA is slow or stuck: run again later, or raise acme.timeout"
        ) from None
    except acme_errors.BadNonce as exc:
        message, fix = explain(name, "badNonce", str(exc))
        raise IncompleteError(message, fix=fix) from None
    except requests.exceptions.SSLError as exc:
        raise MailprovError(
            f"ACME step '{name}' failed: the CA's HTTPS certificate is not trusted: {exc}",
            fix="set acme.ca_bundle to the PEM file of the CA that signed the ACME server's certificate (or fix acme.directory)",
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise IncompleteError(
            f"ACME step '{name}' failed: cannot reach the CA at {directory}: {type(exc).__name__}",
            fix="check acme.directory, and that this host reaches the CA (DNS, firewall, proxy); run again once it does",
        ) from None
    except (acme_errors.Error, jose.errors.Error, ValueError, requests.exceptions.RequestException) as exc:
        raise MailprovError(
            f"ACME step '{name}' failed: {type(exc).__name__}: {exc}", fix="see the message; run again once it is resolved"
        ) from None


def renew(config: Config, *, force: bool = False, echo: Callable[[str], None] | None = None) -> Outcome:
    """Issue a certificate when one is due (or ``force``) and install it; see the module's documentation."""
    say = echo or (lambda line: None)
    started = time.monotonic()
    settings = config.acme
    if not settings.directory:
        raise ConfigError("acme.directory", "is empty", "set it to the CA's ACME directory URL")
    if not config.tls.cert:
        raise ConfigError("tls.cert", "is empty", "set tls.cert and tls.key to where the certificate and key are installed")
    names = settings.names or [config.server.hostname]
    cert_path, key_path = Path(config.tls.cert), Path(config.tls.key)
    now = datetime.datetime.now(datetime.UTC)
    with step("check"):
        current = cert_path.read_bytes() if cert_path.exists() else None
        due, reason = renewal_due(current, names, now, settings.renew_before_days)
    if not due and not force:
        state = read_certificate(current or b"")
        say(f"unchanged: {reason}")
        return Outcome("unchanged", reason, names, state.issuer, f"{state.not_after:%Y-%m-%dT%H:%M:%SZ}")
    reason = "forced" if force and not due else reason
    say(f"issuing for {', '.join(names)}: {reason}")
    state_dir = Path(config.paths.state_dir) / "acme"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    net, acme_client = _connect(settings.directory, _account_key(state_dir), settings.ca_bundle)
    with step("clock", settings.directory):
        skew = clock_skew(net.head(acme_client.directory["newNonce"]).headers.get("Date"), datetime.datetime.now(datetime.UTC))
    if skew is not None and abs(skew) > settings.max_clock_skew:
        raise MailprovError(
            f"ACME step 'clock' failed: this host's clock is {abs(skew):.0f} s {'behind' if skew > 0 else 'ahead of'} the CA's",
            fix="set the clock (timedatectl set-ntp true, or install chrony or systemd-timesyncd), then run again",
        )
    with step("account", settings.directory):
        _register(acme_client, settings.email)
    key_pem, reused = _certificate_key(state_dir, key_path, settings.reuse_key)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=settings.timeout)
    with step("order", settings.directory):
        order = acme_client.new_order(crypto_util.make_csr(key_pem, names))
    with step("challenge", settings.directory):
        _answer_http01(acme_client, order, settings.http01_listen, deadline)
    with step("finalize", settings.directory):
        order = acme_client.finalize_order(order, deadline)
    with step("install"):
        chain = order.fullchain_pem.encode()
        issued = read_certificate(chain)
        _install(config, key_pem, chain, cert_path, key_path)
        (state_dir / "pending.key").unlink(missing_ok=True)
    say(f"issued by {issued.issuer}, valid until {issued.not_after:%Y-%m-%d %H:%M} UTC; installed at {cert_path}")
    log.info("certificate for %s issued by %s until %s", ", ".join(names), issued.issuer, issued.not_after)
    return Outcome(
        "issued", reason, names, issued.issuer, f"{issued.not_after:%Y-%m-%dT%H:%M:%SZ}", reused, round(time.monotonic() - started, 2)
    )


def renew_every(config: Config, interval: int, *, echo: Callable[[str], None]) -> None:
    """Run :func:`renew` now and then every ``interval`` seconds until SIGTERM; a failure is logged and retried
    at the next turn (the installed certificate stays in use meanwhile)."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def stamped(line: str) -> None:
        echo(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ} {line}")

    while not stop.is_set():
        try:
            renew(config, echo=stamped)
        except MailprovError as exc:
            stamped(f"failed: {exc}")
        stop.wait(interval)


def _connect(directory: str, key: jose.JWKRSA, ca_bundle: str) -> tuple[client.ClientNetwork, client.ClientV2]:
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigError("acme.ca_bundle", f"{ca_bundle} does not exist", "point it at a PEM file, or leave it empty for the system's CAs")
    net = client.ClientNetwork(key, verify_ssl=ca_bundle or True, user_agent=USER_AGENT)  # type: ignore[arg-type]
    with step("directory", directory):
        return net, client.ClientV2(client.ClientV2.get_directory(directory, net), net=net)


def _account_key(state_dir: Path) -> jose.JWKRSA:
    path = state_dir / "account.key"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        atomic_write(path, pem, mode=0o600)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise UsageError(f"{path} is not an RSA key", fix=f"remove {path}: a new account key is made on the next run")
    return jose.JWKRSA(key=loaded)


def _register(acme_client: client.ClientV2, email: str) -> None:
    """Register the account key, or adopt the account it already has (the CA answers 200 with its URL)."""
    body = messages.NewRegistration.from_data(email=email or None, terms_of_service_agreed=True)
    try:
        acme_client.new_account(body)
    except acme_errors.ConflictError as exc:
        acme_client.net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())


def _certificate_key(state_dir: Path, key_path: Path, reuse_key: bool) -> tuple[bytes, bool]:
    """The key to certify: the installed one (acme.reuse_key), else the pending one of an earlier run, else new."""
    if reuse_key and key_path.exists():
        pem = key_path.read_bytes()
        with contextlib.suppress(ValueError, TypeError):
            serialization.load_pem_private_key(pem, password=None)
            return pem, True
    pending = state_dir / "pending.key"
    if not pending.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        atomic_write(pending, pem, mode=0o600)
    return pending.read_bytes(), False


def _answer_http01(acme_client: client.ClientV2, order: messages.OrderResource, listen: str, deadline: datetime.datetime) -> None:
    """Serve every pending HTTP-01 answer on ``listen`` until the CA has decided, with acme's own server."""
    resources = set()
    answers = []
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue  # the CA kept an earlier validation (RFC 8555 7.1.4): nothing to prove again
        chall = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
        if chall is None:
            raise MailprovError(
                f"ACME step 'challenge' failed: the CA offers no http-01 challenge for {authz.body.identifier.value}",
                fix="use a CA that validates over HTTP-01",
            )
        response, validation = chall.response_and_validation(acme_client.net.key)
        resources.add(standalone.HTTP01RequestHandler.HTTP01Resource(chall=chall.chall, response=response, validation=validation))
        answers.append((chall, response))
    if not answers:
        return
    host, port = parse_hostport(listen, key="acme.http01_listen")
    try:
        server = standalone.HTTP01Server((host.strip("[]"), port), resources, ipv6=":" in host)
    except OSError as exc:
        raise MailprovError(
            f"ACME step 'challenge' failed: cannot listen on {listen} for the HTTP-01 answer: {exc.strerror}",
            fix="free that port (another web server?) or set acme.http01_listen to where port 80 of the names arrives",
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="acme-http01", daemon=True)
    thread.start()
    try:
        for chall, response in answers:
            acme_client.answer_challenge(chall, response)
        acme_client.poll_authorizations(order, deadline)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _install(config: Config, key_pem: bytes, chain: bytes, cert_path: Path, key_path: Path) -> None:
    """Key first, then the chain; each replaced atomically. Group-readable by the service user only."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    gid = _service_gid(config.server.user)
    if not (key_path.exists() and key_path.read_bytes() == key_pem):
        atomic_write(key_path, key_pem, mode=0o640 if gid is not None else 0o600)
    if gid is not None:
        os.chown(key_path, 0, gid)
        os.chmod(key_path, 0o640)
    atomic_write(cert_path, chain, mode=0o644)


def _service_gid(user: str) -> int | None:
    """The service user's group when running as root (so the key can be given to it), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(user).pw_gid
    except KeyError:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(user).gr_gid
    return None
