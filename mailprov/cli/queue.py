"""``mailprov queue``: inspect and steer the mail queue (like mailq and postqueue)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and steer the mail queue.", no_args_is_help=True)
