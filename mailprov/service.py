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
import os
import signal
from typing import Protocol

from mailprov.config import Config
from mailprov.errors import MailprovError
from mailprov.pop3.service import POP3Service
from mailprov.privileges import check_access, drop_privileges, preload, prepare_directories
from mailprov.sdnotify import notify
from mailprov.smtp.service import SMTPService
from mailprov.tls import start_reloading

log = logging.getLogger("mailprov")
SERVICE_NAMES = ("smtp", "pop3", "imap")
READY_TIMEOUT = 60.0  # seconds a service may take, after binding, to be ready (SMTP: its worker processes)


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


async def _ready(service: Service, stop: asyncio.Event) -> None:
    """Wait until ``service`` serves: its ``ready`` event when it has one (SMTP sets it once its queue
    runs and every worker process is ready), bounded by READY_TIMEOUT; a stop request ends the wait."""
    event = getattr(service, "ready", None)
    if event is None:
        return
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if not event.is_set() and not stop.is_set():
        raise MailprovError(f"{service.name} was not ready within {READY_TIMEOUT:.0f}s", fix="see the log lines above")


async def serve(config: Config, names: list[str], *, ready: asyncio.Event | None = None) -> None:
    """Start the services, drop privileges, and run until SIGTERM or SIGINT.

    Readiness is a fact: systemd (``Type=notify``) hears ``READY=1`` only once every listener is bound,
    privileges are dropped and every service accepts clients; ``STOPPING=1`` when a signal ends it."""
    prepare_directories(config)
    check_access(config, names)  # refuse now, naming the path, rather than fail at delivery time
    preload()
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
        for service in started:
            await _ready(service, stop)
        start_reloading(config)  # renewed certificates reach new connections without a restart
        names_ready = ", ".join(s.name for s in started)
        log.info("%s ready: %s", config.server.hostname, names_ready)
        notify("READY=1", f"STATUS=serving {names_ready}", f"MAINPID={os.getpid()}")
        if ready:
            ready.set()
        await stop.wait()
        notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping on signal")
    except OSError as exc:
        raise MailprovError(f"cannot start: {exc}", fix="check the listen addresses are free and allowed") from None
    finally:
        for service in reversed(started):
            await service.stop()
