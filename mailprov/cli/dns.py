"""``mailprov dns``: plan the records a domain must publish."""

from __future__ import annotations

import typer

app = typer.Typer(help="Plan the DNS records a mail domain must publish.", no_args_is_help=True)
