"""The aiosmtpd handler: translates the SMTP dialogue into policy decisions and queue/Maildir writes.

Thin by design: the grammar is aiosmtpd's (mailprov.smtp.server subclasses it only for limits), the
rules are mailprov.smtp.policy's, the storage is the queue's and the local courier's. One handler serves
one listener mode: ``mx`` (port 25), ``submission`` (587, STARTTLS then AUTH required) or ``submissions``
(465, implicit TLS, AUTH required).

The DATA path (docs/flow.md): loop check, Received header (and Message-ID/Date for authenticated
submissions that lack them), then the queue's intake (mailprov.queue.intake) takes the message: every
target a local mailbox, straight into the Maildirs; otherwise (or for the recipients that failed
there) one queue file in ``incoming/``. It returns only once the message is durable, and only then does
the client get 250. If neither is possible the client gets 451 (452 for a full disk) and keeps its
copy: a 250 always means "on disk".
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import errno
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, AuthResult

from mailprov import maillog
from mailprov.queue.intake import targets_for
from mailprov.queue.store import QueueItem, Recipient, new_queue_id
from mailprov.smtp import policy
from mailprov.smtp.address import AddressError, parse_recipient, parse_sender
from mailprov.smtp.auth import AuthIdentity
from mailprov.smtp.context import Connection, SMTPContext
from mailprov.users import normalize

log = logging.getLogger("mailprov.smtp")


@dataclass
class Transaction:
    """Our per-transaction state, kept on aiosmtpd's Envelope (rebuilt on RSET and after DATA)."""

    sender: str = ""
    arrival: float = 0.0
    targets: list[Recipient] = field(default_factory=list)


def _txn(envelope: Any) -> Transaction:
    txn = getattr(envelope, "mailprov", None)
    if txn is None:
        txn = envelope.mailprov = Transaction()
    return txn


def header_end(message: bytes) -> int:
    """Offset just past the header section's last CRLF (0 when the message has no header)."""
    if message.startswith(b"\r\n"):
        return 0
    idx = message.find(b"\r\n\r\n")
    return idx + 2 if idx >= 0 else len(message)


def has_bare_newline(message: bytes) -> bool:
    """Whether a line of ``message`` ends in LF without CR (aiosmtpd only ends DATA at CRLF.CRLF, so such
    an LF is inside the content; it is refused rather than guessed at -- docs/security.md)."""
    return message.count(b"\n") != message.count(b"\r\n")


def header_names(message: bytes) -> list[bytes]:
    """Lower-cased names of the header fields, in order (continuation lines skipped)."""
    names = []
    for line in message[: header_end(message)].split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t"):
            name, sep, _ = line.partition(b":")
            if sep:
                names.append(name.strip().lower())
    return names


def _login(session: Any) -> str | None:
    """The authenticated user of a session, or None."""
    identity = session.auth_data if session.authenticated else None
    return identity.login if isinstance(identity, AuthIdentity) else None


def _clean(text: str, limit: int = 255) -> str:
    return "".join(c if c.isprintable() and c not in "()" else "?" for c in text)[:limit]


