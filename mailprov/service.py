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
import logging
import signal
from typing import Protocol

from mailprov.config import Config
from mailprov.errors import MailprovError
from mailprov.pop3.service import POP3Service
from mailprov.privileges import drop_privileges, prepare_directories
from mailprov.smtp.service import SMTPService

log = logging.getLogger("mailprov")
SERVICE_NAMES = ("smtp", "pop3", "imap")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build(config: Config, names: list[str]) -> list[Service]:
    """Instantiate the named services."""
    services: list[Service] = []
    for name in names:
        if name == "smtp":
            services.append(SMTPService(config))
        elif name == "pop3":
            services.append(POP3Service(config, serve_after_drop=True))
        elif name == "imap":
            from mailprov.imap.service import IMAPService

            services.append(IMAPService(config, serve_after_drop=True))
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
