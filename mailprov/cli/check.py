"""``mailprov check``: the DNS pre-flight report. Parses options, calls :mod:`mailprov.dns.checker`, renders."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mailprov.errors import UsageError


class Format(StrEnum):
    table = "table"
    json = "json"
    junit = "junit"


def _read_domains(path: Path) -> list[str]:
    """Domains from a file: one per line (or several separated by spaces); '#' starts a comment."""
    try:
        text = path.read_text() if str(path) != "-" else typer.get_text_stream("stdin").read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read domain file {path}: {exc}", fix="give a readable text file with one domain per line") from None
    return [word for line in text.splitlines() for word in line.split("#", 1)[0].split()]


def check(
    domains: Annotated[list[str] | None, typer.Argument(help="Domains to check.", show_default=False)] = None,
    host: Annotated[str | None, typer.Option("--host", help="Name of the mail host being provisioned (its PTR must equal it).")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="An address of the mail host (repeatable; IPv4 or IPv6).")] = None,
    resolver: Annotated[
        list[str] | None, typer.Option("--resolver", help="Resolver IP[:PORT] to ask (repeatable; default: the system's).")
    ] = None,
    zone: Annotated[
        list[Path] | None, typer.Option("--zone", help="Answer from this zone file instead of the network (repeatable).")
    ] = None,
    dkim_selector: Annotated[str | None, typer.Option("--dkim-selector", help="DKIM selector whose key to check.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each server's answer to each query.")] = 5.0,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail (exit 1).")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read domains from FILE (one per line, '#' comments; '-' is stdin).")
    ] = None,
    authoritative: Annotated[
        bool, typer.Option("--authoritative", help="Also ask each domain's own name servers; tell 'not yet propagated' from 'missing'.")
    ] = False,
    ns_port: Annotated[int, typer.Option("--ns-port", help="Port of the domains' name servers for --authoritative (labs).")] = 53,
    concurrency: Annotated[int, typer.Option("--concurrency", help="DNS queries in flight at once.")] = 256,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Table format: show the evidence (queries, servers, answers).")] = False,
    dnssec: Annotated[
        bool,
        typer.Option("--dnssec", help="Validate DNSSEC from the root zone's key and check DANE (the resolver must answer for the root)."),
    ] = False,
    tls: Annotated[
        bool, typer.Option("--tls", help="Live: connect to each MX (STARTTLS, TLS version, certificate) and fetch the MTA-STS policy.")
    ] = False,
    smtp_port: Annotated[int, typer.Option("--smtp-port", help="Port of the MX hosts for --tls (labs).")] = 25,
    https_port: Annotated[int, typer.Option("--https-port", help="Port of mta-sts.DOMAIN for the policy fetch (labs).")] = 443,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="CA certificates (PEM) to verify with instead of the system's (labs).")
    ] = None,
    dnsbl: Annotated[
        bool, typer.Option("--dnsbl", help="Look the MX and --ip addresses up in zen.spamhaus.org, bl.spamcop.net, b.barracudacentral.org.")
    ] = False,
    dnsbl_zone: Annotated[
        list[str] | None,
        typer.Option("--dnsbl-zone", help="A blocklist zone to use instead of the defaults (repeatable; implies --dnsbl)."),
    ] = None,
    trust_anchor: Annotated[
        Path | None, typer.Option("--trust-anchor", help="DS/DNSKEY records to trust instead of the root's (labs); implies --dnssec.")
    ] = None,
) -> None:
    """Check that domains are ready to send and receive mail: MX, PTR, FCrDNS, SPF, DMARC, DKIM, MTA-STS, IPv6;
    with --dnssec DNSSEC and DANE, with --tls the live STARTTLS of each MX and the MTA-STS policy, with --dnsbl blocklists.

    Exit 0 when every check passes (warnings too, without --strict), 1 when one fails, 2 on bad usage,
    3 when a check could not be completed (timeout, SERVFAIL, no resolver answering).
    """
    # Imported here so that other commands (and --help) do not pay for asyncio, dnspython and cryptography.
    from mailprov.dns.checker import CheckOptions, run_checks
    from mailprov.dns.model import Status
    from mailprov.dns.report import render
    from mailprov.dns.resolver import parse_server

    names, zone_files = [], list(zone or [])
    for arg in domains or []:
        # `--zone examples/zones/*.zone alpha.test`: the shell puts all but the first file among the domains.
        if zone_files and ("/" in arg or arg.endswith(".zone")) and Path(arg).is_file():
            zone_files.append(Path(arg))
        else:
            names.append(arg)
    if file is not None:
        names += _read_domains(file)
    if not names:
        raise UsageError("no domain to check", fix="name at least one domain, or give -f FILE")
    if not 0 < ns_port < 65536:
        raise UsageError(f"--ns-port {ns_port} is out of range", fix="use a port from 1 to 65535")
    for path in zone_files:
        if not path.is_file():
            raise UsageError(f"zone file {path} does not exist", fix="give the path of a zone file")
    options = CheckOptions(
        host=host,
        ips=list(ip or []),
        dkim_selector=dkim_selector,
        resolvers=[parse_server(r) for r in resolver or []],
        zone_files=zone_files,
        timeout=timeout,
        concurrency=concurrency,
        authoritative=authoritative,
        ns_port=ns_port,
        dnssec=dnssec,
        trust_anchor=trust_anchor,
        tls=tls,
        smtp_port=smtp_port,
        https_port=https_port,
        ca_file=ca_file,
        dnsbl=dnsbl,
        dnsbl_zones=list(dnsbl_zone or []),
    )
    report = run_checks(names, options)
    typer.echo(render(report, fmt.value, strict=strict, verbose=verbose))
    code = report.exit_code(strict)
    errors = [c for d in report.domains for c in d.checks if c.status == Status.ERROR]
    if errors:
        # Also on stderr, so that a JSON or JUnit consumer's log says which server and query failed.
        typer.echo(
            f"mailprov: {len(errors)} check(s) could not be completed; first: {errors[0].id} {errors[0].subject}: {errors[0].summary}",
            err=True,
        )
    raise typer.Exit(code)
