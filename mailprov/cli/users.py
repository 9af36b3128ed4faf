"""``mailprov user`` and ``mailprov alias``: manage the users file and the aliases file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mailprov.cli.common import DEFAULT_CONFIG, ConfigOption, load_config, read_password

if TYPE_CHECKING:
    from mailprov.users import AliasDB, UserDB

user_app = typer.Typer(help="Manage mail users (the users file).", no_args_is_help=True)
alias_app = typer.Typer(help="Manage aliases (the aliases file).", no_args_is_help=True)

PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input.")]


def _users(config: str) -> UserDB:
    # Imported here: mailprov.users computes an argon2 hash at import (~100 ms), which --help must not pay.
    from mailprov.users import UserDB

    return UserDB(load_config(config).paths.users_file)


def _aliases(config: str) -> AliasDB:
    from mailprov.users import AliasDB

    return AliasDB(load_config(config).paths.aliases_file)


@user_app.command("add")
def user_add(address: str, password_stdin: PasswordStdin = False, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create a user (its Maildir is created on first delivery)."""
    db = _users(config)
    db.add(address, read_password(password_stdin))
    typer.echo(f"added {address.lower()}")


@user_app.command("passwd")
def user_passwd(address: str, password_stdin: PasswordStdin = False, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Change a user's password."""
    db = _users(config)
    db.set_password(address, read_password(password_stdin))
    typer.echo(f"password changed for {address.lower()}")


@user_app.command("del")
def user_del(address: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete a user; the Maildir stays on disk."""
    _users(config).delete(address)
    typer.echo(f"deleted {address.lower()} (its Maildir was kept)")


@user_app.command("list")
def user_list(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """List users, one per line."""
    for address in _users(config).users():
        typer.echo(address)


@alias_app.command("add")
def alias_add(alias: str, targets: list[str], config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or replace ALIAS pointing at one or more TARGETS (``@domain`` is a catch-all)."""
    _aliases(config).add(alias, targets)
    typer.echo(f"{alias.lower()} -> {', '.join(t.lower() for t in targets)}")


@alias_app.command("del")
def alias_del(alias: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete an alias."""
    _aliases(config).delete(alias)
    typer.echo(f"deleted {alias.lower()}")


@alias_app.command("list")
def alias_list(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """List aliases as ALIAS: TARGETS."""
    for alias, targets in _aliases(config).aliases().items():
        typer.echo(f"{alias}: {', '.join(targets)}")
