"""``dane``: the TLSA records of each MX host (``_25._tcp.HOST``, RFC 7671 and RFC 7672).

Query the TLSA RRset through the DNSSEC validator (a TLSA record means nothing unless it is signed:
RFC 7672 2.2); parse each record's usage, selector and matching type; check that at least one is usable
for SMTP (DANE-TA(2) or DANE-EE(3); the PKIX usages 0 and 1 are not, RFC 7672 3.1.3), that a record for
the next key is published beside the current one (RFC 7671 8.1, so a key change never breaks delivery),
and, when ``--tls`` fetched it, that the certificate chain the MX serves matches a record: DANE-EE(3)
against the certificate, DANE-TA(2) against the chain up to the anchor, with name checks (RFC 7671 5.2,
RFC 7672 3.1.2, 3.2). A ``2 1 0`` record holds the anchor's whole public key (``2 0 0``: its whole
certificate), so the server may leave the anchor's certificate out of its chain (RFC 7671 5.2.2): the top
certificate it sends is then checked against the anchor (the signature, with ``cryptography``).

:func:`tlsa_for_certificate` computes the recommended ``3 1 1`` record for a certificate
(``mailprov dns plan --tlsa-from CERT``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from mailprov.dns.dnssec import Security, Validator, verdict_result
from mailprov.dns.model import CheckResult, Status, worst

USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
SELECTORS = {0: "Cert", 1: "SPKI"}
MATCHING = {0: "Full", 1: "SHA2-256", 2: "SHA2-512"}
_DIGEST_LENGTH = {1: 32, 2: 64}
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey  # keys that sign certificates


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
    if matching == 0 and usage == 2:
        # RFC 7671 5.2.2: with the anchor's whole key or certificate in the record the server may leave the
        # anchor out of its chain, so this form is legitimate; the digest form is still the recommended one.
        return Status.WARN, (
            f"{usage} {selector} {matching}: full data instead of a digest (RFC 7671 10.1.2); "
            f"prefer '2 {selector} 1' with the trust anchor's certificate in the served chain (RFC 7671 5.2.2)"
        )
    if matching == 0:
        return Status.WARN, f"{usage} {selector} {matching}: full data instead of a digest; use matching type 1 (RFC 7671 10.1.2)"
    return None


def tlsa_matches(usage: int, selector: int, matching: int, data: bytes, leaf: x509.Certificate) -> bool:
    """Whether a DANE-EE record matches the server's certificate (DANE-TA: :func:`dane_ta_problem`, which needs the chain)."""
    return usage == 3 and association(leaf, selector, matching) == data


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """Whether ``cert`` is for ``host`` (RFC 7672 3.2.3, RFC 6125 6.4): its DNS subjectAltNames (else its common
    name), compared case-insensitively; a wildcard only as the whole left-most label, standing for one label."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    want = host.rstrip(".").lower().split(".")
    for name in names:
        labels = name.rstrip(".").lower().split(".")
        if labels == want or (len(labels) > 2 and labels[0] == "*" and labels[1:] == want[1:] and len(want) == len(labels)):
            return True
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def dane_ta_problem(
    usage: int, selector: int, matching: int, data: bytes, chain: list[x509.Certificate], host: str, now: datetime
) -> str | None:
    """Why a DANE-TA(2) record does not authenticate the ``chain`` the server presented (leaf first) for ``host``
    (None when it does): RFC 7671 5.2 and RFC 7672 3.1.2, 3.2.

    The trust anchor is a certificate of the presented chain, above the leaf, that the record matches; the
    leaf must chain up to it within the presented certificates, each signed by the next (a CA certificate),
    and each below the anchor within its validity period; the leaf must name the MX host (name checks apply
    to DANE-TA, RFC 7672 3.2.2). The server must send the anchor's certificate (RFC 7671 5.2.2), unless the
    record holds the anchor in full (``2 1 0``: its public key; ``2 0 0``: its certificate): then the chain
    climbs as far as the presented CA certificates go, and the certificate where it stops must be issued
    by that anchor (signed by the key; with a certificate, also its issuer name the anchor's subject).
    """
    if usage != 2:
        return f"{usage} {selector} {matching} is not a DANE-TA record"
    record = f"{usage} {selector} {matching}"
    anchors = [c for c in chain[1:] if association(c, selector, matching) == data]
    key = _full_anchor(selector, matching, data) if not anchors else None
    if not anchors and key is None:
        return f"no certificate the server sent matches the DANE-TA record {record} (RFC 7671 5.2.2: the server must send it)"
    path: list = [chain[0]]  # from the leaf up to the anchor (a certificate, or the record's key)
    current = chain[0]
    while not any(current is a for a in anchors):
        issuer = next(
            (c for c in chain if not any(c is p for p in path) and c.subject == current.issuer and _is_ca(c) and _signed_by(current, c)),
            None,
        )
        if issuer is None and key is not None:
            if not (_signed_by(current, key) if isinstance(key, x509.Certificate) else _signed_by_key(current, key)):
                who = current.subject.rfc4514_string()
                anchor = "key" if selector == 1 else "certificate"
                return f"the certificate of {who}, the top of the chain the server sent, is not signed by the DANE-TA {record} {anchor}"
            path.append(key)  # the anchor, above the last certificate: every certificate on the path is below it
            break
        if issuer is None:
            who = current.subject.rfc4514_string()
            return f"the certificate of {who} is not signed by a CA certificate the server sent, on the way to the DANE-TA anchor"
        path.append(issuer)
        current = issuer
    for cert in path[:-1]:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            when = f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
            return f"the certificate of {cert.subject.rfc4514_string()} is outside its validity ({when})"
    if not name_matches(chain[0], host):
        return f"the certificate chains to the DANE-TA anchor but is not for {host.rstrip('.')} (RFC 7672 3.2.3 name check)"
    return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _full_anchor(selector: int, matching: int, data: bytes) -> x509.Certificate | PublicKey | None:
    """The anchor a record holds in full (``2 0 0``: the certificate; ``2 1 0``: the DER SubjectPublicKeyInfo,
    RFC 6698 2.1.2), which the server need not send (RFC 7671 5.2.2); None for a digest or unreadable data."""
    if matching != 0:
        return None
    try:
        if selector == 0:
            return x509.load_der_x509_certificate(data)
        key = serialization.load_der_public_key(data) if selector == 1 else None
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, PublicKey) else None


def _signed_by_key(cert: x509.Certificate, key: PublicKey) -> bool:
    """Whether ``key`` made the signature on ``cert`` (what ``verify_directly_issued_by`` does, without an issuer certificate)."""
    try:
        hash_algorithm = cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PKCS1v15 | padding.PSS) or hash_algorithm is None:
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if hash_algorithm is None:
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_algorithm))
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes)  # Ed25519, Ed448: the algorithm fixes the hash
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def chain_match(records: list, chain_der: list[bytes], host: str, now: datetime | None = None) -> tuple[bool, str]:
    """Whether the presented chain (DER, leaf first) matches one of the usable TLSA ``records`` for ``host``: DANE-EE
    against the leaf (no name or date checks, RFC 7672 3.1.1), DANE-TA against the chain (:func:`dane_ta_problem`).
    Returns the outcome and what matched, or why nothing did."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        return False, f"the server's certificate chain cannot be read: {exc}"
    now = now or datetime.now(UTC)
    why = []
    for rd in records:
        if rd.usage == 3 and tlsa_matches(rd.usage, rd.selector, rd.mtype, rd.cert, chain[0]):
            return True, f"DANE-EE {rd.usage} {rd.selector} {rd.mtype} matches the certificate"
        if rd.usage == 2:
            problem = dane_ta_problem(rd.usage, rd.selector, rd.mtype, rd.cert, chain, host, now)
            if problem is None:
                anchored = f"DANE-TA {rd.usage} {rd.selector} {rd.mtype} matches the chain's trust anchor"
                return True, f"{anchored}, and the certificate is for {host.rstrip('.')}"
            why.append(problem)
    if any(rd.usage == 3 for rd in records):
        why.insert(0, "the certificate matches none of the DANE-EE records")
    return False, "; ".join(why)


async def check_dane(validator: Validator, host: str, served: list[bytes] | None = None) -> tuple[CheckResult, bool | None]:
    """The ``dane`` result for one MX host, and whether ``served`` (the DER certificate chain, leaf first, its STARTTLS
    showed with ``--tls``) matches a signed DANE-EE or DANE-TA record (None when there is nothing to compare)."""
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
    if served and usable:
        matched, how = chain_match(usable, served, name)
        if matched:
            notes.append(f"the certificate served over STARTTLS matches ({how})")
        else:
            statuses.append(Status.FAIL)
            notes.insert(0, f"the certificate chain served over STARTTLS matches no TLSA record ({how}): DANE senders will not deliver")
            fix = f"publish the served key's record ('mailprov dns plan --tlsa-from CERT') or serve the key the records name at {name}"
    elif not served:
        notes.append("not compared with the served certificate (add --tls)")
    status = worst(statuses) if statuses else Status.PASS
    listed = ", ".join(f"{rd.usage} {rd.selector} {rd.mtype}" for rd in records)
    summary = f"TLSA at {owner} ({listed}), signed: " + "; ".join(notes)
    return CheckResult("dane", status, name, summary, fix if status != Status.PASS else "", verdict.evidence), matched
