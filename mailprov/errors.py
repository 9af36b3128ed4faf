"""The project's exception type and the exit codes the CLI maps it to.

Exit codes (documented in the README):
  0  success (or only warnings, without ``--strict``)
  1  something checked failed, or an operation failed
  2  bad usage: an invalid argument, option or configuration value
  3  the work could not be completed (timeouts, SERVFAIL, an unreachable server)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


class MailprovError(Exception):
    """An error the CLI reports as one clear message (never a traceback) and an exit code."""

    exit_code = EXIT_FAIL

    def __init__(self, message: str, *, fix: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class UsageError(MailprovError):
    """Bad input from the user: an argument, option or file that cannot be used."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration value is wrong; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        super().__init__(f"config key '{key}': {problem}", fix=fix)
        self.key = key


class IncompleteError(MailprovError):
    """The command could not be carried out (e.g. ``mailprov probe`` cannot resolve the host): exit 3."""

    exit_code = EXIT_INCOMPLETE
