"""The check engine: run every DNS check for many domains concurrently and gather a :class:`Report`.

``await check_domains(["alpha.test"], CheckOptions(resolvers=[("127.0.0.1", 53)]))`` is the library
entry point: ``mailprov check`` calls it (so does the deployment pre-flight, the ``mailprov_preflight``
role running ``mailprov check`` on the controller) and ``mailprov demo up``. Inputs are
validated first (a :class:`~mailprov.errors.UsageError` names the bad one); after that, nothing raises:
every problem, including an unanswered query, is a result in the report.

With ``authoritative``, each domain is also checked against its own name servers; a result that is
worse through the resolvers than at the source is reported as "published, not yet propagated".
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import dns.name

from mailprov.dns.caa import check_caa
from mailprov.dns.dane import check_dane
from mailprov.dns.dkim import check_dkim
from mailprov.dns.dmarc import check_dmarc
from mailprov.dns.dnsbl import DEFAULT_ZONES, check_dnsbl
from mailprov.dns.dnssec import TrustAnchor, Validator, check_dnssec, load_trust_anchors
from mailprov.dns.ipv6 import check_ipv6
from mailprov.dns.model import CheckResult, DomainReport, Report, Status
from mailprov.dns.mta_sts import check_mta_sts, check_mta_sts_policy, check_tls_rpt
from mailprov.dns.mx import MXOutcome, check_mx, host_addresses
from mailprov.dns.mx_tls import judge, probe_starttls
from mailprov.dns.ptr import check_address, check_host_address
from mailprov.dns.resolver import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, Answer, NetworkSource, Source, fmt_server, system_resolvers
from mailprov.dns.spf import check_spf, check_spf_sender
from mailprov.dns.zonefile import ZoneSet, ZoneSource
from mailprov.errors import UsageError

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
SELECTOR_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_MX_HOSTS = 10  # live and DANE checks look at no more MX hosts than this (a sender tries fewer)
_RANK = {Status.PASS: 0, Status.SKIP: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass
class CheckOptions:
    """What to check and how: the mail host being provisioned, where answers come from, limits."""

    host: str | None = None  # --host: the mail host's name (its PTR must equal it)
    ips: list[str] = field(default_factory=list)  # --ip: the mail host's addresses
    dkim_selector: str | None = None
    resolvers: list[tuple[str, int]] = field(default_factory=list)  # empty: the system's resolvers
    zone_files: list[Path] = field(default_factory=list)  # answer from these instead of (or before) the resolvers
    timeout: float = DEFAULT_TIMEOUT  # seconds per query and server
    concurrency: int = DEFAULT_CONCURRENCY  # DNS queries in flight at once
    domain_concurrency: int = 200  # domains checked at once
    authoritative: bool = False  # also ask each domain's own name servers
    ns_port: int = 53  # port of those name servers (labs and tests use another)
    dnssec: bool = False  # validate DNSSEC (and check DANE) from the trust anchors
    trust_anchor: Path | None = None  # DS/DNSKEY records to trust instead of the root zone's KSK (labs)
    anchors: list[TrustAnchor] = field(default_factory=list)  # filled by validate_options
    tls: bool = False  # live: connect to each MX (STARTTLS, certificate) and fetch the MTA-STS policy
    smtp_port: int = 25  # port of the MX hosts for --tls (labs use another)
    https_port: int = 443  # port of mta-sts.DOMAIN for the policy fetch (labs)
    ca_file: Path | None = None  # CA certificates to verify with instead of the system's (labs)
    dnsbl: bool = False  # look the MX and --ip addresses up in blocklists
    dnsbl_zones: list[str] = field(default_factory=list)  # the lists (empty with dnsbl: DEFAULT_ZONES)


def normalize_name(value: str, what: str = "domain") -> str:
    """A lower-case name without the trailing dot, or a UsageError naming the bad value."""
    name = value.strip().rstrip(".").lower()
    if not name.isascii():
        # An internationalised name is checked in its A-label (punycode) form, as DNS stores it.
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise UsageError(f"{what} {value!r} is not a valid internationalised domain name", fix="check the spelling") from None
    if not _NAME_RE.match(name):
        raise UsageError(f"{what} {value!r} is not a valid domain name", fix="use letters, digits, hyphens and dots, e.g. example.org")
    return name


def validate_options(options: CheckOptions) -> None:
    """Normalise and validate the options in place (UsageError on a bad value)."""
    if options.host:
        options.host = normalize_name(options.host, "--host")
    ips = []
    for ip in options.ips:
        try:
            ips.append(str(ipaddress.ip_address(ip.strip())))
        except ValueError:
            raise UsageError(f"--ip {ip!r} is not an IPv4 or IPv6 address", fix="write e.g. 192.0.2.10 or 2001:db8::10") from None
    options.ips = ips
    if options.dkim_selector is not None and not SELECTOR_RE.match(options.dkim_selector):
        raise UsageError(f"--dkim-selector {options.dkim_selector!r} is not a valid selector", fix="use letters, digits, '-', '_' and dots")
    if not options.timeout > 0:
        raise UsageError(f"--timeout {options.timeout} must be greater than 0", fix="give a number of seconds, e.g. 5")
    if options.authoritative and options.zone_files:
        raise UsageError("--authoritative asks the domains' name servers; it cannot be combined with --zone", fix="drop one of them")
    if options.concurrency < 1 or options.domain_concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    for what, port in (("--smtp-port", options.smtp_port), ("--https-port", options.https_port)):
        if not 0 < port < 65536:
            raise UsageError(f"{what} {port} is out of range", fix="use a port from 1 to 65535")
    if options.ca_file is not None and not options.ca_file.is_file():
        raise UsageError(f"--ca-file {options.ca_file} is not a readable file", fix="give a PEM file of CA certificates")
    if options.dnsbl_zones:
        options.dnsbl = True
        options.dnsbl_zones = [normalize_name(z, "--dnsbl-zone") for z in options.dnsbl_zones]
    elif options.dnsbl:
        options.dnsbl_zones = list(DEFAULT_ZONES)
    if options.trust_anchor is not None:
        options.dnssec = True
    if options.dnssec and not options.anchors:
        options.anchors = load_trust_anchors(options.trust_anchor)


def make_source(options: CheckOptions) -> Source:
    """The answer source the options describe: zone files (falling back to explicit resolvers) or resolvers."""
    if options.zone_files:
        fallback = NetworkSource(options.resolvers, timeout=options.timeout, concurrency=options.concurrency) if options.resolvers else None
        return ZoneSource(ZoneSet.from_files(options.zone_files), fallback)
    return NetworkSource(options.resolvers or system_resolvers(), timeout=options.timeout, concurrency=options.concurrency)


async def check_domain(source: Source, domain: str, options: CheckOptions, validator: Validator | None = None) -> DomainReport:
    """Every check for one (already normalised) domain, through ``source`` (DNSSEC and DANE with a ``validator``)."""
    report = DomainReport(domain)
    mx = await check_mx(source, domain)
    report.checks.extend(mx.results)
    if not mx.exists:
        if validator is not None and any(c.status == Status.ERROR for c in mx.results):
            # A validating resolver answers SERVFAIL for bogus data: the DNSSEC check (asking with CD) says why.
            report.checks.extend(await check_dnssec(validator, domain, []))
        return report

    host_task = None
    if options.host:
        host_task = asyncio.ensure_future(check_host_address(source, options.host, options.ips))
    elif options.ips:
        report.checks.append(
            CheckResult("host.address", Status.SKIP, ", ".join(options.ips), "skipped: no --host name to compare the --ip addresses with")
        )
    live_task = asyncio.ensure_future(_live(source, validator, domain, mx, options)) if validator is not None or options.tls else None
    record_checks = asyncio.gather(
        check_spf(source, domain),
        check_dmarc(source, domain),
        check_dkim(source, domain, options.dkim_selector),
        check_mta_sts(source, domain),
        check_tls_rpt(source, domain),
    )

    # Addresses whose reverse DNS matters: every MX host's, and the provisioned host's.
    roles: dict[str, str] = {address: f"MX {', '.join(h.rstrip('.') for h in hosts)}" for address, hosts in mx.addresses.items()}
    own = list(options.ips)
    if host_task is not None:
        result, host_ips = await host_task
        report.checks.append(result)
        own = own or host_ips
    for ip in own:
        roles[ip] = "--ip" if options.ips else f"--host {options.host}"
    ptr_results = await asyncio.gather(
        *(check_address(source, ip, expect_host=options.host if ip in own else None, role=role) for ip, role in roles.items())
    )
    report.checks.extend(r for results in ptr_results for r in results)
    report.checks.append(check_ipv6(domain, mx))
    if options.dnsbl:
        report.checks.extend(await asyncio.gather(*(check_dnsbl(source, ip, options.dnsbl_zones, role) for ip, role in roles.items())))
    records = await record_checks
    report.checks.extend(records)
    if options.tls:
        cafile = str(options.ca_file) if options.ca_file else None
        policy = check_mta_sts_policy(
            source, domain, mx.hosts, records[3], port=options.https_port, ca_file=cafile, timeout=options.timeout
        )
        report.checks.append(await policy)
    if live_task is not None:
        report.checks.extend(await live_task)
    # The provisioned host's addresses must be allowed to send for the domain.
    report.checks.extend(await asyncio.gather(*(check_spf_sender(source, domain, ip) for ip in own)))
    return report


async def _live(source: Source, validator: Validator | None, domain: str, mx: MXOutcome, options: CheckOptions) -> list[CheckResult]:
    """``mx.tls`` (``--tls``: STARTTLS of each MX), ``dnssec``, ``dane`` (comparing the served certificates), ``caa`` (``--tls``)."""
    hosts = mx.hosts[:MAX_MX_HOSTS]
    pairs = [(host, address) for host in hosts for address, owners in mx.addresses.items() if host in owners][:MAX_MX_HOSTS]
    cafile = str(options.ca_file) if options.ca_file else None
    probes = []
    if options.tls:
        probes = await asyncio.gather(
            *(probe_starttls(host, address, options.smtp_port, timeout=options.timeout, cafile=cafile) for host, address in pairs)
        )
    served: dict[str, list[bytes]] = {}
    for probe in probes:
        if probe.chain_der:
            served.setdefault(probe.host + ".", probe.chain_der)
    results: list[CheckResult] = []
    matched: dict[str, bool | None] = {}
    if validator is not None:
        results.extend(await check_dnssec(validator, domain, mx.hosts))
        if validator.available:
            dane = await asyncio.gather(*(check_dane(validator, host, served.get(host)) for host in hosts))
            for host, (result, match) in zip(hosts, dane, strict=True):
                results.append(result)
                matched[host] = match
    results[:0] = [judge(probe, dane_match=matched.get(probe.host + ".")) for probe in probes]
    if options.tls:
        results.extend(await asyncio.gather(*(check_caa(source, host) for host in hosts)))
    return results


async def _name_servers(source: Source, domain: str) -> tuple[str | None, list[str], list[Answer]]:
    """The zone apex holding ``domain`` and its name servers' addresses, asked through the resolvers."""
    name = dns.name.from_text(domain)
    asked: list[Answer] = []
    while len(name.labels) > 1:
        answer = await source.query(name.to_text(), "NS")
        asked.append(answer)
        if answer.error:
            return None, [], asked
        if answer.records:
            hosts = [rd.target for rd in answer.records]
            pairs = await asyncio.gather(*(host_addresses(source, h) for h in hosts))
            addresses = [rd.address for a, aaaa in pairs for rd in a.records + aaaa.records]
            asked.extend(x for pair in pairs for x in pair)
            return name.to_text(), addresses, asked
        name = name.parent()
    return None, [], asked


