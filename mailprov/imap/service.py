"""``mailprov serve imap``: the IMAP service object (see :mod:`mailprov.service` for the contract).

With ``imap.processes`` 1 the sessions run in this process (:class:`~mailprov.imap.server.IMAPServer`).
Above 1 (0: one per CPU) this process is the master of that many worker processes
(:mod:`mailprov.imap.workers`, :class:`mailprov.workers.WorkerPool`): it binds the listeners, accepts,
applies the connection limits and counts failed logins for all of them, and hands each connection to a
worker; it serves sessions itself only when no worker is alive and none can be restarted.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable

from mailprov.config import Config
from mailprov.imap.server import IMAPServer
from mailprov.imap.workers import MODES, refusal
from mailprov.listeners import HANDSHAKE_TIMEOUT, ListenerService
from mailprov.tls import server_context
from mailprov.users import UserDB
from mailprov.workers import WorkerPool, bind_sockets


class IMAPService(ListenerService):
    """The IMAP server as a service: ``start()`` binds ``imap.listen`` and ``imap.tls_listen`` (and starts
    the worker processes); ``ready`` is set once it accepts clients."""

    name = "imap"
    server_class = IMAPServer

    def __init__(
        self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None, serve_after_drop: bool = False
    ) -> None:
        super().__init__(config, users=users, ssl_context=ssl_context, serve_after_drop=serve_after_drop)
        self.processes = config.processes("imap")
        self.pool: WorkerPool | None = None
        self.ready = asyncio.Event()
        self._listeners: list[tuple[str, socket.socket]] = []

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs, plain listeners first."""
        if self.pool is None:
            return self.server.sockets
        return [sock.getsockname()[:2] for _, sock in self._listeners]

    async def start(self) -> None:
        """Bind the listeners (and start the workers); serve now, or in :meth:`begin` after the drop."""
        if self.processes <= 1:
            await super().start()
            if not self.serve_after_drop:
                self.ready.set()
            return
        imap = self.config.imap
        self.server.ssl_context = self.server.ssl_context or server_context(self.config)  # may generate a certificate
        modes = [("imap", a) for a in imap.listen] + [("imaps", a) for a in imap.tls_listen]
        self._listeners = bind_sockets("imap", modes, self.server.log)
        try:
            self.pool = WorkerPool(
                self.config,
                self.processes,
                service="imap",
                refusal=refusal,
                connections=self.server.limits,
                auth_failures=self.server.throttle,
                fallback=self._serve_here,
            )
            await self.pool.spawn()
        except BaseException:
            await self.stop()
            raise
        if not self.serve_after_drop:
            await self.begin()

    async def begin(self) -> None:
        """Called by ``mailprov serve`` once privileges are dropped: begin accepting clients."""
        if self.pool is None:
            await super().begin()
        else:
            await self.pool.serve(self._listeners)
            await self.pool.wait_ready()
        self.ready.set()

    def _serve_here(self, mode: str, conn: socket.socket) -> Awaitable[object]:
        """Open one IMAP session in this process (no worker is alive and none could be restarted)."""
        server = self.server
        implicit = MODES.get(mode, False)
        return asyncio.get_running_loop().connect_accepted_socket(
            lambda: server.connection_class(server, implicit_tls=implicit),
            conn,
            ssl=server.ssl_context if implicit else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None,
        )

    async def stop(self) -> None:
        """Close the listeners and the sessions (the workers': up to 10 s for running commands)."""
        if self.pool is not None:
            await self.pool.stop()
        await self.server.stop()
        for _, sock in self._listeners:
            sock.close()
        self._listeners.clear()
