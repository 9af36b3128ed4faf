"""The one configuration schema: typed, validated, with documented defaults.

The services (``mailprov serve``), the CLI's operator commands and the Ansible template
``templates/mailprov.toml.j2`` all speak this schema. A file is TOML with one table per section below;
every key is optional except ``server.hostname`` and ``server.domains``. An unknown key, a wrong type
or a bad value is refused with the key's dotted name and the fix (:class:`~mailprov.errors.ConfigError`).

``mailprov config defaults`` prints every key, commented, with its default; ``mailprov config check``
validates a file.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailprov.errors import ConfigError

# A host name or domain: LDH labels, at least one dot not required (``localhost`` is fine for labs).
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
TLS_POLICIES = ("none", "opportunistic", "require", "verify")


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (used by ``mailprov config defaults``)."""
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": text}, **kwargs)
    return field(default=default, metadata={"doc": text}, **kwargs)


def parse_hostport(value: str, *, key: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into its parts, naming ``key`` in the error."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not match:
        raise ConfigError(key, f"{value!r} is not HOST:PORT", "write it as '0.0.0.0:25', '[::]:25' or 'mail.example.org:25'")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ConfigError(key, f"port {port} is out of range", "use a port from 1 to 65535")
    return host, port


def _check_hostname(value: str, key: str) -> str:
    name = value.rstrip(".").lower()
    if not _HOSTNAME_RE.match(name):
        raise ConfigError(
            key, f"{value!r} is not a valid host or domain name", "use letters, digits, hyphens and dots, e.g. 'mail.example.org'"
        )
    return name


def _check_networks(values: list[str], key: str) -> list[str]:
    out = []
    for i, net in enumerate(values):
        try:
            out.append(str(ipaddress.ip_network(net, strict=False)))
        except ValueError:
            raise ConfigError(f"{key}[{i}]", f"{net!r} is not a network", "write it as '192.0.2.0/24' or '2001:db8::/32'") from None
    return out


def _check_positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name}", f"must be greater than 0, got {getattr(obj, name)}", "use a positive number")


@dataclass
class ServerConfig:
    hostname: str = doc("The host's fully qualified name: EHLO name, banner, Received headers. Must match the PTR of its address.")
    domains: list[str] = doc("The mail domains this host receives for (its local domains).")
    user: str = doc("Unprivileged service user to drop to after binding ports when started as root.", "mailprov")
    log_level: str = doc("Log level: debug, info, warning or error.", "info")

    def validate(self) -> None:
        self.hostname = _check_hostname(self.hostname, "server.hostname")
        if not self.domains:
            raise ConfigError("server.domains", "is empty", 'list at least one mail domain, e.g. domains = ["example.org"]')
        self.domains = [_check_hostname(d, f"server.domains[{i}]") for i, d in enumerate(self.domains)]
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("server.log_level", f"{self.log_level!r} is not a level", "use debug, info, warning or error")


@dataclass
class PathsConfig:
    queue_dir: str = doc("Queue root; see docs/layout.md for its sub-directories.", "/var/spool/mailprov")
    mail_dir: str = doc("Mailbox root: each user's Maildir is MAIL_DIR/DOMAIN/LOCALPART/.", "/var/mail/mailprov")
    state_dir: str = doc("Service state: generated TLS certificate, POP3 locks, MTA-STS cache.", "/var/lib/mailprov")
    users_file: str = doc("Users file (ADDRESS:ARGON2ID-HASH per line), managed by 'mailprov user'.", "/etc/mailprov/users")
    aliases_file: str = doc("Aliases file (ALIAS: TARGET[, TARGET...] per line), managed by 'mailprov alias'.", "/etc/mailprov/aliases")
    log_file: str = doc("Mail log file; empty logs to standard error (journald under systemd).", "")


@dataclass
class TLSConfig:
    cert: str = doc("PEM certificate chain. Empty: a self-signed certificate is generated in STATE_DIR/tls (with a warning).", "")
    key: str = doc("PEM private key for the certificate.", "")
    reload_interval: float = doc(
        "Seconds between checks of tls.cert and tls.key for a new certificate (loaded for new connections; "
        "sessions in progress keep theirs); 0 only reloads on SIGHUP.",
        30.0,
    )

    def validate(self) -> None:
        if self.reload_interval < 0:
            raise ConfigError("tls.reload_interval", f"must be 0 or more, got {self.reload_interval}", "use 30 (the default) or 0")
        if bool(self.cert) != bool(self.key):
            raise ConfigError(
                "tls.cert" if not self.cert else "tls.key",
                "tls.cert and tls.key must be set together",
                "set both paths, or neither to generate a self-signed certificate",
            )


