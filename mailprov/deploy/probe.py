"""``mailprov probe``: the live proof that a deployed host works, reported like ``mailprov check``.

Checks, in order, each a :class:`~mailprov.dns.model.CheckResult` with a stable id:

  probe.port            every port answers, and the server answering is mailprov (its SMTP greeting says
                        "ESMTP mailprov", its POP3 CAPA "IMPLEMENTATION mailprov"), not another server
                        holding the port
  probe.ptr             the PTR of the address names the host
  probe.banner          the SMTP greeting names the host
  probe.ehlo            the EHLO reply names the host
  probe.tls             STARTTLS (SMTP, submission, POP3 STLS) and implicit TLS (submissions, POP3S) work and
                        serve the deployed certificate (``--expect-cert``) or one naming the host
  probe.relay           unauthenticated relay to a foreign domain is refused (port 25 and submission)
  probe.submission      with ``--user``: AUTH over submission works and a test message is accepted
  probe.pop3            with ``--user``: that message reaches the mailbox and is fetched (and deleted) over POP3S
  probe.imap            IMAP on 143 (STARTTLS, no password before TLS: LOGINDISABLED) and 993 (implicit TLS):
                        certificates (as probe.tls), capabilities before and after TLS, and with ``--user`` a
                        login and a second message submitted, found over IMAPS, and expunged
                        (``--imap-port 0`` skips IMAP, for hosts that do not run it)
  probe.cert            each certificate served (SMTP, POP3 and IMAP): its issuer and days left; warns under 14
                        days, fails once expired

Nothing here raises for a problem with the host: every problem is a result. Bad input raises
:class:`~mailprov.errors.UsageError` before anything is probed; a host name that cannot be resolved
(through ``--resolver`` when given) raises :class:`~mailprov.errors.IncompleteError` (exit 3).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import imaplib
import ipaddress
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

import dns.exception
import dns.resolver
import dns.reversename

from mailprov.dns.model import CheckResult, DomainReport, Evidence, Report, Status
from mailprov.errors import IncompleteError, UsageError

PROBE_HELO = "probe.mailprov.invalid"
RELAY_SENDER = "probe@mailprov-probe.invalid"
RELAY_RECIPIENT = "relay-test@example.net"
POLL = 0.2  # seconds between mailbox polls


@dataclass
class ProbeTarget:
    """What to probe and how."""

    hostname: str
    address: str
    smtp_port: int = 25
    submission_port: int = 587
    submissions_port: int = 465
    pop3_port: int = 110
    pop3s_port: int = 995
    imap_port: int = 143  # 0: the host runs no IMAP, skip it
    imaps_port: int = 993
    resolvers: list[tuple[str, int]] = field(default_factory=list)
    source_address: str | None = None
    user: str | None = None
    password: str | None = None
    expect_cert_der: bytes | None = None
    timeout: float = 30.0  # seconds for the test message to arrive
    io_timeout: float = 10.0  # seconds per network operation

    def validate(self) -> None:
        """Refuse bad input with a clear message; resolve a host name (through ``resolvers`` when given)."""
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            self.address = resolve_address(self.address, self.resolvers, self.io_timeout)
        for name in ("smtp_port", "submission_port", "submissions_port", "pop3_port", "pop3s_port"):
            if not 0 < getattr(self, name) < 65536:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)} is out of range", fix="use 1 to 65535")
        for name in ("imap_port", "imaps_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise UsageError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} is out of range", fix="use 1 to 65535, or 0 to skip IMAP"
                )
        if bool(self.user) != bool(self.password):
            raise UsageError("--user needs a password", fix="pipe the password in with --password-stdin")
        if self.timeout <= 0 or self.io_timeout <= 0:
            raise UsageError("timeouts must be greater than 0")


def make_resolver(resolvers: list[tuple[str, int]], lifetime: float) -> dns.resolver.Resolver:
    """A resolver asking ``resolvers`` (IP, port) when given, else the system's."""
    resolver = dns.resolver.Resolver(configure=not resolvers)
    if resolvers:
        resolver.nameservers = [h for h, _ in resolvers]
        resolver.port = resolvers[0][1]
    resolver.lifetime = lifetime
    return resolver


