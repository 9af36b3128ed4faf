"""TLS on the way out: which policy applies to a destination, and what it demands of a connection.

Levels, weakest to strongest:

* ``none``: never STARTTLS (for a broken peer you cannot fix).
* ``opportunistic`` (default): STARTTLS when offered, certificate not checked (RFC 7435); if the TLS
  handshake fails, the same host is retried in plain text, as Postfix's ``may`` level does.
* ``require``: STARTTLS must succeed or the host is skipped (and the recipient deferred); certificate
  not checked.
* ``verify``: as ``require``, and the certificate must chain to a trusted CA and name the MX host (the
  name from the MX record or transport, never from the connection).

Where the level comes from, first match wins: the transport's own ``tls`` for a transport route;
``outbound.tls_policies[DOMAIN]``; ``outbound.tls``. An MTA-STS policy in ``enforce`` mode raises the
level to ``verify`` and restricts the MX hosts to its ``mx`` patterns; ``testing`` mode changes nothing
but logs what enforcing would have refused. MTA-STS never applies to transports (no MX is used).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

from mailprov.config import Config, TransportConfig
from mailprov.delivery.mta_sts import StsPolicy
from mailprov.pkix import verifying_context

LEVELS = ("none", "opportunistic", "require", "verify")


@dataclass(frozen=True)
class TLSPolicy:
    """The TLS demands for one destination and where they come from (for logs and DSNs)."""

    level: str
    source: str  # "outbound.tls", "outbound.tls_policies.DOMAIN", "transport", "mta-sts"
    sts: StsPolicy | None = None

    @property
    def starttls(self) -> bool:
        """Try STARTTLS at all?"""
        return self.level != "none"

    @property
    def required(self) -> bool:
        """Must the session be encrypted?"""
        return self.level in ("require", "verify")

    @property
    def verify(self) -> bool:
        """Must the certificate be valid for the host name?"""
        return self.level == "verify"

    @property
    def enforce_sts(self) -> bool:
        """Does an MTA-STS policy in enforce mode restrict the MX hosts?"""
        return self.sts is not None and self.sts.mode == "enforce"

    def mx_permitted(self, mx_host: str) -> bool:
        """May mail go to ``mx_host``? (Only an enforced MTA-STS policy says no.)"""
        return not self.enforce_sts or self.sts.permits(mx_host)  # type: ignore[union-attr]

    def describe(self) -> str:
        """``verify (mta-sts)`` style text for log lines."""
        return f"{self.level} ({self.source})"


def stronger(a: str, b: str) -> str:
    """The stronger of two levels."""
    return a if LEVELS.index(a) >= LEVELS.index(b) else b


def policy_for(config: Config, domain: str, *, transport: TransportConfig | None = None, sts: StsPolicy | None = None) -> TLSPolicy:
    """The TLS policy for delivering to ``domain`` (see the module docstring for precedence)."""
    if transport is not None:
        return TLSPolicy(transport.tls, "transport")
    if domain in config.outbound.tls_policies:
        level, source = config.outbound.tls_policies[domain], f"outbound.tls_policies.{domain}"
    else:
        level, source = config.outbound.tls, "outbound.tls"
    if sts is not None and sts.mode == "enforce" and stronger("verify", level) != level:
        return TLSPolicy("verify", "mta-sts", sts)
    return TLSPolicy(level, source, sts)


def client_context(*, verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: verifying (system CAs, or ``ca_file``) or accepting any certificate."""
    if verify:
        return verifying_context(ca_file)
    # Opportunistic TLS: encryption without authentication still beats plain text (RFC 7435), and
    # many MX hosts present self-signed certificates, so accept any, and old ciphers too.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ssl.SSLError):  # an OpenSSL build without that syntax keeps its defaults
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context
