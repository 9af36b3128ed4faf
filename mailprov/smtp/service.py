"""``SMTPService``: the MTA as one service (listeners, queue runner, local delivery) for ``mailprov serve``.

``start()`` creates the queue directories, loads the TLS certificate and binds every listener, all
before ``mailprov serve`` drops root privileges. Serving (accepting connections) and the queue runner
begin only once the process runs as the service user, so every file written afterwards (queue files,
Maildirs) is owned by it. Outside ``mailprov serve`` (tests, benchmarks, non-root runs) they begin at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pwd
import signal
import socket
import ssl
from collections.abc import Awaitable

from mailprov.config import Config
from mailprov.delivery.local import LocalCourier
from mailprov.delivery.remote import RemoteCourier
from mailprov.limits import ConnectionLimiter, FailureThrottle, LocalAuthThrottle
from mailprov.queue.diskio import DiskIO
from mailprov.queue.runner import QueueRunner
from mailprov.queue.store import STATES, QueueStore
from mailprov.smtp.context import SMTPContext, open_directory
from mailprov.smtp.server import bind_listeners, create_servers, end_sessions, make_factory
from mailprov.smtp.workers import refusal
from mailprov.tls import server_context
from mailprov.workers import WorkerPool

log = logging.getLogger("mailprov.smtp")
DROP_WAIT = 30.0  # seconds to wait for 'mailprov serve' to drop privileges before working anyway


class SMTPService:
    """The service contract (``name``, ``start``, ``stop``) around the SMTP server and the queue.

    With ``smtp.processes`` 1 everything runs in this process. Otherwise this process accepts the
    connections and runs the queue, and worker processes run the sessions (mailprov.smtp.workers).
    """

    name = "smtp"

    def __init__(self, config: Config, *, wait_for_drop: bool | None = None) -> None:
        self.config = config
        self.directory = open_directory(config)
        self.io = DiskIO(threads=8)
        self.store = QueueStore(config.paths.queue_dir)
        self.local = LocalCourier(config, self.directory, io=self.io)
        # Connections and AUTH failures are counted here, for this process's sessions and its workers'.
        self.connections = ConnectionLimiter(config.smtp.max_connections, config.smtp.max_connections_per_client)
        self.auth_failures = FailureThrottle(config.smtp.auth_failure_delay, config.smtp.max_auth_failures)
        self.remote = RemoteCourier(config)
        self.runner = QueueRunner(config, self.store, self.directory, self.local, self.remote, self.io)
        self.processes = config.processes("smtp")
        self.servers: list[asyncio.Server] = []
        self.pool: WorkerPool | None = None
        self._listeners: list[tuple[str, socket.socket]] = []
        self.ready = asyncio.Event()
        self.wait_for_drop = os.geteuid() == 0 if wait_for_drop is None else wait_for_drop
        self._go_task: asyncio.Task[None] | None = None

    def context(self, tls_context: ssl.SSLContext | None) -> SMTPContext:
        """What the SMTP sessions of this process share (worker processes build their own)."""
        return SMTPContext(
            config=self.config,
            directory=self.directory,
            intake=self.runner.intake,
            tls_context=tls_context,
            auth_limiter=LocalAuthThrottle(self.auth_failures),
            connections=self.connections,
        )

    async def start(self) -> None:
        """Bind the listeners; start serving and the queue now, or after the privilege drop."""
        self.store.ensure_dirs()
        if os.geteuid() == 0:
            self._chown_queue()
        tls_context = server_context(self.config)  # generates a self-signed certificate if needed
        self._listeners = bind_listeners(self.config)
        if self.processes > 1:
            self.pool = WorkerPool(
                self.config,
                self.processes,
                service="smtp",
                refusal=functools.partial(refusal, self.config.server.hostname),
                handlers={"Q": self.runner.notify},
                connections=self.connections,
                auth_failures=self.auth_failures,
                fallback=functools.partial(self._serve_here, self.context(tls_context)),
            )
            await self.pool.spawn()
        else:
            self.servers = await create_servers(self.context(tls_context), self._listeners)
        if self.wait_for_drop:
            self._go_task = asyncio.get_running_loop().create_task(self._go_after_drop())
        else:
            await self._go()

    def _serve_here(self, ctx: SMTPContext, mode: str, conn: socket.socket) -> Awaitable[object]:
        """Open one SMTP session in this process (no worker is alive and none could be restarted)."""
        ssl_context = ctx.tls_context if mode == "submissions" else None
        return asyncio.get_running_loop().connect_accepted_socket(make_factory(ctx, mode), conn, ssl=ssl_context)

    def _chown_queue(self) -> None:
        try:
            user = pwd.getpwnam(self.config.server.user)
        except KeyError:
            return  # 'mailprov serve' refuses to run on with a missing user anyway
        if user.pw_uid == 0:
            return
        for state in STATES:
            os.chown(self.store.dir(state), user.pw_uid, user.pw_gid)

    async def _go_after_drop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DROP_WAIT
        while os.geteuid() == 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if os.geteuid() == 0:
            log.warning("still root after %.0f s: serving anyway", DROP_WAIT)
        try:
            await self._go()
        except Exception as exc:  # nothing else would see it: end the process with the reason
            log.critical("SMTP service failed to start serving: %s", exc, exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)

    async def _go(self) -> None:
        await self.runner.start()
        if self.pool is not None:
            await self.pool.serve(self._listeners)
            await self.pool.wait_ready()
        else:
            for server in self.servers:
                await server.start_serving()
        self.ready.set()

    async def stop(self) -> None:
        """Stop accepting, let sessions and in-flight deliveries finish (bounded), release resources."""
        if self._go_task is not None:
            self._go_task.cancel()
        if self.pool is not None:
            await self.pool.stop()
        for server in self.servers:
            server.close()
        if self.servers or self.pool is not None:  # the master may have served sessions itself
            await end_sessions(5.0)
        for _, sock in self._listeners:
            sock.close()
        await self.runner.stop()
        self.io.close()