def resolve_address(name: str, resolvers: list[tuple[str, int]], lifetime: float) -> str:
    """The first IPv4 (else IPv6) address of ``name``, asked of ``resolvers`` when given, else the system's.

    Raises IncompleteError (exit 3) when it cannot: the probe could not be carried out, which is not bad usage.
    """
    if not resolvers:
        try:
            return socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            raise IncompleteError(f"cannot resolve {name!r}: {exc}", fix="check its A/AAAA record, or give --address IP") from None
    resolver = make_resolver(resolvers, lifetime)
    server = ", ".join(f"{h}:{p}" for h, p in resolvers)
    problems = []
    for rdtype in ("A", "AAAA"):
        try:
            return resolver.resolve(name, rdtype)[0].to_text()
        except dns.exception.DNSException as exc:
            problems.append(f"{rdtype}: {exc}")
    detail = "; ".join(problems)
    raise IncompleteError(f"cannot resolve {name!r} through {server}: {detail}", fix="check its A/AAAA record, or give --address IP")


def is_mailprov(service: str, greeting: str, implementation: str = "") -> bool:
    """Whether the server that answered is mailprov: its SMTP greeting, or its POP3 CAPA IMPLEMENTATION."""
    if service in ("smtp", "submission", "submissions"):
        return " ESMTP mailprov" in f" {greeting}"
    return implementation.split()[:1] == ["mailprov"]


def load_certificate(pem: str, source: str) -> bytes:
    """The DER bytes of the first certificate in ``pem`` (UsageError naming ``source`` otherwise)."""
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----")
    if start < 0 or end < 0:
        raise UsageError(f"{source} holds no PEM certificate", fix="give the certificate file the host serves")
    try:
        return ssl.PEM_cert_to_DER_cert(pem[start : end + len("-----END CERTIFICATE-----")] + "\n")
    except ValueError:
        raise UsageError(f"{source} holds a damaged PEM certificate") from None


def _client_context() -> ssl.SSLContext:
    # The probe inspects the certificate itself (it may be self-signed); it does not trust it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def _cert_names(der: bytes) -> list[str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
    return [str(n).lower() for n in names]


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that keeps the server's greeting (smtplib reads it in connect() and drops it)."""

    banner = ""

    def connect(self, host: str = "localhost", port: int = 0, source_address: tuple[str, int] | None = None) -> tuple[int, bytes]:
        code, msg = super().connect(host, port, source_address)
        self.banner = msg.decode(errors="replace")
        return code, msg


class _SMTP_SSL(smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL that keeps the server's greeting."""

    banner = ""

    def connect(self, host: str = "localhost", port: int = 0, source_address: tuple[str, int] | None = None) -> tuple[int, bytes]:
        code, msg = super().connect(host, port, source_address)
        self.banner = msg.decode(errors="replace")
        return code, msg


class _POP3(poplib.POP3):
    """poplib.POP3 that can connect from a chosen source address."""

    def __init__(self, host: str, port: int, timeout: float, source: str | None) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0) if self._source else None)


class _POP3S(_POP3):
    """POP3 over implicit TLS from a chosen source address."""

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        sock = super()._create_socket(timeout)
        return _client_context().wrap_socket(sock, server_hostname=self.host)


class _IMAP(imaplib.IMAP4):
    """imaplib.IMAP4 that can connect from a chosen source address."""

    def __init__(self, host: str, port: int, timeout: float, source: str | None) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0) if self._source else None)


class _IMAPS(_IMAP):
    """IMAP over implicit TLS (RFC 8314) from a chosen source address."""

    def _create_socket(self, timeout):  # type: ignore[no-untyped-def]
        sock = super()._create_socket(timeout)
        return _client_context().wrap_socket(sock, server_hostname=self.host)


