"""The users file and the aliases file: who has a mailbox, with which password, and which addresses.

On-disk formats (both UTF-8, ``#`` starts a comment, written only through :func:`atomic_write`):

* users file: one ``ADDRESS:HASH`` per line, ``HASH`` an argon2id PHC string
  (``$argon2id$v=19$m=65536,t=3,p=4$...``). The address is the login name and names the mailbox.
* aliases file: one ``ALIAS: TARGET[, TARGET...]`` per line. ``ALIAS`` is a full address, or
  ``@domain`` for a catch-all; a ``TARGET`` is a local user, another alias, or a remote address.

Both files are re-read when their modification time, size or inode changes, so ``mailprov user add``
takes effect in running services without a restart. Addresses compare case-insensitively; a
subaddress ``user+tag@domain`` belongs to ``user@domain``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailprov.atomic import atomic_write
from mailprov.errors import UsageError

SUBADDRESS_SEPARATOR = "+"
MAX_ALIAS_DEPTH = 10
_hasher = PasswordHasher()  # RFC 9106 second recommended option: argon2id, t=3, m=64 MiB, p=4
# Verified against when a user does not exist, so the reply takes the same time either way.
_DUMMY_HASH = _hasher.hash("mailprov-no-such-user")


def normalize(address: str) -> str:
    """Lower-case an address and strip surrounding whitespace and angle brackets."""
    return address.strip().strip("<>").strip().lower()


def split(address: str) -> tuple[str, str]:
    """Split ``local@domain`` at the last ``@``; the domain is empty when there is none."""
    local, _, domain = address.rpartition("@")
    return (local, domain) if local else (address, "")


def strip_subaddress(address: str) -> str:
    """``user+tag@domain`` -> ``user@domain``; other addresses unchanged."""
    local, domain = split(address)
    base = local.split(SUBADDRESS_SEPARATOR, 1)[0]
    return f"{base}@{domain}" if base and domain else address


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` in PHC string form."""
    if not password:
        raise UsageError("the password is empty", fix="give a non-empty password")
    return _hasher.hash(password)


def _valid_address(address: str) -> bool:
    local, domain = split(address)
    return bool(local and domain and "@" not in local and " " not in address and ":" not in address and "," not in address)


class _WatchedFile:
    """A text file parsed again whenever its (mtime, size, inode) changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def _parse(self, text: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def refresh(self) -> None:
        """Re-read the file if it changed on disk (a missing file reads as empty)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with self._lock:
            if stamp == self._stamp:
                return
            text = self.path.read_text(encoding="utf-8") if stamp != (0, 0, 0) else ""
            self._parse(text)
            self._stamp = stamp

    @staticmethod
    def _lines(text: str) -> list[tuple[int, str]]:
        out = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()  # argon2 PHC strings never contain '#'
            if line:
                out.append((number, line))
        return out


class UserDB(_WatchedFile):
    """The users file. Reads are cheap (a stat); writes are atomic replacements of the whole file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._users: dict[str, str] = {}

    def _parse(self, text: str) -> None:
        users = {}
        for number, line in self._lines(text):
            address, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith("$"):
                raise UsageError(f"{self.path}:{number}: expected ADDRESS:HASH", fix="repair the line or remove it")
            users[normalize(address)] = hashed.strip()
        self._users = users

    def exists(self, address: str) -> bool:
        """Whether ``address`` (subaddress stripped) is a user with a mailbox."""
        self.refresh()
        return strip_subaddress(normalize(address)) in self._users

    def users(self) -> list[str]:
        """All user addresses, sorted."""
        self.refresh()
        return sorted(self._users)

    def verify(self, address: str, password: str) -> bool:
        """Check a password; takes the same time whether or not the user exists. CPU-heavy: call it
        from a worker thread in async code."""
        self.refresh()
        hashed = self._users.get(normalize(address))
        try:
            ok = _hasher.verify(hashed or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        return ok and hashed is not None

    def _write(self) -> None:
        body = "".join(f"{a}:{h}\n" for a, h in sorted(self._users.items()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "# mailprov users: ADDRESS:ARGON2ID-HASH (managed by 'mailprov user')\n" + body, mode=0o640)
        self._stamp = None

    def add(self, address: str, password: str) -> None:
        """Create a user; refuses an existing one or an invalid address."""
        address = normalize(address)
        if not _valid_address(address) or SUBADDRESS_SEPARATOR in split(address)[0]:
            raise UsageError(f"{address!r} is not a valid user address", fix="use local@domain without '+', ':' or spaces")
        self.refresh()
        if address in self._users:
            raise UsageError(f"user {address} already exists", fix="use 'mailprov user passwd' to change its password")
        self._users[address] = hash_password(password)
        self._write()

    def set_password(self, address: str, password: str) -> None:
        """Change an existing user's password."""
        address = normalize(address)
        self.refresh()
        if address not in self._users:
            raise UsageError(f"no user {address}", fix="create it with 'mailprov user add'")
        self._users[address] = hash_password(password)
        self._write()

    def delete(self, address: str) -> None:
        """Remove a user (its Maildir is left on disk)."""
        address = normalize(address)
        self.refresh()
        if address not in self._users:
            raise UsageError(f"no user {address}", fix="see 'mailprov user list'")
        del self._users[address]
        self._write()


