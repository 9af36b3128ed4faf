"""SMTP AUTH support: what a successful login leaves on the session.

Passwords are checked by :meth:`mailprov.users.UserDB.verify` (argon2id, run in a worker thread). The
per-client bookkeeping around it (failures slowed and counted, connection limits) is shared with POP3 in
:mod:`mailprov.limits`: a failed attempt is answered after ``auth_failure_delay`` seconds times the
number of recent failures from that client, and after ``max_auth_failures`` the client gets 421.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AuthIdentity:
    """What a successful AUTH leaves on the session: the login only, never the password."""

    login: str

    def __repr__(self) -> str:
        return f"AuthIdentity({self.login!r})"
