"""``mailprov serve``: run the services in the foreground (for systemd or a terminal)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption, load_config


class Which(StrEnum):
    smtp = "smtp"
    pop3 = "pop3"
    imap = "imap"
    all = "all"


def serve(
    which: Annotated[Which, typer.Argument(help="Which service to run: smtp (MTA, MDA, queue), pop3, imap, or all.")] = Which.all,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Run the mail services in the foreground until SIGTERM; binds ports, then drops to server.user."""
    # Imported here, as every command's heavy modules are: the services pull in the whole MTA and POP3
    # server, which the other commands (and 'mailprov -h') need not load.
    import asyncio

    from mailprov import logsetup, service

    cfg = load_config(config)
    logsetup.setup_logging(cfg)
    names = list(service.SERVICE_NAMES) if which is Which.all else [which.value]
    asyncio.run(service.serve(cfg, names))