# What a mail program needs after TLS (RFC 3501, and the extensions phones and desktops rely on).
IMAP_REQUIRED = ("IMAP4REV1", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE")


def imap_capability_problems(before_tls: set[str], after_tls: set[str]) -> list[str]:
    """What is wrong with an IMAP server's capabilities on 143: before TLS it must offer STARTTLS and refuse
    passwords (LOGINDISABLED, RFC 3501 6.2.3 and RFC 8314); after TLS it must allow login and offer
    :data:`IMAP_REQUIRED`."""
    problems = []
    if "STARTTLS" not in before_tls:
        problems.append("no STARTTLS before TLS")
    if "LOGINDISABLED" not in before_tls:
        problems.append("passwords accepted before TLS (no LOGINDISABLED): is this client in imap.plaintext_networks?")
    if "LOGINDISABLED" in after_tls:
        problems.append("login still disabled after TLS")
    missing = [c for c in IMAP_REQUIRED if c not in after_tls]
    if missing:
        problems.append(f"missing after TLS: {' '.join(missing)}")
    return problems


class Prober:
    """Runs the checks against one target and collects the results."""

    def __init__(self, target: ProbeTarget) -> None:
        self.t = target
        self.results: list[CheckResult] = []
        self.server = f"{target.address}"
        self.served: dict[bytes, str] = {}  # each distinct certificate served, and the first port that served it

    def add(self, check_id: str, status: Status, subject: str, summary: str, fix: str = "", evidence: list[Evidence] | None = None) -> None:
        self.results.append(CheckResult(check_id, status, subject, summary, fix, evidence or []))

    def _source(self) -> tuple[str, int] | None:
        return (self.t.source_address, 0) if self.t.source_address else None

    def _smtp(self, port: int, implicit_tls: bool = False) -> _SMTP | _SMTP_SSL:
        if implicit_tls:
            return _SMTP_SSL(
                self.t.address,
                port,
                local_hostname=PROBE_HELO,
                timeout=self.t.io_timeout,
                source_address=self._source(),
                context=_client_context(),
            )
        return _SMTP(self.t.address, port, local_hostname=PROBE_HELO, timeout=self.t.io_timeout, source_address=self._source())

    # --- the checks -------------------------------------------------------------------------------

    def ports(self) -> dict[str, bool]:
        """probe.port: a TCP connection to every service port."""
        ports = {
            "smtp": self.t.smtp_port,
            "submission": self.t.submission_port,
            "submissions": self.t.submissions_port,
            "pop3": self.t.pop3_port,
            "pop3s": self.t.pop3s_port,
        }
        up = {}
        for name, port in ports.items():
            endpoint = f"{self.t.address}:{port}"
            try:
                greeting, implementation = self._identify(name, port)
                up[name] = is_mailprov(name, greeting, implementation)
                if up[name]:
                    self.add("probe.port", Status.PASS, f"{name} {endpoint}", f"mailprov answers: {greeting}")
                else:
                    self.add(
                        "probe.port",
                        Status.FAIL,
                        f"{name} {endpoint}",
                        f"another server answers: {greeting!r}" + (f" (IMPLEMENTATION {implementation})" if implementation else ""),
                        "stop the server holding the port (ss -ltnp shows it; e.g. exim4: set mailprov_mta_replace_resident_mta), "
                        "then deploy again",
                    )
            except (smtplib.SMTPException, poplib.error_proto, ssl.SSLError) as exc:
                up[name] = False
                self.add("probe.port", Status.FAIL, f"{name} {endpoint}", f"no mail dialogue: {exc}", "check which server holds the port")
            except OSError as exc:
                up[name] = False
                self.add(
                    "probe.port",
                    Status.FAIL,
                    f"{name} {endpoint}",
                    f"no connection: {exc.strerror or exc}",
                    "start the service (mailprov deploy) and check its listen address and any firewall",
                )
        return up

    def _identify(self, name: str, port: int) -> tuple[str, str]:
        """The greeting of the server on ``port`` and, for POP3, its CAPA IMPLEMENTATION value."""
        if name in ("smtp", "submission", "submissions"):
            with self._smtp(port, implicit_tls=name == "submissions") as smtp:
                return smtp.banner, ""
        pop = (_POP3S if name == "pop3s" else _POP3)(self.t.address, port, self.t.io_timeout, self.t.source_address)
        try:
            greeting = pop.getwelcome().decode(errors="replace")
            try:
                implementation = " ".join(pop.capa().get("IMPLEMENTATION", []))
            except poplib.error_proto:
                implementation = ""  # no CAPA: not mailprov
            return greeting, implementation
        finally:
            with contextlib.suppress(Exception):
                pop.quit()

    def ptr(self) -> None:
        """probe.ptr: the address's PTR names the host."""
        resolver = make_resolver(self.t.resolvers, self.t.io_timeout)
        qname = dns.reversename.from_address(self.t.address).to_text()
        server = ", ".join(f"{h}:{p}" for h, p in self.t.resolvers) or "system resolver"
        try:
            answer = resolver.resolve(qname, "PTR")
            names = [rd.target.to_text().rstrip(".").lower() for rd in answer]
            evidence = [Evidence(f"{qname} PTR", server, "NOERROR", [rd.to_text() for rd in answer])]
        except dns.resolver.NXDOMAIN:
            names, evidence = [], [Evidence(f"{qname} PTR", server, "NXDOMAIN")]
        except dns.resolver.NoAnswer:
            names, evidence = [], [Evidence(f"{qname} PTR", server, "NOERROR")]
        except dns.exception.DNSException as exc:
            self.add("probe.ptr", Status.ERROR, self.t.address, f"PTR query failed: {exc}", "check the resolver (--resolver)")
            return
        if self.t.hostname in names:
            self.add("probe.ptr", Status.PASS, self.t.address, f"PTR is {self.t.hostname}", evidence=evidence)
        else:
            self.add(
                "probe.ptr",
                Status.FAIL,
                self.t.address,
                f"PTR is {', '.join(names) or 'missing'}, not {self.t.hostname}",
                f"ask the address's owner to set its PTR to {self.t.hostname}",
                evidence,
            )

    def _check_cert(self, label: str, der: bytes | None) -> None:
        subject = f"{label} {self.t.address}"
        if der:
            self.served.setdefault(der, label)
        if not der:
            self.add("probe.tls", Status.FAIL, subject, "TLS handshake gave no certificate")
            return
        if self.t.expect_cert_der is not None:
            if der == self.t.expect_cert_der:
                self.add("probe.tls", Status.PASS, subject, f"serves the deployed certificate (sha256 {_fingerprint(der)}...)")
            else:
                self.add(
                    "probe.tls",
                    Status.FAIL,
                    subject,
                    f"serves certificate sha256 {_fingerprint(der)}..., not the deployed one ({_fingerprint(self.t.expect_cert_der)}...)",
                    "restart the service so it loads the new certificate, or check tls.cert in its configuration",
                )
            return
        names = _cert_names(der)
        if self.t.hostname in names or any(n.startswith("*.") and self.t.hostname.endswith(n[1:]) for n in names):
            self.add("probe.tls", Status.PASS, subject, f"certificate names {self.t.hostname} (sha256 {_fingerprint(der)}...)")
        else:
            self.add(
                "probe.tls",
                Status.FAIL,
                subject,
                f"certificate names {', '.join(names) or 'nothing'}, not {self.t.hostname}",
                "install a certificate for the host name",
            )

    def smtp_identity_and_tls(self) -> None:
        """probe.banner, probe.ehlo and STARTTLS on the SMTP port."""
        subject = f"smtp {self.t.address}:{self.t.smtp_port}"
        try:
            with self._smtp(self.t.smtp_port) as smtp:
                banner_name = smtp.banner.split()[0].lower() if smtp.banner.split() else ""
                if banner_name == self.t.hostname:
                    self.add("probe.banner", Status.PASS, subject, f"greeting names {banner_name}")
                else:
                    self.add(
                        "probe.banner",
                        Status.FAIL,
                        subject,
                        f"greeting {smtp.banner!r} does not name {self.t.hostname}",
                        "set server.hostname",
                    )
                _, msg = smtp.ehlo()
                lines = msg.decode(errors="replace").splitlines()
                ehlo_name = lines[0].split()[0].lower() if lines and lines[0].split() else ""
                if ehlo_name == self.t.hostname:
                    self.add("probe.ehlo", Status.PASS, subject, f"EHLO reply names {ehlo_name}")
                else:
                    self.add(
                        "probe.ehlo",
                        Status.FAIL,
                        subject,
                        f"EHLO reply names {ehlo_name or 'nothing'}, not {self.t.hostname}",
                        "set server.hostname to the host's name",
                    )
                if not smtp.has_extn("starttls"):
                    self.add("probe.tls", Status.FAIL, f"smtp-starttls {self.t.address}", "STARTTLS is not offered", "configure tls.cert")
                    return
                smtp.starttls(context=_client_context())
                self._check_cert(f"smtp-starttls:{self.t.smtp_port}", smtp.sock.getpeercert(binary_form=True))
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, subject, f"SMTP dialogue failed: {exc}")

    def relay(self) -> None:
        """probe.relay: without AUTH, mail to a foreign domain must be refused (port 25 and submission)."""
        for label, port in (("smtp", self.t.smtp_port), ("submission", self.t.submission_port)):
            subject = f"{label} {self.t.address}:{port}"
            try:
                with self._smtp(port) as smtp:
                    smtp.ehlo()
                    if smtp.has_extn("starttls"):
                        smtp.starttls(context=_client_context())
                        smtp.ehlo()
                    code, msg = smtp.mail(RELAY_SENDER)
                    if code >= 400:
                        self.add("probe.relay", Status.PASS, subject, f"relay refused at MAIL FROM ({code} {msg.decode(errors='replace')})")
                        continue
                    code, msg = smtp.rcpt(RELAY_RECIPIENT)
                    text = msg.decode(errors="replace")
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        smtp.rset()
                    if code >= 500:
                        self.add("probe.relay", Status.PASS, subject, f"relay refused ({code} {text})")
                    elif code >= 400:
                        self.add("probe.relay", Status.WARN, subject, f"relay deferred, not refused ({code} {text})", "refuse with 5xx")
                    else:
                        self.add(
                            "probe.relay",
                            Status.FAIL,
                            subject,
                            f"OPEN RELAY: accepted RCPT TO:<{RELAY_RECIPIENT}> from an unauthenticated client ({code} {text})",
                            "remove this client's network from smtp.trusted_networks (mailprov_mta_trusted_networks)",
                        )
            except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                self.add("probe.relay", Status.ERROR, subject, f"SMTP dialogue failed: {exc}")

    def tls_ports(self) -> None:
        """probe.tls on submission (STARTTLS), submissions (implicit), POP3 (STLS) and POP3S (implicit)."""
        try:
            with self._smtp(self.t.submission_port) as smtp:
                smtp.ehlo()
                smtp.starttls(context=_client_context())
                self._check_cert(f"submission-starttls:{self.t.submission_port}", smtp.sock.getpeercert(binary_form=True))
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"submission-starttls {self.t.address}:{self.t.submission_port}", f"failed: {exc}")
        try:
            with self._smtp(self.t.submissions_port, implicit_tls=True) as smtp:
                smtp.ehlo()
                self._check_cert(f"submissions-tls:{self.t.submissions_port}", smtp.sock.getpeercert(binary_form=True))
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"submissions-tls {self.t.address}:{self.t.submissions_port}", f"failed: {exc}")
        try:
            pop = _POP3(self.t.address, self.t.pop3_port, self.t.io_timeout, self.t.source_address)
            try:
                pop.stls(context=_client_context())
                self._check_cert(f"pop3-stls:{self.t.pop3_port}", pop.sock.getpeercert(binary_form=True))
            finally:
                with contextlib.suppress(Exception):
                    pop.quit()
        except (OSError, poplib.error_proto, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"pop3-stls {self.t.address}:{self.t.pop3_port}", f"failed: {exc}")
        try:
            pop = _POP3S(self.t.address, self.t.pop3s_port, self.t.io_timeout, self.t.source_address)
            try:
                self._check_cert(f"pop3s-tls:{self.t.pop3s_port}", pop.sock.getpeercert(binary_form=True))
            finally:
                with contextlib.suppress(Exception):
                    pop.quit()
        except (OSError, poplib.error_proto, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"pop3s-tls {self.t.address}:{self.t.pop3s_port}", f"failed: {exc}")

    def cert_validity(self, now: datetime.datetime | None = None) -> None:
        """Issuer and days left of every certificate served (warn under CERT_WARN_DAYS, fail once expired)."""
        from cryptography import x509

        from mailprov.acme.decisions import certificate_state

        now = now or datetime.datetime.now(datetime.UTC)
        for der, label in self.served.items():
            state = certificate_state(x509.load_der_x509_certificate(der))
            status, fix = cert_validity_status(state.days_left(now))
            summary = f"issued by {state.issuer}, {state.days_left(now):.0f} days left (until {state.not_after:%Y-%m-%d})"
            self.add("probe.cert", status, f"{label} {self.t.address}", summary, fix)

    def _submit(self, check_id: str) -> str | None:
        """Submit a test message to the user's own mailbox (AUTH over submission); its token, or None
        after reporting the failure under ``check_id``."""
        user, password = self.t.user or "", self.t.password or ""
        token = uuid.uuid4().hex
        message = EmailMessage()
        message["From"] = user
        message["To"] = user
        message["Subject"] = f"mailprov probe {token}"
        message["Message-ID"] = f"<{token}@{self.t.hostname}>"
        message.set_content(f"mailprov probe of {self.t.hostname}: {token}\n")
        subject = f"submission {self.t.address}:{self.t.submission_port}"
        try:
            with self._smtp(self.t.submission_port) as smtp:
                smtp.ehlo()
                smtp.starttls(context=_client_context())
                smtp.ehlo()
                smtp.login(user, password)
                smtp.send_message(message, from_addr=user, to_addrs=[user])
            self.add(check_id, Status.PASS, subject, f"AUTH as {user} and submission accepted")
            return token
        except smtplib.SMTPAuthenticationError as exc:
            self.add(check_id, Status.FAIL, subject, f"AUTH as {user} refused: {exc.smtp_code}", "check the user and password")
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.add(check_id, Status.FAIL, subject, f"submission failed: {exc}")
        return None

    def round_trip(self) -> None:
        """probe.submission and probe.pop3: submit to the user's own mailbox, then fetch and delete it."""
        user, password = self.t.user or "", self.t.password or ""
        token = self._submit("probe.submission")
        if token is None:
            return
        self._await_message(
            "probe.pop3",
            f"pop3s {self.t.address}:{self.t.pop3s_port}",
            lambda: self._fetch(user, password, token),
            f"test message {token[:8]} fetched from {user}'s mailbox and deleted",
            f"test message {token[:8]} did not reach {user}'s mailbox",
        )

    def _await_message(self, check_id: str, subject: str, fetch: Callable[[], bool], found: str, missing: str) -> None:
        """Poll ``fetch`` (a session that looks for the test message) until it finds it or the probe's
        timeout passes; a failing session ends it at once. Reports ``check_id``."""
        deadline = time.monotonic() + self.t.timeout
        while True:
            try:
                if fetch():
                    self.add(check_id, Status.PASS, subject, found)
                    return
            except (OSError, poplib.error_proto, imaplib.IMAP4.error, ssl.SSLError) as exc:
                fix = "check the user and password" if isinstance(exc, imaplib.IMAP4.error) else ""
                self.add(check_id, Status.FAIL, subject, f"session failed: {exc}", fix)
                return
            if time.monotonic() >= deadline:
                self.add(
                    check_id,
                    Status.FAIL,
                    subject,
                    f"{missing} within {self.t.timeout:.0f}s",
                    "see 'mailprov queue list' and the service logs on the host",
                )
                return
            time.sleep(POLL)

    def _fetch(self, user: str, password: str, token: str) -> bool:
        pop = _POP3S(self.t.address, self.t.pop3s_port, self.t.io_timeout, self.t.source_address)
        try:
            pop.user(user)
            pop.pass_(password)
            count, _ = pop.stat()
            for number in range(1, count + 1):
                _, lines, _ = pop.retr(number)
                if any(token.encode() in line for line in lines):
                    pop.dele(number)
                    return True
            return False
        finally:
            with contextlib.suppress(Exception):
                pop.quit()

    # --- IMAP ---------------------------------------------------------------------------------------

    def imap_ports(self) -> bool:
        """probe.port for IMAP (143) and IMAPS (993): each answers with an IMAP greeting."""
        up = True
        for name, port, tls in (("imap", self.t.imap_port, False), ("imaps", self.t.imaps_port, True)):
            endpoint = f"{self.t.address}:{port}"
            try:
                client = (_IMAPS if tls else _IMAP)(self.t.address, port, self.t.io_timeout, self.t.source_address)
                greeting = client.welcome.decode("utf-8", "replace")
                with contextlib.suppress(Exception):
                    client.logout()
                self.add("probe.port", Status.PASS, f"{name} {endpoint}", f"answers: {greeting[:80]}")
            except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
                up = False
                self.add(
                    "probe.port",
                    Status.FAIL,
                    f"{name} {endpoint}",
                    f"no IMAP greeting: {exc}",
                    "start mailprov-imap (mailprov deploy) and check imap.listen / imap.tls_listen and any firewall",
                )
        return up

    def imap_tls(self) -> None:
        """probe.tls for IMAP STARTTLS and IMAPS, and probe.imap: the capabilities on 143 around STARTTLS."""
        subject = f"imap {self.t.address}:{self.t.imap_port}"
        try:
            client = _IMAP(self.t.address, self.t.imap_port, self.t.io_timeout, self.t.source_address)
            try:
                before = {c.upper() for c in client.capabilities}
                client.starttls(ssl_context=_client_context())
                self._check_cert(f"imap-starttls:{self.t.imap_port}", client.sock.getpeercert(binary_form=True))
                after = {c.upper() for c in client.capabilities}
            finally:
                with contextlib.suppress(Exception):
                    client.logout()
            problems = imap_capability_problems(before, after)
            if problems:
                self.add("probe.imap", Status.FAIL, subject, "; ".join(problems), "check the [imap] section of imap.toml")
            else:
                self.add("probe.imap", Status.PASS, subject, "STARTTLS, LOGINDISABLED before TLS; after: " + " ".join(sorted(after)))
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"imap-starttls {self.t.address}:{self.t.imap_port}", f"failed: {exc}")
        try:
            client = _IMAPS(self.t.address, self.t.imaps_port, self.t.io_timeout, self.t.source_address)
            try:
                self._check_cert(f"imaps-tls:{self.t.imaps_port}", client.sock.getpeercert(binary_form=True))
            finally:
                with contextlib.suppress(Exception):
                    client.logout()
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
            self.add("probe.tls", Status.FAIL, f"imaps-tls {self.t.address}:{self.t.imaps_port}", f"failed: {exc}")

    def imap_round_trip(self) -> None:
        """probe.imap with --user: a message submitted to the user's mailbox is found over IMAPS, then expunged."""
        token = self._submit("probe.submission")
        if token is None:
            return
        user, password = self.t.user or "", self.t.password or ""
        self._await_message(
            "probe.imap",
            f"imaps {self.t.address}:{self.t.imaps_port}",
            lambda: self._imap_fetch(user, password, token),
            f"logged in as {user}; test message {token[:8]} found in INBOX and expunged",
            f"test message {token[:8]} did not show up in {user}'s INBOX",
        )

    def _imap_fetch(self, user: str, password: str, token: str) -> bool:
        client = _IMAPS(self.t.address, self.t.imaps_port, self.t.io_timeout, self.t.source_address)
        try:
            client.login(user, password)
            client.select("INBOX")
            status, data = client.uid("SEARCH", "HEADER", "Message-ID", f"<{token}@{self.t.hostname}>")
            uids = data[0].split() if status == "OK" and data and data[0] else []
            if not uids:
                return False
            status, fetched = client.uid("FETCH", uids[0].decode(), "(BODY.PEEK[TEXT])")
            if status != "OK" or not any(isinstance(part, tuple) and token.encode() in part[1] for part in fetched):
                return False
            client.uid("STORE", uids[0].decode(), "+FLAGS.SILENT", r"(\Deleted)")
            client.uid("EXPUNGE", uids[0].decode())
            return True
        finally:
            with contextlib.suppress(Exception):
                client.logout()


