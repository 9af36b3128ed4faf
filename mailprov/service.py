"""Running the services: bind every listening socket, drop privileges, serve until a signal.

A service is any object with ``name``, ``async start()`` (binds its sockets and begins serving) and
``async stop()`` (stops accepting, finishes or abandons in-flight work safely); one that also has
``async begin()`` binds in ``start()`` and accepts clients only when ``begin()`` is called, after the drop. ``mailprov serve``
starts the chosen services in one event loop; when started as root it binds first (ports below 1024
need it), then switches to the unprivileged ``server.user`` before touching any mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import signal
import sys
from pathlib import Path
from typing import Protocol

from mailprov.config import Config
from mailprov.errors import ConfigError, MailprovError

log = logging.getLogger("mailprov")
SERVICE_NAMES = ("smtp", "pop3")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def setup_logging(config: Config) -> None:
    """One line per event, ``mailprov/<component>[pid]: message``, to stderr or ``paths.log_file``."""
    handler: logging.Handler
    if config.paths.log_file:
        handler = logging.FileHandler(config.paths.log_file)
        fmt = "%(asctime)s " + config.server.hostname + " %(name)s[%(process)d]: %(levelname)s %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(name)s[%(process)d]: %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("mailprov")
    root.handlers[:] = [handler]
    root.setLevel(config.server.log_level.upper())
    root.propagate = False


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


def build(config: Config, names: list[str]) -> list[Service]:
    """Instantiate the named services."""
    services: list[Service] = []
    for name in names:
        if name == "smtp":
            from mailprov.smtp.service import SMTPService

            services.append(SMTPService(config))
        elif name == "pop3":
            from mailprov.pop3.service import POP3Service

            services.append(POP3Service(config, serve_after_drop=True))
        else:  # guarded by the CLI
            raise MailprovError(f"unknown service {name!r}")
    return services


async def serve(config: Config, names: list[str], *, ready: asyncio.Event | None = None) -> None:
    """Start the services, drop privileges, and run until SIGTERM or SIGINT."""
    prepare_directories(config)
    services = build(config, names)
    started: list[Service] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        for service in services:
            await service.start()
            started.append(service)
        drop_privileges(config)
        for service in started:
            begin = getattr(service, "begin", None)
            if begin is not None:
                await begin()
        log.info("%s ready: %s", config.server.hostname, ", ".join(s.name for s in started))
        if ready:
            ready.set()
        await stop.wait()
        log.info("stopping on signal")
    except OSError as exc:
        raise MailprovError(f"cannot start: {exc}", fix="check the listen addresses are free and allowed") from None
    finally:
        for service in reversed(started):
            await service.stop()
