"""``mailprov dns``: plan the records a domain must publish; serve zone files for labs and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailprov.errors import UsageError

app = typer.Typer(help="Plan the DNS records a mail domain must publish; serve zone files.", no_args_is_help=True)


@app.command("plan")
def plan(
    domain: Annotated[str, typer.Argument(help="The mail domain.")],
    host: Annotated[str, typer.Option("--host", help="Name of the new mail host (its MX target and PTR name).")],
    ip: Annotated[list[str], typer.Option("--ip", help="An address of the mail host (repeatable; IPv4 or IPv6).")],
    dkim_selector: Annotated[
        str | None, typer.Option("--dkim-selector", help="Generate a DKIM key and record under this selector.")
    ] = None,
    dkim_key_dir: Annotated[
        Path, typer.Option("--dkim-key-dir", help="Directory for the DKIM private key (<selector>._domainkey.<domain>.key, mode 0600).")
    ] = Path("."),
    dkim_bits: Annotated[int, typer.Option("--dkim-bits", help="RSA key size for a new DKIM key.")] = 2048,
    mta_sts: Annotated[bool, typer.Option("--mta-sts", help="Add the MTA-STS record (you must serve the policy over HTTPS).")] = False,
    tls_rpt: Annotated[bool, typer.Option("--tls-rpt/--no-tls-rpt", help="Add the TLS-RPT record.")] = True,
    dmarc_policy: Annotated[str, typer.Option("--dmarc-policy", help="DMARC p=: none, quarantine or reject.")] = "quarantine",
    report_address: Annotated[str | None, typer.Option("--report-address", help="Address for DMARC and TLS reports.")] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="TTL of the planned records, in seconds.")] = 3600,
    fmt: Annotated[str, typer.Option("--format", help="zone (a BIND snippet) or json.")] = "zone",
    tlsa_from: Annotated[
        list[Path] | None,
        typer.Option("--tlsa-from", help="Certificate (PEM) the MTA serves: print its DANE TLSA 3 1 1 record; repeat for the next key."),
    ] = None,
) -> None:
    """Print the records DOMAIN must publish for a new mail host, as a BIND zone snippet or JSON."""
    from mailprov.dns.plan import make_plan, render_json, render_zone

    if fmt not in ("zone", "json"):
        raise UsageError(f"--format {fmt!r} is not zone or json")
    if not 0 < ttl < 2**31:
        raise UsageError(f"--ttl {ttl} is out of range", fix="give a number of seconds, e.g. 3600")
    result = make_plan(
        domain,
        host,
        ip,
        dkim_selector=dkim_selector,
        dkim_key_dir=dkim_key_dir,
        dkim_bits=dkim_bits,
        mta_sts=mta_sts,
        tls_rpt=tls_rpt,
        dmarc_policy=dmarc_policy,
        report_address=report_address,
        ttl=ttl,
        tlsa_from=list(tlsa_from or []),
    )
    if result.dkim_key_created:
        typer.echo(f"wrote DKIM private key {result.dkim_key_file} (mode 0600)", err=True)
    typer.echo(render_json(result) if fmt == "json" else render_zone(result))


@app.command("serve-zones")
def serve_zones_cmd(
    zone_files: Annotated[list[Path], typer.Argument(help="Zone files to serve (origin from $ORIGIN, else the file name).")],
    listen: Annotated[str, typer.Option("--listen", help="Address and port, HOST:PORT or [V6]:PORT.")] = "127.0.0.1:5353",
) -> None:
    """Serve zone files as an authoritative DNS server (UDP and TCP) in the foreground until Ctrl-C or SIGTERM."""
    # Imported here, not at the top: --help and the other commands do not pay for asyncio and the config schema.
    import asyncio
    import contextlib
    import errno
    import signal

    from mailprov.config import parse_hostport
    from mailprov.dns.zoneserver import serve_zones
    from mailprov.errors import ConfigError

    try:
        host, port = parse_hostport(listen, key="--listen")
    except ConfigError as exc:
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", fix=exc.fix) from None

    async def run() -> None:
        try:
            server = await serve_zones(zone_files, host, port)
        except OSError as exc:
            hint = "pick a free port (or run as root for ports under 1024)" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else None
            raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}", fix=hint) from None
        names = ", ".join(z.origin.to_text() for z in server.zones.zones)
        typer.echo(f"serving {names} on {listen} (UDP and TCP); Ctrl-C stops", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(run())