@dataclass(frozen=True)
class Resolution:
    """Where mail for one envelope recipient goes: local mailboxes and remote addresses."""

    mailboxes: tuple[str, ...] = ()
    remote: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.mailboxes or self.remote)


class AliasDB(_WatchedFile):
    """The aliases file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._aliases: dict[str, tuple[str, ...]] = {}

    def _parse(self, text: str) -> None:
        aliases = {}
        for number, line in self._lines(text):
            alias, sep, targets = line.partition(":")
            found = tuple(normalize(t) for t in targets.split(",") if t.strip())
            if not sep or not found:
                raise UsageError(f"{self.path}:{number}: expected ALIAS: TARGET[, TARGET...]", fix="repair the line or remove it")
            aliases[normalize(alias)] = found
        self._aliases = aliases

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """All aliases and their targets."""
        self.refresh()
        return dict(self._aliases)

    def targets(self, address: str) -> tuple[str, ...] | None:
        """The targets of an alias (exact, then subaddress-stripped, then ``@domain`` catch-all)."""
        self.refresh()
        address = normalize(address)
        for key in (address, strip_subaddress(address), "@" + split(address)[1]):
            if key in self._aliases:
                return self._aliases[key]
        return None

    def owners(self, alias: str) -> tuple[str, ...]:
        """Direct targets of an alias address only (no catch-all), used for sender ownership."""
        self.refresh()
        return self._aliases.get(normalize(alias), ())

    def _write(self) -> None:
        body = "".join(f"{a}: {', '.join(t)}\n" for a, t in sorted(self._aliases.items()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, "# mailprov aliases: ALIAS: TARGET[, TARGET...] (managed by 'mailprov alias')\n" + body, mode=0o644)
        self._stamp = None

    def add(self, alias: str, targets: list[str]) -> None:
        """Create or replace an alias."""
        alias = normalize(alias)
        if not ((alias.startswith("@") and len(alias) > 1) or _valid_address(alias)):
            raise UsageError(f"{alias!r} is not a valid alias", fix="use local@domain, or @domain for a catch-all")
        clean = [normalize(t) for t in targets]
        bad = [t for t in clean if not _valid_address(t)]
        if not clean or bad:
            raise UsageError(f"invalid alias target(s): {', '.join(bad) or '(none)'}", fix="give full addresses, local@domain")
        self.refresh()
        self._aliases[alias] = tuple(clean)
        self._write()

    def delete(self, alias: str) -> None:
        """Remove an alias."""
        alias = normalize(alias)
        self.refresh()
        if alias not in self._aliases:
            raise UsageError(f"no alias {alias}", fix="see 'mailprov alias list'")
        del self._aliases[alias]
        self._write()


class Directory:
    """Users and aliases together: answers "where does mail for this address go?" and "may this user
    send as that address?". Pure lookups over the two files; no network, no sockets."""

    def __init__(self, users: UserDB, aliases: AliasDB, local_domains: list[str]) -> None:
        self.users = users
        self.aliases = aliases
        self.local_domains = {d.lower() for d in local_domains}

    def is_local_domain(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered on this host."""
        return domain.lower().rstrip(".") in self.local_domains

    def resolve(self, address: str) -> Resolution:
        """Expand aliases recursively (bounded depth, loops cut) into local mailboxes and remote
        addresses. An unknown local address resolves to nothing (``found`` is false)."""
        mailboxes: list[str] = []
        remote: list[str] = []
        seen: set[str] = set()

        def walk(addr: str, depth: int) -> None:
            addr = normalize(addr)
            if addr in seen or depth > MAX_ALIAS_DEPTH:
                return
            seen.add(addr)
            if not self.is_local_domain(split(addr)[1]):
                remote.append(addr)
                return
            if self.users.exists(addr):
                base = strip_subaddress(addr)
                if base not in mailboxes:
                    mailboxes.append(base)
                if self.aliases.owners(addr) == ():
                    return
            targets = self.aliases.targets(addr)
            for target in targets or ():
                walk(target, depth + 1)

        walk(address, 0)
        return Resolution(tuple(mailboxes), tuple(remote))

    def may_send_as(self, user: str, sender: str) -> bool:
        """An authenticated ``user`` may use its own address (and subaddresses) and any alias that
        points at it directly. The null sender is allowed (bounces, read receipts)."""
        user, sender = normalize(user), normalize(sender)
        if not sender or strip_subaddress(sender) == user:
            return True
        return any(user in self.aliases.owners(candidate) for candidate in (sender, strip_subaddress(sender)))