@dataclass
class SMTPConfig:
    listen: list[str] = doc("Addresses for inbound SMTP (MX traffic, no AUTH unless under STARTTLS).", ["0.0.0.0:25"])
    submission_listen: list[str] = doc("Addresses for submission with STARTTLS (RFC 6409).", ["0.0.0.0:587"])
    submissions_listen: list[str] = doc("Addresses for submission over implicit TLS (RFC 8314).", ["0.0.0.0:465"])
    trusted_networks: list[str] = doc("Clients in these networks may relay without AUTH.", ["127.0.0.0/8", "::1/128"])
    max_message_size: int = doc("Largest message accepted, in bytes (advertised as SIZE).", 26214400)
    max_recipients: int = doc("Recipients per message (RFC 5321 4.5.3.1.8 minimum is 100).", 100)
    max_line_length: int = doc("Longest command or text line, in bytes, CRLF included (RFC 5321: 512 and 1000).", 1000)
    command_timeout: int = doc("Seconds to wait for the next command (RFC 5321 4.5.3.2.7: 5 minutes).", 300)
    data_timeout: int = doc("Seconds to wait for the whole message body (RFC 5321 4.5.3.2.6).", 600)
    max_connections: int = doc("Concurrent SMTP connections in total.", 1000)
    max_connections_per_client: int = doc("Concurrent SMTP connections from one client address.", 20)
    max_errors: int = doc("Protocol errors before the server disconnects the client.", 10)
    max_hops: int = doc("Received headers after which a message is refused as a mail loop.", 50)
    auth_failure_delay: float = doc("Seconds added to each failed AUTH reply, growing per failure from that client.", 1.0)
    max_auth_failures: int = doc("Failed AUTH attempts from one client before it is disconnected.", 5)
    processes: int = doc("SMTP session processes: 1 runs all in one; N > 1 starts N workers fed by the main process; 0 is one per CPU.", 0)

    def validate(self) -> None:
        if self.processes < 0:
            raise ConfigError("smtp.processes", f"must be 0 or more, got {self.processes}", "use 0 (one per CPU), 1, or the number of CPUs")
        for name in ("listen", "submission_listen", "submissions_listen"):
            for i, value in enumerate(getattr(self, name)):
                parse_hostport(value, key=f"smtp.{name}[{i}]")
        self.trusted_networks = _check_networks(self.trusted_networks, "smtp.trusted_networks")
        _check_positive(
            self,
            "smtp",
            "max_message_size",
            "max_recipients",
            "command_timeout",
            "data_timeout",
            "max_connections",
            "max_connections_per_client",
            "max_errors",
            "max_hops",
            "max_auth_failures",
        )
        if self.max_line_length < 512:
            raise ConfigError("smtp.max_line_length", f"{self.max_line_length} is below RFC 5321's 512", "use 1000 (the default) or more")


@dataclass
class QueueConfig:
    workers: int = doc("Deliveries in flight at once.", 20)
    per_destination: int = doc("Deliveries in flight to one destination (domain or relay host).", 10)
    retry_min: int = doc("Seconds before the first retry of a deferred recipient; doubled each time, with jitter.", 300)
    retry_max: int = doc("Longest wait between retries, in seconds.", 3600)
    max_lifetime: int = doc("Seconds a message may stay queued before it bounces (default 5 days).", 432000)
    delay_warning: int = doc("Seconds after which the sender is told of a delay (one warning DSN); 0 is off.", 0)
    scan_interval: float = doc("Seconds between scans of the deferred queue for due messages.", 5.0)

    def validate(self) -> None:
        _check_positive(self, "queue", "workers", "per_destination", "retry_min", "retry_max", "max_lifetime", "scan_interval")
        if self.retry_max < self.retry_min:
            raise ConfigError("queue.retry_max", "is smaller than queue.retry_min", "make retry_max at least retry_min")


