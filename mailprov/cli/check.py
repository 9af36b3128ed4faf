"""``mailprov check``: the DNS pre-flight report (filled in by the DNS checker work)."""

from __future__ import annotations

import typer


def check(domains: list[str] = typer.Argument(..., help="Domains to check.")) -> None:
    """Check that domains are ready to send and receive mail."""
    raise NotImplementedError
