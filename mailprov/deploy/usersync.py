"""Make the users file and the aliases file match a desired state: the engine of the mailprov_users role.

Reads one JSON object on standard input (so passwords never appear in a process listing)::

    {"users": [{"address": "john@beta.test", "password": "..."}],
     "aliases": [{"alias": "postmaster@beta.test", "targets": ["john@beta.test"]}],
     "exclusive": false}

A user is added when missing and its password changed only when the given one does not verify, so a
second run changes nothing (argon2 hashes are salted: re-hashing would always differ). With
``exclusive``, users and aliases not listed are removed. ``--check`` reports without writing. Prints
``changed: ...`` or ``ok``; exit 1 with a message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from mailprov.errors import MailprovError
from mailprov.users import AliasDB, UserDB, normalize


def sync(users_file: str, aliases_file: str, desired: dict, *, check: bool = False) -> list[str]:
    """Apply ``desired`` to the two files; return what changed (or would change, with ``check``)."""
    if not isinstance(desired, dict):
        raise MailprovError("expected a JSON object with 'users' and 'aliases'")
    users, aliases = UserDB(users_file), AliasDB(aliases_file)
    changes: list[str] = []
    wanted_users = {}
    for i, entry in enumerate(desired.get("users") or []):
        if not isinstance(entry, dict) or not entry.get("address") or not entry.get("password"):
            raise MailprovError(f"users[{i}] needs an address and a password", fix="give {address: ..., password: ...}")
        wanted_users[normalize(entry["address"])] = str(entry["password"])
    for address, password in wanted_users.items():
        if not users.exists(address):
            changes.append(f"add user {address}")
            if not check:
                users.add(address, password)
        elif not users.verify(address, password):
            changes.append(f"set password of {address}")
            if not check:
                users.set_password(address, password)
    wanted_aliases = {}
    for i, entry in enumerate(desired.get("aliases") or []):
        if not isinstance(entry, dict) or not entry.get("alias") or not entry.get("targets"):
            raise MailprovError(f"aliases[{i}] needs an alias and targets", fix="give {alias: ..., targets: [...]}")
        targets = entry["targets"] if isinstance(entry["targets"], list) else [entry["targets"]]
        wanted_aliases[normalize(entry["alias"])] = tuple(normalize(t) for t in targets)
    current = aliases.aliases()
    for alias, targets in wanted_aliases.items():
        if current.get(alias) != targets:
            changes.append(f"set alias {alias}")
            if not check:
                aliases.add(alias, list(targets))
    if desired.get("exclusive"):
        for address in users.users():
            if address not in wanted_users:
                changes.append(f"delete user {address}")
                if not check:
                    users.delete(address)
        for alias in current:
            if alias not in wanted_aliases:
                changes.append(f"delete alias {alias}")
                if not check:
                    aliases.delete(alias)
    return changes


def main(argv: list[str] | None = None) -> int:
    """Read the desired state from stdin, apply it, print what changed."""
    parser = argparse.ArgumentParser(prog="python -m mailprov.deploy.usersync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users-file", required=True)
    parser.add_argument("--aliases-file", required=True)
    parser.add_argument("--check", action="store_true", help="report what would change, write nothing")
    args = parser.parse_args(argv)
    try:
        try:
            desired = json.loads(sys.stdin.read() or "{}")
        except json.JSONDecodeError as exc:
            raise MailprovError(f"standard input is not JSON: {exc}") from None
        changes = sync(args.users_file, args.aliases_file, desired, check=args.check)
    except MailprovError as exc:
        print(f"mailprov usersync: {exc}", file=sys.stderr)
        return 1
    print("changed: " + "; ".join(changes) if changes else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