@dataclass
class TransportConfig:
    domain: str = doc("Destination domain this route is for; '*' for all non-local mail (a relayhost).")
    host: str = doc("Host (name or address) to deliver to instead of the MX.")
    port: int = doc("Port on that host.", 25)
    username: str = doc("User name for AUTH at the relay host; empty for none.", "")
    password_file: str = doc("File holding the relay password (first line); never put the password here.", "")
    tls: str = doc("TLS policy for this route: none, opportunistic, require or verify.", "opportunistic")
    implicit_tls: bool = doc("Connect with TLS from the start (port 465 style).", False)

    def validate(self, key: str) -> None:
        if self.domain != "*":
            self.domain = _check_hostname(self.domain, f"{key}.domain")
        if not 0 < self.port < 65536:
            raise ConfigError(f"{key}.port", f"port {self.port} is out of range", "use a port from 1 to 65535")
        if self.tls not in TLS_POLICIES:
            raise ConfigError(f"{key}.tls", f"{self.tls!r} is not a policy", f"use one of {', '.join(TLS_POLICIES)}")
        if self.username and not self.password_file:
            raise ConfigError(f"{key}.password_file", "is empty but username is set", "point it at a file (mode 0600) holding the password")


@dataclass
class OutboundConfig:
    port: int = doc("Port of remote MX hosts (25 on the internet; another for labs).", 25)
    resolvers: list[str] = doc("DNS resolvers (IP or IP:PORT) for MX lookups; empty uses the system's.", [])
    helo_name: str = doc("EHLO name; empty uses server.hostname.", "")
    source_address: str = doc("Local address to connect from; empty lets the system choose.", "")
    connect_timeout: int = doc("Seconds to wait for a TCP connection and the banner.", 30)
    command_timeout: int = doc("Seconds to wait for each reply from the remote server.", 300)
    tls: str = doc("Default TLS policy: none, opportunistic (default), require, or verify (certificate and name).", "opportunistic")
    tls_policies: dict[str, str] = doc('Per-domain TLS policy, e.g. { "bank.example" = "verify" }.', {})
    mta_sts: bool = doc("Honour MTA-STS (RFC 8461) policies that destination domains publish.", True)
    dkim_selector: str = doc("DKIM selector for signing mail from local domains; empty disables signing.", "")
    dkim_key: str = doc("PEM private key file for DKIM signing (written by 'mailprov dns plan --dkim-key-dir').", "")
    transports: list[TransportConfig] = doc("Routes overriding the MX lookup ([[outbound.transports]] tables).", [])

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError("outbound.port", f"port {self.port} is out of range", "use a port from 1 to 65535")
        for i, resolver in enumerate(self.resolvers):
            host = resolver
            if re.fullmatch(r"\[[0-9A-Fa-f:.]+\]:\d+|[0-9.]+:\d+", resolver):
                host, _ = parse_hostport(resolver, key=f"outbound.resolvers[{i}]")
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(
                    f"outbound.resolvers[{i}]",
                    f"{resolver!r} is not an IP address",
                    "write '192.0.2.53', '192.0.2.53:5353' or '[2001:db8::53]:53'",
                ) from None
        if self.helo_name:
            self.helo_name = _check_hostname(self.helo_name, "outbound.helo_name")
        _check_positive(self, "outbound", "connect_timeout", "command_timeout")
        for key, policy in [("outbound.tls", self.tls)] + [(f"outbound.tls_policies.{d}", p) for d, p in self.tls_policies.items()]:
            if policy not in TLS_POLICIES:
                raise ConfigError(key, f"{policy!r} is not a policy", f"use one of {', '.join(TLS_POLICIES)}")
        if bool(self.dkim_selector) != bool(self.dkim_key):
            raise ConfigError(
                "outbound.dkim_key" if self.dkim_selector else "outbound.dkim_selector",
                "dkim_selector and dkim_key must be set together",
                "set both to sign, or neither",
            )
        for i, transport in enumerate(self.transports):
            transport.validate(f"outbound.transports[{i}]")


@dataclass
class POP3Config:
    listen: list[str] = doc("Addresses for POP3 with STLS (RFC 2595).", ["0.0.0.0:110"])
    tls_listen: list[str] = doc("Addresses for POP3 over implicit TLS (port 995).", ["0.0.0.0:995"])
    plaintext_networks: list[str] = doc("Networks allowed to send a password without TLS (keep empty on the internet).", [])
    idle_timeout: int = doc("Seconds of silence before a session is closed (RFC 1939: at least 600).", 600)
    max_connections: int = doc("Concurrent POP3 connections in total.", 500)
    max_connections_per_client: int = doc("Concurrent POP3 connections from one client address.", 10)
    auth_failure_delay: float = doc("Seconds added to each failed login reply, growing per failure from that client.", 1.0)
    max_auth_failures: int = doc("Failed logins from one client before it is disconnected.", 5)

    def validate(self) -> None:
        for name in ("listen", "tls_listen"):
            for i, value in enumerate(getattr(self, name)):
                parse_hostport(value, key=f"pop3.{name}[{i}]")
        self.plaintext_networks = _check_networks(self.plaintext_networks, "pop3.plaintext_networks")
        _check_positive(self, "pop3", "idle_timeout", "max_connections", "max_connections_per_client", "max_auth_failures")


