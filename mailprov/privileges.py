"""Privileges: the state directories a service owns, and the one-way switch from root to ``server.user``.

A service started as root binds its ports, then drops to ``server.user`` for good. After the drop it
must never depend on what the environment that started it lets that user read: the code may live in a
private checkout (``/root/project/.venv``), the interpreter's standard library under ``/root/.pyenv``.
So, before the drop:

- :func:`preload` imports every module a service would otherwise import lazily, on first use (dnspython's
  asyncio backend and record types, aiosmtplib, dkimpy, the codecs, ...): after the drop nothing is
  imported again. A module imported after the drop all the same is logged (one warning per module, by
  an audit hook :func:`drop_privileges` installs) so a missing entry shows in the log, not as a 451;
- :func:`check_access` tests, as ``server.user`` (a forked child that switches to it), what the service
  still opens after the drop: the users and aliases files (re-read when they change) and the queue,
  mail and state directories. When one is out of reach it refuses to start (exit code 2), naming the
  path, the directory that blocks it and the fix.

SMTP and IMAP worker processes (``smtp.processes``, ``imap.processes`` above 1) are started before the
drop; one that dies is restarted after it, which needs the interpreter, the code and the configuration
file: when those are out of the user's reach, :func:`check_access` logs a warning naming them (the
service still runs, and serves the sessions in its main process once no worker is left).

Kept apart from the service runner so that worker processes can drop privileges without importing it.
"""

from __future__ import annotations

import grp
import importlib
import logging
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from mailprov.config import Config
from mailprov.errors import ConfigError, UsageError

log = logging.getLogger("mailprov")

# Every module a service imports lazily after it started. Found by running the services as a user who
# cannot read the code (tests/security/test_privilege.py) with the late-import audit hook on.
PRELOAD = (
    # dnspython: the asyncio backend is chosen at the first query; record classes load on first sight.
    "dns.asyncbackend",
    "dns._asyncio_backend",
    "dns.asyncquery",
    "dns.asyncresolver",
    "dns.resolver",
    "dns.edns",
    "dns.rdtypes.ANY.CNAME",
    "dns.rdtypes.ANY.DNAME",
    "dns.rdtypes.ANY.MX",
    "dns.rdtypes.ANY.NS",
    "dns.rdtypes.ANY.OPT",
    "dns.rdtypes.ANY.PTR",
    "dns.rdtypes.ANY.SOA",
    "dns.rdtypes.ANY.TXT",
    "dns.rdtypes.IN.A",
    "dns.rdtypes.IN.AAAA",
    # Outbound SMTP, DKIM and MTA-STS, first used at the first relay.
    "aiosmtplib",
    "dkim",
    "dkim.crypto",
    "dkim.util",
    "http.client",
    "urllib.parse",
    # The standard library's lazy corners: codecs found on first use, email's parser and generator,
    # thread pools behind asyncio.to_thread, TLS and name encodings.
    "encodings.idna",
    "encodings.punycode",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_8",
    "stringprep",
    "unicodedata",
    "email.generator",
    "email.feedparser",
    "email.parser",
    "email.policy",
    "email.headerregistry",
    "email._header_value_parser",
    "email.utils",
    "email.message",
    "concurrent.futures.thread",
    "ssl",
    "hmac",
)


def prepare_directories(config: Config) -> None:
    """Create the queue, mail and state roots; owned by the service user when running as root."""
    owner = _service_user(config) if os.geteuid() == 0 else None
    for path in (config.paths.queue_dir, config.paths.mail_dir, config.paths.state_dir):
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o750)
        if owner:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def _service_user(config: Config) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(config.server.user)
    except KeyError:
        raise ConfigError(
            "server.user",
            f"no such user {config.server.user!r}",
            "create it (useradd --system mailprov) or name an existing unprivileged user",
        ) from None


