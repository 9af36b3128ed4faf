"""``mta_sts`` and ``tls_rpt``: the SMTP TLS policy records (RFC 8461, RFC 8460).

The DNS records are checked (syntax, exactly one); both are optional: absence is a warning, a broken
record fails. With ``--tls``, ``mta_sts.policy`` also fetches the policy file over HTTPS (the outbound
courier's fetcher: no redirects, text/plain, 64 KiB) and checks its syntax, its mode and max_age, and
that its ``mx`` patterns cover every MX host (RFC 8461 3.2, 4.1).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl

import dns.asyncresolver

from mailprov.delivery.mta_sts import MAX_AGE_LIMIT, HTTPSFetcher, PolicyError, parse_policy
from mailprov.dns.model import CheckResult, Evidence, Status, worst
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


MIN_SANE_MAX_AGE = 86400  # RFC 8461 3.2 suggests weeks; less than a day protects little between fetches


def judge_policy(text: str, mx_hosts: list[str]) -> tuple[Status, list[str]]:
    """The verdict on a fetched policy file (RFC 8461 3.2, 4.1): syntax, mode, max_age, MX coverage."""
    try:
        policy = parse_policy(text)
    except PolicyError as exc:
        return Status.FAIL, [f"the policy is invalid: {exc}"]
    # parse_policy caps max_age at the limit: read the value as written to report one over it.
    raw_age = next((v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip() == "max_age"), "0")
    notes = [f"mode {policy.mode}, max_age {raw_age}, mx {', '.join(policy.mx) or '(none)'}"]
    statuses = [Status.PASS]
    if int(raw_age) > MAX_AGE_LIMIT:
        statuses.append(Status.FAIL)
        notes.append(f"max_age is over the limit of {MAX_AGE_LIMIT} s (RFC 8461 3.2)")
    elif policy.max_age < MIN_SANE_MAX_AGE and policy.mode != "none":
        statuses.append(Status.WARN)
        notes.append(f"max_age {policy.max_age} s is under a day: senders forget the policy between visits (use weeks, e.g. 1209600)")
    uncovered = [h.rstrip(".") for h in mx_hosts if not policy.permits(h)]
    if uncovered and policy.mode != "none":
        statuses.append(Status.FAIL if policy.mode == "enforce" else Status.WARN)
        notes.append(
            f"no mx pattern covers {', '.join(uncovered)}: senders {'refuse' if policy.mode == 'enforce' else 'report'} delivery there"
        )
    if policy.mode == "testing":
        statuses.append(Status.WARN)
        notes.append("mode testing: senders report failures but still deliver without TLS; switch to enforce once reports are clean")
    elif policy.mode == "none":
        statuses.append(Status.WARN)
        notes.append("mode none: the policy is being withdrawn, senders do not apply it")
    return worst(statuses), notes


async def check_mta_sts_policy(
    source: Source,
    domain: str,
    mx_hosts: list[str],
    txt: CheckResult,
    *,
    port: int = 443,
    ca_file: str | None = None,
    timeout: float = 10.0,
) -> CheckResult:
    """``mta_sts.policy`` (``--tls``): fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` and judge it."""
    host = f"mta-sts.{domain.rstrip('.')}"
    url = f"https://{host}/.well-known/mta-sts.txt"
    a, aaaa = await asyncio.gather(source.query(host + ".", "A"), source.query(host + ".", "AAAA"))
    evidence = [a.evidence(), aaaa.evidence()]
    for answer in (a, aaaa):
        if answer.error:
            return answer.as_error("mta_sts.policy", domain)
    addresses = [rd.address for rd in aaaa.records + a.records]
    has_txt = txt.status != Status.WARN
    if not addresses:
        if not has_txt:
            return CheckResult(
                "mta_sts.policy", Status.SKIP, domain, f"no MTA-STS record and no {host}: MTA-STS is not in use", records=evidence
            )
        return CheckResult(
            "mta_sts.policy",
            Status.FAIL,
            domain,
            f"the MTA-STS record exists but {host} has no address: senders cannot fetch the policy",
            fix=f"publish '{host}. A <web server>' serving {url} over HTTPS with a certificate for {host}",
            records=evidence,
        )
    fetcher = HTTPSFetcher(dns.asyncresolver.Resolver(configure=False), ca_file=ca_file, port=port, timeout=timeout)
    failures = []
    for address in addresses[:4]:
        where = f"{address}:{port}"
        try:
            text = await asyncio.wait_for(asyncio.to_thread(fetcher.get, host, address), timeout + 1)
        except (PolicyError, ssl.SSLError, ssl.CertificateError, http.client.HTTPException) as exc:
            failures.append(
                CheckResult(
                    "mta_sts.policy",
                    Status.FAIL,
                    domain,
                    f"{url} (from {where}) cannot be used: {exc}",
                    fix=f"serve the policy at {url}: HTTP 200, Content-Type text/plain, a certificate valid for {host}, no redirect",
                    records=evidence,
                )
            )
            continue
        except (OSError, TimeoutError) as exc:
            failures.append(
                CheckResult(
                    "mta_sts.policy",
                    Status.ERROR,
                    domain,
                    f"could not complete: fetching {url} from {where}: {exc or 'no answer within the timeout'}",
                    fix="check that the web server is up and reachable on HTTPS, then run again",
                    records=evidence,
                )
            )
            continue
        evidence.append(Evidence(query=f"GET {url}", server=where, rcode="HTTP 200", answer=text.splitlines()[:50]))
        status, notes = judge_policy(text, mx_hosts)
        if status == Status.PASS and not has_txt:
            status = Status.WARN
            notes.append(f"but there is no '_mta-sts.{domain}' TXT record: senders never look for the policy")
        fix = (
            ""
            if status == Status.PASS
            else f"edit the policy at {url}, then change the id= of the _mta-sts TXT record so senders fetch it again"
        )
        return CheckResult("mta_sts.policy", status, domain, f"{url}: " + "; ".join(notes), fix=fix, records=evidence)
    fails = [f for f in failures if f.status == Status.FAIL]
    return fails[0] if fails else failures[0]
