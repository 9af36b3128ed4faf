"""The IMAP server's socket side: asyncio listeners, one :class:`Connection` per client.

The grammar is :mod:`mailprov.imap.parser`, the dialogue :class:`mailprov.imap.session.Session`; this
module moves bytes and carries out the session's actions:

* Listeners: ``imap.listen`` (plain, STARTTLS and LOGINDISABLED, RFC 3501 6.2.1) and ``imap.tls_listen``
  (implicit TLS, port 993, RFC 8314). After ``OK Begin TLS`` whatever the client pipelined is discarded,
  so no plaintext command can act inside the TLS session.
* Framing (:class:`~mailprov.imap.parser.CommandReader`) runs on the event loop: ``+`` for synchronizing
  literals, limits on lines and literals. A whole command then runs in a worker thread (the store is
  synchronous file I/O), one at a time per connection; its output is handed to the loop in batches
  and the thread waits while the client does not read (flow control).
* Password checks (argon2id) run in threads, at most :data:`VERIFY_SLOTS` at once; failures are slowed
  and counted per client address by :class:`~mailprov.limits.FailureThrottle`, as in POP3 and SMTP.
* IDLE waits on :meth:`~mailprov.imap.store.Folder.wait_for_change` and reports changes at once.
* Limits: ``imap.idle_timeout`` (RFC 3501 5.4: 30 minutes at least), ``imap.idle_command_timeout`` in
  IDLE, connections in total and per client, ten protocol errors in a row end the session.
* A client that disconnects in the middle of a command (an APPEND literal) leaves nothing behind: the
  message is written only once the whole command has arrived.

Diagnostics go to the ``mailprov.imap`` logger: one line per login, failed login, logout and refusal.
Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import ssl
import threading
from collections.abc import Coroutine
from typing import Any

from mailprov.config import Config
from mailprov.errors import MailprovError
from mailprov.imap.parser import CommandReader, Complete, Continue, ParseError, TooBig, parse_command
from mailprov.imap.session import Action, AuthContinue, Authenticate, Close, Idle, Session, StartTLS
from mailprov.imap.store import Store, StoreError
from mailprov.limits import ConnectionLimiter, FailureThrottle, client_in
from mailprov.listeners import HANDSHAKE_TIMEOUT, bind
from mailprov.maildir import maildir_path
from mailprov.users import UserDB

log = logging.getLogger("mailprov.imap")

VERIFY_SLOTS = 4  # concurrent argon2id checks
WORKERS = 16  # threads running commands (file I/O) for all sessions
MAX_ERRORS = 10  # protocol errors in a row before the session is closed
MAX_PIPELINED = 1024 * 1024  # input buffered while a command runs before reading pauses


class IMAPServer:
    """All listeners of one IMAP service and the state its connections share."""

    def __init__(self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.users = users or UserDB(config.paths.users_file)
        self.ssl_context = ssl_context
        self.throttle = FailureThrottle(config.imap.auth_failure_delay, config.imap.max_auth_failures)
        self.counter = ConnectionLimiter(config.imap.max_connections, config.imap.max_connections_per_client)
        self.trusted = [ipaddress.ip_network(n) for n in config.imap.plaintext_networks]
        self.default_domain = config.server.domains[0] if len(config.server.domains) == 1 else None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="imap")
        self._servers: list[asyncio.base_events.Server] = []
        self._verify_slots: asyncio.Semaphore | None = None

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs, plain listeners first."""
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    async def start(self, *, serving: bool = True) -> None:
        """Bind every configured address (OSError if one cannot be); with ``serving=False`` nothing is
        accepted until :meth:`start_serving` (called after the privilege drop)."""
        self._verify_slots = asyncio.Semaphore(VERIFY_SLOTS)
        if self.ssl_context is None:
            from mailprov.tls import server_context

            self.ssl_context = server_context(self.config)
        section = self.config.imap
        try:
            self._servers = await bind(
                "imap",
                {"listen": section.listen, "tls_listen": section.tls_listen},
                lambda implicit: Connection(self, implicit_tls=implicit),
                self.ssl_context,
                serving=serving,
                log=log,
                upgrade="STARTTLS",
            )
        except BaseException:
            await self.stop()
            raise

    async def start_serving(self) -> None:
        """Begin accepting on every bound listener."""
        for server in self._servers:
            await server.start_serving()

    async def stop(self) -> None:
        """Stop listening and drop every session; commands already running in threads finish."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=30)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="imap")

    def plaintext_ok(self, client: str) -> bool:
        """Whether ``client`` is in ``imap.plaintext_networks``."""
        return client_in(client, self.trusted)

    async def verify(self, user: str, password: str) -> bool:
        """Check a password in a worker thread, a bounded number at a time."""
        assert self._verify_slots is not None
        async with self._verify_slots:
            return await asyncio.to_thread(self.users.verify, user, password)

    def open_store(self, user: str) -> Store:
        """The user's mailboxes (Maildir under ``paths.mail_dir``), special-use folders created."""
        try:
            path = maildir_path(self.config.paths.mail_dir, user)
        except MailprovError as exc:
            raise StoreError("CANNOT", str(exc)) from exc
        return Store(path, host=self.config.server.hostname)