ACME_CHALLENGES = ("http-01",)


@dataclass
class ACMEConfig:
    directory: str = doc("ACME (RFC 8555) directory URL of the CA; empty disables 'mailprov cert'.", "")
    email: str = doc("Contact address for the ACME account (expiry and incident notices from the CA); empty for none.", "")
    names: list[str] = doc("Names the certificate covers; empty means [server.hostname].", [])
    challenge: str = doc("Challenge answered on this host: http-01 (port 80 of every name must reach http01_listen).", "http-01")
    http01_listen: str = doc("Address the HTTP-01 answer is served on while a certificate is issued.", "0.0.0.0:80")
    reuse_key: bool = doc("Keep the private key across renewals, so a published DANE 3 1 1 record stays valid.", False)
    renew_before_days: int = doc("Renew when the certificate has fewer days left than this.", 30)
    ca_bundle: str = doc("PEM file of CAs trusted for the ACME server's HTTPS; empty uses the system's.", "")
    timeout: int = doc("Seconds to wait for the CA to validate and issue.", 120)
    max_clock_skew: int = doc("Seconds the host's clock may differ from the CA's before issuing is refused.", 300)

    def validate(self) -> None:
        if self.directory and not re.match(r"^https?://", self.directory):
            raise ConfigError(
                "acme.directory",
                f"{self.directory!r} is not an http(s) URL",
                "use the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory",
            )
        if self.challenge not in ACME_CHALLENGES:
            raise ConfigError("acme.challenge", f"{self.challenge!r} is not supported", f"use one of {', '.join(ACME_CHALLENGES)}")
        parse_hostport(self.http01_listen, key="acme.http01_listen")
        self.names = [_check_hostname(n, f"acme.names[{i}]") for i, n in enumerate(self.names)]
        _check_positive(self, "acme", "renew_before_days", "timeout", "max_clock_skew")


@dataclass
class IMAPConfig:
    listen: list[str] = doc("Addresses for IMAP with STARTTLS (RFC 3501; LOGINDISABLED before TLS).", ["0.0.0.0:143"])
    tls_listen: list[str] = doc("Addresses for IMAP over implicit TLS (port 993, RFC 8314).", ["0.0.0.0:993"])
    plaintext_networks: list[str] = doc("Networks allowed to send a password without TLS (keep empty on the internet).", [])
    idle_timeout: int = doc("Seconds of silence before a session is closed (RFC 3501 5.4: at least 1800).", 1800)
    idle_command_timeout: int = doc("Seconds an IDLE command may last before the session is closed (clients renew every 29 min).", 3600)
    max_connections: int = doc("Concurrent IMAP connections in total.", 2000)
    max_connections_per_client: int = doc("Concurrent IMAP connections from one client address.", 20)
    auth_failure_delay: float = doc("Seconds added to each failed login reply, growing per failure from that client.", 1.0)
    max_auth_failures: int = doc("Failed logins from one client before it is disconnected.", 5)
    append_limit: int = doc("Largest message APPEND accepts, in octets (advertised as APPENDLIMIT).", 50 * 1024 * 1024)
    processes: int = doc("IMAP session processes: 1 runs all in one; N > 1 starts N workers fed by the main process; 0 is one per CPU.", 0)

    def validate(self) -> None:
        if self.processes < 0:
            raise ConfigError("imap.processes", f"must be 0 or more, got {self.processes}", "use 0 (one per CPU), 1, or the number of CPUs")
        for name in ("listen", "tls_listen"):
            for i, value in enumerate(getattr(self, name)):
                parse_hostport(value, key=f"imap.{name}[{i}]")
        self.plaintext_networks = _check_networks(self.plaintext_networks, "imap.plaintext_networks")
        _check_positive(
            self,
            "imap",
            "idle_timeout",
            "idle_command_timeout",
            "max_connections",
            "max_connections_per_client",
            "max_auth_failures",
            "append_limit",
        )
        if self.idle_timeout < 1800:
            raise ConfigError(
                "imap.idle_timeout", f"{self.idle_timeout} is below 1800", "RFC 3501 5.4 requires at least 30 minutes: use 1800 or more"
            )


