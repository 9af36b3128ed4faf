"""``mx.tls`` (with ``--tls``): connect to each MX on port 25 and look at its STARTTLS as a sender would.

Query: the MX hosts' addresses (from the ``mx`` check). Probe (:func:`probe_starttls`): connect, read the
banner, EHLO, STARTTLS offered, STARTTLS, TLS handshake verifying the certificate for the MX name (the
system's CAs, or ``--ca-file``); when verification fails, a second handshake without it fetches the
certificate to say what is wrong with it (and for DANE). Judge (:func:`judge`, pure): TLS 1.2 or newer
(RFC 8996), a certificate valid for the MX name (or matching its DANE TLSA records: RFC 7672 3.2 makes
the name and the CA irrelevant then), not expiring within 14 days. A connection that is refused or
times out is ``error`` (the check could not be done), never ``fail``, and says at which step it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mailprov.dns.model import CheckResult, Evidence, Status
from mailprov.pkix import verifying_context

EXPIRY_WARNING = timedelta(days=14)
MAX_LINES = 100  # an EHLO answer longer than this is not an SMTP server
LINE_LIMIT = 4096
EHLO_NAME = "mailprov-check.invalid"  # RFC 2606: a name that says we are a checker, not a sender


@dataclass
class TlsProbe:
    """What one STARTTLS probe saw, step by step."""

    host: str  # the MX name
    address: str
    port: int
    stage: str = "connect"  # the step reached: connect, banner, ehlo, starttls, handshake, done
    error: str = ""  # why it stopped (network: timeout, refused)
    banner: str = ""
    ehlo: list[str] = field(default_factory=list)
    starttls_offered: bool = False
    tls_version: str = ""
    cipher: str = ""
    verify_error: str = ""  # empty when the certificate verified for the MX name
    handshake_error: str = ""
    leaf_der: bytes | None = None
    chain_der: list[bytes] = field(default_factory=list)  # the certificates the server sent, leaf first (for DANE-TA)
    transcript: list[str] = field(default_factory=list)


async def _reply(reader: asyncio.StreamReader, timeout: float, transcript: list[str]) -> tuple[int, list[str]]:
    """One SMTP reply (multi-line): its code and its lines' text."""
    lines: list[str] = []
    for _ in range(MAX_LINES):
        raw = await asyncio.wait_for(reader.readline(), timeout)
        if not raw:
            raise ConnectionError("the server closed the connection")
        line = raw[:LINE_LIMIT].decode("utf-8", "replace").rstrip("\r\n")
        transcript.append(f"S: {line}")
        if len(line) < 3 or not line[:3].isdigit():
            raise ConnectionError(f"not an SMTP reply: {line[:80]!r}")
        lines.append(line[4:])
        if len(line) == 3 or line[3] != "-":
            return int(line[:3]), lines
    raise ConnectionError(f"a reply of more than {MAX_LINES} lines")


def _context(cafile: str | None, verify: bool) -> ssl.SSLContext:
    context = verifying_context(cafile) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    # Let old versions through the handshake so that the judge can name them, rather than fail obscurely.
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    return context


async def _session(probe: TlsProbe, timeout: float, context: ssl.SSLContext) -> None:
    """One SMTP session up to a completed TLS handshake; fills ``probe`` as it goes."""
    probe.stage = "connect"
    reader, writer = await asyncio.wait_for(asyncio.open_connection(probe.address, probe.port), timeout)
    try:
        probe.stage = "banner"
        code, lines = await _reply(reader, timeout, probe.transcript)
        probe.banner = lines[0] if lines else ""
        if code != 220:
            raise ConnectionRefusedError(f"the banner is {code} {probe.banner}, not 220")
        probe.stage = "ehlo"
        writer.write(f"EHLO {EHLO_NAME}\r\n".encode())
        probe.transcript.append(f"C: EHLO {EHLO_NAME}")
        code, lines = await _reply(reader, timeout, probe.transcript)
        if code != 250:
            raise ConnectionRefusedError(f"EHLO answered {code} {' '.join(lines)}")
        probe.ehlo = lines
        probe.starttls_offered = any(line.split()[0].upper() == "STARTTLS" for line in lines[1:] if line.split())
        if not probe.starttls_offered:
            return
        probe.stage = "starttls"
        writer.write(b"STARTTLS\r\n")
        probe.transcript.append("C: STARTTLS")
        code, lines = await _reply(reader, timeout, probe.transcript)
        if code != 220:
            probe.handshake_error = f"STARTTLS answered {code} {' '.join(lines)}"
            return
        probe.stage = "handshake"
        await asyncio.wait_for(writer.start_tls(context, server_hostname=probe.host.rstrip(".")), timeout)
        tls = writer.get_extra_info("ssl_object")
        probe.tls_version = tls.version() or ""
        probe.cipher = (tls.cipher() or ("",))[0]
        probe.leaf_der = tls.getpeercert(binary_form=True)
        probe.chain_der = _presented_chain(tls) or ([probe.leaf_der] if probe.leaf_der else [])
        probe.stage = "done"
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def probe_starttls(host: str, address: str, port: int = 25, *, timeout: float = 10.0, cafile: str | None = None) -> TlsProbe:
    """Probe one MX address; never raises (the outcome is in the probe)."""
    probe = TlsProbe(host.rstrip("."), address, port)
    try:
        await _session(probe, timeout, _context(cafile, verify=True))
        return probe
    except ssl.SSLCertVerificationError as exc:
        probe.verify_error = exc.verify_message or str(exc)
    except ssl.SSLError as exc:
        probe.handshake_error = f"{exc.reason or exc}"
        return probe
    except TimeoutError:
        probe.error = f"no answer within {timeout:g} s"
        return probe
    except (OSError, ConnectionError, UnicodeError) as exc:
        probe.error = f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, ConnectionRefusedError) else str(exc)
        return probe
    # The certificate did not verify: look at it without verification, to say why and for DANE.
    retry = TlsProbe(probe.host, address, port)
    try:
        await _session(retry, timeout, _context(cafile, verify=False))
    except (OSError, ConnectionError, TimeoutError, ssl.SSLError, UnicodeError) as exc:
        # The verification error is the finding; the certificate itself stays unknown.
        probe.transcript.append(f"(certificate did not verify; a second connection to read it failed: {exc})")
        return probe
    retry.verify_error = probe.verify_error
    retry.transcript = [*probe.transcript, "(certificate did not verify; connected again without verification)", *retry.transcript]
    return retry


