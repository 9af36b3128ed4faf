"""The SMTP listeners: aiosmtpd's protocol with our limits, on ports 25, 587 and 465.

aiosmtpd keeps the grammar; this subclass only adds what a server on the internet needs and aiosmtpd
leaves out, each at one well-defined point:

* connection limits, total and per client (``smtp.max_connections``, ``max_connections_per_client``):
  an over-limit client gets ``421 4.7.0`` instead of the banner;
* errors before disconnect (``smtp.max_errors``): every 4xx/5xx reply counts; then ``421 4.7.0`` and close;
* per-state timeouts: ``smtp.command_timeout`` between commands, ``smtp.data_timeout`` for the body;
* line length (``smtp.max_line_length``) and per-session command length limits (aiosmtpd keeps the
  latter in a class-wide dict that every new connection resets; we make it per connection);
* RFC 2034 enhanced status codes on every reply after EHLO, including aiosmtpd's built-in ones;
* strict line endings (RFC 5321 2.3.8): a command line that ends in a bare LF is refused with
  ``550 5.5.2 Error: bare <LF> received`` and the connection closed, as Postfix's
  ``smtpd_forbid_bare_newline = reject`` does; the DATA side is in the handler (docs/security.md);
* RFC 3207 4.2: STARTTLS inside TLS is refused (``554 5.5.1 Error: TLS already active``);
* RFC 5321 4.5.3.1.10: a ``452 4.5.3 Too many recipients`` is not counted as an error (up to
  RECIPIENT_OVERSHOOT of them, as Postfix's ``smtpd_recipient_overshoot_limit``), so the client can send
  the rest in the next transaction of the same session.

Modes: ``mx`` (STARTTLS offered, AUTH only after it, relay rules apply), ``submission`` (STARTTLS
required before anything else, AUTH required before MAIL), ``submissions`` (implicit TLS, AUTH required).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import ssl
import warnings
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail

from mailprov.config import Config
from mailprov.smtp import policy
from mailprov.smtp.context import SMTPContext
from mailprov.smtp.handler import SMTPHandler
from mailprov.workers import bind_sockets

log = logging.getLogger("mailprov.smtp")
# aiosmtpd's per-command chatter stays out of the mail log; its warning about AUTH without STARTTLS is
# wrong for port 465, where the whole connection is TLS (is_tls below; AUTH also refuses without it).
logging.getLogger("mail.log").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS", module="aiosmtpd")

IDENT = "ESMTP mailprov"
RECIPIENT_OVERSHOOT = 1000  # 452 4.5.3 replies not counted as errors, as Postfix's smtpd_recipient_overshoot_limit
# A plain <dot-atom@domain> path, the overwhelmingly common case, parsed without the email package.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_ENHANCED = {
    220: "2.0.0",
    221: "2.0.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.0.0",
    421: "4.7.0",
    450: "4.0.0",
    451: "4.0.0",
    452: "4.3.1",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}


def add_enhanced_code(status: str) -> str:
    """``503 Error: need MAIL command`` -> ``503 5.5.1 Error: need MAIL command`` (RFC 2034); replies that
    already carry one, and 334/354 intermediate replies, are left alone."""
    if len(status) < 4 or not status[:3].isdigit() or status[3] not in " -" or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3])
    if code in (334, 354):
        return status
    enhanced = _ENHANCED.get(code, f"{code // 100}.0.0")
    return f"{status[:4]}{enhanced} {status[4:]}"


class BareNewline(Exception):
    """A command line ended in LF without CR (RFC 5321 2.3.8 allows only CRLF)."""


class CRLFReader(asyncio.StreamReader):
    """aiosmtpd reads command lines with ``readuntil()`` (up to LF); this refuses one that lacks its CR,
    the ambiguity SMTP smuggling feeds on. DATA reads ``readuntil(b"\\r\\n")`` and is not affected."""

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await super().readuntil(separator)
        if separator == b"\n" and not line.endswith(b"\r\n"):
            raise BareNewline()
        return line


class MailprovSMTP(SMTP):
    """aiosmtpd's SMTP protocol plus limits (see the module docstring)."""

    # Method tables aiosmtpd rebuilds with inspect.getmembers() for every connection (a sixth of our CPU
    # under a connection-per-message load); built once per handler class here. aiosmtpd is pinned to the
    # tested range in pyproject.toml, and tests/smtp/test_server_init.py fails when its constructor sets
    # an attribute (or a value) that _fast_init does not. fast_init=False (aiosmtpd's own constructor,
    # without the CRLF-only reader) exists for that comparison only.
    live: ClassVar[int] = 0  # open sessions in this process (a stopping worker waits for them)
    sessions: ClassVar[weakref.WeakSet[MailprovSMTP]] = weakref.WeakSet()
    _tables: ClassVar[dict[type, tuple[list[str], list[tuple[str, str, bool]], list[str]]]] = {}

    def __init__(
        self, handler: SMTPHandler, *, ctx: SMTPContext, implicit_tls: bool = False, fast_init: bool = True, **kwargs: Any
    ) -> None:
        cfg = ctx.config.smtp
        self.line_length_limit = cfg.max_line_length + 1  # + the transparency dot; read by SMTP.__init__
        if fast_init:
            self._fast_init(handler, **kwargs)
        else:
            super().__init__(handler, **kwargs)
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.ctx = ctx
        self.implicit_tls = implicit_tls
        self.data_timeout = float(cfg.data_timeout)
        self.max_errors = cfg.max_errors
        self.client_ip = ""
        self._errors = 0
        self._in_ehlo = False
        self._slot = False
        self._counted = False
        self._refusal: str | None = None
        self._overshoot = 0
        self._hang_up = False

    def _fast_init(
        self,
        handler: SMTPHandler,
        *,
        hostname: str,
        ident: str,
        data_size_limit: int,
        enable_SMTPUTF8: bool,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        auth_required: bool,
        auth_require_tls: bool,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """aiosmtpd's SMTP.__init__ for the arguments we use, with the method tables cached."""
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self, CRLFReader(loop=loop, limit=self.line_length_limit), client_connected_cb=self._cb_client_connected, loop=loop
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._auth_required = auth_required
        key = type(handler)
        tables = self._tables.get(key)
        if tables is None:
            hooks = [m for m in dir(handler) if m.startswith("handle_")]
            auth: dict[str, tuple[str, bool]] = {}
            for obj, builtin in ((self, True), (handler, False)):
                for name in dir(obj):
                    if name.startswith("auth_"):
                        func = getattr(obj, name)
                        mech = getattr(func, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-"))
                        auth[mech] = (name, builtin)
            verbs = [m for m in dir(self) if m.startswith("smtp_")]
            tables = self._tables[key] = (hooks, [(k, n, b) for k, (n, b) in auth.items()], verbs)
        hooks, auth_names, verbs = tables
        self._auth_methods = {
            mech: _AuthMechAttr(getattr(self if builtin else handler, name), builtin) for mech, name, builtin in auth_names
        }
        self._handle_hooks = {m[7:]: getattr(handler, m) for m in hooks}
        self._ehlo_hook_ver = "new" if "EHLO" in self._handle_hooks else None
        self._smtp_methods = {m[5:]: getattr(self, m) for m in verbs}
        self._enforce_call_limit = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """A plain ``<user@domain>`` without the email package's parser (a tenth of our CPU); anything else
        goes to aiosmtpd's parser. Either way mailprov.smtp.address validates the result strictly."""
        match = _SIMPLE_PATH.match(arg)
        if match:
            return match.group(1), arg[match.end() :]
        return super()._getaddr(arg)

    @property
    def is_tls(self) -> bool:
        """Whether the session is encrypted (implicit TLS or after STARTTLS)."""
        return self.implicit_tls or self._tls_protocol is not None

    def close(self) -> None:
        """Close the connection (after a final reply)."""
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            self.client_ip = str(peer[0]) if peer else ""
            self._refusal = self.ctx.connections.acquire(self.client_ip)
            self._slot = self._refusal is None
            self._counted = True
            MailprovSMTP.live += 1
            MailprovSMTP.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            MailprovSMTP.live -= 1
            MailprovSMTP.sessions.discard(self)
        if self._slot:
            self._slot = False
            self.ctx.connections.release(self.client_ip)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal:
            log.warning("refused connection from [%s]: %s", self.client_ip, self._refusal)
            await self.push(f"421 4.7.0 {self.hostname} {self._refusal}")
            self.close()
            return
        await super()._handle_client()

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's reply to an exception in a command; a bare LF ends the session, as Postfix does."""
        if isinstance(error, BareNewline):
            log.warning("bare <LF> received from [%s]: disconnecting", self.client_ip)
            self._hang_up = True
            return f"550 5.5.2 {self.hostname} Error: bare <LF> received"
        return await super().handle_exception(error)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.is_tls:  # RFC 3207 4.2: a second STARTTLS (or one on port 465) is refused
            await self.push("554 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def _helo_refused(self, hostname: str) -> bool:
        refusal = policy.helo_decision(hostname)
        if refusal:
            await self.push(refusal.reply())
        return refusal is not None

    async def smtp_HELO(self, hostname: str) -> None:
        if not await self._helo_refused(hostname):
            await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._helo_refused(hostname):
            return
        self.command_size_limits.clear()  # aiosmtpd adds to these on every EHLO; start afresh each time
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_DATA(self, arg: str) -> None:
        self._reset_timeout(self.data_timeout)
        await super().smtp_DATA(arg)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            if self.session is not None and self.session.extended_smtp and not self._in_ehlo:
                status = add_enhanced_code(status)
            code = status[:3]
        else:
            code = status[:3].decode("ascii", "replace")
        await super().push(status)
        if self._hang_up:
            self.close()
            return
        if code == "452" and status[4:9] == "4.5.3":
            self._overshoot += 1
            if self._overshoot <= RECIPIENT_OVERSHOOT:
                return
        if code[:1] in ("4", "5") and code not in ("421", "535") and self.transport is not None:
            self._errors += 1
            if self._errors >= self.max_errors:
                log.warning("disconnecting [%s] after %d errors", self.client_ip, self._errors)
                await super().push(f"421 4.7.0 {self.hostname} Error: too many errors")
                self.close()


def bind_listeners(config: Config) -> list[tuple[str, socket.socket]]:
    """Bind every configured listener: (mode, listening socket). Done as root, before the privilege drop."""
    listeners = [("mx", a) for a in config.smtp.listen]
    listeners += [("submission", a) for a in config.smtp.submission_listen]
    listeners += [("submissions", a) for a in config.smtp.submissions_listen]
    return bind_sockets("smtp", listeners, log)


def make_factory(ctx: SMTPContext, mode: str) -> Callable[[], MailprovSMTP]:
    """The protocol factory for one listener mode."""
    cfg = ctx.config
    loop = asyncio.get_running_loop()
    handler = SMTPHandler(ctx, mode)
    implicit = mode == "submissions"

    def factory() -> MailprovSMTP:
        return MailprovSMTP(
            handler,
            ctx=ctx,
            implicit_tls=implicit,
            hostname=cfg.server.hostname,
            ident=IDENT,
            data_size_limit=cfg.smtp.max_message_size,
            enable_SMTPUTF8=True,
            tls_context=None if implicit else ctx.tls_context,
            require_starttls=mode == "submission",
            auth_required=mode != "mx",
            auth_require_tls=not implicit,
            timeout=float(cfg.smtp.command_timeout),
            loop=loop,
        )

    return factory


async def end_sessions(grace: float) -> None:
    """Wait up to ``grace`` seconds for open sessions to end, then close the rest. A session cut in the
    middle of a transaction never got its 250, so its client keeps the message and retries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while MailprovSMTP.live and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for session in list(MailprovSMTP.sessions):
        session.close()
    await asyncio.sleep(0)  # let connection_lost run


async def create_servers(ctx: SMTPContext, listeners: list[tuple[str, socket.socket]]) -> list[asyncio.Server]:
    """asyncio servers on bound listeners (not yet serving: call ``start_serving`` after the drop)."""
    loop = asyncio.get_running_loop()
    servers = []
    for mode, sock in listeners:
        ssl_context = ctx.tls_context if mode == "submissions" else None
        servers.append(await loop.create_server(make_factory(ctx, mode), sock=sock, ssl=ssl_context, start_serving=False))
    return servers
