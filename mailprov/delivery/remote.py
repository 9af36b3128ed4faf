"""RemoteCourier: delivers queued mail to other domains over SMTP (aiosmtplib), found by MX (dnspython).

What it does for one message (``deliver``), per destination domain, all domains at once:

1. Route (:mod:`mailprov.delivery.routing`): transport/relayhost, address literal, or MX hosts with their
   addresses (IPv6 then IPv4). A DNS answer of "no such domain", a null MX or a mail loop is permanent;
   a DNS failure is temporary.
2. TLS policy (:mod:`mailprov.delivery.tlspolicy`), raised by the domain's MTA-STS policy when it
   publishes one (:mod:`mailprov.delivery.mta_sts`).
3. Wait for a slot: at most ``queue.per_destination`` deliveries to one destination at a time.
4. Try the (host, address) pairs in order until one gives an answer: a connection that fails, a banner
   or EHLO that is not 2xx, TLS that the policy requires but cannot be had, all move on to the next.
   A cached idle connection to that host is reused when there is one (no new TCP, TLS or EHLO).
5. One transaction for up to 50 recipients (MAIL, RCPT each, DATA): the replies decide each recipient's
   :class:`~mailprov.delivery.base.Result` -- 2xx delivered, 4xx temporary, 5xx permanent. A reply to
   MAIL or DATA applies to every recipient it covers; a lost connection or a timeout is temporary.

The message is DKIM-signed (:mod:`mailprov.delivery.dkim`) once per call when its sender is local.

Trust boundary: everything the remote server says is data. Its replies are kept to one line of at most
500 characters in results and logs. The relay password is read from its file when a connection
authenticates, sent only over TLS (or to a loopback address), and never logged.

Diagnostics: the queue runner logs each Result (relay, delays from ``timings`` -- dns, wait, connect,
xfer --, DSN code, reply). This module adds, starting with the queue id, a line per TLS session and per
host that could not be used, and a debug line per recipient.

Parameters: ``outbound.*`` (port, resolvers, helo_name, source_address, timeouts, tls, tls_policies,
mta_sts, dkim_*, transports) and ``queue.per_destination``. Constructor keywords exist for tests and
labs: ``resolver`` (a dnspython asyncio resolver), ``ca_file`` (trust anchors for ``verify`` and for
MTA-STS fetches), ``sts_fetch`` (the MTA-STS HTTPS fetch), ``sts_port`` (HTTPS port for MTA-STS).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import dns.asyncresolver
from aiosmtplib.protocol import normalize_message_line_endings

from mailprov.config import Config
from mailprov.delivery.base import Envelope, Outcome, Result
from mailprov.delivery.dkim import DKIMSigner
from mailprov.delivery.mta_sts import Fetcher, HTTPSFetcher, PolicyCache
from mailprov.delivery.routing import Hop, Route, Router, RoutingError
from mailprov.delivery.tlspolicy import TLSPolicy, client_context, policy_for

log = logging.getLogger("mailprov.outbound")

RECIPIENTS_PER_TRANSACTION = 50  # as Postfix's smtp_destination_recipient_limit
IDLE_TIMEOUT = 5.0  # seconds an unused connection stays open for the next message
REUSE_TIME_LIMIT = 300.0  # seconds after which a connection is not reused any more
MAX_REPLY = 500
_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def split_reply(code: int, text: str) -> tuple[str, str]:
    """(enhanced status, one-line text) of a reply; the enhanced code is taken from the text when it
    starts with one of the same class, else derived from the reply code (RFC 3463)."""
    line = " ".join(part.strip() for part in (text or "").splitlines() if part.strip())
    # Multi-line replies repeat the enhanced code on every line: drop the repeats.
    match = _ENHANCED_RE.match(line)
    if match and int(match.group(1)) == code // 100:
        enhanced = ".".join(match.groups())
        line = line[match.end() :]
        line = line.replace(f" {enhanced} ", " ")
    else:
        cls = code // 100 if code // 100 in (2, 4, 5) else 4
        enhanced = f"{cls}.0.0"
    return enhanced, line[:MAX_REPLY]


def _result_from_reply(code: int, text: str, relay: str, timings: dict[str, float]) -> Result:
    enhanced, line = split_reply(code, text)
    if 200 <= code < 300:
        outcome = Outcome.DELIVERED
    elif 500 <= code < 600:
        outcome = Outcome.PERMANENT
    else:  # 4xx, and anything malformed, is worth another try
        outcome = Outcome.TEMPORARY
        if enhanced[0] != "4":
            enhanced = "4" + enhanced[1:]
    return Result(outcome, code, enhanced, line, relay, dict(timings))


def relay_name(hop: Hop, address: str) -> str:
    """``mx.example.org[192.0.2.1]:25`` (Postfix's notation)."""
    return f"{hop.name}[{address}]:{hop.port}"


class SessionError(Exception):
    """A host that could not be used for this attempt; the next one is tried."""

    def __init__(self, message: str, *, code: int = 451, enhanced: str = "4.4.1") -> None:
        super().__init__(message)
        self.message = message[:MAX_REPLY]
        self.code = code
        self.enhanced = enhanced
        self.relay = ""

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600


@dataclass
class Session:
    """One open SMTP connection and what is known about it."""

    smtp: aiosmtplib.SMTP
    key: tuple[object, ...]
    relay: str
    tls: str  # "" for plain text, else "TLSv1.3 TLS_AES_256_GCM_SHA384 verified"
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    transactions: int = 0

    @property
    def usable(self) -> bool:
        return self.smtp.is_connected and time.monotonic() - self.created < REUSE_TIME_LIMIT

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for it."""
        with contextlib.suppress(Exception):
            if self.smtp.is_connected:
                await asyncio.wait_for(self.smtp.quit(timeout=2), 3)
        self.smtp.close()


class ConnectionPool:
    """Idle connections by (address, port, host name, TLS level, user), closed after IDLE_TIMEOUT."""

    def __init__(self) -> None:
        self._idle: dict[tuple[object, ...], list[Session]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: tuple[object, ...]) -> Session | None:
        """The most recently used idle connection for ``key``, if it can still be used."""
        sessions = self._idle.get(key)
        while sessions:
            session = sessions.pop()
            if session.usable:
                return session
            self._close_later(session)
        return None

    def put(self, session: Session) -> None:
        """Keep ``session`` for the next message to the same place."""
        if not session.usable:
            self._close_later(session)
            return
        session.last_used = time.monotonic()
        self._idle.setdefault(session.key, []).append(session)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def _close_later(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        while any(self._idle.values()):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for key, sessions in list(self._idle.items()):
                keep = [s for s in sessions if now - s.last_used < IDLE_TIMEOUT and s.usable]
                for session in sessions:
                    if session not in keep:
                        self._close_later(session)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]

    async def close(self) -> None:
        """Close every idle connection."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        sessions = [s for group in self._idle.values() for s in group]
        self._idle.clear()
        await asyncio.gather(*(s.quit() for s in sessions), *self._closing, return_exceptions=True)


@dataclass
class _Attempt:
    """Recipients still undecided for one domain, and the results so far."""

    recipients: list[str]
    results: dict[str, Result] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class RemoteCourier:
    """The courier for recipients in other domains (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: dns.asyncresolver.Resolver | None = None,
        ca_file: str | None = None,
        sts_fetch: Fetcher | None = None,
        sts_port: int = 443,
    ) -> None:
        self.config = config
        self.router = Router(config, resolver)
        self.ca_file = ca_file
        self.sts: PolicyCache | None = None
        if config.outbound.mta_sts:
            fetch = sts_fetch or HTTPSFetcher(self.router.resolver, ca_file=ca_file, port=sts_port)
            self.sts = PolicyCache(config.paths.state_dir, self.router.resolver, fetch=fetch)
        self.dkim = DKIMSigner(config)
        self.pool = ConnectionPool()
        self._slots: dict[str, asyncio.Semaphore] = {}
        # Made now, not at the first TLS connection: the trust anchors (ca_file, SSL_CERT_FILE, the system
        # bundle) are read while a service started as root still is root.
        self._contexts: dict[bool, ssl.SSLContext] = {verify: client_context(verify=verify, ca_file=ca_file) for verify in (False, True)}
        self._helo = config.outbound_helo
        self._source = (config.outbound.source_address, 0) if config.outbound.source_address else None

    # -- the courier contract -------------------------------------------------------------------

    async def deliver(self, envelope: Envelope, message: bytes) -> dict[str, Result]:
        """Deliver ``message`` to every recipient of ``envelope``; one Result each, never raises."""
        by_domain: dict[str, list[str]] = {}
        for rcpt in envelope.recipients:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        try:
            signed = self.dkim.sign(message, envelope.sender)
        except Exception as exc:  # never lose a message over a signature
            log.warning("%s: DKIM signing failed, sending unsigned: %s", envelope.queue_id, exc)
            signed = message
        outcomes: list[dict[str, Result] | BaseException]
        if len(by_domain) == 1:  # the queue runner's usual call: one domain, no task needed
            ((domain, rcpts),) = by_domain.items()
            try:
                outcomes = [await self._deliver_domain(envelope, domain, rcpts, signed)]
            except Exception as exc:
                outcomes = [exc]
        else:
            outcomes = await asyncio.gather(
                *(self._deliver_domain(envelope, domain, rcpts, signed) for domain, rcpts in by_domain.items()),
                return_exceptions=True,
            )
        results: dict[str, Result] = {}
        for (_domain, rcpts), outcome in zip(by_domain.items(), outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("%s: internal error delivering to %s: %r", envelope.queue_id, ", ".join(rcpts), outcome, exc_info=outcome)
                outcome = {r: Result.temporary(f"internal error: {type(outcome).__name__}", code=451, enhanced="4.3.0") for r in rcpts}
            results.update(outcome)
        return results

    async def close(self) -> None:
        """Close the cached connections."""
        await self.pool.close()

    # -- one destination domain -----------------------------------------------------------------

    async def _deliver_domain(self, envelope: Envelope, domain: str, rcpts: list[str], message: bytes) -> dict[str, Result]:
        qid = envelope.queue_id
        start = time.monotonic()
        attempt = _Attempt(list(rcpts))
        try:
            route = await self.router.route(domain)
        except RoutingError as exc:
            attempt.timings["dns"] = time.monotonic() - start
            outcome = Outcome.TEMPORARY if exc.temporary else Outcome.PERMANENT
            result = Result(outcome, exc.code, exc.enhanced, exc.message, "", dict(attempt.timings))
            return self._finish(qid, {r: result for r in rcpts}, envelope)
        sts = None
        if self.sts is not None and route.kind in ("mx", "implicit-mx"):
            sts = await self.sts.policy(domain)
        policy = policy_for(self.config, domain, transport=route.transport, sts=sts)
        attempt.timings["dns"] = time.monotonic() - start

        waited = time.monotonic()
        async with self._slot(route.destination):
            attempt.timings["wait"] = time.monotonic() - waited
            last_error = await self._try_targets(envelope, route, policy, attempt, message)
        if attempt.recipients:  # nobody answered for these: the last host's problem is their story
            err = last_error or SessionError(f"no usable host for {domain}")
            outcome = Outcome.PERMANENT if err.permanent else Outcome.TEMPORARY
            for rcpt in attempt.recipients:
                attempt.results[rcpt] = Result(outcome, err.code, err.enhanced, err.message, err.relay, dict(attempt.timings))
        return self._finish(qid, attempt.results, envelope)

    def _slot(self, destination: str) -> asyncio.Semaphore:
        slot = self._slots.get(destination)
        if slot is None:
            if len(self._slots) > 10000:  # forget idle destinations so the table cannot grow forever
                for key in [k for k, s in self._slots.items() if not s.locked() and s._value == self.config.queue.per_destination]:
                    del self._slots[key]
            slot = self._slots[destination] = asyncio.Semaphore(self.config.queue.per_destination)
        return slot

    async def _try_targets(
        self, envelope: Envelope, route: Route, policy: TLSPolicy, attempt: _Attempt, message: bytes
    ) -> SessionError | None:
        """Try hosts in order until every recipient has an answer. Returns None, or the last host's failure
        with every host's problem in its message (the DSN and the log then tell the whole attempt)."""
        qid = envelope.queue_id
        last_error: SessionError | None = None
        problems: list[str] = []
        for hop, address in route.targets():
            if not policy.mx_permitted(hop.name):
                last_error = SessionError(
                    f"MX host {hop.name} is not allowed by the MTA-STS policy of {route.domain}", code=451, enhanced="4.7.5"
                )
                last_error.relay = relay_name(hop, address)
                problems.append(last_error.message)
                log.warning("%s: %s", qid, last_error.message)
                continue
            if policy.sts is not None and policy.sts.mode == "testing" and not policy.sts.permits(hop.name):
                log.warning("%s: MTA-STS (testing) of %s does not list MX %s; delivering anyway", qid, route.domain, hop.name)
            try:
                await self._deliver_via(envelope, route, hop, address, policy, attempt, message)
            except SessionError as exc:
                exc.relay = relay_name(hop, address)
                last_error = exc
                problems.append(exc.message)
                log.info("%s: %s: %s", qid, exc.relay, exc.message)
                continue
            if not attempt.recipients:
                return None
        if last_error is not None and len(problems) > 1:
            combined = SessionError("; ".join(problems), code=last_error.code, enhanced=last_error.enhanced)
            combined.relay = last_error.relay
            return combined
        return last_error

    async def _deliver_via(
        self, envelope: Envelope, route: Route, hop: Hop, address: str, policy: TLSPolicy, attempt: _Attempt, message: bytes
    ) -> None:
        """Deliver to all undecided recipients through one host; raises SessionError to move on."""
        relay = relay_name(hop, address)
        user = route.transport.username if route.transport else ""
        key = (address, hop.port, hop.name, policy.level, user)
        while attempt.recipients:
            session = self.pool.take(key)
            reused = session is not None
            connect_start = time.monotonic()
            if session is None:
                session = await self._open(envelope.queue_id, route, hop, address, policy, key)
            attempt.timings["connect"] = attempt.timings.get("connect", 0.0) + (time.monotonic() - connect_start)
            batch = attempt.recipients[:RECIPIENTS_PER_TRANSACTION]
            xfer_start = time.monotonic()
            try:
                replies, keep = await self._transaction(session, envelope, batch, message)
            except _StaleConnection:
                session.smtp.close()
                if reused:  # the server closed an idle connection: open a fresh one and go again
                    continue
                raise SessionError(f"lost connection with {relay} before MAIL FROM") from None
            except BaseException:  # cancelled, or a bug: the connection's state is unknown, drop it
                session.smtp.close()
                raise
            attempt.timings["xfer"] = attempt.timings.get("xfer", 0.0) + (time.monotonic() - xfer_start)
            for rcpt, (code, text) in replies.items():
                attempt.results[rcpt] = _result_from_reply(code, text, relay, attempt.timings)
            attempt.recipients = [r for r in attempt.recipients if r not in replies]
            session.transactions += 1
            if keep:
                self.pool.put(session)
            else:
                await session.quit()

    # -- connections ----------------------------------------------------------------------------

    def _context(self, verify: bool) -> ssl.SSLContext:
        if verify not in self._contexts:
            self._contexts[verify] = client_context(verify=verify, ca_file=self.ca_file)
        return self._contexts[verify]

    async def _connect_socket(self, address: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._source:
                sock.bind(self._source)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), self.config.outbound.connect_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _open(
        self, qid: str, route: Route, hop: Hop, address: str, policy: TLSPolicy, key: tuple[object, ...], *, plain: bool = False
    ) -> Session:
        """Connect, read the banner, EHLO, STARTTLS (per policy), EHLO again, AUTH (transports)."""
        relay = relay_name(hop, address)
        transport = route.transport
        implicit = bool(transport and transport.implicit_tls)
        try:
            sock = await self._connect_socket(address, hop.port)
        except TimeoutError:
            raise SessionError(f"connect to {relay}: timed out after {self.config.outbound.connect_timeout}s", enhanced="4.4.1") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SessionError(f"connect to {relay}: {reason}", enhanced="4.4.1") from None
        smtp = aiosmtplib.SMTP(
            hostname=hop.name,  # only used as the TLS server name: the socket is already connected
            sock=sock,
            local_hostname=self._helo,
            timeout=self.config.outbound.command_timeout,
            use_tls=implicit,
            start_tls=False,
            tls_context=self._context(policy.verify) if implicit else None,
        )
        tls = ""
        try:
            try:
                await smtp.connect(timeout=self.config.outbound.connect_timeout)
            except aiosmtplib.SMTPConnectResponseError as exc:
                raise SessionError(f"{relay} refused the connection: {exc.code} {_one_line(exc.message)}", code=exc.code) from None
            await self._hello(smtp, relay)
            if implicit:
                tls = _describe_tls(smtp, policy.verify)
            elif policy.starttls and not plain:
                if smtp.supports_extension("starttls"):
                    try:
                        await smtp.starttls(server_hostname=hop.name, tls_context=self._context(policy.verify))
                        tls = _describe_tls(smtp, policy.verify)
                        # A server may refuse the handshake only after it completed on our side (TLS 1.3
                        # sends the client certificate last): a connection that dies at the EHLO that follows
                        # failed at TLS too.
                        await self._hello(smtp, relay)
                    except (ssl.SSLError, ssl.CertificateError, aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                        smtp.close()
                        reason = _tls_reason(exc)
                        if policy.required:
                            text = f"TLS with {relay} failed: {reason} (policy {policy.describe()})"
                            raise SessionError(text, enhanced="4.7.5") from None
                        # RFC 7435: opportunistic TLS that fails must not stop delivery: go again in plain text.
                        log.info("%s: TLS with %s failed (%s); retrying without TLS", qid, relay, reason)
                        return await self._open(qid, route, hop, address, policy, key, plain=True)
                    except aiosmtplib.SMTPResponseException as exc:
                        if policy.required:
                            raise SessionError(f"{relay} refused STARTTLS: {exc.code} {_one_line(exc.message)}", enhanced="4.7.5") from None
                        smtp.close()
                        return await self._open(qid, route, hop, address, policy, key, plain=True)
                elif policy.required:
                    raise SessionError(
                        f"{relay} does not offer STARTTLS, but the policy is {policy.describe()}", code=451, enhanced="4.7.10"
                    )
            if tls:
                log.info("%s: %s: %s connection established", qid, relay, tls)
            if transport and transport.username:
                await self._authenticate(smtp, relay, transport.username, transport.password_file, bool(tls), address)
        except SessionError:
            smtp.close()
            raise
        except aiosmtplib.SMTPTimeoutError:
            smtp.close()
            raise SessionError(f"{relay}: timed out waiting for the greeting or EHLO reply", enhanced="4.4.2") from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, ConnectionError) as exc:
            smtp.close()
            if isinstance(exc.__cause__, ssl.SSLError):  # implicit TLS: aiosmtplib wraps the handshake error
                raise SessionError(f"TLS with {relay} failed: {_tls_reason(exc.__cause__)}", enhanced="4.7.5") from None
            raise SessionError(f"{relay}: lost connection during the greeting: {_one_line(str(exc))}", enhanced="4.4.2") from None
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise SessionError(f"{relay} said: {exc.code} {_one_line(exc.message)} (during the greeting)", code=exc.code) from None
        except (ssl.SSLError, OSError) as exc:  # implicit TLS handshake failures land here
            smtp.close()
            raise SessionError(f"TLS with {relay} failed: {_tls_reason(exc)}", enhanced="4.7.5") from None
        except BaseException:  # cancelled (the queue is stopping), or a bug: never leak the socket
            smtp.close()
            raise
        return Session(smtp, key, relay, tls)

    async def _hello(self, smtp: aiosmtplib.SMTP, relay: str) -> None:
        """EHLO, or HELO when the server does not know EHLO; a 5xx to both means this host is unusable."""
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if exc.code == 421 or not 500 <= exc.code < 600:
                raise
            await smtp.helo()

    async def _authenticate(self, smtp: aiosmtplib.SMTP, relay: str, username: str, password_file: str, tls: bool, address: str) -> None:
        if not tls and not ipaddress.ip_address(address).is_loopback:
            raise SessionError(f"not sending the password for {username} to {relay} without TLS", enhanced="4.7.0")
        try:
            password = Path(password_file).read_text().splitlines()[0] if password_file else ""
        except (OSError, IndexError) as exc:
            raise SessionError(f"cannot read the relay password file {password_file}: {exc}", enhanced="4.7.0") from None
        try:
            await smtp.login(username, password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # Like Postfix's smtp_sasl_auth_soft_bounce: a refused login is usually a fixable configuration
            # problem, so defer rather than bounce.
            raise SessionError(
                f"{relay} refused AUTH for {username}: {exc.code} {_one_line(exc.message)}", code=454, enhanced="4.7.8"
            ) from None
        except aiosmtplib.SMTPException as exc:
            raise SessionError(f"AUTH for {username} at {relay} failed: {_one_line(str(exc))}", enhanced="4.7.0") from None

    # -- one transaction --------------------------------------------------------------------------

    async def _transaction(
        self, session: Session, envelope: Envelope, rcpts: Sequence[str], message: bytes
    ) -> tuple[dict[str, tuple[int, str]], bool]:
        """MAIL, RCPT..., DATA on ``session``: (reply per recipient decided, keep the connection?).

        Raises _StaleConnection when the connection died before MAIL FROM got any reply."""
        smtp = session.smtp
        relay = session.relay
        timeout = self.config.outbound.command_timeout
        options: list[str] = []
        encoding = "ascii"
        if smtp.supports_extension("size"):
            limit = smtp.esmtp_extensions.get("size", "")
            if limit.isdigit() and 0 < int(limit) < len(message):
                text = f"message size {len(message)} exceeds the size limit {limit} of {relay}"
                return {r: (552, f"5.3.4 {text}") for r in rcpts}, True
            options.append(f"SIZE={len(message)}")
        if envelope.body_8bit and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        # RFC 6531: an address with non-ASCII characters can only travel with SMTPUTF8.
        if envelope.smtputf8 or not all(a.isascii() for a in (envelope.sender, *rcpts)):
            if not smtp.supports_extension("smtputf8"):
                return {r: (553, f"5.6.7 {relay} does not support SMTPUTF8, which this message needs") for r in rcpts}, True
            options.append("SMTPUTF8")
            encoding = "utf-8"
        # An address that cannot be put on a command line fails alone, before anything is sent.
        if not _wire_safe(envelope.sender):
            return {r: (553, "5.1.7 the sender address cannot be sent over SMTP") for r in rcpts}, True
        replies: dict[str, tuple[int, str]] = {r: (553, "5.1.3 the address cannot be sent over SMTP") for r in rcpts if not _wire_safe(r)}
        sendable = [r for r in rcpts if r not in replies]
        if not sendable:
            return replies, True

        stage = "MAIL FROM"
        accepted: list[str] = []
        try:
            # MAIL and RCPT go through aiosmtplib's execute_command with the envelope addresses exactly as
            # queued: its mail()/rcpt() re-parse them with email.utils.parseaddr, which may rewrite unusual
            # (but valid) addresses and costs more than the rest of the transaction's Python code.
            opts = [o.encode("ascii") for o in options]
            try:
                reply = await smtp.execute_command(b"MAIL", b"FROM:<" + envelope.sender.encode(encoding) + b">", *opts, timeout=timeout)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
                raise _StaleConnection() from None
            if reply.code != 250:
                if reply.code == 421:
                    if session.transactions:  # an idle connection the server is timing out: use a fresh one
                        raise _StaleConnection() from None
                    raise _Closing(reply.code, reply.message) from None
                await _rset(smtp, timeout)
                replies.update({r: (reply.code, reply.message) for r in sendable})
                return replies, smtp.is_connected
            stage = "RCPT TO"
            for rcpt in sendable:
                reply = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode(encoding) + b">", timeout=timeout)
                if reply.code in (250, 251):
                    accepted.append(rcpt)
                    continue
                replies[rcpt] = (reply.code, reply.message)
                if reply.code == 421:
                    raise _Closing(reply.code, reply.message) from None
            if not accepted:
                await _rset(smtp, timeout)
                return replies, smtp.is_connected
            stage = "end of DATA"
            if smtp.supports_extension("chunking"):
                stage = "BDAT"
                code, text = await _bdat(smtp, message, timeout)
            else:
                try:
                    response = await smtp.data(message, timeout=timeout)
                    code, text = response.code, response.message
                except aiosmtplib.SMTPDataError as exc:
                    code, text = exc.code, exc.message
            if code == 421:
                raise _Closing(code, text)
            for rcpt in accepted:
                replies[rcpt] = (code, text)
            if code != 250:
                await _rset(smtp, timeout)
                return replies, smtp.is_connected
            return replies, True
        except _StaleConnection:
            raise
        except _Closing as exc:
            # 421: the server is shutting the connection; everyone not yet answered gets the 421.
            for rcpt in rcpts:
                if rcpt not in replies or rcpt in accepted:
                    replies[rcpt] = (exc.code, exc.text)
            smtp.close()
            return replies, False
        except aiosmtplib.SMTPTimeoutError:
            text = f"4.4.2 timed out waiting for {relay} after {stage}"
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, OSError) as exc:
            text = f"4.4.2 lost connection with {relay} after {stage}: {_one_line(str(exc))}"
        except aiosmtplib.SMTPResponseException as exc:
            text = f"4.5.0 unexpected reply from {relay} after {stage}: {exc.code} {_one_line(exc.message)}"
        except ValueError as exc:  # an address aiosmtplib still refuses: nothing of it reached the server
            text = f"4.3.0 cannot send the transaction: {_one_line(str(exc))}"
        smtp.close()
        # Nobody answered the end of DATA: every accepted recipient is undecided, so temporary.
        for rcpt in rcpts:
            if rcpt not in replies or rcpt in accepted:
                replies[rcpt] = (451, text)
        return replies, False

    # -- results and logs -------------------------------------------------------------------------

    def _finish(self, qid: str, results: dict[str, Result], envelope: Envelope) -> dict[str, Result]:
        if not log.isEnabledFor(logging.DEBUG):
            return results
        for rcpt, result in results.items():
            t = result.timings
            delays = "/".join(f"{t.get(k, 0.0):.2f}" for k in ("dns", "wait", "connect", "xfer"))
            # The queue runner writes the mail log line for each result; this one is for debugging the courier.
            log.debug(
                "%s: to=<%s>, relay=%s, delays=%s, dsn=%s, status=%s (%d %s)",
                qid,
                rcpt,
                result.relay or "none",
                delays,
                result.enhanced,
                result.outcome.value,
                result.code,
                result.message,
            )
        return results


