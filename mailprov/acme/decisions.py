"""The decisions of certificate management, as pure functions testable without a CA or a socket.

* :func:`renewal_due`: whether the installed certificate must be replaced, and why;
* :func:`clock_skew`: how far this host's clock is from the CA's (RFC 7231 ``Date`` header);
* :func:`explain`: an ACME problem document (RFC 8555 section 6.7) as a message naming the step and the fix.
"""

from __future__ import annotations

import datetime
import email.utils
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

# RFC 8555 section 6.7 error types (urn:ietf:params:acme:error:TYPE) and what the operator can do.
PROBLEM_FIXES = {
    "rateLimited": "the CA limits how often it issues: wait until the time it gives (Retry-After), then run again",
    "badNonce": "the CA rejected the request's nonce repeatedly: run again; if it persists the CA is misbehaving",
    "unauthorized": "the CA refuses this account or name: check acme.names are yours and allowed by the CA's policy",
    "rejectedIdentifier": "the CA will not issue for one of acme.names: remove it, or use a CA that allows it",
    "caa": "a CAA record forbids this CA: add the CA's domain to the CAA record of the name",
    "dns": "the CA could not resolve a name: publish the name's A/AAAA record (mailprov check NAME)",
    "connection": "the CA could not reach this host: open port 80 of every name to acme.http01_listen (firewall, NAT, A/AAAA)",
    "incorrectResponse": "the CA reached another server: point every name's A/AAAA at this host and free acme.http01_listen",
    "malformed": "the request was malformed: check acme.names and acme.email",
    "invalidContact": "the CA refuses the contact address: fix acme.email",
    "unsupportedContact": "the CA refuses the contact address: fix acme.email",
    "externalAccountRequired": "this CA needs external account binding, which mailprov does not support: use another CA",
    "badSignatureAlgorithm": "the CA refuses the account key's algorithm: remove STATE_DIR/acme/account.* to make a new account",
    "serverInternal": "the CA failed internally: run again later",
    "orderNotReady": "the order was finalized too early: run again (it resumes)",
    "accountDoesNotExist": "the CA forgot the account: remove STATE_DIR/acme/account.json to register again",
    "userActionRequired": "the CA needs you to act (for example accept new terms): see its website",
}


@dataclass(frozen=True)
class CertificateState:
    """What the installed certificate is, as far as renewal cares."""

    names: tuple[str, ...]
    issuer: str
    not_after: datetime.datetime
    self_signed: bool

    def days_left(self, now: datetime.datetime) -> float:
        """Days until it expires (negative once expired)."""
        return (self.not_after - now).total_seconds() / 86400


def read_certificate(pem: bytes) -> CertificateState:
    """The first certificate of a PEM chain; raises ValueError when it is not one."""
    cert = x509.load_pem_x509_certificate(pem)
    return certificate_state(cert)


def certificate_state(cert: x509.Certificate) -> CertificateState:
    """Names, issuer and expiry of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sorted(n.lower() for n in san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateState(names, issuer_name(cert), cert.not_valid_after_utc, cert.issuer == cert.subject)


def issuer_name(cert: x509.Certificate) -> str:
    """The issuer's common name (or organization, or the whole name)."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attrs = cert.issuer.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return cert.issuer.rfc4514_string()


def renewal_due(pem: bytes | None, names: list[str], now: datetime.datetime, renew_before_days: int) -> tuple[bool, str]:
    """Whether a certificate for ``names`` must be (re)issued, with the reason in words."""
    if not pem:
        return True, "no certificate installed yet"
    try:
        state = read_certificate(pem)
    except ValueError:
        return True, "the installed certificate cannot be read"
    if state.self_signed:
        return True, "the installed certificate is self-signed"
    if set(state.names) != {n.lower() for n in names}:
        return True, f"the installed certificate covers {', '.join(state.names) or 'no names'}, not {', '.join(sorted(names))}"
    left = state.days_left(now)
    if left < renew_before_days:
        return True, f"{left:.1f} days left, renewal is due under {renew_before_days}"
    return False, f"valid until {state.not_after:%Y-%m-%d %H:%M} UTC ({left:.0f} days left), renewal due under {renew_before_days}"


def clock_skew(date_header: str | None, now: datetime.datetime) -> float | None:
    """Seconds the CA's clock is ahead of ours (negative: ours is ahead), or None without a Date header."""
    if not date_header:
        return None
    try:
        theirs = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=datetime.UTC)
    return (theirs - now).total_seconds()


def problem_type(typ: str | None) -> str:
    """The short name of an RFC 8555 error type URN (``urn:ietf:params:acme:error:rateLimited`` -> ``rateLimited``)."""
    return (typ or "").rsplit(":", 1)[-1]


def explain(step: str, typ: str | None, detail: str) -> tuple[str, str]:
    """The message and the fix for an ACME problem at ``step``."""
    short = problem_type(typ)
    fix = PROBLEM_FIXES.get(short, "see the CA's message above; run again once it is resolved (the old certificate stays in use)")
    return f"ACME step '{step}' failed: {short or 'error'}: {detail}", fix
