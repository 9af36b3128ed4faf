"""``mailprov config``: validate a configuration file, print the documented defaults."""

from __future__ import annotations

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption

app = typer.Typer(help="Validate a configuration file or print every key with its default.", no_args_is_help=True)


@app.command("check")
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate a configuration file: exit 0 if it is usable, 2 naming the bad key otherwise."""
    from mailprov import config as config_mod

    loaded = config_mod.load(config)
    typer.echo(f"{config}: ok ({loaded.server.hostname}, domains: {', '.join(loaded.server.domains)})")


@app.command("defaults")
def defaults() -> None:
    """Print the reference configuration: every key, commented, with its default."""
    from mailprov import config as config_mod

    typer.echo(config_mod.render_defaults())
