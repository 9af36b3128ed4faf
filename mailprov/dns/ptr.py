"""``ptr``, ``fcrdns`` and ``host.address``: does each sending address have a name that points back to it.

Receivers check that a connecting address has a PTR record and that the PTR name resolves back to the
same address (forward-confirmed reverse DNS); many refuse or down-score mail otherwise. With ``--host``,
the PTR name must be the host's own name (the name it greets with in EHLO).
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.reversename

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.mx import host_addresses
from mailprov.dns.resolver import Source


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


async def check_address(source: Source, address: str, *, expect_host: str | None = None, role: str = "") -> list[CheckResult]:
    """``ptr`` and ``fcrdns`` for one address; ``expect_host`` is the name the PTR must carry."""
    ip = ipaddress.ip_address(address)
    # IPv4: the standard library's name is dnspython's, without building a Name; IPv6 keeps dnspython's rule
    # (it reverses an IPv4-mapped address under in-addr.arpa).
    reverse = ip.reverse_pointer + "." if ip.version == 4 else dns.reversename.from_address(str(ip)).to_text()
    about = f"{ip}{f' ({role})' if role else ''}"
    answer = await source.query(reverse, "PTR")
    if answer.error:
        return [answer.as_error("ptr", str(ip))]
    names = [rd.target for rd in answer.records]
    if not names:
        return [
            CheckResult(
                "ptr",
                Status.FAIL,
                str(ip),
                f"{about} has no PTR record ({reverse} is {'NXDOMAIN' if answer.nxdomain else 'empty'}); receivers distrust such senders",
                fix=f"ask the owner of the address block (your provider) to set '{reverse} PTR {expect_host or '<mail host name>'}.'",
                records=[answer.evidence()],
            ),
            CheckResult("fcrdns", Status.SKIP, str(ip), "skipped: no PTR record to confirm"),
        ]
    results = [CheckResult("ptr", Status.PASS, str(ip), f"{about} has PTR {', '.join(names)}", records=[answer.evidence()])]
    rdtype = "A" if ip.version == 4 else "AAAA"
    forwards = await asyncio.gather(*(source.query(name, rdtype) for name in names))
    evidence = [answer.evidence()] + [f.evidence() for f in forwards]
    for forward in forwards:
        if forward.error:
            results.append(forward.as_error("fcrdns", str(ip)))
            return results
    confirmed = [
        name for name, fwd in zip(names, forwards, strict=True) if any(ipaddress.ip_address(rd.address) == ip for rd in fwd.records)
    ]
    if not confirmed:
        results.append(
            CheckResult(
                "fcrdns",
                Status.FAIL,
                str(ip),
                f"the PTR name {names[0]} does not resolve back to {ip} (forward-confirmed reverse DNS fails)",
                fix=f"publish '{names[0]} {rdtype} {ip}', or change the PTR to the name that has this address",
                records=evidence,
            )
        )
    elif expect_host and _norm(expect_host) not in {_norm(n) for n in names}:
        results.append(
            CheckResult(
                "fcrdns",
                Status.FAIL,
                str(ip),
                f"the PTR of {ip} is {', '.join(names)}, not the host name {_norm(expect_host)}.",
                fix=f"ask the address block's owner to set '{reverse} PTR {_norm(expect_host)}.' (the name the host greets with)",
                records=evidence,
            )
        )
    else:
        results.append(CheckResult("fcrdns", Status.PASS, str(ip), f"{confirmed[0]} resolves back to {ip}", records=evidence))
    return results


async def check_host_address(source: Source, host: str, ips: list[str]) -> tuple[CheckResult, list[str]]:
    """``host.address``: the host's A/AAAA records contain every given address; returns the result and the host's addresses."""
    a, aaaa = await host_addresses(source, host)
    for answer in (a, aaaa):
        if answer.error:
            return answer.as_error("host.address", host), []
    have = [ipaddress.ip_address(rd.address) for rd in a.records + aaaa.records]
    evidence = [a.evidence(), aaaa.evidence()]
    missing = [ip for ip in ips if ipaddress.ip_address(ip) not in have]
    fqdn = _norm(host) + "."
    if not have:
        fix = "; ".join(f"publish '{fqdn} {'A' if ipaddress.ip_address(ip).version == 4 else 'AAAA'} {ip}'" for ip in ips)
        return CheckResult(
            "host.address",
            Status.FAIL,
            host,
            f"{fqdn} has no A or AAAA record",
            fix=fix or f"publish '{fqdn} A <address>'",
            records=evidence,
        ), []
    if missing:
        fix = "; ".join(f"publish '{fqdn} {'A' if ip.version == 4 else 'AAAA'} {ip}'" for ip in map(ipaddress.ip_address, missing))
        return CheckResult(
            "host.address",
            Status.FAIL,
            host,
            f"{fqdn} has {', '.join(map(str, have))} but not {', '.join(missing)}",
            fix=fix,
            records=evidence,
        ), [str(h) for h in have]
    return CheckResult("host.address", Status.PASS, host, f"{fqdn} has {', '.join(map(str, have))}", records=evidence), [
        str(h) for h in have
    ]