class _StaleConnection(Exception):
    """The connection died before the first reply of a transaction."""


class _Closing(Exception):
    """The server answered 421: it is closing the connection."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


async def _bdat(smtp: aiosmtplib.SMTP, message: bytes, timeout: float) -> tuple[int, str]:
    """Send the whole message as one ``BDAT n LAST`` chunk (RFC 3030) and read the one reply.

    Against DATA this saves a round trip (no 354) and the dot-stuffing pass. aiosmtplib has no BDAT
    command, so this uses its protocol object: the command line and the octets go out in one write,
    and aiosmtplib's reply reader takes the answer (nothing awaits in between, so no reply is missed)."""
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    data = normalize_message_line_endings(message)
    protocol.write(b"BDAT %d LAST\r\n" % len(data) + data)
    response = await protocol.read_response(timeout=timeout)
    return response.code, response.message


async def _rset(smtp: aiosmtplib.SMTP, timeout: float) -> None:
    """Reset a failed transaction so the connection can carry the next one (or close it)."""
    try:
        await smtp.rset(timeout=min(timeout, 30))
    except (aiosmtplib.SMTPException, ConnectionError, OSError):
        smtp.close()


def _wire_safe(address: str) -> bool:
    """Can ``address`` go on a MAIL or RCPT line (no controls, no angle brackets, no line breaks)?"""
    return not any(ord(ch) < 0x20 or ch in "<>\x7f" for ch in address)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_REPLY]


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    return _one_line(str(exc)) or type(exc).__name__


def _describe_tls(smtp: aiosmtplib.SMTP, verified: bool) -> str:
    ssl_object = smtp.get_transport_info("ssl_object")
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    name = cipher[0] if cipher else "?"
    return f"{'Verified' if verified else 'Untrusted'} TLS {ssl_object.version()} {name}"
