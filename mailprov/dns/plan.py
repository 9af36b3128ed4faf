"""``mailprov dns plan``: the records a domain must publish for a new mail host.

:func:`make_plan` builds the list (the host's A/AAAA, MX, SPF, DMARC, a DKIM key, TLS-RPT, optionally
MTA-STS, with ``tlsa_from`` the DANE TLSA records of the host's certificates, and the PTR records to
request from whoever owns the address block); :func:`render_zone` prints
it as a BIND zone snippet with absolute names (paste it into any zone file), :func:`render_json` as JSON.

The DKIM key pair is generated once: the private key is written as PEM (PKCS#8, RSA 2048 bits by default)
to ``<key dir>/<selector>._domainkey.<domain>.key`` with mode 0600 through the atomic-write helper; when
that file already exists it is reused, so running the plan again never replaces a published key. The TXT
record is split into character-strings of at most 255 bytes (RFC 1035 3.3.14 / RFC 7208 3.3): a 2048-bit
key does not fit in one.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dns.reversename
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailprov.atomic import atomic_write
from mailprov.dns.checker import SELECTOR_RE, normalize_name
from mailprov.errors import MailprovError, UsageError

TXT_CHUNK = 255


@dataclass
class PlanRecord:
    """One record to publish: absolute owner name, TTL, type, value (TXT as a list of strings), a comment."""

    name: str
    ttl: int
    type: str
    value: str
    strings: list[str] = field(default_factory=list)  # TXT only: the character-strings, each at most 255 bytes
    comment: str = ""

    def to_zone_line(self) -> str:
        """The record as one zone-file line."""
        rdata = " ".join(f'"{s}"' for s in self.strings) if self.type == "TXT" else self.value
        return f"{self.name:<40} {self.ttl:<6} IN {self.type:<5} {rdata}"


@dataclass
class Plan:
    """Everything to publish for one domain and mail host."""

    domain: str
    host: str
    ips: list[str]
    records: list[PlanRecord] = field(default_factory=list)
    ptr: list[PlanRecord] = field(default_factory=list)  # to request from the address block's owner
    dkim_key_file: str | None = None
    dkim_key_created: bool = False
    mta_sts_policy: str | None = None


def txt_strings(value: str, size: int = TXT_CHUNK) -> list[str]:
    """Split a TXT value into character-strings of at most ``size`` bytes (ASCII values, as DKIM/SPF are)."""
    data = value.encode("ascii")
    return [data[i : i + size].decode("ascii") for i in range(0, len(data), size)] or [""]


def dkim_key_path(key_dir: Path, selector: str, domain: str) -> Path:
    """Where the private key lives: ``<key dir>/<selector>._domainkey.<domain>.key``."""
    return Path(key_dir) / f"{selector}._domainkey.{domain}.key"


def load_or_create_key(path: Path, bits: int) -> tuple[rsa.RSAPrivateKey, bool]:
    """The RSA private key at ``path``, generated and written (mode 0600) if absent; returns it and whether it is new."""
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot use the existing DKIM key {path}: {exc}", fix="move it away to generate a new key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UsageError(f"the existing DKIM key {path} is not an RSA key", fix="move it away to generate a new RSA key")
        return key, False
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, pem, mode=0o600)
    except OSError as exc:
        raise MailprovError(f"cannot write the DKIM key {path}: {exc.strerror or exc}", fix="choose a writable --dkim-key-dir") from None
    return key, True


def make_plan(
    domain: str,
    host: str,
    ips: list[str],
    *,
    dkim_selector: str | None = None,
    dkim_key_dir: Path | None = None,
    dkim_bits: int = 2048,
    mta_sts: bool = False,
    tlsa_from: list[Path] | None = None,
    tls_rpt: bool = True,
    dmarc_policy: str = "quarantine",
    report_address: str | None = None,
    ttl: int = 3600,
) -> Plan:
    """Build the plan (validating every input; a UsageError names the bad one)."""
    domain = normalize_name(domain)
    host = normalize_name(host, "--host")
    if not ips:
        raise UsageError("no --ip given", fix="give the mail host's address(es) with --ip (repeatable, IPv4 and IPv6)")
    addresses = []
    for ip in ips:
        try:
            addresses.append(ipaddress.ip_address(ip.strip()))
        except ValueError:
            raise UsageError(f"--ip {ip!r} is not an IPv4 or IPv6 address", fix="write e.g. 192.0.2.10 or 2001:db8::10") from None
    if dmarc_policy not in ("none", "quarantine", "reject"):
        raise UsageError(f"--dmarc-policy {dmarc_policy!r} is not none, quarantine or reject")
    if dkim_selector is not None and not SELECTOR_RE.match(dkim_selector):
        raise UsageError(f"--dkim-selector {dkim_selector!r} is not a valid selector", fix="use letters, digits, '-', '_' and dots")
    if dkim_bits < 1024 or dkim_bits > 4096:
        raise UsageError(f"--dkim-bits {dkim_bits} is out of range", fix="use 2048 (the default), 3072 or 4096; never less than 1024")
    report_to = report_address or f"postmaster@{domain}"
    plan = Plan(domain, host, [str(a) for a in addresses])
    fqdn, hostdot = f"{domain}.", f"{host}."
    outside = "" if host == domain or host.endswith("." + domain) else f"publish in the zone that holds {host}"
    for a in addresses:
        plan.records.append(PlanRecord(hostdot, ttl, "A" if a.version == 4 else "AAAA", str(a), comment=outside or "the mail host"))
    plan.records.append(PlanRecord(fqdn, ttl, "MX", f"10 {hostdot}", comment="mail for the domain goes to the host"))
    spf = "v=spf1 mx " + " ".join(f"ip{a.version}:{a}" for a in addresses) + " -all"
    plan.records.append(PlanRecord(fqdn, ttl, "TXT", spf, txt_strings(spf), "SPF: only the MX host may send"))
    dmarc = f"v=DMARC1; p={dmarc_policy}; adkim=r; aspf=r; rua=mailto:{report_to}"
    plan.records.append(PlanRecord(f"_dmarc.{fqdn}", ttl, "TXT", dmarc, txt_strings(dmarc), "DMARC policy and aggregate reports"))
    if dkim_selector:
        path = dkim_key_path(dkim_key_dir or Path("."), dkim_selector, domain)
        key, created = load_or_create_key(path, dkim_bits)
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        value = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
        plan.records.append(
            PlanRecord(
                f"{dkim_selector}._domainkey.{fqdn}", ttl, "TXT", value, txt_strings(value), f"DKIM RSA {key.key_size}, private key {path}"
            )
        )
        plan.dkim_key_file, plan.dkim_key_created = str(path), created
    if tls_rpt:
        value = f"v=TLSRPTv1; rua=mailto:{report_to}"
        plan.records.append(PlanRecord(f"_smtp._tls.{fqdn}", ttl, "TXT", value, txt_strings(value), "TLS-RPT: where to send TLS reports"))
    if mta_sts:
        value = f"v=STSv1; id={time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
        plan.records.append(
            PlanRecord(f"_mta-sts.{fqdn}", ttl, "TXT", value, txt_strings(value), "MTA-STS: change id= with every policy change")
        )
        plan.records.append(PlanRecord(f"mta-sts.{fqdn}", ttl, "CNAME", hostdot, comment="serves the policy over HTTPS"))
        plan.mta_sts_policy = f"version: STSv1\nmode: testing\nmx: {host}\nmax_age: 86400\n"
    for number, cert_path in enumerate(tlsa_from or []):
        plan.records.append(tlsa_record(cert_path, hostdot, ttl, current=number == 0))
    for a in addresses:
        plan.ptr.append(PlanRecord(dns.reversename.from_address(str(a)).to_text(), ttl, "PTR", hostdot, comment=f"reverse DNS of {a}"))
    return plan


def tlsa_record(cert_path: Path, hostdot: str, ttl: int, *, current: bool = True) -> PlanRecord:
    """The DANE-EE ``3 1 1`` TLSA record of the certificate in ``cert_path`` for SMTP on ``hostdot`` (RFC 7672)."""
    from mailprov.dns.dane import tlsa_for_certificate

    try:
        value = tlsa_for_certificate(Path(cert_path).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read certificate {cert_path}: {exc.strerror or exc}", fix="give the PEM file the MTA serves") from None
    except ValueError as exc:
        raise UsageError(f"{cert_path} is not a PEM or DER certificate: {exc}", fix="give the PEM file the MTA serves") from None
    role = "the deployed key" if current else "the next key (publish before switching keys: RFC 7671 8.1)"
    return PlanRecord(f"_25._tcp.{hostdot}", ttl, "TLSA", value, comment=f"DANE for SMTP to the host: {role}; the zone must be signed")


def render_zone(plan: Plan) -> str:
    """The plan as a BIND zone snippet (absolute names), with the PTR requests and notes as comments."""
    lines = [f"; Records for mail domain {plan.domain}, mail host {plan.host} ({', '.join(plan.ips)}).", ";"]
    for record in plan.records:
        lines.append(f"; {record.comment}")
        lines.append(record.to_zone_line())
    lines += ["", "; Ask whoever runs the address block (your hosting provider) to set these PTR records:"]
    lines += [f"; {r.to_zone_line()}" for r in plan.ptr]
    if plan.dkim_key_file:
        state = "generated" if plan.dkim_key_created else "existing key reused"
        lines += ["", f"; DKIM private key: {plan.dkim_key_file} ({state}, mode 0600); point outbound.dkim_key at it."]
    if plan.mta_sts_policy:
        lines += ["", f"; Serve this MTA-STS policy at https://mta-sts.{plan.domain}/.well-known/mta-sts.txt:"]
        lines += [f";   {line}" for line in plan.mta_sts_policy.splitlines()]
    return "\n".join(lines)


def render_json(plan: Plan) -> str:
    """The plan as JSON: ``{"domain", "host", "ips", "records": [...], "ptr": [...], "dkim_key_file", ...}``."""
    return json.dumps(asdict(plan), indent=2)


def key_mode(path: str | os.PathLike[str]) -> int:
    """The permission bits of a file (tests and the report use it to show the key is 0600)."""
    return os.stat(path).st_mode & 0o777
