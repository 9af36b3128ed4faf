"""``dnsbl``: is a mail host's address on a DNS blocklist (``--dnsbl``, ``--dnsbl-zone ZONE``).

Query ``REVERSED-ADDRESS.ZONE A`` for each address (the MX hosts' addresses and ``--ip``) and zone (RFC 5782
2.1: IPv4 octets reversed, IPv6 nibbles reversed); NXDOMAIN means not listed (RFC 5782 2.3). Parse an
answer into a listing with the list's meaning of the return code, and the TXT reason when there is one.
The lists refuse queries from public and unregistered resolvers by answering with special codes
(Spamhaus: 127.255.255.252/254/255, RFC 5782 2.3 reserves 127.0.0.1 for tests too); those, and answers
outside 127.0.0.0/8 (a resolver rewriting NXDOMAIN), are ``error`` "could not check", never "listed".
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from mailprov.dns.model import CheckResult, Evidence, Status
from mailprov.dns.resolver import Source

DEFAULT_ZONES = ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org"]


@dataclass(frozen=True)
class ListInfo:
    """What a list's return codes mean and where to ask for removal."""

    name: str
    removal: str
    codes: dict[str, str]


LISTS = {
    "zen.spamhaus.org": ListInfo(
        "Spamhaus ZEN",
        "https://check.spamhaus.org/",
        {
            "127.0.0.2": "SBL: a known spam source or spam operation",
            "127.0.0.3": "SBL CSS: a snowshoe spam source",
            "127.0.0.4": "XBL: an infected or exploited host (CBL)",
            "127.0.0.5": "XBL: an infected or exploited host",
            "127.0.0.6": "XBL: an infected or exploited host",
            "127.0.0.7": "XBL: an infected or exploited host",
            "127.0.0.9": "SBL DROP: a hijacked or spammer-run network",
            "127.0.0.10": "PBL (ISP maintained): an end-user address that should not send mail directly",
            "127.0.0.11": "PBL (Spamhaus maintained): an end-user address that should not send mail directly",
        },
    ),
    "bl.spamcop.net": ListInfo("SpamCop", "https://www.spamcop.net/bl.shtml", {"127.0.0.2": "reported as a spam source by SpamCop users"}),
    "b.barracudacentral.org": ListInfo(
        "Barracuda", "https://www.barracudacentral.org/rbl/removal-request", {"127.0.0.2": "listed by Barracuda's reputation system"}
    ),
}

# Answers that say "your query was refused", not "listed" (Spamhaus's return codes documentation).
REFUSALS = {
    "127.255.255.252": "the query name was malformed (a typing error in the list's name)",
    "127.255.255.254": "this resolver is refused by the list (a public or open resolver: use your own, or a registered key)",
    "127.255.255.255": "this resolver sent too many queries and is refused by the list",
    "127.0.0.1": "the list refused the query (127.0.0.1 is not a listing, RFC 5782 2.3)",
}


def query_name(address: str, zone: str) -> str:
    """``d.c.b.a.ZONE.`` for IPv4, the reversed nibbles for IPv6 (RFC 5782 2.1, 2.4)."""
    ip = ipaddress.ip_address(address)
    labels = str(ip).split(".")[::-1] if ip.version == 4 else list(ip.exploded.replace(":", ""))[::-1]
    return ".".join(labels) + f".{zone.rstrip('.')}."


def interpret(zone: str, answers: list[str]) -> tuple[str, list[str]]:
    """``("listed", meanings)``, ``("refused", reasons)`` or ``("clean", [])`` for a list's A answers (pure)."""
    if not answers:
        return "clean", []
    info = LISTS.get(zone.rstrip(".").lower())
    refusals = []
    meanings = []
    for answer in sorted(answers, key=lambda a: ipaddress.ip_address(a).packed):  # a stable order: codes ascending
        ip = ipaddress.ip_address(answer)
        if answer in REFUSALS:
            refusals.append(f"{answer}: {REFUSALS[answer]}")
        elif ip.version != 4 or ip not in ipaddress.ip_network("127.0.0.0/8") or answer.startswith("127.255.255."):
            refusals.append(f"{answer} is not a list answer: the resolver may rewrite NXDOMAIN (filtering or advertising DNS)")
        else:
            meanings.append(f"{answer}: {(info.codes.get(answer) if info else None) or 'listed'}")
    if meanings:
        return "listed", meanings
    return "refused", refusals


async def check_dnsbl(source: Source, address: str, zones: list[str], role: str = "") -> CheckResult:
    """The ``dnsbl`` result of one address against every zone."""
    names = [query_name(address, zone) for zone in zones]
    answers = await asyncio.gather(*(source.query(name, "A") for name in names))
    evidence: list[Evidence] = [a.evidence() for a in answers]
    about = f"{address}{f' ({role})' if role else ''}"
    listed, errors, clean = [], [], []
    for zone, name, answer in zip(zones, names, answers, strict=True):
        if answer.error:
            errors.append(f"{zone}: {answer.error}")
            continue
        state, notes = interpret(zone, [rd.address for rd in answer.records])
        info = LISTS.get(zone.rstrip(".").lower())
        if state == "listed":
            txt = await source.query(name, "TXT")
            evidence.append(txt.evidence())
            reason = f" ({'; '.join(txt.texts())})" if txt.texts() else ""
            listed.append((f"{info.name if info else zone}: {', '.join(notes)}{reason}", info.removal if info else f"the {zone} web site"))
        elif state == "refused":
            errors.append(f"{zone}: could not check: {'; '.join(notes)}")
        else:
            clean.append(zone)
    if listed:
        return CheckResult(
            "dnsbl",
            Status.FAIL,
            address,
            f"{about} is listed: " + " | ".join(text for text, _ in listed),
            fix="stop the cause (an open relay, a compromised account or host, a dynamic address), then ask for removal: "
            + ", ".join(dict.fromkeys(page for _, page in listed)),
            records=evidence,
        )
    if errors:
        return CheckResult(
            "dnsbl",
            Status.ERROR,
            address,
            f"{about}: " + " | ".join(errors) + (f"; not listed in {', '.join(clean)}" if clean else ""),
            fix="ask through your own recursive resolver (not a public one), or register with the list for a query key",
            records=evidence,
        )
    return CheckResult("dnsbl", Status.PASS, address, f"{about} is not listed in {', '.join(zones)}", records=evidence)
