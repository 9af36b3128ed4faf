"""What the POP3 and IMAP servers share: the socket side of a mail access server.

Each protocol keeps its dialogue (``pop3.protocol``, ``imap.session``) and the way it feeds it; this
module holds, once, what does not depend on the protocol:

* :func:`bind`: the listeners, ``<section>.listen`` (plain, the upgrade offered: STLS, STARTTLS) and
  ``<section>.tls_listen`` (implicit TLS), bound before the privilege drop and serving after it.
* :class:`MailServer`: the state every connection shares (connection limits in total and per client,
  the failed-login throttle, ``plaintext_networks``, at most :data:`VERIFY_SLOTS` password checks at
  once), start, start-serving and stop, and :meth:`MailServer.check_login`, the one login check.
* :class:`MailConnection`: one client's admission and release, the idle timer, the TLS upgrade in
  place, and the rule that an unexpected error closes the session, logged.
* :class:`ListenerService`: the server as a service, the contract :mod:`mailprov.service` runs.

A server subclass names its config section (``name``), its upgrade command, its logger and its
connection class; a connection subclass says its refusal, its idle goodbye, what counts as working
for the client, and how it greets and reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  # imported before the privilege drop: to_thread needs it later
import contextlib
import enum
import ipaddress
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mailprov.config import Config, parse_hostport
from mailprov.errors import MailprovError
from mailprov.limits import AuthThrottle, ConnectionLimiter, FailureThrottle, LocalAuthThrottle, client_in
from mailprov.tls import server_context
from mailprov.users import UserDB

if TYPE_CHECKING:  # a worker's channel to the master; the module is only needed where workers run
    from mailprov.workers import ChannelLimiter

HANDSHAKE_TIMEOUT = 30.0  # seconds for a TLS handshake (implicit TLS, STLS, STARTTLS)
VERIFY_SLOTS = 4  # concurrent argon2id checks (each takes 64 MiB and a core for a fraction of a second)
STOP_WAIT = 30.0  # seconds stop() waits for the work it lets finish
MAX_USER = 255  # octets of a login name worth a password check


async def bind(
    section: str,
    addresses: dict[str, list[str]],
    factory: Callable[[bool], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None,
    *,
    serving: bool,
    log: logging.Logger,
    upgrade: str,
) -> list[asyncio.base_events.Server]:
    """Bind ``addresses["listen"]`` (plain, ``upgrade`` offered: STLS, STARTTLS) and
    ``addresses["tls_listen"]`` (implicit TLS); ``factory(implicit_tls)`` makes a connection. Raises
    OSError when one cannot be bound, after closing those already bound."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.base_events.Server] = []
    try:
        for key, implicit in (("listen", False), ("tls_listen", True)):
            for i, value in enumerate(addresses[key]):
                host, port = parse_hostport(value, key=f"{section}.{key}[{i}]")
                server = await loop.create_server(
                    lambda implicit=implicit: factory(implicit),
                    host.strip("[]"),
                    port,
                    ssl=ssl_context if implicit else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None,
                    reuse_address=True,
                    start_serving=serving,
                )
                servers.append(server)
                log.info("listening on %s (%s)", value, "implicit TLS" if implicit else upgrade)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


class Section(Protocol):
    """The config keys a mail access server reads (``pop3.*``, ``imap.*``)."""

    listen: list[str]
    tls_listen: list[str]
    plaintext_networks: list[str]
    idle_timeout: int
    max_connections: int
    max_connections_per_client: int
    auth_failure_delay: float
    max_auth_failures: int


class LoginCheck(enum.Enum):
    """What :meth:`MailServer.check_login` found."""

    OK = "ok"
    BAD = "bad"  # no such user or a wrong password, answered after the throttle's delay
    BAD_DISCONNECT = "bad, disconnect"  # and the client has used up its attempts: hang up
    ERROR = "error"  # the users file cannot be read now: a temporary failure, not counted