CERT_WARN_DAYS = 14


def cert_validity_status(days_left: float) -> tuple[Status, str]:
    """FAIL once expired, WARN under CERT_WARN_DAYS days, else PASS; with the fix."""
    if days_left <= 0:
        return Status.FAIL, "the certificate has expired: renew it (mailprov cert renew) and check the renewal timer"
    if days_left < CERT_WARN_DAYS:
        return Status.WARN, f"under {CERT_WARN_DAYS} days left: check that renewal runs (mailprov cert status, the renewal timer's log)"
    return Status.PASS, ""


def probe(target: ProbeTarget) -> Report:
    """Run every check against ``target``; the result is a one-group :class:`Report` named after the host."""
    target.validate()
    prober = Prober(target)
    up = prober.ports()
    prober.ptr()
    if up.get("smtp"):
        prober.smtp_identity_and_tls()
        prober.relay()
    if all(up.values()):
        prober.tls_ports()
        if target.user:
            prober.round_trip()
        else:
            prober.add("probe.submission", Status.SKIP, target.hostname, "skipped: no --user for the round trip")
    if target.imap_port and prober.imap_ports():
        prober.imap_tls()
        if target.user:
            prober.imap_round_trip()
    prober.cert_validity()  # every certificate the checks above were served, IMAP's too
    return Report([DomainReport(target.hostname, prober.results)])