class _SplitSource:
    """Names inside ``apex`` go to the zone's own servers, all others to the resolvers."""

    def __init__(self, apex: str, inside: Source, outside: Source) -> None:
        self.apex = dns.name.from_text(apex)
        self.inside, self.outside = inside, outside
        self.description = f"{inside.description} for {apex}, else {outside.description}"

    async def query(self, name: str, rdtype: str) -> Answer:
        target = self.inside if dns.name.from_text(name).is_subdomain(self.apex) else self.outside
        return await target.query(name, rdtype)


async def _authoritative(source: Source, domain: str, options: CheckOptions, report: DomainReport) -> None:
    """Check ``domain`` at its own name servers and mark what they have but the resolvers do not show yet."""
    apex, addresses, asked = await _name_servers(source, domain)
    if not addresses:
        failed = next((a for a in asked if a.error), None)
        if failed is not None:
            report.checks.append(failed.as_error("authoritative", domain))
        else:
            report.checks.append(
                CheckResult(
                    "authoritative",
                    Status.ERROR,
                    domain,
                    "could not find the addresses of the domain's name servers",
                    fix="check the NS records and their A/AAAA records",
                    records=[a.evidence() for a in asked],
                )
            )
        return
    servers = [(a, options.ns_port) for a in addresses]
    inside = NetworkSource(servers, timeout=options.timeout, concurrency=options.concurrency, recursion=False)
    try:
        # Only what the zone publishes is compared: the live checks (--tls) and the blocklists are not run twice.
        records_only = dataclasses.replace(options, tls=False, dnsbl=False)
        at_source = await check_domain(_SplitSource(apex or domain, inside, source), domain, records_only)
    finally:
        inside.close()
    unanswered = next((c for c in at_source.checks if c.status == Status.ERROR and c.id == "domain.exists"), None)
    if unanswered is not None:
        report.checks.append(
            CheckResult(
                "authoritative",
                Status.ERROR,
                domain,
                f"the name servers of {apex} did not answer: {unanswered.summary}",
                fix="check that the name servers are up and reachable (and --ns-port), then run again",
                records=[a.evidence() for a in asked] + unanswered.records,
            )
        )
        return
    report.checks.append(
        CheckResult(
            "authoritative",
            Status.PASS,
            domain,
            f"compared with the name servers of {apex}: {', '.join(fmt_server(h, p) for h, p in servers)}",
            records=[a.evidence() for a in asked],
        )
    )
    fresh = {(c.id, c.subject): c for c in at_source.checks}
    for i, seen in enumerate(report.checks):
        source_view = fresh.get((seen.id, seen.subject))
        if source_view is None or seen.status not in _RANK or source_view.status not in _RANK:
            continue
        if _RANK[source_view.status] < _RANK[seen.status]:
            ttls = [e.ttl for e in seen.records if e.ttl is not None]
            ttl = max(ttls) if ttls else 0
            report.checks[i] = CheckResult(
                seen.id,
                Status.WARN,
                seen.subject,
                f"published, not yet propagated (TTL {ttl} s): at the source, {source_view.summary}; resolvers still see: {seen.summary}",
                fix=f"nothing to change: wait up to {ttl} s for resolvers' caches to expire, then check again",
                records=seen.records + source_view.records,
            )


