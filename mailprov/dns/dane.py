"""``dane``: the TLSA records of each MX host (``_25._tcp.HOST``, RFC 7671 and RFC 7672).

Query the TLSA RRset through the DNSSEC validator (a TLSA record means nothing unless it is signed:
RFC 7672 2.2); parse each record's usage, selector and matching type; check that at least one is usable
for SMTP (DANE-TA(2) or DANE-EE(3); the PKIX usages 0 and 1 are not, RFC 7672 3.1.3), that a record for
the next key is published beside the current one (RFC 7671 8.1, so a key change never breaks delivery),
and, when ``--tls`` fetched it, that the certificate the MX serves matches a DANE-EE record.

:func:`tlsa_for_certificate` computes the recommended ``3 1 1`` record for a certificate
(``mailprov dns plan --tlsa-from CERT``).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailprov.dns.dnssec import Security, Validator, verdict_result
from mailprov.dns.model import CheckResult, Status, worst

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MATCHING = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}
_DIGEST_LENGTH = {1: 32, 2: 64}


def load_certificate(data: bytes) -> x509.Certificate:
    """The first certificate in PEM or DER ``data`` (ValueError when there is none)."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)[0]
    return x509.load_der_x509_certificate(data)


def association(cert: x509.Certificate, selector: int, matching: int) -> bytes:
    """The certificate association data of a TLSA record (RFC 6698 2.1.2-2.1.3)."""
    if selector == 0:
        raw = cert.public_bytes(serialization.Encoding.DER)
    else:
        raw = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if matching == 1:
        return hashlib.sha256(raw).digest()
    if matching == 2:
        return hashlib.sha512(raw).digest()
    return raw


def tlsa_for_certificate(data: bytes, usage: int = 3, selector: int = 1, matching: int = 1) -> str:
    """The TLSA record data (``3 1 1 HEX``) for the certificate in PEM or DER ``data``.

    ``3 1 1`` (DANE-EE, public key, SHA-256) survives certificate renewals that keep the key (RFC 7671 5.1).
    """
    cert = load_certificate(data)
    return f"{usage} {selector} {matching} {association(cert, selector, matching).hex()}"


def record_problems(usage: int, selector: int, matching: int, data: bytes) -> tuple[Status, str] | None:
    """What is wrong with one TLSA record for SMTP: (fail or warn, why), or None when it is sound."""
    if usage not in USAGES or selector not in SELECTORS or matching not in MATCHING:
        return Status.FAIL, f"{usage} {selector} {matching}: unknown usage, selector or matching type (RFC 6698 2.1)"
    if matching in _DIGEST_LENGTH and len(data) != _DIGEST_LENGTH[matching]:
        return (
            Status.FAIL,
            f"{usage} {selector} {matching}: a {MATCHING[matching]} digest has {_DIGEST_LENGTH[matching]} bytes, not {len(data)}",
        )
    if usage in (0, 1):
        return Status.FAIL, f"{usage} {selector} {matching}: {USAGES[usage]} records are unusable for SMTP (RFC 7672 3.1.3)"
    if matching == 0:
        return Status.WARN, f"{usage} {selector} {matching}: full data instead of a digest; use matching type 1 (RFC 7671 10.1.2)"
    return None


def tlsa_matches(usage: int, selector: int, matching: int, data: bytes, leaf: x509.Certificate) -> bool:
    """Whether a DANE-EE record matches the server's certificate (DANE-TA needs the chain: not matched here)."""
    return usage == 3 and association(leaf, selector, matching) == data


async def check_dane(validator: Validator, host: str, served: bytes | None = None) -> tuple[CheckResult, bool | None]:
    """The ``dane`` result for one MX host, and whether ``served`` (the DER certificate its STARTTLS showed with
    ``--tls``) matches a signed DANE-EE record (None when there is nothing to compare)."""
    name = host.rstrip(".")
    owner = f"_25._tcp.{name}."
    verdict = await validator.validate(owner, "TLSA")
    records = verdict.answer.records if verdict.answer else []
    if verdict.security in (Security.ERROR, Security.BOGUS):
        return verdict_result("dane", name, f"{owner} TLSA", verdict), None
    if verdict.security == Security.INSECURE:
        if not verdict.answer:
            # The walk stopped at an unsigned zone before asking: ask for the TLSA records themselves.
            answer = await validator.source.query(owner, "TLSA")
            records = answer.records
            verdict.evidence.append(answer.evidence())
        if not records:
            skip = CheckResult("dane", Status.SKIP, name, f"no TLSA record at {owner} (DANE needs DNSSEC, and the zone is not signed)")
            return skip, None
        return CheckResult(
            "dane",
            Status.WARN,
            name,
            f"{len(records)} TLSA record(s) at {owner}, but the zone is not signed: senders ignore them (RFC 7672 2.2): {verdict.reason}",
            fix="sign the zone and publish its DS at the parent, or remove the TLSA records",
            records=verdict.evidence,
        ), None
    if not records:
        return CheckResult(
            "dane",
            Status.WARN,
            name,
            f"no TLSA record at {owner}: the zone is signed, so DANE could protect mail to {name} against downgrade and false certificates",
            fix=f"publish '{owner} TLSA 3 1 1 <digest>': 'mailprov dns plan DOMAIN --host {name} --tlsa-from CERT' prints it",
            records=verdict.evidence,
        ), None
    statuses: list[Status] = []
    notes: list[str] = []
    usable = []
    for rd in records:
        problem = record_problems(rd.usage, rd.selector, rd.mtype, rd.cert)
        if problem is not None:
            statuses.append(problem[0])
            notes.append(problem[1])
        if problem is None or problem[0] == Status.WARN:
            usable.append(rd)
    fix = ""
    if not usable:
        statuses.append(Status.FAIL)
        notes.insert(0, "no usable TLSA record: DANE senders will defer mail")
        fix = f"publish '{owner} TLSA 3 1 1 <digest>' ('mailprov dns plan --tlsa-from CERT' prints it)"
    elif len(usable) == 1:
        statuses.append(Status.WARN)
        notes.append("only one usable TLSA record: publish the next key's record beside it before changing keys (RFC 7671 8.1)")
        fix = "generate the next key now and publish its '3 1 1' record too; switch keys once both have been out for the TTL"
    matched = None
    if served is not None and usable:
        leaf = load_certificate(served)
        matched = any(tlsa_matches(rd.usage, rd.selector, rd.mtype, rd.cert, leaf) for rd in usable)
        if matched:
            notes.append("the certificate served over STARTTLS matches")
        elif any(rd.usage == 3 for rd in usable):
            statuses.append(Status.FAIL)
            notes.insert(0, "the certificate served over STARTTLS matches none of the DANE-EE records: DANE senders will not deliver")
            fix = f"publish the served key's record ('mailprov dns plan --tlsa-from CERT') or serve the key the records name at {name}"
    elif served is None:
        notes.append("not compared with the served certificate (add --tls)")
    status = worst(statuses) if statuses else Status.PASS
    listed = ", ".join(f"{rd.usage} {rd.selector} {rd.mtype}" for rd in records)
    summary = f"TLSA at {owner} ({listed}), signed: " + "; ".join(notes)
    return CheckResult("dane", status, name, summary, fix if status != Status.PASS else "", verdict.evidence), matched