class ConnectionGone(Exception):
    """The client went away while a command was writing to it."""


class _ThreadOutput:
    """What a command in a worker thread writes: batched, handed to the loop, paced by flow control."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        conn = self.conn
        while not conn.can_write.wait(1.0):
            if conn.lost:
                raise ConnectionGone
        if conn.lost:
            raise ConnectionGone
        conn.loop.call_soon_threadsafe(conn.write, data)


class Connection(asyncio.Protocol):
    """One client: frames commands, runs them one at a time, carries out the session's actions."""

    def __init__(self, server: IMAPServer, *, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client = "unknown"
        self.session: Session | None = None
        self.reader = CommandReader(literal_limit=server.config.imap.append_limit)
        self.output = _ThreadOutput(self)
        self.can_write = threading.Event()
        self.can_write.set()
        self.lost = False
        self._busy = False
        self._closed = False
        self._counted = False
        self._errors = 0
        self._auth_tag: str | None = None  # AUTHENTICATE waiting for the client's response line
        self._idle_tag: str | None = None
        self._idle_stop: asyncio.Event | None = None
        self._idle_line = b""
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
            log.warning("refused %s: %s", self.client, refusal)
            transport.write(f"* BYE [UNAVAILABLE] {refusal}\r\n".encode())
            transport.close()
            self._closed = True
            return
        self._counted = True
        self.server.connections.add(self)
        config = self.server.config
        self.session = Session(
            hostname=config.server.hostname,
            secure=self.implicit_tls,
            tls_available=not self.implicit_tls and self.server.ssl_context is not None,
            plaintext_ok=self.server.plaintext_ok(self.client),
            append_limit=config.imap.append_limit,
            open_store=self.server.open_store,
            default_domain=self.server.default_domain,
        )
        self._timer = self.loop.call_later(config.imap.idle_timeout, self._check_idle)
        transport.write(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last = self.loop.time()
        self.reader.feed(data)
        if self._busy and len(self.reader.buffer) > MAX_PIPELINED and self.transport:
            self.transport.pause_reading()  # a client far ahead of a running command: wait for it
        self._process()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.lost = True
        self.can_write.set()
        if self._timer:
            self._timer.cancel()
        if self._idle_stop:
            self._idle_stop.set()
        if self._counted:
            self._counted = False
            self.server.counter.release(self.client)
            self.server.connections.discard(self)
        if self.reader.in_command:
            log.info("client %s went away in the middle of a command; nothing of it was kept", self.client)
        if not self._busy and self.session is not None:
            self.session.close()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- processing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send (on the loop thread)."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection at once (server shutdown, abuse)."""
        self._closed = True
        if self.transport and not self.lost:
            self.transport.abort()

    def _hang_up(self, text: str) -> None:
        self.write(f"* BYE {text}\r\n".encode())
        self._closed = True
        if self.transport:
            self.transport.close()

    def _process(self) -> None:
        try:
            self._process_input()
        except Exception:
            log.exception("internal error in a session from %s; closing it", self.client)
            self.abort()

    def _process_input(self) -> None:
        assert self.session is not None
        if self._busy or self._closed:
            return
        if self._idle_tag is not None:
            line = self.reader.next_line()
            if line is not None and self._idle_stop is not None:
                self._idle_line = line
                self._idle_stop.set()
            return
        if self._auth_tag is not None:
            line = self.reader.next_line()
            if line is None:
                return
            tag, self._auth_tag = self._auth_tag, None
            self._act(self.session.auth_response(tag, line, self))
            if self._busy or self._closed:
                return
        if self.transport:
            # Not busy: read on (the reader itself bounds what it keeps: a line, an allowed literal).
            self.transport.resume_reading()
        for event in self.reader.events():
            if isinstance(event, Continue):
                self.write(b"+ Ready for literal data\r\n")
            elif isinstance(event, TooBig):
                self._errors += 1
                if event.fatal:
                    self._hang_up(f"[TOOBIG] {event.message}")
                    return
                self.write(f"{event.tag or '*'} BAD [TOOBIG] {event.message}\r\n".encode())
            elif isinstance(event, Complete):
                try:
                    command = parse_command(event.command)
                except ParseError as exc:
                    self._errors += 1
                    tag = event.command.parts[0].split(b" ", 1)[0].decode("ascii", "replace")
                    if self._errors >= MAX_ERRORS:
                        self._hang_up("Too many errors")
                        return
                    self.write(f"{tag if tag and len(tag) < 64 and ' ' not in tag else '*'} BAD {exc}\r\n".encode())
                    continue
                self._spawn(self._run(command))
                return
            if self._errors >= MAX_ERRORS:
                self._hang_up("Too many errors")
                return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._busy = True
        task = self.loop.create_task(self._guard(coro))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ConnectionGone:
            pass
        except Exception:
            log.exception("internal error in a session from %s; closing it", self.client)
            self.abort()
        self._busy = False
        self._last = self.loop.time()
        if self.lost:
            if self.session is not None:
                await self.loop.run_in_executor(self.server.executor, self.session.close)
            return
        self._process()

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        return await self.loop.run_in_executor(self.server.executor, func, *args)

    async def _run(self, command: Any) -> None:
        assert self.session is not None
        action = await self._in_thread(self.session.execute, command, self.output)
        self._errors = 0
        await self._act_async(action)

    def _act(self, action: Action | None) -> None:
        if action is not None:
            self._spawn(self._act_async(action))

    async def _act_async(self, action: Action | None) -> None:
        assert self.session is not None and self.transport is not None
        if action is None:
            return
        if isinstance(action, Close):
            self._closed = True
            self.transport.close()
        elif isinstance(action, AuthContinue):
            self._auth_tag = action.tag
            self.write(b"+ \r\n")
        elif isinstance(action, Authenticate):
            await self._login(action)
        elif isinstance(action, StartTLS):
            await self._start_tls(action.reply)
        elif isinstance(action, Idle):
            await self._idle(action.tag)

    async def _login(self, action: Authenticate) -> None:
        assert self.session is not None
        ok = False
        if action.password and len(action.user) <= 255:
            try:
                ok = await self.server.verify(action.user, action.password)
            except MailprovError as exc:
                log.error("cannot check passwords: %s", exc)
                self.write(f"{action.tag} NO [UNAVAILABLE] Authentication is not possible now\r\n".encode())
                return
        if not ok:
            delay = self.server.throttle.fail(self.client)
            disconnect = self.server.throttle.blocked(self.client)
            log.warning(
                "failed login for %r from %s (%d recent failures)",
                action.user[:100],
                self.client,
                self.server.throttle.failures(self.client),
            )
            await asyncio.sleep(delay)
            if self.lost:
                return
            self.session.login_result(action.tag, action.user, False, self)
            if disconnect:
                self._hang_up("Too many failed logins")
            return
        self.server.throttle.success(self.client)
        try:
            await self._in_thread(self.session.login_result, action.tag, action.user, True, self.output)
        except (StoreError, OSError) as exc:
            log.error("cannot open the mailbox of %s: %s", action.user, exc)
            return
        log.info("login %s from %s (%s)", action.user, self.client, self._tls_name())

    async def _start_tls(self, reply: bytes) -> None:
        assert self.transport is not None and self.session is not None and self.server.ssl_context is not None
        self.transport.pause_reading()
        self.reader.buffer.clear()  # nothing pipelined after STARTTLS may act inside TLS
        self.write(reply)  # only now: the client's ClientHello may follow at once
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.server.ssl_context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("STARTTLS handshake with %s failed: %s", self.client, exc)
            self.abort()
            return
        if transport is None:
            self._closed = True
            return
        self.transport = transport
        self.session.tls_started()

    async def _idle(self, tag: str) -> None:
        assert self.session is not None
        session = self.session
        self._idle_tag = tag
        self._idle_stop = stop = asyncio.Event()
        limit = self.server.config.imap.idle_command_timeout
        deadline = self.loop.time() + limit
        self._busy = False  # input is read while idling (DONE)
        self._process()
        try:
            while not stop.is_set() and not self.lost:
                left = deadline - self.loop.time()
                if left <= 0:
                    log.info("IDLE of %s from %s lasted %d s; closing", session.user, self.client, limit)
                    self._hang_up("IDLE for too long")
                    return
                folder = session.selected.folder if session.selected else None
                waiter = asyncio.ensure_future(folder.wait_for_change(min(left, 60.0)) if folder else asyncio.sleep(min(left, 60.0)))
                stopper = asyncio.ensure_future(stop.wait())
                done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
                if waiter in done and not waiter.cancelled() and waiter.result() and not stop.is_set():
                    await self._in_thread(session.updates, self.output)
        finally:
            self._busy = True
            self._idle_tag = None
            self._idle_stop = None
        if self.lost:
            return
        await self._in_thread(session.idle_done, tag, self._idle_line, self.output)

    # -- timers -------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self.lost or self.transport is None:
            return
        timeout = self.server.config.imap.idle_timeout
        # Working for the client, or in IDLE (its own limit), counts as activity; a command stuck because
        # the client stopped reading its output does not (it would hold a worker thread for ever).
        if (self._busy and self.can_write.is_set()) or self._idle_tag is not None:
            self._last = self.loop.time()
        idle = self.loop.time() - self._last
        if self._closed:
            if idle >= timeout:
                self.abort()
            else:
                self._timer = self.loop.call_later(timeout, self._check_idle)
            return
        if idle < timeout:
            self._timer = self.loop.call_later(timeout - idle, self._check_idle)
            return
        log.info("closing idle session from %s after %d s", self.client, int(idle))
        if not self.can_write.is_set():
            self.abort()
        else:
            self._hang_up("Autologout; idle for too long")
            self._timer = self.loop.call_later(timeout, self._check_idle)

    def _tls_name(self) -> str:
        assert self.transport is not None
        obj = self.transport.get_extra_info("ssl_object")
        return obj.version() if obj is not None else "plaintext"
