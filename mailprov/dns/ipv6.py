"""``ipv6``: can IPv6 senders reach the MX hosts (AAAA records); their reverse DNS is in ``ptr`` and ``fcrdns``.

No query of its own: it reads the MX hosts' A/AAAA answers the ``mx`` check already holds. Every MX host
with an AAAA record: pass. None: skip (IPv6 is optional; mail arrives over IPv4). Some but not others:
warn, since an IPv6-only sender can then reach only part of the MX set.
"""

from __future__ import annotations

import ipaddress

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.mx import MXOutcome


def check_ipv6(domain: str, mx: MXOutcome) -> CheckResult:
    """The ``ipv6`` result for a domain's MX hosts."""
    v6: dict[str, list[str]] = {host: [] for host in mx.hosts}
    for address, hosts in mx.addresses.items():
        if ipaddress.ip_address(address).version == 6:
            for host in hosts:
                v6.setdefault(host, []).append(address)
    if not v6:
        return CheckResult("ipv6", Status.SKIP, domain, "skipped: no MX host")
    with_v6 = {h.rstrip("."): a for h, a in v6.items() if a}
    without = [h.rstrip(".") for h, a in v6.items() if not a]
    if not with_v6:
        return CheckResult("ipv6", Status.SKIP, domain, "no MX host has an AAAA record: mail arrives over IPv4 only (IPv6 is optional)")
    listed = "; ".join(f"{h} {', '.join(a)}" for h, a in with_v6.items())
    if without:
        return CheckResult(
            "ipv6",
            Status.WARN,
            domain,
            f"{', '.join(without)} has no AAAA record while {', '.join(with_v6)} has: IPv6-only senders reach only part of the MX set",
            fix=f"publish AAAA records for {', '.join(without)} (with PTR records that point back)",
        )
    return CheckResult("ipv6", Status.PASS, domain, f"every MX host has IPv6: {listed} (reverse DNS: see ptr and fcrdns)")
