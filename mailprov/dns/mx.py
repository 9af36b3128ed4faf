"""``domain.exists``, ``mx``, ``mx.target`` and ``mx.address``: can the domain receive mail, and where.

Query the domain's MX set; parse it into hosts (the null MX of RFC 7505, the implicit MX of RFC 5321
5.1 when there is no MX but an address); check every MX host: not an IP literal, not an alias (RFC 2181
10.3, RFC 5321 5.1), and with an A or AAAA record.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.resolver import Answer, Source


@dataclass
class MXOutcome:
    """Results of the domain-level checks, and the hosts whose addresses the later checks examine."""

    results: list[CheckResult] = field(default_factory=list)
    exists: bool = True
    hosts: list[str] = field(default_factory=list)  # MX hosts (or the domain itself for an implicit MX)
    addresses: dict[str, list[str]] = field(default_factory=dict)  # address -> MX hosts that have it


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.rstrip(".").strip("[]"))
    except ValueError:
        return False
    return True


async def host_addresses(source: Source, host: str) -> tuple[Answer, Answer]:
    """The A and AAAA answers for a host, asked concurrently."""
    a, aaaa = await asyncio.gather(source.query(host, "A"), source.query(host, "AAAA"))
    return a, aaaa


async def check_mx(source: Source, domain: str) -> MXOutcome:
    """Run ``domain.exists`` and ``mx`` and, for each MX host, ``mx.target`` and ``mx.address``."""
    out = MXOutcome()
    fqdn = domain.rstrip(".") + "."
    answer = await source.query(fqdn, "MX")
    if answer.error:
        out.results.append(answer.as_error("domain.exists", domain))
        out.exists = False
        return out
    if answer.nxdomain:
        out.exists = False
        out.results.append(
            CheckResult(
                "domain.exists",
                Status.FAIL,
                domain,
                f"{domain} does not exist (NXDOMAIN)",
                fix=f"register {domain} or publish its zone; check the spelling and the delegation from the parent zone",
                records=[answer.evidence()],
            )
        )
        return out
    out.results.append(CheckResult("domain.exists", Status.PASS, domain, f"{domain} exists", records=[answer.evidence()]))

    mxs = sorted(answer.records, key=lambda r: (r.preference, r.exchange))
    if len(mxs) == 1 and mxs[0].exchange == ".":
        out.results.append(
            CheckResult(
                "mx",
                Status.FAIL,
                domain,
                f"{domain} publishes a null MX (RFC 7505): it declares that it accepts no mail",
                fix=f"replace '{domain}. MX 0 .' with 'MX 10 <your mail host>.' to receive mail for {domain}",
                records=[answer.evidence()],
            )
        )
        return out
    if mxs:
        listed = ", ".join(f"{r.preference} {r.exchange}" for r in mxs)
        if any(r.exchange == "." for r in mxs):
            out.results.append(
                CheckResult(
                    "mx",
                    Status.FAIL,
                    domain,
                    f"a null MX ('.') among other MX records ({listed}): RFC 7505 3 forbids the mix; senders may refuse to deliver",
                    fix=f"remove '{domain}. MX 0 .' to receive mail, or the other MX records to refuse it",
                    records=[answer.evidence()],
                )
            )
        else:
            out.results.append(CheckResult("mx", Status.PASS, domain, f"MX: {listed}", records=[answer.evidence()]))
        # One host may appear under several preferences: check it once.
        out.hosts = list(dict.fromkeys(r.exchange.lower() for r in mxs if r.exchange != "."))
    else:
        a, aaaa = await host_addresses(source, fqdn)
        if a.error or aaaa.error:
            out.results.append((a if a.error else aaaa).as_error("mx", domain))
            return out
        if a.records or aaaa.records:
            out.results.append(
                CheckResult(
                    "mx",
                    Status.WARN,
                    domain,
                    f"no MX record; senders fall back to the implicit MX (RFC 5321 5.1): {domain}'s own address",
                    fix=f"publish '{domain}. MX 10 <mail host>.' so the mail host is explicit",
                    records=[answer.evidence(), a.evidence(), aaaa.evidence()],
                )
            )
            out.hosts = [fqdn.lower()]
        else:
            out.results.append(
                CheckResult(
                    "mx",
                    Status.FAIL,
                    domain,
                    f"no MX record and no address: {domain} cannot receive mail",
                    fix=f"publish '{domain}. MX 10 <mail host>.' and the mail host's A/AAAA records",
                    records=[answer.evidence(), a.evidence(), aaaa.evidence()],
                )
            )
            return out
    per_host = await asyncio.gather(*(_check_host(source, host, explicit=bool(mxs)) for host in out.hosts))
    for results, addresses in per_host:
        out.results.extend(results)
        for address, host in addresses:
            out.addresses.setdefault(address, []).append(host)
    return out


async def _check_host(source: Source, host: str, *, explicit: bool) -> tuple[list[CheckResult], list[tuple[str, str]]]:
    """``mx.target`` and ``mx.address`` for one MX host; returns the results and (address, host) pairs."""
    results: list[CheckResult] = []
    name = host.rstrip(".")
    if _is_ip_literal(host):
        results.append(
            CheckResult(
                "mx.target",
                Status.FAIL,
                name,
                f"the MX target {host} is an IP address, but an MX must name a host (RFC 5321 5.1)",
                fix=f"give the address a name (mail.<domain>. A {host.rstrip('.')}) and point the MX at that name",
            )
        )
        return results, []
    a, aaaa = await host_addresses(source, host)
    for answer in (a, aaaa):
        if answer.error:
            results.append(answer.as_error("mx.address", name))
            return results, []
    chain = a.cnames or aaaa.cnames
    if chain and explicit:
        results.append(
            CheckResult(
                "mx.target",
                Status.FAIL,
                name,
                f"the MX target {host} is an alias (CNAME to {chain[-1][1]}); an MX must name a host directly (RFC 2181 10.3)",
                fix=f"point the MX at {chain[-1][1]} instead, or replace the CNAME with A/AAAA records",
                records=[a.evidence()],
            )
        )
    elif explicit:
        results.append(CheckResult("mx.target", Status.PASS, name, f"{name} is a host name, not an alias"))
    addresses = [rd.address for rd in a.records] + [rd.address for rd in aaaa.records]
    if addresses:
        results.append(
            CheckResult(
                "mx.address", Status.PASS, name, f"{name} has address(es) {', '.join(addresses)}", records=[a.evidence(), aaaa.evidence()]
            )
        )
    else:
        why = "does not exist (NXDOMAIN)" if a.nxdomain else "has no A or AAAA record"
        results.append(
            CheckResult(
                "mx.address",
                Status.FAIL,
                name,
                f"the MX host {host} {why}: senders cannot connect to it",
                fix=f"publish '{host} A <address>' (and AAAA for IPv6)",
                records=[a.evidence(), aaaa.evidence()],
            )
        )
    return results, [(address, host) for address in addresses]
