"""The POP3 server's socket side: asyncio listeners, one :class:`Connection` per client.

The dialogue itself is :class:`mailprov.pop3.protocol.Session`; this module only moves bytes and
carries out the session's actions:

* Listeners: ``pop3.listen`` (plain, STLS offered, RFC 2595) and ``pop3.tls_listen`` (implicit TLS,
  port 995). STLS upgrades in place with ``loop.start_tls``; whatever the client pipelined after STLS
  is discarded, so no plaintext command can act inside the TLS session.
* Commands are processed straight from ``data_received`` (pipelining works, RFC 2449); RETR reads the
  file with one open and one read and writes the reply with one ``transport.write``. Output respects
  flow control: while the transport's buffer is full (``pause_writing``) no further command is read and
  a large message is streamed piece by piece as the buffer drains.
* Password checks (argon2id, CPU-heavy), opening the mailbox and the UPDATE state run in worker threads;
  at most :data:`VERIFY_SLOTS` password checks run at once.
* Limits: line length (:data:`MAX_LINE`), ``pop3.idle_timeout`` (no UPDATE when it fires, RFC 1939),
  ``pop3.max_connections`` and ``pop3.max_connections_per_client``, failed logins slowed and counted per
  client address (:class:`~mailprov.limits.FailureThrottle`).
* A dropped connection releases the mailbox lock and changes nothing in the Maildir.

Diagnostics go to the ``mailprov.pop3`` logger: one line per login, failed login, logout and refusal.
Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # noqa: F401  # imported before the privilege drop: to_thread needs it later
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from mailprov.config import Config
from mailprov.errors import MailprovError
from mailprov.limits import ConnectionLimiter, FailureThrottle, client_in
from mailprov.listeners import HANDSHAKE_TIMEOUT, bind
from mailprov.maildir import maildir_path
from mailprov.pop3.mailbox import Mailbox, MailboxBusy, MailboxError, Message
from mailprov.pop3.protocol import Action, Close, Login, LoginOutcome, Reply, Retrieve, Session, StartTLS, Update
from mailprov.tls import server_context
from mailprov.users import UserDB, split

log = logging.getLogger("mailprov.pop3")

MAX_LINE = 2048  # octets per command line, CRLF included (RFC 2449 asks clients for at most 255)
MAX_BUFFER = 64 * 1024  # pipelined input held before the server stops reading
VERIFY_SLOTS = 4  # concurrent argon2id checks (each takes 64 MiB and a core for a fraction of a second)


def mailbox_for(config: Config, address: str) -> Mailbox:
    """The :class:`Mailbox` of ``address``: its Maildir and its lock and size-cache files in STATE_DIR."""
    local, domain = split(address)
    maildir = maildir_path(config.paths.mail_dir, address)  # validates the address as path parts
    return Mailbox(maildir, Path(config.paths.state_dir) / "pop3" / domain / local)


class POP3Server:
    """All listeners of one POP3 service and the state shared by its connections."""

    def __init__(self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.users = users or UserDB(config.paths.users_file)
        self.ssl_context = ssl_context
        self.throttle = FailureThrottle(config.pop3.auth_failure_delay, config.pop3.max_auth_failures)
        self.counter = ConnectionLimiter(config.pop3.max_connections, config.pop3.max_connections_per_client)
        self.trusted = [ipaddress.ip_network(n) for n in config.pop3.plaintext_networks]
        self.default_domain = config.server.domains[0] if len(config.server.domains) == 1 else None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # logins and TLS handshakes: cancelled on stop
        self.update_tasks: set[asyncio.Task[None]] = set()  # UPDATE states in progress: finished on stop
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
        section = self.config.pop3
        try:
            self._servers = await bind(
                "pop3",
                {"listen": section.listen, "tls_listen": section.tls_listen},
                lambda implicit: Connection(self, implicit_tls=implicit),
                self.ssl_context,
                serving=serving,
                log=log,
                upgrade="STLS",
            )
        except BaseException:
            await self.stop()
            raise

    async def start_serving(self) -> None:
        """Begin accepting on every bound listener (a no-op for those already serving)."""
        for server in self._servers:
            await server.start_serving()

    async def stop(self) -> None:
        """Stop listening, drop every session (no UPDATE for them), finish sessions already in UPDATE."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        pending = list(self.tasks | self.update_tasks)
        if pending:
            await asyncio.wait(pending, timeout=30)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def plaintext_ok(self, client: str) -> bool:
        """Whether ``client`` is in ``pop3.plaintext_networks``."""
        return client_in(client, self.trusted)

    async def verify(self, user: str, password: str) -> bool:
        """Check a password in a worker thread, a bounded number at a time."""
        assert self._verify_slots is not None
        async with self._verify_slots:
            return await asyncio.to_thread(self.users.verify, user, password)