async def check_domains(domains: list[str], options: CheckOptions | None = None, source: Source | None = None) -> Report:
    """Check every domain (validated first) and return the report, in the order given."""
    options = options or CheckOptions()
    validate_options(options)
    names = [normalize_name(d) for d in domains]
    if not names:
        raise UsageError("no domain to check", fix="name at least one domain, or give -f FILE")
    own = source is None
    source = source or make_source(options)
    limit = asyncio.Semaphore(options.domain_concurrency)
    validator = Validator(source, options.anchors) if options.dnssec else None

    async def one(domain: str) -> DomainReport:
        async with limit:
            try:
                report = await check_domain(source, domain, options, validator)
                if options.authoritative:
                    await _authoritative(source, domain, options, report)
            except Exception as exc:  # a bug must not hide the other domains' results, nor show a traceback
                return DomainReport(
                    domain,
                    [
                        CheckResult(
                            "internal",
                            Status.ERROR,
                            domain,
                            f"internal error while checking: {exc.__class__.__name__}: {exc}",
                            fix="please report this as a bug in mailprov, with the domain",
                        )
                    ],
                )
            return report

    try:
        return Report(list(await asyncio.gather(*(one(d) for d in names))))
    finally:
        if own:
            close_source(source)


def run_checks(domains: list[str], options: CheckOptions | None = None) -> Report:
    """:func:`check_domains` from synchronous code (the CLI, the demo, the benchmark): its own event loop, the report.

    The report is handed out of the loop by the coroutine rather than returned by it: on Python 3.11,
    ``asyncio.run`` formats its main task, result included, when it puts the SIGINT handler back (the repr of
    a 1,000-domain report cost a tenth of the check's CPU).
    """
    out: list[Report] = []

    async def main() -> None:
        out.append(await check_domains(domains, options))

    asyncio.run(main())
    return out[0]


def close_source(source: Source) -> None:
    """Release a source's sockets, if it has any."""
    close = getattr(source, "close", None)
    if close is not None:
        close()