@dataclass
class Config:
    """The whole configuration: one attribute per TOML table."""

    server: ServerConfig
    paths: PathsConfig = doc("File system locations.", dataclasses.MISSING, default_factory=PathsConfig)
    tls: TLSConfig = doc("TLS certificate for STARTTLS, SMTPS, POP3S and IMAPS.", dataclasses.MISSING, default_factory=TLSConfig)
    smtp: SMTPConfig = doc("Receiving and submission.", dataclasses.MISSING, default_factory=SMTPConfig)
    queue: QueueConfig = doc("Queue scheduling and retries.", dataclasses.MISSING, default_factory=QueueConfig)
    outbound: OutboundConfig = doc("Delivery to other domains.", dataclasses.MISSING, default_factory=OutboundConfig)
    pop3: POP3Config = doc("The POP3 server.", dataclasses.MISSING, default_factory=POP3Config)
    acme: ACMEConfig = doc(
        "Certificates from an ACME CA (mailprov cert), installed at tls.cert and tls.key.", dataclasses.MISSING, default_factory=ACMEConfig
    )
    imap: IMAPConfig = doc("The IMAP server.", dataclasses.MISSING, default_factory=IMAPConfig)

    source: str = field(default="<memory>", metadata={"internal": True})

    def validate(self) -> Config:
        """Check every section; returns self so calls chain."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        return self

    def processes(self, service: str) -> int:
        """How many processes serve ``service``'s sessions (``smtp``, ``imap``): its ``processes`` setting,
        0 meaning one per CPU; always 1 for a configuration that is not a file (workers load the file)."""
        if not Path(self.source).is_file():
            return 1
        return getattr(self, service).processes or os.cpu_count() or 1

    @property
    def outbound_helo(self) -> str:
        """The EHLO name used for outbound connections."""
        return self.outbound.helo_name or self.server.hostname


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML value to the annotated type, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}", f"write it as [{key}] with keys below it")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {value!r}", f"write it as {key.rsplit('.', 1)[-1]} = [ ... ]")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {value!r}", f"write it as {key.rsplit('.', 1)[-1]} = {{ name = value }}")
        return {str(k): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(key, f"must be {_type_name(tp)}, got {value!r}", f"give {key} {_type_name(tp)}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in data:
        if name not in fields:
            key = f"{prefix}.{name}" if prefix else name
            close = difflib.get_close_matches(name, fields, n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"remove it; known keys: {', '.join(fields)}"
            raise ConfigError(key, "is not a known key", fix)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "is required", f"set {key} in the configuration file")
    return cls(**kwargs)


def from_dict(data: dict[str, Any], *, source: str = "<memory>") -> Config:
    """Build and validate a Config from parsed TOML data."""
    config: Config = _build(Config, data, "")
    config.source = source
    return config.validate()


def load(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}", "pass the path of an existing mailprov.toml") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"is not valid TOML: {exc}", "fix the syntax at the position named") from None
    return from_dict(data, source=str(path))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: Any) -> str:
    """A Python value (bool, str, number, list, dict) as a TOML value; dict keys are quoted when needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    return repr(value)


def render_defaults() -> str:
    """Every key of the schema, commented, with its default: the reference configuration."""
    lines = [
        "# mailprov configuration: every key with its documentation and default.",
        "# Keys left out take the default shown. Generated by 'mailprov config defaults'.",
        "",
    ]
    for section in dataclasses.fields(Config):
        if section.metadata.get("internal"):
            continue
        cls = typing.get_type_hints(Config)[section.name]
        lines.append(f"[{section.name}]" + (f"  # {section.metadata['doc']}" if "doc" in section.metadata else ""))
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            lines.append(f"# {f.metadata.get('doc', '')}")
            if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                item = typing.get_args(tp)[0]
                lines.append(f"# [[{section.name}.{f.name}]]")
                for sub in dataclasses.fields(item):
                    default = "(required)" if sub.default is dataclasses.MISSING else toml_value(sub.default)
                    lines.append(f"#   {sub.name} = {default}  # {sub.metadata.get('doc', '')}")
                continue
            if f.default is not dataclasses.MISSING:
                lines.append(f"{f.name} = {toml_value(f.default)}")
            elif f.default_factory is not dataclasses.MISSING:
                lines.append(f"{f.name} = {toml_value(f.default_factory())}")
            else:
                lines.append(f"# {f.name} = ...  (required)")
        lines.append("")
    return "\n".join(lines)
