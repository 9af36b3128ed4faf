"""``mailprov deploy``, ``mailprov probe`` and ``mailprov demo``: deployment with Ansible."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from mailprov.cli.common import read_password
from mailprov.errors import UsageError

demo_app = typer.Typer(help="The embedded default: two mail domains on this machine, end to end.", no_args_is_help=True)


def deploy(
    inventory: Annotated[list[str], typer.Option("-i", "--inventory", help="Inventory file or directory (repeatable).")],
    check: Annotated[bool, typer.Option("--check", help="Dry run: report what would change, change nothing.")] = False,
    limit: Annotated[str | None, typer.Option("--limit", help="Only these hosts (an Ansible host pattern).")] = None,
    skip_preflight: Annotated[bool, typer.Option("--skip-preflight", help="Do not run the DNS pre-flight.")] = False,
    playbook: Annotated[str, typer.Option("--playbook", help="site.yml, preflight.yml or users.yml.")] = "site.yml",
    extra_vars: Annotated[
        list[str] | None, typer.Option("-e", "--extra-vars", help="Extra variables, as for ansible-playbook (KEY=VALUE, JSON or @FILE).")
    ] = None,
) -> None:
    """Deploy with the site playbook: DNS pre-flight, base, TLS, users, MTA, POP3, then a live probe.

    Shows each task's outcome per host as it happens and a summary per host at the end. Exit 0 when every
    host succeeded, 1 naming the failing task, the host and the message.
    """
    from mailprov.deploy.runner import run_playbook

    if playbook not in ("site.yml", "preflight.yml", "users.yml"):
        raise UsageError(f"unknown playbook {playbook!r}", fix="use site.yml, preflight.yml or users.yml")
    variables: dict = {}
    if skip_preflight:
        typer.secho("pre-flight skipped (--skip-preflight): DNS is not checked", fg=typer.colors.YELLOW, err=True)
        variables["mailprov_preflight_enabled"] = False
    args: list[str] = []
    for value in extra_vars or []:
        args += ["--extra-vars", value]
    result = run_playbook(playbook, inventory, check=check, limit=limit, extra_vars=variables or None, echo=typer.echo, extra_args=args)
    typer.echo("")
    typer.echo("SUMMARY" + (" (check mode: nothing was changed)" if check else ""))
    typer.echo(result.summary() or "  (no hosts)")
    result.raise_for_failure("deploy --check" if check else "deploy")


def probe(
    host: Annotated[str, typer.Argument(help="The mail host's name (must match its banner, EHLO name and PTR).")],
    address: Annotated[str | None, typer.Option("--address", help="Address to connect to (default: HOST resolved).")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Mail user for the submission and POP3 round trip.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the user's password from standard input.")] = False,
    smtp_port: Annotated[int, typer.Option("--smtp-port")] = 25,
    submission_port: Annotated[int, typer.Option("--submission-port")] = 587,
    submissions_port: Annotated[int, typer.Option("--submissions-port")] = 465,
    pop3_port: Annotated[int, typer.Option("--pop3-port")] = 110,
    pop3s_port: Annotated[int, typer.Option("--pop3s-port")] = 995,
    imap_port: Annotated[int, typer.Option("--imap-port", help="IMAP (STARTTLS) port; 0 skips the IMAP checks.")] = 143,
    imaps_port: Annotated[int, typer.Option("--imaps-port")] = 993,
    resolver: Annotated[list[str] | None, typer.Option("--resolver", help="Resolver IP[:PORT] for the PTR check (repeatable).")] = None,
    expect_cert: Annotated[
        Path | None, typer.Option("--expect-cert", help="PEM certificate the host must serve (the deployed one).")
    ] = None,
    source_address: Annotated[str | None, typer.Option("--source-address", help="Local address to probe from.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the test message to arrive.")] = 30.0,
    fmt: Annotated[str, typer.Option("--format", help="Output format: table, json or junit.")] = "table",
    demo: Annotated[bool, typer.Option("--demo", help="Probe HOST of the running demo (addresses, ports and DNS from its state).")] = False,
) -> None:
    """The live proof after a deploy: ports, banner and EHLO name vs PTR, STARTTLS and TLS with the deployed
    certificate, relay refused without AUTH, and with --user a message submitted, delivered and fetched by POP3.

    Exit 0 when every check passes, 1 when one fails, 2 on bad usage, 3 when a check could not be completed.
    """
    from mailprov.deploy.probe import ProbeTarget, load_certificate
    from mailprov.deploy.probe import probe as run_probe
    from mailprov.dns.report import FORMATS, render
    from mailprov.dns.resolver import parse_server

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not known", fix=f"use one of {', '.join(FORMATS)}")
    target = ProbeTarget(hostname=host.rstrip(".").lower(), address=address or host)
    target.smtp_port, target.submission_port, target.submissions_port = smtp_port, submission_port, submissions_port
    target.pop3_port, target.pop3s_port = pop3_port, pop3s_port
    target.imap_port, target.imaps_port = imap_port, imaps_port
    if demo:
        from mailprov.deploy.demo import probe_target

        target = probe_target(target.hostname)
    target.resolvers = [parse_server(r) for r in resolver or []] or target.resolvers
    target.source_address = source_address or target.source_address
    target.timeout = timeout
    if user:
        target.user = user
        target.password = read_password(password_stdin, confirm=False)
    if expect_cert is not None:
        try:
            target.expect_cert_der = load_certificate(expect_cert.read_text(), str(expect_cert))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {expect_cert}: {exc}", fix="give a readable PEM file") from None
    elif os.environ.get("MAILPROV_PROBE_EXPECT_CERT_PEM"):
        target.expect_cert_der = load_certificate(os.environ["MAILPROV_PROBE_EXPECT_CERT_PEM"], "MAILPROV_PROBE_EXPECT_CERT_PEM")
    report = run_probe(target)
    typer.echo(render(report, fmt, name="mailprov probe"))
    raise typer.Exit(report.exit_code())


@demo_app.command("up")
def demo_up(
    json_out: Annotated[bool, typer.Option("--json", help="Print only the endpoints as JSON (no story).")] = False,
    keep: Annotated[bool, typer.Option("--keep/--no-keep", help="Leave the demo running afterwards (default) or stop it.")] = True,
) -> None:
    """Check the demo zones, deploy mail.alpha.test and mail.beta.test here with Ansible, then send alex's
    message to john across them (AUTH, MX lookup, relay, Maildir) and fetch it with POP3."""
    from mailprov.deploy import demo

    echo = (lambda line: None) if json_out else typer.echo
    state = demo.up(echo=echo)
    if json_out:
        typer.echo(json.dumps(state, indent=2))
    if not keep:
        demo.down(echo=echo)


@demo_app.command("down")
def demo_down() -> None:
    """Stop every demo service and remove the demo's files."""
    from mailprov.deploy import demo

    demo.down(echo=typer.echo)


@demo_app.command("status")
def demo_status(json_out: Annotated[bool, typer.Option("--json", help="Machine-readable: endpoints, DNS, users.")] = False) -> None:
    """Show whether the demo runs and every endpoint of both hosts; exit 1 when it is not running."""
    from mailprov.deploy import demo

    state = demo.status()
    if json_out:
        typer.echo(json.dumps(state, indent=2))
    else:
        typer.echo(demo.describe(state))
    if not state.get("running"):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the deployment commands to the root app."""
    app.command("deploy")(deploy)
    app.command("probe")(probe)
    app.add_typer(demo_app, name="demo")
