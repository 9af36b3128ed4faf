"""``mailprov dns``: plan the records a domain must publish; serve zone files for labs and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
from pathlib import Path
from typing import Annotated

import typer

from mailprov.config import parse_hostport
from mailprov.errors import ConfigError, UsageError

app = typer.Typer(help="Plan the DNS records a mail domain must publish; serve zone files.", no_args_is_help=True)


@app.command("serve-zones")
def serve_zones_cmd(
    zone_files: Annotated[list[Path], typer.Argument(help="Zone files to serve (origin from $ORIGIN, else the file name).")],
    listen: Annotated[str, typer.Option("--listen", help="Address and port, HOST:PORT or [V6]:PORT.")] = "127.0.0.1:5353",
) -> None:
    """Serve zone files as an authoritative DNS server (UDP and TCP) in the foreground until Ctrl-C or SIGTERM."""
    from mailprov.dns.zoneserver import serve_zones

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
