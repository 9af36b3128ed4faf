"""The ``mailprov`` command line: one sub-app per command group, each in its own module.

CLI modules only parse, call the library and render. A :class:`~mailprov.errors.MailprovError`
anywhere below becomes one message on standard error and its exit code (see ``mailprov.errors``).
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from mailprov import __version__
from mailprov.errors import MailprovError


class MailprovGroup(TyperGroup):
    """Turns project errors into a clear message and a documented exit code, never a traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except MailprovError as exc:
            typer.secho(f"mailprov: error: {exc.message}", err=True, fg=typer.colors.RED)
            if exc.fix:
                typer.echo(f"  fix: {exc.fix}", err=True)
            raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        from mailprov.deploy.runner import ansible_source
        from mailprov.errors import UsageError

        try:
            base, how = ansible_source()
            where = f"playbooks and roles: {base} ({how})"
        except UsageError as exc:
            where = f"playbooks and roles: none found ({exc.message})"
        typer.echo(f"mailprov {__version__}\n{where}")
        raise typer.Exit()


app = typer.Typer(
    cls=MailprovGroup,
    help="Check a mail domain's DNS first, then deploy and run a small, durable mail server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """mailprov: from a domain and a fresh host to mail that flows, and proof of why."""


def _register() -> None:
    from mailprov.cli import cert, check, config_cmd, deploy, dns, queue, serve, users

    app.command("check", help=check.check.__doc__)(check.check)
    app.add_typer(dns.app, name="dns")
    app.add_typer(config_cmd.app, name="config")
    app.command("serve")(serve.serve)
    app.add_typer(users.user_app, name="user")
    app.add_typer(users.alias_app, name="alias")
    app.add_typer(queue.app, name="queue")
    app.add_typer(cert.app, name="cert")
    deploy.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mailprov")
