"""``dmarc``: one valid ``_dmarc`` record (RFC 7489) with a policy that protects the domain.

Query TXT at ``_dmarc.DOMAIN``, keep records starting ``v=DMARC1``, parse the tags (pure, see
:func:`parse_dmarc`), check. Missing or ``p=none`` is a warning: mail flows, but spoofed mail is not stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.resolver import Source
from mailprov.dns.tags import parse_tags

POLICIES = ("none", "quarantine", "reject")


@dataclass
class DMARCRecord:
    """A parsed DMARC record: its tags, syntax errors and warnings."""

    tags: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def policy(self) -> str | None:
        """The ``p=`` policy, lower-cased."""
        return self.tags.get("p", "").lower() or None


def is_dmarc(text: str) -> bool:
    """True for a TXT string that is a DMARC record (starts with the ``v=DMARC1`` tag)."""
    return re.match(r"^v\s*=\s*DMARC1\s*(;|$)", text) is not None


def _uris(value: str, tag: str, errors: list[str]) -> None:
    for uri in value.split(","):
        uri = uri.strip()
        if not re.fullmatch(r"mailto:[^@\s!]+@[^@\s!]+\.[^@\s!]+(![0-9]+[kmgt]?)?", uri, re.IGNORECASE):
            errors.append(f"{tag}: '{uri}' is not a mailto: address")


def parse_dmarc(text: str) -> DMARCRecord:
    """Parse a DMARC record (RFC 7489 6.3, 6.4), collecting errors and warnings."""
    tags, errors = parse_tags(text)
    record = DMARCRecord(tags, errors)
    if next(iter(tags), None) != "v" or tags.get("v") != "DMARC1":
        record.errors.append("the first tag must be 'v=DMARC1'")
    policy = tags.get("p")
    if policy is None:
        record.errors.append("the required 'p=' tag is missing")
    elif policy.lower() not in POLICIES:
        record.errors.append(f"p={policy} is not none, quarantine or reject")
    if "sp" in tags and tags["sp"].lower() not in POLICIES:
        record.errors.append(f"sp={tags['sp']} is not none, quarantine or reject")
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ("r", "s"):
            record.errors.append(f"{tag}={tags[tag]} is not r or s")
    if "pct" in tags:
        if not tags["pct"].isdigit() or int(tags["pct"]) > 100:
            record.errors.append(f"pct={tags['pct']} is not a number from 0 to 100")
        elif int(tags["pct"]) < 100:
            record.warnings.append(f"pct={tags['pct']}: the policy applies to only part of the failing mail")
    if "ri" in tags and not tags["ri"].isdigit():
        record.errors.append(f"ri={tags['ri']} is not a number of seconds")
    if "fo" in tags and not all(opt.strip() in ("0", "1", "d", "s") for opt in tags["fo"].split(":")):
        record.errors.append(f"fo={tags['fo']} is not a ':'-separated list of 0, 1, d, s")
    for tag in ("rua", "ruf"):
        if tag in tags:
            _uris(tags[tag], tag, record.errors)
    if record.policy == "none":
        record.warnings.append("p=none only monitors: mail that fails DMARC is still delivered")
    return record


async def check_dmarc(source: Source, domain: str) -> CheckResult:
    """The ``dmarc`` check for a domain."""
    name = f"_dmarc.{domain.rstrip('.')}."
    answer = await source.query(name, "TXT")
    if answer.error:
        return answer.as_error("dmarc", domain)
    evidence = [answer.evidence()]
    records = [t for t in answer.texts() if is_dmarc(t)]
    if not records:
        return CheckResult(
            "dmarc",
            Status.WARN,
            domain,
            f"no DMARC record at {name}: receivers get no policy for mail that fails SPF and DKIM",
            fix=f"publish '{name} TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain.rstrip('.')}\"'",
            records=evidence,
        )
    if len(records) > 1:
        return CheckResult(
            "dmarc",
            Status.FAIL,
            domain,
            f"{len(records)} DMARC records at {name}: receivers ignore them all",
            fix="keep exactly one",
            records=evidence,
        )
    record = parse_dmarc(records[0])
    if record.errors:
        return CheckResult(
            "dmarc",
            Status.FAIL,
            domain,
            "DMARC record invalid: " + "; ".join(record.errors),
            fix="correct the record (RFC 7489 6.3); e.g. 'v=DMARC1; p=quarantine; rua=mailto:postmaster@" + domain.rstrip(".") + "'",
            records=evidence,
        )
    if record.warnings:
        return CheckResult(
            "dmarc",
            Status.WARN,
            domain,
            "; ".join(record.warnings),
            fix="once reports show your mail passes, move to p=quarantine or p=reject (and pct=100)",
            records=evidence,
        )
    unauthorised = await _unauthorised_report_domains(source, domain.rstrip(".").lower(), record, evidence)
    if unauthorised:
        first = unauthorised[0]
        return CheckResult(
            "dmarc",
            Status.WARN,
            domain,
            f"reports go to {', '.join(unauthorised)}, which does not accept them for {domain} (RFC 7489 7.1): they will not be sent",
            fix=f"have {first} publish '{domain.rstrip('.')}._report._dmarc.{first}. TXT \"v=DMARC1\"', or report within {domain}",
            records=evidence,
        )
    return CheckResult("dmarc", Status.PASS, domain, f"policy p={record.policy}: '{records[0]}'", records=evidence)


def report_domains(record: DMARCRecord) -> list[str]:
    """The domains of the rua/ruf mailto: addresses, lower-case, in order, without duplicates."""
    out: list[str] = []
    for tag in ("rua", "ruf"):
        for uri in record.tags.get(tag, "").split(","):
            m = re.fullmatch(r"\s*mailto:[^@]+@([^!\s]+)(![0-9]+[kmgt]?)?\s*", uri, re.IGNORECASE)
            if m and m.group(1).lower().rstrip(".") not in out:
                out.append(m.group(1).lower().rstrip("."))
    return out


async def _unauthorised_report_domains(source: Source, domain: str, record: DMARCRecord, evidence: list) -> list[str]:  # type: ignore[type-arg]
    """External report domains that do not publish ``DOMAIN._report._dmarc.THEIRS`` (RFC 7489 7.1)."""
    external = [d for d in report_domains(record) if not (d == domain or d.endswith("." + domain) or domain.endswith("." + d))]
    out = []
    for theirs in external:
        answer = await source.query(f"{domain}._report._dmarc.{theirs}.", "TXT")
        evidence.append(answer.evidence())
        # An unanswered query proves nothing either way: only a clear "no such record" counts.
        if not answer.error and not any(is_dmarc(t) for t in answer.texts()):
            out.append(theirs)
    return out
