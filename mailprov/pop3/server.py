"""The POP3 server's socket side: asyncio listeners, one :class:`Connection` per client.

The dialogue itself is :class:`mailprov.pop3.protocol.Session`; this module only moves bytes and
carries out the session's actions. What it shares with IMAP (listeners, limits, the login check, the
idle timer, the TLS upgrade) is :mod:`mailprov.listeners`.

* Listeners: ``pop3.listen`` (plain, STLS offered, RFC 2595) and ``pop3.tls_listen`` (implicit TLS,
  port 995). STLS upgrades in place with ``loop.start_tls``; whatever the client pipelined after STLS
  is discarded, so no plaintext command can act inside the TLS session.
* Commands are processed straight from ``data_received`` (pipelining works, RFC 2449); RETR reads the
  file with one open and one read and writes the reply with one ``transport.write``. Output respects
  flow control: while the transport's buffer is full (``pause_writing``) no further command is read and
  a large message is streamed piece by piece as the buffer drains.
* Password checks (argon2id, CPU-heavy), opening the mailbox and the UPDATE state run in worker threads;
  at most :data:`~mailprov.listeners.VERIFY_SLOTS` password checks run at once.
* Limits: line length (:data:`MAX_LINE`), ``pop3.idle_timeout`` (no UPDATE when it fires, RFC 1939),
  ``pop3.max_connections`` and ``pop3.max_connections_per_client``, failed logins slowed and counted per
  client address (:class:`~mailprov.limits.FailureThrottle`).
* A dropped connection releases the mailbox lock and changes nothing in the Maildir.

Diagnostics go to the ``mailprov.pop3`` logger: one line per login, failed login, logout and refusal.
Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from mailprov.config import Config
from mailprov.errors import MailprovError
from mailprov.listeners import LoginCheck, MailConnection, MailServer
from mailprov.maildir import maildir_path
from mailprov.pop3.mailbox import Mailbox, MailboxBusy, MailboxError, Message
from mailprov.pop3.protocol import Action, Close, Login, LoginOutcome, Reply, Retrieve, Session, StartTLS, Update
from mailprov.users import split

log = logging.getLogger("mailprov.pop3")

MAX_LINE = 2048  # octets per command line, CRLF included (RFC 2449 asks clients for at most 255)
MAX_BUFFER = 64 * 1024  # pipelined input held before the server stops reading
FAILED = {LoginCheck.BAD: LoginOutcome.BAD, LoginCheck.BAD_DISCONNECT: LoginOutcome.BAD_DISCONNECT, LoginCheck.ERROR: LoginOutcome.ERROR}


def mailbox_for(config: Config, address: str) -> Mailbox:
    """The :class:`Mailbox` of ``address``: its Maildir and its lock and size-cache files in STATE_DIR."""
    local, domain = split(address)
    maildir = maildir_path(config.paths.mail_dir, address)  # validates the address as path parts
    return Mailbox(maildir, Path(config.paths.state_dir) / "pop3" / domain / local)


class Connection(MailConnection):
    """One client: buffers lines, feeds the session, carries out its actions."""

    server: POP3Server
    refusal = "-ERR [SYS/TEMP] {}\r\n"
    idle_goodbye = b"-ERR Idle timeout, closing the connection\r\n"
    idle_note = " (no UPDATE)"  # RFC 1939 6: a session that ends without QUIT does not enter UPDATE

    def __init__(self, server: POP3Server, *, implicit_tls: bool) -> None:
        super().__init__(server, implicit_tls=implicit_tls)
        self.session: Session | None = None
        self.mailbox: Mailbox | None = None
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long line: drop until its end
        self._read_paused = False  # paused by us because too much pipelined input waits
        self._eof = False  # the client half-closed its side
        self._updating = False
        self._body: Iterator[bytes] | None = None  # the rest of a large message being streamed
        self.retrieved = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def _greet(self) -> None:
        self.session = Session(
            hostname=self.server.config.server.hostname,
            secure=self.implicit_tls,
            tls_available=not self.implicit_tls and self.server.ssl_context is not None,
            plaintext_ok=self.server.plaintext_ok(self.client),
            default_domain=self.server.default_domain,
        )
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
        super().connection_lost(exc)
        self._close_body()
        if self.mailbox and not self._updating:
            self.mailbox.close()  # a dropped session: release the lock, change nothing
            log.info("session of %s from %s dropped: nothing deleted", self.session.user if self.session else "?", self.client)
            self.mailbox = None

    def resume_writing(self) -> None:
        super().resume_writing()
        self._process()

    # -- processing ---------------------------------------------------------------------------

    def _process_input(self) -> None:
        """Handle buffered lines until one needs to wait (a task, a full output buffer, the end)."""
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
                self._spawn(self._update(), finish=True)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            self._internal_error()
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
        user, messages = action.user, []
        check = await self.server.check_login(self.client, user, action.password)
        if check is LoginCheck.OK:
            outcome, messages = await self._open_mailbox(user)
        else:
            outcome = FAILED[check]
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
        assert self.session is not None
        if await self._upgrade():
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


class POP3Server(MailServer):
    """All listeners of one POP3 service and the state shared by its connections; on stop, sessions
    already in UPDATE finish (``finishing``), the others are dropped with no UPDATE."""

    name = "pop3"
    upgrade = "STLS"
    log = log
    connection_class = Connection


def _is_stream(pieces: Iterator[bytes]) -> bool:
    """A streamed message (a generator owning a file descriptor), not a one-piece result."""
    return hasattr(pieces, "gi_frame")