def drop_privileges(config: Config) -> None:
    """When root: switch to ``server.user`` (and its group) for good, keeping no supplementary groups."""
    if os.geteuid() != 0:
        return
    user = _service_user(config)
    if user.pw_uid == 0:
        raise ConfigError("server.user", "is root", "name an unprivileged user such as 'mailprov'")
    os.setgroups([g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.umask(0o027)
    log.info("dropped privileges to %s (uid %d)", user.pw_name, user.pw_uid)
    sys.addaudithook(_audit_late_imports)


def preload() -> None:
    """Import now every module in :data:`PRELOAD`, so that nothing is read from the code after the drop."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(
                f"cannot import {name} before dropping privileges: {exc}",
                fix="reinstall mailprov with its dependencies (pip install mailprov)",
            ) from None
    import dns.asyncbackend

    # dnspython otherwise sniffs the async library at the first query, importing sniffio then.
    dns.asyncbackend.set_default_backend("asyncio")


_late_imports: set[str] = set()


def _audit_late_imports(event: str, args: tuple) -> None:  # type: ignore[type-arg]
    if event == "import" and args[0] not in _late_imports:
        _late_imports.add(args[0])
        log.warning("imported %s after dropping privileges (add it to mailprov.privileges.PRELOAD)", args[0])


@dataclass(frozen=True)
class Need:
    """A path the service opens after the drop, how (``r``, ``w``, ``x`` letters) and what it is."""

    path: str
    mode: str
    what: str


def worker_services(config: Config, services: list[str]) -> list[str]:
    """Those of ``services`` that run worker processes (``smtp.processes``, ``imap.processes`` above 1)."""
    return [s for s in ("smtp", "imap") if s in services and config.processes(s) > 1]


def needs(config: Config, services: list[str]) -> tuple[list[Need], list[Need]]:
    """What ``server.user`` must reach after the drop: (required, needed only to restart SMTP or IMAP workers)."""
    required = [
        Need(config.paths.users_file, "r", "users file (paths.users_file)"),
        Need(config.paths.aliases_file, "r", "aliases file (paths.aliases_file)"),
        Need(config.paths.queue_dir, "rwx", "queue directory (paths.queue_dir)"),
        Need(config.paths.mail_dir, "rwx", "Maildir root (paths.mail_dir)"),
        Need(config.paths.state_dir, "rwx", "state directory (paths.state_dir)"),
    ]
    restart: list[Need] = []
    if worker_services(config, services):
        import mailprov

        restart = [
            Need(sys.executable, "x", "Python interpreter"),
            Need(str(Path(mailprov.__file__).parent), "rx", "mailprov's code"),
            Need(str(Path(os.__file__).parent), "rx", "Python's standard library"),
            Need(config.source, "r", "configuration file"),
        ]
    return required, restart


def _blocked(need: Need) -> str | None:
    """Run as the service user: why ``need`` is out of reach, or None. Missing files are not a problem
    (the users and aliases files may not exist yet), but their directory must be reachable."""
    path = Path(need.path)
    for parent in reversed(path.parents):
        if not os.access(parent, os.X_OK):
            return f"cannot enter {parent} ({_describe(parent)})" if os.path.lexists(parent) else None
    if not os.path.lexists(path):
        return None
    flags = {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}
    verbs = {"r": "read", "w": "write", "x": "enter" if os.path.isdir(path) else "execute"}
    missing = [verbs[letter] for letter in need.mode if not os.access(path, flags[letter])]
    return f"cannot {'/'.join(missing)} {path} ({_describe(path)})" if missing else None


def _describe(path: Path) -> str:
    if os.path.islink(path):
        return f"a link to {os.path.realpath(path)}, {_describe(Path(os.path.realpath(path)))}"
    try:
        info = path.stat()
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}:{group}"


def _probe_as(user: pwd.struct_passwd, items: list[Need]) -> list[str | None]:
    """:func:`_blocked` for every item, evaluated by a forked child running as ``user``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: switch for good, test, report one line per item, exit without cleanup
        try:
            os.close(read)
            os.setgroups([g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            out = "\n".join((_blocked(item) or "").replace("\n", " ") for item in items) + "\n"
            os.write(write, out.encode())
        except BaseException as exc:  # reported by the parent as "could not be checked"
            os.write(write, f"!{exc}".encode(errors="replace"))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    lines = data.split("\n")[: len(items)]
    if data.startswith("!") or len(lines) < len(items):
        return [f"could not be checked as that user ({data.lstrip('!').strip() or 'no answer'})"] * len(items)
    return [line or None for line in lines]


def check_access(config: Config, services: list[str]) -> None:
    """When root: refuse to start (exit code 2) if ``server.user`` cannot reach what the services open after
    the drop, naming the path, what blocks it and the fix; warn when only worker restarts would fail."""
    if os.geteuid() != 0:
        return
    user = _service_user(config)
    required, restart = needs(config, services)
    results = _probe_as(user, required + restart)
    pooled = worker_services(config, services)
    problems = [(n, why) for n, why in zip(required, results[: len(required)], strict=True) if why]
    for need, why in zip(restart, results[len(required) :], strict=True):
        if why:
            log.warning(
                "%s: user %s %s; an %s worker that dies cannot be restarted (the main process then serves the sessions"
                " itself, on one core; fix: install mailprov where %s can read it,"
                " as the deploy roles do in /opt/mailprov/venv, or set %s)",
                need.what,
                user.pw_name,
                why,
                " or ".join(s.upper() for s in pooled),
                user.pw_name,
                " and ".join(f"{s}.processes = 1" for s in pooled),
            )
    if problems:
        need, why = problems[0]
        others = "".join(f"; {n.what}: {w}" for n, w in problems[1:])
        raise UsageError(
            f"user {user.pw_name} {why}: it cannot reach the {need.what} {need.path} after the privilege drop{others}",
            fix=f"give {user.pw_name} access ({_fix(need, user)}) or choose a path it can reach",
        )


def _fix(need: Need, user: pwd.struct_passwd) -> str:
    group = grp.getgrgid(user.pw_gid).gr_name
    if "w" in need.mode:
        return f"chown -R {user.pw_name}:{group} {need.path}, and chmod o+x on every parent directory"
    return f"chgrp {group} {need.path} && chmod g+r {need.path}, and chmod o+x on every parent directory"