class Connection(asyncio.Protocol):
    """One client: buffers lines, feeds the session, carries out its actions."""

    def __init__(self, server: POP3Server, *, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client = "unknown"
        self.session: Session | None = None
        self.mailbox: Mailbox | None = None
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line: drop until its end
        self._busy = False  # an action is running in a task: read no further command
        self._write_paused = False
        self._read_paused = False  # paused by us because too much pipelined input waits
        self._closed = False  # closing: nothing more is read or said (the transport may still be flushing)
        self._lost = False  # connection_lost has run
        self._eof = False  # the client half-closed its side
        self._counted = False
        self._updating = False
        self._body: Iterator[bytes] | None = None  # the rest of a large message being streamed
        self._last = self.loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self.retrieved = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else "unknown"
        refusal = self.server.counter.acquire(self.client)
        if refusal:
            log.warning("refused %s: %s", self.client, refusal)
            transport.write(f"-ERR [SYS/TEMP] {refusal}\r\n".encode())
            transport.close()
            self._closed = True
            return
        self._counted = True
        self.server.connections.add(self)
        self.session = Session(
            hostname=self.server.config.server.hostname,
            secure=self.implicit_tls,
            tls_available=not self.implicit_tls and self.server.ssl_context is not None,
            plaintext_ok=self.server.plaintext_ok(self.client),
            default_domain=self.server.default_domain,
        )
        self._idle = self.loop.call_later(self.server.config.pop3.idle_timeout, self._check_idle)
        self._run(self.session.greeting())

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last = self.loop.time()
        self._buffer += data
        self._process()
        if len(self._buffer) > MAX_BUFFER and not self._read_paused and not self._closed and self.transport:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # A client may pipeline its last commands (say DELE and QUIT) and half-close at once: answer
        # what it sent, then close. Without QUIT among them, nothing is deleted (RFC 1939).
        if self._closed or self.session is None:
            return None
        self._eof = True
        self._process()
        return None if self._closed else True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = True
        if self._idle:
            self._idle.cancel()
        if self._counted:
            self._counted = False
            self.server.counter.release(self.client)
            self.server.connections.discard(self)
        self._close_body()
        if self.mailbox and not self._updating:
            self.mailbox.close()  # a dropped session: release the lock, change nothing
            log.info("session of %s from %s dropped: nothing deleted", self.session.user if self.session else "?", self.client)
            self.mailbox = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._process()

    # -- processing ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the connection at once, unsent output included (server shutdown, a stuck client)."""
        if self.transport and not self._lost:
            self.transport.abort()

    def _process(self) -> None:
        """Handle buffered lines until one needs to wait (a task, a full output buffer, the end)."""
        try:
            self._process_lines()
        except Exception:
            log.exception("internal error in a session from %s; closing it", self.client)
            self.abort()

    def _process_lines(self) -> None:
        assert self.session is not None and self.transport is not None
        while not (self._busy or self._write_paused or self._closed):
            if self._body is not None:
                self._stream_body()
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= MAX_LINE:
                    self._buffer.clear()
                    self._discarding = True
                    self._run(self.session.too_long())
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:  # the tail of an over-long line
                self._discarding = False
                continue
            if len(line) >= MAX_LINE:
                self._run(self.session.too_long())
                continue
            self._run(self.session.feed(line[:-1] if line.endswith(b"\r") else line))
        if self._read_paused and len(self._buffer) < MAX_BUFFER // 2 and not self._closed:
            self._read_paused = False
            self.transport.resume_reading()
        if self._eof and not (self._busy or self._closed or self._body is not None):
            self._closed = True  # the client half-closed and everything it sent is answered
            self.transport.close()

    def _run(self, actions: list[Action]) -> None:
        assert self.transport is not None
        for action in actions:
            if isinstance(action, Reply):
                self.transport.write(action.data)
            elif isinstance(action, Retrieve):
                self._retrieve(action.msg, action.top)
            elif isinstance(action, Close):
                self._closed = True
                self.transport.close()
            elif isinstance(action, Login):
                self._spawn(self._login(action))
            elif isinstance(action, StartTLS):
                # Nothing the client sent after STLS may be read as a command (CVE-2011-0411 class).
                self.transport.pause_reading()
                self._buffer.clear()
                self._spawn(self._start_tls())
            elif isinstance(action, Update):
                # Set now, not when the task starts: a client that sends QUIT and closes at once still
                # gets its UPDATE (connection_lost must not release the mailbox first).
                self._updating = True
                self._spawn(self._update(), update=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], *, update: bool = False) -> None:
        self._busy = True
        task = self.loop.create_task(self._guard(coro))
        tasks = self.server.update_tasks if update else self.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            log.exception("internal error in a session from %s; closing it", self.client)
            self.abort()
            return
        if not self._closed:
            self._busy = False
            self._last = self.loop.time()
            self._process()

    # -- actions ------------------------------------------------------------------------------

    def _retrieve(self, msg: Message, top: int | None) -> None:
        assert self.mailbox is not None and self.transport is not None
        try:
            pieces = self.mailbox.render(msg, top)
            first = next(pieces)
        except FileNotFoundError:
            self.transport.write(b"-ERR message was removed by another program\r\n")
            return
        except OSError as exc:
            log.error("cannot read %s: %s", self.mailbox.path(msg), exc)
            self.transport.write(b"-ERR [SYS/TEMP] cannot read the message now\r\n")
            return
        head = f"+OK {msg.size} octets\r\n" if top is None else "+OK top of message follows\r\n"
        self.transport.write(head.encode() + first)
        if top is None:
            self.retrieved += 1
        if _is_stream(pieces):
            self._body = pieces

    def _stream_body(self) -> None:
        assert self._body is not None and self.transport is not None
        try:
            piece = next(self._body, None)
        except OSError as exc:
            log.error("reading a message for %s failed mid-way: %s; closing", self.client, exc)
            self._close_body()
            self.abort()
            self._closed = True
            return
        if piece is None:
            self._body = None
        else:
            self.transport.write(piece)

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()  # type: ignore[attr-defined]  # a generator: closes its file descriptor

    async def _login(self, action: Login) -> None:
        assert self.session is not None
        user, outcome, messages = action.user, LoginOutcome.BAD, []
        ok = False
        if action.password is not None and action.password and len(user) <= 255:
            try:
                ok = await self.server.verify(user, action.password)
            except MailprovError as exc:  # a damaged users file
                log.error("cannot check passwords: %s", exc)
                outcome = LoginOutcome.ERROR
        if ok:
            self.server.throttle.success(self.client)
            outcome, messages = await self._open_mailbox(user)
        elif outcome is not LoginOutcome.ERROR:
            delay = self.server.throttle.fail(self.client)
            disconnect = self.server.throttle.blocked(self.client)
            log.warning(
                "failed login for %r from %s (%d recent failures)", user[:100], self.client, self.server.throttle.failures(self.client)
            )
            await asyncio.sleep(delay)
            outcome = LoginOutcome.BAD_DISCONNECT if disconnect else LoginOutcome.BAD
        if self._closed:
            return
        if outcome is LoginOutcome.OK:
            log.info("login %s from %s (%s), %d messages", user, self.client, self._tls_name(), len(messages))
        self._run(self.session.login_result(outcome, user, messages))

    async def _open_mailbox(self, user: str) -> tuple[LoginOutcome, list[Message]]:
        try:
            mailbox = mailbox_for(self.server.config, user)
        except MailprovError as exc:
            log.error("user %s has no usable mailbox path: %s", user, exc)
            return LoginOutcome.ERROR, []
        future = self.loop.run_in_executor(None, mailbox.open)
        try:
            messages = await asyncio.shield(future)
        except MailboxBusy:
            log.info("login %s from %s refused: mailbox in use", user, self.client)
            return LoginOutcome.BUSY, []
        except (MailboxError, OSError) as exc:
            log.error("cannot open the mailbox of %s: %s", user, exc)
            return LoginOutcome.ERROR, []
        except asyncio.CancelledError:
            future.add_done_callback(lambda _f: mailbox.close())  # the lock must not outlive us
            raise
        if self._closed:
            mailbox.close()
            return LoginOutcome.ERROR, []
        self.mailbox = mailbox
        return LoginOutcome.OK, messages

    async def _start_tls(self) -> None:
        assert self.transport is not None and self.session is not None and self.server.ssl_context is not None
        try:
            transport = await self.loop.start_tls(
                self.transport, self, self.server.ssl_context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("STLS handshake with %s failed: %s", self.client, exc)
            self.abort()
            self._closed = True
            return
        if transport is None:  # the connection went away during the handshake
            self._closed = True
            return
        self.transport = transport
        self._buffer.clear()
        self._run(self.session.tls_started())

    async def _update(self) -> None:
        assert self.session is not None and self.mailbox is not None
        mailbox = self.mailbox
        try:
            result = await asyncio.to_thread(mailbox.commit)
        finally:
            mailbox.close()
            self.mailbox = None
            self._updating = False
        if result.failed:
            log.error("%s: could not update %d messages: %s", self.session.user, len(result.failed), ", ".join(result.failed[:5]))
        log.info(
            "logout %s from %s: %d retrieved, %d deleted, %d marked seen",
            self.session.user,
            self.client,
            self.retrieved,
            result.deleted,
            result.marked_seen,
        )
        if not self._closed:
            self._run(self.session.update_result(result.deleted, not result.failed))

    # -- timers -------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self._lost or self.transport is None:
            return
        timeout = self.server.config.pop3.idle_timeout
        if self._closed:  # closing, but the client does not read what is left to flush
            if self.loop.time() - self._last >= timeout:
                self.abort()
            else:
                self._idle = self.loop.call_later(timeout, self._check_idle)
            return
        if self._busy:  # the server is working for the client (a login, an UPDATE): not idle
            self._last = self.loop.time()
        idle = self.loop.time() - self._last
        if idle < timeout:
            self._idle = self.loop.call_later(timeout - idle, self._check_idle)
            return
        log.info("closing idle session from %s after %d s (no UPDATE)", self.client, int(idle))
        if self._write_paused:  # the client stopped reading: nothing more can be said
            self.abort()
        else:
            self.transport.write(b"-ERR Idle timeout, closing the connection\r\n")
            self.transport.close()
            self._idle = self.loop.call_later(timeout, self._check_idle)  # in case it never drains
        self._closed = True

    def _tls_name(self) -> str:
        assert self.transport is not None
        obj = self.transport.get_extra_info("ssl_object")
        return obj.version() if obj is not None else "plaintext"


def _is_stream(pieces: Iterator[bytes]) -> bool:
    """A streamed message (a generator owning a file descriptor), not a one-piece result."""
    return hasattr(pieces, "gi_frame")
