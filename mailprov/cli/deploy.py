"""``mailprov deploy``, ``mailprov probe`` and ``mailprov demo``: deployment with Ansible."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the deployment commands to the root app."""
