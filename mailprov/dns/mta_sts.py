"""``mta_sts`` and ``tls_rpt``: the SMTP TLS policy records (RFC 8461, RFC 8460).

Only the DNS records are checked (syntax, exactly one); the MTA-STS policy file served over HTTPS is not
fetched. Both are optional: absence is a warning, a broken record fails.
"""

from __future__ import annotations

import re

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.resolver import Source
from mailprov.dns.tags import parse_tags


def parse_mta_sts(text: str) -> list[str]:
    """Errors in an ``_mta-sts`` record (``v=STSv1; id=...``, RFC 8461 3.1); empty when valid."""
    tags, errors = parse_tags(text)
    if next(iter(tags), None) != "v" or tags.get("v") != "STSv1":
        errors.append("the first tag must be 'v=STSv1'")
    if "id" not in tags:
        errors.append("the required 'id=' tag is missing")
    elif not re.fullmatch(r"[A-Za-z0-9]{1,32}", tags["id"]):
        errors.append(f"id={tags['id']} must be 1 to 32 letters and digits")
    return errors


def parse_tls_rpt(text: str) -> list[str]:
    """Errors in an ``_smtp._tls`` record (``v=TLSRPTv1; rua=...``, RFC 8460 3); empty when valid."""
    tags, errors = parse_tags(text)
    if next(iter(tags), None) != "v" or tags.get("v") != "TLSRPTv1":
        errors.append("the first tag must be 'v=TLSRPTv1'")
    if "rua" not in tags:
        errors.append("the required 'rua=' tag is missing")
    else:
        for uri in tags["rua"].split(","):
            uri = uri.strip()
            if not re.fullmatch(r"(mailto:[^@\s]+@[^@\s]+\.[^@\s]+|https://\S+)", uri, re.IGNORECASE):
                errors.append(f"rua: '{uri}' is not a mailto: or https: URI")
    return errors


async def _check(source: Source, domain: str, check_id: str, label: str, version: str, parse, example: str, what: str) -> CheckResult:  # type: ignore[no-untyped-def]
    name = f"{label}.{domain.rstrip('.')}."
    answer = await source.query(name, "TXT")
    if answer.error:
        return answer.as_error(check_id, domain)
    evidence = [answer.evidence()]
    records = [t for t in answer.texts() if re.match(rf"^v\s*=\s*{version}\s*(;|$)", t)]
    if not records:
        return CheckResult(
            check_id, Status.WARN, domain, f"no {what} record at {name}", fix=f"publish '{name} TXT \"{example}\"'", records=evidence
        )
    if len(records) > 1:
        return CheckResult(
            check_id,
            Status.FAIL,
            domain,
            f"{len(records)} {what} records at {name}: senders ignore them all",
            fix="keep exactly one",
            records=evidence,
        )
    errors = parse(records[0])
    if errors:
        return CheckResult(
            check_id, Status.FAIL, domain, f"{what} record invalid: " + "; ".join(errors), fix=f"write it as '{example}'", records=evidence
        )
    return CheckResult(check_id, Status.PASS, domain, f"'{records[0]}'", records=evidence)


async def check_mta_sts(source: Source, domain: str) -> CheckResult:
    """The ``mta_sts`` check."""
    return await _check(source, domain, "mta_sts", "_mta-sts", "STSv1", parse_mta_sts, "v=STSv1; id=20260101000000", "MTA-STS")


async def check_tls_rpt(source: Source, domain: str) -> CheckResult:
    """The ``tls_rpt`` check."""
    example = f"v=TLSRPTv1; rua=mailto:tls-reports@{domain.rstrip('.')}"
    return await _check(source, domain, "tls_rpt", "_smtp._tls", "TLSRPTv1", parse_tls_rpt, example, "TLS-RPT")