def _presented_chain(tls: ssl.SSLObject) -> list[bytes]:
    """The certificates the server sent in its handshake, leaf first, as DER (what DANE-TA matches, RFC 7671 5.2.2).

    Python 3.13 makes ``get_unverified_chain`` public; from 3.10 to 3.12 the same method exists on the C
    object behind the SSLObject and returns certificate objects rather than bytes. tests/dns/test_dane_ta.py
    fails if neither gives the chain.
    """
    get = getattr(tls, "get_unverified_chain", None) or getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if get is None:
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in get() or []]  # type: ignore[attr-defined]


def _certificate(der: bytes):  # type: ignore[no-untyped-def]
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def judge(probe: TlsProbe, now: datetime | None = None, dane_match: bool | None = None) -> CheckResult:
    """The ``mx.tls`` result of one probe; ``dane_match`` says whether the certificate matches signed TLSA records."""
    subject = f"{probe.host} ({probe.address})"
    where = f"{probe.address}:{probe.port}"
    evidence = [Evidence(query=f"SMTP STARTTLS {probe.host}", server=where, rcode=probe.stage.upper(), answer=probe.transcript)]
    if probe.error:
        return CheckResult(
            "mx.tls",
            Status.ERROR,
            subject,
            f"could not complete: stuck at {probe.stage} with {where}: {probe.error}",
            fix="check that the MX accepts connections on port 25 from here (firewall, provider blocking port 25), then run again",
            records=evidence,
        )
    names = f"banner '{probe.banner}', EHLO '{probe.ehlo[0] if probe.ehlo else ''}'"
    if not probe.starttls_offered:
        return CheckResult(
            "mx.tls",
            Status.FAIL,
            subject,
            f"STARTTLS is not offered ({names}): mail to {probe.host} travels in clear text",
            fix="enable STARTTLS on port 25 with a certificate for the MX name (mailprov: tls.cert and tls.key)",
            records=evidence,
        )
    if probe.tls_version in ("SSLv3", "TLSv1", "TLSv1.1"):
        return CheckResult(
            "mx.tls",
            Status.FAIL,
            subject,
            f"{probe.tls_version} negotiated: versions before TLS 1.2 are deprecated (RFC 8996)",
            fix="enable TLS 1.2 and 1.3 on the server",
            records=evidence,
        )
    cert = _certificate(probe.leaf_der) if probe.leaf_der else None
    now = now or datetime.now(UTC)
    expires = cert.not_valid_after_utc if cert is not None else None
    until = f"valid until {expires:%Y-%m-%d}" if expires else "no certificate"
    session = f"{probe.tls_version} {probe.cipher}"
    if probe.verify_error:
        if dane_match:
            return CheckResult(
                "mx.tls",
                Status.PASS,
                subject,
                f"STARTTLS, {session}; the certificate does not verify ({probe.verify_error}) but matches the signed TLSA records "
                f"(DANE, RFC 7672 3.2); {names}",
                records=evidence,
            )
        return CheckResult(
            "mx.tls",
            Status.FAIL,
            subject,
            f"STARTTLS, {session}, but the certificate is not valid for {probe.host}: {probe.verify_error} ({until}); "
            "senders that verify (MTA-STS, 'verify' policies) will not deliver",
            fix=f"install a certificate for {probe.host} from a public CA (ACME), renewed before it expires",
            records=evidence,
        )
    if probe.handshake_error or not probe.tls_version:
        return CheckResult(
            "mx.tls",
            Status.FAIL,
            subject,
            f"STARTTLS offered but the TLS handshake failed: {probe.handshake_error}",
            fix="check the server's TLS configuration (certificate and key pair, protocol versions, ciphers)",
            records=evidence,
        )
    if expires is not None and expires - now < EXPIRY_WARNING:
        days = max(0, (expires - now).days)
        return CheckResult(
            "mx.tls",
            Status.WARN,
            subject,
            f"STARTTLS, {session}; the certificate expires in {days} day(s) ({expires:%Y-%m-%d %H:%M} UTC)",
            fix="renew the certificate now (keep the key, or publish the next key's TLSA record first when using DANE)",
            records=evidence,
        )
    return CheckResult(
        "mx.tls", Status.PASS, subject, f"STARTTLS, {session}, certificate for {probe.host} {until}; {names}", records=evidence
    )