class SMTPHandler:
    """aiosmtpd hooks for one listener mode."""

    def __init__(self, ctx: SMTPContext, mode: str) -> None:
        self.ctx = ctx
        self.mode = mode

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _client(server: Connection, session: Any) -> str:
        # Postfix's shape, NAME[ADDR]; we do no reverse lookups, so the name is "unknown".
        return f"unknown[{server.client_ip}]"

    def _reject(
        self, server: Connection, session: Any, stage: str, reply: str, *, sender: str | None = None, rcpt: str | None = None
    ) -> str:
        maillog.emit(
            maillog.reject_line(stage, self._client(server, session), reply, sender=sender, rcpt=rcpt, helo=session.host_name or "")
        )
        return reply

    # -- hooks --------------------------------------------------------------------------------------
    async def handle_EHLO(self, server: Connection, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        """Advertise PIPELINING and ENHANCEDSTATUSCODES beside aiosmtpd's extensions."""
        session.host_name = hostname
        keywords = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        keywords[1:1] = ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [responses[0]] + [f"250-{k}" for k in keywords]
        lines[-1] = "250 " + lines[-1][4:]
        return lines

    async def handle_MAIL(self, server: Connection, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        """Parse the sender; an authenticated user must own it."""
        try:
            sender = parse_sender(address, smtputf8=bool(envelope.smtp_utf8))
        except AddressError as exc:
            return self._reject(server, session, "MAIL", f"{exc.code} {exc.enhanced} <{_clean(address)}>: {exc.text}", sender=address)
        user = _login(session)
        owns = bool(user) and sender is not None and self.ctx.directory.may_send_as(user, str(sender))
        decision = policy.sender_decision(sender, auth_user=user, owns_sender=owns)
        if not decision.accepted:
            return self._reject(server, session, "MAIL", decision.reply(), sender=address)
        envelope.mail_from = str(sender) if sender else "<>"
        envelope.mail_options.extend(mail_options)
        txn = _txn(envelope)
        txn.sender = str(sender) if sender else ""
        txn.arrival = time.time()
        return decision.reply()

    async def handle_RCPT(self, server: Connection, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        """Refuse by default: accept local users and aliases, and relay only for AUTH or trusted networks."""
        txn = _txn(envelope)
        try:
            rcpt = parse_recipient(address, smtputf8=bool(envelope.smtp_utf8), postmaster_domain=self.ctx.config.server.domains[0])
        except AddressError as exc:
            return self._reject(
                server, session, "RCPT", f"{exc.code} {exc.enhanced} <{_clean(address)}>: {exc.text}", sender=txn.sender, rcpt=address
            )
        directory = self.ctx.directory
        local = not rcpt.ip_literal and directory.is_local_domain(rcpt.domain)
        resolution = directory.resolve(str(rcpt)) if local else None
        relay = policy.may_relay(
            authenticated=bool(session.authenticated),
            client_ip=server.client_ip,
            trusted_networks=self.ctx.config.smtp.trusted_networks,
        )
        decision = policy.recipient_decision(
            rcpt,
            local_domain=local,
            resolution=resolution,
            relay_allowed=relay,
            count=len(envelope.rcpt_tos),
            max_recipients=self.ctx.config.smtp.max_recipients,
        )
        if not decision.accepted:
            return self._reject(server, session, "RCPT", decision.reply(), sender=txn.sender, rcpt=str(rcpt))
        envelope.rcpt_tos.append(str(rcpt))
        envelope.rcpt_options.extend(rcpt_options)
        targets = (
            targets_for(directory, str(rcpt), resolution) if local else [Recipient(address=str(rcpt), original=str(rcpt), local=False)]
        )
        known = {t.address for t in txn.targets}
        txn.targets.extend(t for t in targets if t.address not in known)
        return decision.reply()

    async def handle_DATA(self, server: Connection, session: Any, envelope: Any) -> str:
        """Check hops, add trace headers, make the message durable, then (only then) say 250."""
        txn = _txn(envelope)
        message: bytes = envelope.original_content or b""
        if has_bare_newline(message):  # RFC 5321 2.3.8; Postfix's smtpd_forbid_bare_newline = reject
            return self._reject(server, session, "DATA", f"550 5.5.2 {server.hostname} Error: bare <LF> received", sender=txn.sender)
        names = header_names(message)
        hops = policy.hops_decision(names.count(b"received"), self.ctx.config.smtp.max_hops)
        if hops:
            return self._reject(server, session, "DATA", hops.reply(), sender=txn.sender)
        if not txn.targets:  # cannot happen after a 250 to RCPT, but never queue an empty envelope
            return "554 5.5.1 No valid recipients"
        qid = new_queue_id()
        user = _login(session) or ""
        message = self._trace(server, session, envelope, qid, message, names, bool(user))
        item = QueueItem(
            id=qid,
            sender=txn.sender,
            recipients=[Recipient(t.address, t.original, t.local) for t in txn.targets],
            arrival=txn.arrival or time.time(),
            size=len(message),
            smtputf8=bool(envelope.smtp_utf8),
            body_8bit="BODY=8BITMIME" in envelope.mail_options,
            client=self._client(server, session),
            auth_user=user or "",
        )
        try:
            delivered = await self.ctx.intake.accept(item, message)
        except OSError as exc:
            log.error("%s: cannot store the message: %s", qid, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # RFC 3463 4.3.1: mail system full
                return "452 4.3.1 Insufficient system storage, try again later"
            return "451 4.3.0 Requested action aborted: local storage error, try again later"
        return policy.message_accepted(qid, delivered=delivered).reply()

    def _trace(
        self, server: Connection, session: Any, envelope: Any, qid: str, message: bytes, names: list[bytes], submission: bool
    ) -> bytes:
        """Prepend our Received header; for authenticated submissions add a missing Message-ID and Date."""
        cfg = self.ctx.config
        proto = ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP") if session.extended_smtp else "SMTP"
        if server.is_tls:
            proto += "S"
        if session.authenticated:
            proto += "A"
        tls = ""
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        if ssl_object is not None:
            cipher = ssl_object.cipher() or ("?", "?", 0)
            tls = f"\r\n\t(using {ssl_object.version()} with cipher {cipher[0]} ({cipher[2]}/{cipher[2]} bits))"
        helo = _clean(session.host_name or "unknown", 128)
        rcpts = envelope.rcpt_tos
        for_clause = f"\r\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        received = (
            f"Received: from {helo} ([{server.client_ip}]){tls}\r\n\tby {cfg.server.hostname} (mailprov) with {proto} id {qid}"
            f"{for_clause}; {email.utils.formatdate(localtime=True)}\r\n"
        ).encode("utf-8", "surrogateescape")
        if submission:
            end = header_end(message)
            extra = b""
            if b"message-id" not in names:
                extra += f"Message-ID: <{qid}.{secrets.token_hex(4)}@{cfg.server.hostname}>\r\n".encode()
            if b"date" not in names:
                extra += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
            if extra:
                head = message[:end]
                if head and not head.endswith(b"\r\n"):
                    head += b"\r\n"
                rest = message[end:]
                if end == len(message):  # headers only: keep the empty line that ends them
                    rest = b"\r\n"
                message = head + extra + rest
        return received + message

    # -- AUTH ---------------------------------------------------------------------------------------
    async def auth_PLAIN(self, server: Connection, args: list[str]) -> AuthResult:
        """AUTH PLAIN (RFC 4616), initial response or challenge."""
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00") if isinstance(blob, bytes) else []
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: Connection, args: list[str]) -> AuthResult:
        """AUTH LOGIN (the de facto standard two-step exchange)."""
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes) and isinstance(password, bytes)
        return await self._check(server, login, password)

    async def _check(self, server: Connection, login_b: bytes, password_b: bytes) -> AuthResult:
        """Verify off the event loop; slow down and count failures per client; never log the password."""
        if not server.is_tls:
            return AuthResult(success=False, handled=False, message="538 5.7.11 Encryption required for requested authentication mechanism")
        limiter = self.ctx.auth_limiter
        client = server.client_ip
        if await limiter.blocked(client):
            await server.push("421 4.7.0 Too many failed authentication attempts, closing connection")
            server.close()
            return AuthResult(success=False, handled=True)
        try:
            login, password = normalize(login_b.decode("utf-8")), password_b.decode("utf-8")
        except UnicodeDecodeError:
            login, password = "", ""
        ok = bool(login and password) and await asyncio.to_thread(self.ctx.directory.users.verify, login, password)
        if ok:
            log.info("AUTH success from [%s]: sasl_username=%s", client, login)
            return AuthResult(success=True, handled=False, auth_data=AuthIdentity(login))
        delay, failures = await limiter.fail(client)
        log.warning("AUTH failure from [%s] (sasl_username=%s), %d recent failures", client, _clean(login, 128), failures)
        await asyncio.sleep(delay)
        if await limiter.blocked(client):
            await server.push("421 4.7.0 Too many failed authentication attempts, closing connection")
            server.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    async def handle_exception(self, error: Exception) -> str:
        """A bug must not show a traceback to the client: log it, answer a temporary error."""
        log.error("SMTP session error: %s: %s", type(error).__name__, error, exc_info=error)
        return "451 4.3.0 Internal error, try again later"