class MailServer:
    """All listeners of one service and the state its connections share.

    ``tasks`` (logins, TLS handshakes, commands) are cancelled on stop; ``finishing`` (POP3's UPDATE
    state) is waited for, so that what a client was promised is done."""

    name: ClassVar[str]  # the config section: "pop3", "imap"
    upgrade: ClassVar[str]  # the command that starts TLS on a plain connection: "STLS", "STARTTLS"
    log: ClassVar[logging.Logger]
    connection_class: ClassVar[Callable[..., MailConnection]]

    def __init__(self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.section: Section = getattr(config, self.name)
        self.users = users or UserDB(config.paths.users_file)
        self.ssl_context = ssl_context
        # Counted here in a single process, and in the master for worker processes (mailprov.workers),
        # where a worker replaces ``counter`` and ``auth`` with its channel to the master.
        self.throttle = FailureThrottle(self.section.auth_failure_delay, self.section.max_auth_failures)
        self.auth: AuthThrottle = LocalAuthThrottle(self.throttle)
        self.limits = ConnectionLimiter(self.section.max_connections, self.section.max_connections_per_client)
        self.counter: ConnectionLimiter | ChannelLimiter = self.limits
        self.trusted = [ipaddress.ip_network(n) for n in self.section.plaintext_networks]
        self.default_domain = config.server.domains[0] if len(config.server.domains) == 1 else None
        self.connections: set[MailConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.finishing: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._verify_slots: asyncio.Semaphore | None = None

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs, plain listeners first."""
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    async def start(self, *, serving: bool = True) -> None:
        """Bind every configured address; raises OSError if one cannot be bound. With ``serving=False``
        nothing is accepted until :meth:`start_serving` (``mailprov serve`` calls it after the privilege
        drop, so no client is ever served by a root process)."""
        self._verify_slots = asyncio.Semaphore(VERIFY_SLOTS)
        if self.ssl_context is None:
            self.ssl_context = server_context(self.config)
        try:
            self._servers = await bind(
                self.name,
                {"listen": self.section.listen, "tls_listen": self.section.tls_listen},
                lambda implicit: self.connection_class(self, implicit_tls=implicit),
                self.ssl_context,
                serving=serving,
                log=self.log,
                upgrade=self.upgrade,
            )
        except BaseException:
            await self.stop()
            raise

    async def start_serving(self) -> None:
        """Begin accepting on every bound listener (a no-op for those already serving)."""
        for server in self._servers:
            await server.start_serving()

    async def stop(self) -> None:
        """Stop listening, drop every session, cancel ``tasks`` and let ``finishing`` finish."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        pending = list(self.tasks | self.finishing)
        if pending:
            await asyncio.wait(pending, timeout=STOP_WAIT)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def plaintext_ok(self, client: str) -> bool:
        """Whether ``client`` is in ``<section>.plaintext_networks``."""
        return client_in(client, self.trusted)

    async def verify(self, user: str, password: str) -> bool:
        """Check a password in a worker thread, a bounded number at a time."""
        if self._verify_slots is None:  # a worker process's server, which never binds
            self._verify_slots = asyncio.Semaphore(VERIFY_SLOTS)
        async with self._verify_slots:
            return await asyncio.to_thread(self.users.verify, user, password)

    async def check_login(self, client: str, user: str, password: str | None) -> LoginCheck:
        """Check ``user``'s ``password`` for ``client``: a success clears the client's failures; a
        failure is counted, logged (the name cut short, never the password) and answered only after the
        throttle's delay. An empty password or an over-long name fails without a check."""
        ok = False
        if password and len(user) <= MAX_USER:
            try:
                ok = await self.verify(user, password)
            except MailprovError as exc:  # a damaged users file
                self.log.error("cannot check passwords: %s", exc)
                return LoginCheck.ERROR
        if ok:
            await self.auth.success(client)
            return LoginCheck.OK
        delay, failures = await self.auth.fail(client)
        disconnect = failures >= self.section.max_auth_failures  # FailureThrottle.blocked, wherever it counts
        self.log.warning("failed login for %r from %s (%d recent failures)", user[:100], client, failures)
        await asyncio.sleep(delay)
        return LoginCheck.BAD_DISCONNECT if disconnect else LoginCheck.BAD


class MailConnection(asyncio.Protocol):
    """One client of a :class:`MailServer`: admitted within the limits, timed out when idle, upgraded
    to TLS in place; the subclass reads and answers."""

    refusal: ClassVar[str]  # the line that refuses a client over the limits, with {} for the reason
    idle_goodbye: ClassVar[bytes]  # the line that closes an idle session
    idle_note: ClassVar[str] = ""  # said in the log line of an idle close

    def __init__(self, server: MailServer, *, implicit_tls: bool) -> None:
        self.server = server
        self.log = server.log
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client = "unknown"
        self.lost = False  # connection_lost has run
        self._busy = False  # working for the client (a task runs): read no further command
        self._closed = False  # closing: nothing more is read or said (the transport may still be flushing)
        self._counted = False
        self._write_paused = False
        self._last = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "unknown"
        refusal = self.server.counter.acquire(self.client)
        if refusal:
            self.log.warning("refused %s: %s", self.client, refusal)
            transport.write(self.refusal.format(refusal).encode())
            transport.close()
            self._closed = True
            return
        self._counted = True
        self.server.connections.add(self)
        self._timer = self.loop.call_later(self.server.section.idle_timeout, self._check_idle)
        self._greet()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.lost = True
        if self._timer:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            self.server.counter.release(self.client)
            self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    # -- what a protocol says -----------------------------------------------------------------

    def _greet(self) -> None:
        """Start the session and send its greeting (the client is admitted)."""
        raise NotImplementedError

    def _process_input(self) -> None:
        """Act on what the client sent, until something must wait."""
        raise NotImplementedError

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task spawned by :meth:`_spawn`, then read on."""
        raise NotImplementedError

    def _working(self) -> bool:
        """Whether the server is working for the client, so its silence is not idleness."""
        return self._busy

    # -- processing ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the connection at once, unsent output included (server shutdown, a stuck client)."""
        self._closed = True
        if self.transport and not self.lost:
            self.transport.abort()

    def _process(self) -> None:
        try:
            self._process_input()
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        self.log.exception("internal error in a session from %s; closing it", self.client)
        self.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None], *, finish: bool = False) -> None:
        """Run ``coro`` as a task (guarded); no command is read until it is done. A ``finish`` task
        completes even when the server stops; the others are cancelled."""
        self._busy = True
        task = self.loop.create_task(self._guard(coro))
        tasks = self.server.finishing if finish else self.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _upgrade(self) -> bool:
        """Start TLS on this connection in place (after STLS, STARTTLS): True once the handshake is
        done; False when it failed (the connection is dropped) or the client went away."""
        assert self.transport is not None and self.server.ssl_context is not None
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.server.ssl_context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            self.log.info("%s handshake with %s failed: %s", self.server.upgrade, self.client, exc)
            self.abort()
            return False
        if transport is None:  # the connection went away during the handshake
            self._closed = True
            return False
        self.transport = transport
        return True

    def _tls_name(self) -> str:
        assert self.transport is not None
        obj = self.transport.get_extra_info("ssl_object")
        return obj.version() if obj is not None else "plaintext"

    # -- timers -------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self.lost or self.transport is None:
            return
        timeout = self.server.section.idle_timeout
        if self._closed:  # closing, but the client does not read what is left to flush
            if self.loop.time() - self._last >= timeout:
                self.abort()
            else:
                self._timer = self.loop.call_later(timeout, self._check_idle)
            return
        if self._working():
            self._last = self.loop.time()
        idle = self.loop.time() - self._last
        if idle < timeout:
            self._timer = self.loop.call_later(timeout - idle, self._check_idle)
            return
        self.log.info("closing idle session from %s after %d s%s", self.client, int(idle), self.idle_note)
        if self._write_paused:  # the client stopped reading: nothing more can be said
            self.abort()
            return
        self._closed = True
        self.transport.write(self.idle_goodbye)
        self.transport.close()
        self._timer = self.loop.call_later(timeout, self._check_idle)  # in case it never drains


class ListenerService:
    """A server as a service: ``start()`` binds its listeners; ``begin()`` serves after the drop.

    A subclass names itself and its server class; the server binds in ``start(serving=...)`` and
    accepts clients in ``start_serving()``, so ``mailprov serve`` can bind as root and serve only after
    the privilege drop."""

    name: ClassVar[str]
    server_class: ClassVar[type[MailServer]]

    def __init__(
        self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None, serve_after_drop: bool = False
    ) -> None:
        self.config = config
        self.server = self.server_class(config, users=users, ssl_context=ssl_context)
        self.serve_after_drop = serve_after_drop

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs."""
        return self.server.sockets

    async def start(self) -> None:
        """Bind the listeners; start serving now, or in :meth:`begin` when ``serve_after_drop``."""
        await self.server.start(serving=not self.serve_after_drop)

    async def begin(self) -> None:
        """Called by ``mailprov serve`` once privileges are dropped: begin accepting clients."""
        await self.server.start_serving()

    async def stop(self) -> None:
        """Close the listeners and the sessions (each server documents what finishes first)."""
        await self.server.stop()
