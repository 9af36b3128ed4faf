"""``mailprov cert``: the host's certificate from an ACME CA (issue, renew, status)."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Annotated

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption, load_config
from mailprov.errors import UsageError

app = typer.Typer(help="The host's TLS certificate from an ACME CA (RFC 8555): issue, renew, status.", no_args_is_help=True)


@app.command("renew")
def renew(
    config: ConfigOption = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option("--force", help="Issue even when the installed certificate is not due.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    every: Annotated[
        int, typer.Option("--every", help="Keep running: check again every SECONDS (where no systemd timer runs it).", min=0)
    ] = 0,
) -> None:
    """Issue a certificate for acme.names when none is installed, the installed one is self-signed, covers
    other names, or has fewer than acme.renew_before_days left; install it at tls.cert and tls.key.

    Prints 'issued ...' or 'unchanged ...' (the first word is what Ansible reports as changed). On any
    failure the installed certificate stays, and the message names the ACME step and the fix.
    """
    from mailprov.acme.issuer import renew as run

    cfg = load_config(config)
    if every:
        from mailprov.acme.issuer import renew_every

        renew_every(cfg, every, echo=typer.echo)
        return
    outcome = run(cfg, force=force, echo=(lambda line: None) if json_out else typer.echo)
    if json_out:
        typer.echo(json.dumps(dataclasses.asdict(outcome)))


@app.command("status")
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The installed certificate: names, issuer, days left, and whether renewal is due. Exit 1 when it is due."""
    from mailprov.acme.decisions import read_certificate, renewal_due

    cfg = load_config(config)
    if not cfg.tls.cert:
        raise UsageError("tls.cert is empty: the services use a generated self-signed certificate", fix="set tls.cert and tls.key")
    path = Path(cfg.tls.cert)
    pem = path.read_bytes() if path.exists() else None
    now = datetime.datetime.now(datetime.UTC)
    names = cfg.acme.names or [cfg.server.hostname]
    due, reason = renewal_due(pem, names, now, cfg.acme.renew_before_days)
    info: dict[str, object] = {"path": str(path), "due": due, "reason": reason}
    if pem:
        try:
            state = read_certificate(pem)
            info.update(names=list(state.names), issuer=state.issuer, not_after=f"{state.not_after:%Y-%m-%dT%H:%M:%SZ}")
            info["days_left"] = round(state.days_left(now), 1)
        except ValueError:
            pass
    if json_out:
        typer.echo(json.dumps(info))
    else:
        for key, value in info.items():
            typer.echo(f"{key}: {value}")
    if due:
        raise typer.Exit(1)
