"""The IMAP server's socket side: asyncio listeners, one :class:`Connection` per client.

The grammar is :mod:`mailprov.imap.parser`, the dialogue :class:`mailprov.imap.session.Session`; this
module moves bytes and carries out the session's actions. What it shares with POP3 (listeners, limits,
the login check, the idle timer, the TLS upgrade) is :mod:`mailprov.listeners`.

* Listeners: ``imap.listen`` (plain, STARTTLS and LOGINDISABLED, RFC 3501 6.2.1) and ``imap.tls_listen``
  (implicit TLS, port 993, RFC 8314). After ``OK Begin TLS`` whatever the client pipelined is discarded,
  so no plaintext command can act inside the TLS session.
* Framing (:class:`~mailprov.imap.parser.CommandReader`) runs on the event loop: ``+`` for synchronizing
  literals, limits on lines and literals. A whole command then runs in a worker thread (the store is
  synchronous file I/O), one at a time per connection; its output is handed to the loop in batches
  and the thread waits while the client does not read (flow control).
* Password checks (argon2id) run in threads, at most :data:`~mailprov.listeners.VERIFY_SLOTS` at once;
  failures are slowed and counted per client address by :class:`~mailprov.limits.FailureThrottle`, as
  in POP3 and SMTP (with ``imap.processes`` above 1, in the master, for every worker: mailprov.workers).
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
from mailprov.listeners import LoginCheck, MailConnection, MailServer
from mailprov.maildir import maildir_path
from mailprov.users import UserDB

log = logging.getLogger("mailprov.imap")

WORKERS = 16  # threads running commands (file I/O) for all sessions
MAX_ERRORS = 10  # protocol errors in a row before the session is closed
MAX_PIPELINED = 1024 * 1024  # input buffered while a command runs before reading pauses
OUTPUT_AHEAD = 1024 * 1024  # output buffered for a client before the command writing it waits


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


class Connection(MailConnection):
    """One client: frames commands, runs them one at a time, carries out the session's actions."""

    server: IMAPServer
    refusal = "* BYE [UNAVAILABLE] {}\r\n"
    idle_goodbye = b"* BYE Autologout; idle for too long\r\n"

    def __init__(self, server: IMAPServer, *, implicit_tls: bool) -> None:
        super().__init__(server, implicit_tls=implicit_tls)
        self.session: Session | None = None
        self.reader = CommandReader(literal_limit=server.config.imap.append_limit)
        self.output = _ThreadOutput(self)
        self.can_write = threading.Event()  # what a worker thread waits on (flow control)
        self.can_write.set()
        self._errors = 0
        self._auth_tag: str | None = None  # AUTHENTICATE waiting for the client's response line
        self._idle_tag: str | None = None
        self._idle_stop: asyncio.Event | None = None
        self._idle_line = b""

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def _greet(self) -> None:
        config = self.server.config
        if self.transport is not None:
            # A FETCH of many messages writes 256 KiB batches: let a worker run one batch ahead of the
            # socket instead of stopping at asyncio's default 64 KiB after every batch.
            self.transport.set_write_buffer_limits(high=OUTPUT_AHEAD)
        self.session = Session(
            hostname=config.server.hostname,
            secure=self.implicit_tls,
            tls_available=not self.implicit_tls and self.server.ssl_context is not None,
            plaintext_ok=self.server.plaintext_ok(self.client),
            append_limit=config.imap.append_limit,
            open_store=self.server.open_store,
            default_domain=self.server.default_domain,
        )
        self.write(self.session.greeting())

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
        super().connection_lost(exc)
        self.can_write.set()  # a worker thread waiting to write sees ``lost`` and gives up
        if self._idle_stop:
            self._idle_stop.set()
        if self.reader.in_command:
            log.info("client %s went away in the middle of a command; nothing of it was kept", self.client)
        if not self._busy and self.session is not None:
            self.session.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.can_write.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.can_write.set()

    # -- processing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send (on the loop thread)."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def _hang_up(self, text: str) -> None:
        self.write(f"* BYE {text}\r\n".encode())
        self._closed = True
        if self.transport:
            self.transport.close()

    def _process_input(self) -> None:
        assert self.session is not None
        if self._busy or self._closed:
            return
        if self._idle_tag is not None:
            # One line ends IDLE (RFC 2177: DONE). What follows it before the IDLE task has finished is the
            # client's next command: it stays in the buffer for after IDLE, never taken for an IDLE line.
            if self._idle_stop is not None and not self._idle_stop.is_set():
                line = self.reader.next_line()
                if line is not None:
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

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ConnectionGone:
            pass
        except Exception:
            self._internal_error()
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
        check = await self.server.check_login(self.client, action.user, action.password)
        if check is LoginCheck.ERROR:
            self.write(f"{action.tag} NO [UNAVAILABLE] Authentication is not possible now\r\n".encode())
            return
        if check is not LoginCheck.OK:
            if self.lost:
                return
            self.session.login_result(action.tag, action.user, False, self)
            if check is LoginCheck.BAD_DISCONNECT:
                self._hang_up("Too many failed logins")
            return
        try:
            await self._in_thread(self.session.login_result, action.tag, action.user, True, self.output)
        except (StoreError, OSError) as exc:
            log.error("cannot open the mailbox of %s: %s", action.user, exc)
            return
        log.info("login %s from %s (%s)", action.user, self.client, self._tls_name())

    async def _start_tls(self, reply: bytes) -> None:
        assert self.transport is not None and self.session is not None
        self.transport.pause_reading()
        self.reader.buffer.clear()  # nothing pipelined after STARTTLS may act inside TLS
        self.write(reply)  # only now: the client's ClientHello may follow at once
        if await self._upgrade():
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

    def _working(self) -> bool:
        # Working for the client, or in IDLE (its own limit), counts as activity; a command stuck because
        # the client stopped reading its output does not (it would hold a worker thread for ever).
        return (self._busy and not self._write_paused) or self._idle_tag is not None


class IMAPServer(MailServer):
    """All listeners of one IMAP service and the state its connections share; on stop, commands
    already running in threads finish."""

    name = "imap"
    upgrade = "STARTTLS"
    log = log
    connection_class = Connection

    def __init__(self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(config, users=users, ssl_context=ssl_context)
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="imap")

    async def stop(self) -> None:
        """Stop listening and drop every session; commands already running in threads finish."""
        await super().stop()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown)
        self.executor = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="imap")

    def open_store(self, user: str) -> Store:
        """The user's mailboxes (Maildir under ``paths.mail_dir``), special-use folders created."""
        try:
            path = maildir_path(self.config.paths.mail_dir, user)
        except MailprovError as exc:
            raise StoreError("CANNOT", str(exc)) from exc
        return Store(path, host=self.config.server.hostname)
