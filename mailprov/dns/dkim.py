"""``dkim``: the selector's key record (RFC 6376 3.6.1) holds a usable key of sufficient size.

Query TXT at ``SELECTOR._domainkey.DOMAIN``, parse the tags (pure, see :func:`parse_dkim`), decode the
key. RSA under 1024 bits fails (RFC 8301 forbids verifying with it), under 2048 warns; Ed25519 (RFC 8463)
passes. An empty ``p=`` is a revoked key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.resolver import Source
from mailprov.dns.tags import parse_tags

MIN_BITS = 1024
GOOD_BITS = 2048


@dataclass
class DKIMKey:
    """A parsed DKIM key record: key type, size in bits (RSA), errors and warnings."""

    tags: dict[str, str] = field(default_factory=dict)
    key_type: str = "rsa"
    bits: int | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    revoked: bool = False


def _rsa_bits(der: bytes) -> int:
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        # Some publishers put a bare PKCS#1 RSAPublicKey in p=; it is accepted by many verifiers.
        pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END RSA PUBLIC KEY-----\n"
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key.key_size


def parse_dkim(text: str) -> DKIMKey:
    """Parse a DKIM key record and decode its key."""
    tags, errors = parse_tags(text)
    key = DKIMKey(tags, tags.get("k", "rsa").lower(), errors=errors)
    if "v" in tags and (next(iter(tags)) != "v" or tags["v"] != "DKIM1"):
        key.errors.append("'v=' must be the first tag and equal DKIM1")
    if "p" not in tags:
        key.errors.append("the required 'p=' tag (the public key) is missing")
        return key
    data = "".join(tags["p"].split())
    if not data:
        key.revoked = True
        return key
    try:
        der = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        key.errors.append("p= is not valid base64")
        return key
    if key.key_type == "rsa":
        try:
            key.bits = _rsa_bits(der)
        except ValueError:
            key.errors.append("p= does not hold an RSA public key")
    elif key.key_type == "ed25519":
        if len(der) != 32:
            key.errors.append(f"an Ed25519 key is 32 bytes, p= holds {len(der)}")
    else:
        key.errors.append(f"k={key.key_type} is not rsa or ed25519")
    if "y" in tags.get("t", "").split(":"):
        key.warnings.append("t=y: the domain is testing DKIM; verifiers may ignore failures")
    return key


async def check_dkim(source: Source, domain: str, selector: str | None) -> CheckResult:
    """The ``dkim`` check for a domain and selector (skipped without a selector)."""
    if not selector:
        return CheckResult("dkim", Status.SKIP, domain, "skipped: no --dkim-selector given (selectors cannot be listed from DNS)")
    name = f"{selector}._domainkey.{domain.rstrip('.')}."
    answer = await source.query(name, "TXT")
    if answer.error:
        return answer.as_error("dkim", domain)
    evidence = [answer.evidence()]
    texts = answer.texts()
    plan = f"mailprov dns plan {domain.rstrip('.')} --host <mail host> --ip <address> --dkim-selector {selector}"
    if not texts:
        return CheckResult(
            "dkim",
            Status.FAIL,
            domain,
            f"no DKIM key at {name}: signatures with selector '{selector}' cannot be verified",
            fix=f"publish the key record ('{plan}' generates one)",
            records=evidence,
        )
    if len(texts) > 1:
        return CheckResult(
            "dkim", Status.FAIL, domain, f"{len(texts)} TXT records at {name}", fix="keep exactly one key record", records=evidence
        )
    key = parse_dkim(texts[0])
    if key.errors:
        return CheckResult(
            "dkim",
            Status.FAIL,
            domain,
            "DKIM key record invalid: " + "; ".join(key.errors),
            fix=f"republish it ('{plan}')",
            records=evidence,
        )
    if key.revoked:
        return CheckResult(
            "dkim", Status.FAIL, domain, f"the key at {name} is revoked (empty p=)", fix=f"publish a new key ('{plan}')", records=evidence
        )
    if key.bits is not None and key.bits < MIN_BITS:
        return CheckResult(
            "dkim",
            Status.FAIL,
            domain,
            f"RSA key of {key.bits} bits: verifiers reject keys under {MIN_BITS} bits (RFC 8301)",
            fix=f"generate a {GOOD_BITS}-bit key ('{plan}')",
            records=evidence,
        )
    if key.bits is not None and key.bits < GOOD_BITS:
        return CheckResult(
            "dkim",
            Status.WARN,
            domain,
            f"RSA key of {key.bits} bits: {GOOD_BITS} is the current recommendation",
            fix=f"rotate to a {GOOD_BITS}-bit key under a new selector ('{plan}' with the new selector)",
            records=evidence,
        )
    if key.warnings:
        return CheckResult("dkim", Status.WARN, domain, "; ".join(key.warnings), fix="remove t=y once signing works", records=evidence)
    size = f"RSA {key.bits} bits" if key.bits else key.key_type
    return CheckResult("dkim", Status.PASS, domain, f"selector '{selector}': {size}", records=evidence)
