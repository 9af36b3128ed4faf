"""Options and helpers shared by several command groups."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from mailprov.errors import UsageError

if TYPE_CHECKING:
    from mailprov import config as config_mod

DEFAULT_CONFIG = "/etc/mailprov/mailprov.toml"

ConfigOption = Annotated[
    str,
    typer.Option("--config", "-c", envvar="MAILPROV_CONFIG", help="Configuration file (TOML).", show_default=True),
]


def load_config(path: str) -> config_mod.Config:
    """Load and validate the configuration named by ``--config``."""
    # Imported here: the schema module is the heaviest of the start-up path, and --help does not need it.
    from mailprov import config as config_mod

    return config_mod.load(path)


def read_password(stdin: bool, *, confirm: bool = True, prompt: str = "Password") -> str:
    """A password from standard input (first line) or an interactive prompt; never from argv."""
    if stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    elif not sys.stdin.isatty() and not os.environ.get("MAILPROV_FORCE_PROMPT"):
        raise UsageError("no terminal to prompt for the password", fix="pipe it in with --password-stdin")
    else:
        password = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    if not password:
        raise UsageError("the password is empty", fix="give a non-empty password")
    return password
