"""Open an SMTP session to one (host, address): connect, banner, EHLO, STARTTLS per the TLS policy, EHLO
again, AUTH for transports that have a user.

Opportunistic TLS that fails (RFC 7435: it must not stop delivery) is followed by one more attempt in
plain text: :meth:`Connector.open` is a loop of at most two attempts, the second with TLS off. A TLS
policy that requires TLS never falls back. Anything that makes the host unusable for this attempt is a
:class:`SessionError`, and the courier moves on to the next host. The relay password is read from its
file only when a connection authenticates, sent only over TLS (or to a loopback address), never logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

import aiosmtplib

from mailprov.config import Config
from mailprov.delivery.remote.pool import Session
from mailprov.delivery.remote.transaction import MAX_REPLY, one_line
from mailprov.delivery.routing import Hop, Route
from mailprov.delivery.tlspolicy import TLSPolicy, client_context

log = logging.getLogger("mailprov.outbound")


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
        """Whether the failure is permanent (a 5xx), so the recipients bounce."""
        return 500 <= self.code < 600


class _TryPlain(Exception):
    """Opportunistic STARTTLS failed: the connection is closed, try again without TLS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def tls_reason(exc: BaseException) -> str:
    """Why a TLS handshake failed, in one line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    return one_line(str(exc)) or type(exc).__name__


def describe_tls(smtp: aiosmtplib.SMTP, verified: bool) -> str:
    """``Verified TLS TLSv1.3 TLS_AES_256_GCM_SHA384`` for a TLS session, "" for plain text."""
    ssl_object = smtp.get_transport_info("ssl_object")
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    name = cipher[0] if cipher else "?"
    return f"{'Verified' if verified else 'Untrusted'} TLS {ssl_object.version()} {name}"


class Connector:
    """Opens sessions for the remote courier (``outbound.*``: port, helo_name, source_address, timeouts)."""

    def __init__(self, config: Config, ca_file: str | None = None) -> None:
        self.config = config
        self.ca_file = ca_file
        # Made now, not at the first TLS connection: the trust anchors (ca_file, SSL_CERT_FILE, the system
        # bundle) are read while a service started as root still is root.
        self._contexts: dict[bool, ssl.SSLContext] = {verify: client_context(verify=verify, ca_file=ca_file) for verify in (False, True)}
        self._helo = config.outbound_helo
        self._source = (config.outbound.source_address, 0) if config.outbound.source_address else None

    def context(self, verify: bool) -> ssl.SSLContext:
        """The client TLS context (one per verify setting, built with the connector)."""
        return self._contexts[verify]

    async def open(self, qid: str, route: Route, hop: Hop, address: str, policy: TLSPolicy, key: tuple[object, ...]) -> Session:
        """A ready session (greeted, TLS per policy, authenticated), or SessionError."""
        for plain in (False, True):
            try:
                return await self._attempt(qid, route, hop, address, policy, key, plain=plain)
            except _TryPlain as exc:
                log.info("%s: TLS with %s failed (%s); retrying without TLS", qid, relay_name(hop, address), exc.reason)
        raise AssertionError("unreachable: the plain-text attempt never asks for another")

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

    async def _attempt(
        self, qid: str, route: Route, hop: Hop, address: str, policy: TLSPolicy, key: tuple[object, ...], *, plain: bool
    ) -> Session:
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
            tls_context=self.context(policy.verify) if implicit else None,
        )
        try:
            tls = await self._greet(smtp, hop, relay, policy, implicit=implicit, plain=plain)
            if tls:
                log.info("%s: %s: %s connection established", qid, relay, tls)
            if transport and transport.username:
                await self._authenticate(smtp, relay, transport.username, transport.password_file, bool(tls), address)
        except (SessionError, _TryPlain):
            smtp.close()
            raise
        except aiosmtplib.SMTPTimeoutError:
            smtp.close()
            raise SessionError(f"{relay}: timed out waiting for the greeting or EHLO reply", enhanced="4.4.2") from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, ConnectionError) as exc:
            smtp.close()
            if isinstance(exc.__cause__, ssl.SSLError):  # implicit TLS: aiosmtplib wraps the handshake error
                raise SessionError(f"TLS with {relay} failed: {tls_reason(exc.__cause__)}", enhanced="4.7.5") from None
            raise SessionError(f"{relay}: lost connection during the greeting: {one_line(str(exc))}", enhanced="4.4.2") from None
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise SessionError(f"{relay} said: {exc.code} {one_line(exc.message)} (during the greeting)", code=exc.code) from None
        except (ssl.SSLError, OSError) as exc:  # implicit TLS handshake failures land here
            smtp.close()
            raise SessionError(f"TLS with {relay} failed: {tls_reason(exc)}", enhanced="4.7.5") from None
        except BaseException:  # cancelled (the queue is stopping), or a bug: never leak the socket
            smtp.close()
            raise
        return Session(smtp, key, relay, tls)

    async def _greet(self, smtp: aiosmtplib.SMTP, hop: Hop, relay: str, policy: TLSPolicy, *, implicit: bool, plain: bool) -> str:
        """Banner, EHLO, and STARTTLS with the EHLO after it when the policy asks; returns the TLS description."""
        try:
            await smtp.connect(timeout=self.config.outbound.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise SessionError(f"{relay} refused the connection: {exc.code} {one_line(exc.message)}", code=exc.code) from None
        await self._hello(smtp)
        if implicit:
            return describe_tls(smtp, policy.verify)
        if not policy.starttls or plain:
            return ""
        if not smtp.supports_extension("starttls"):
            if policy.required:
                raise SessionError(f"{relay} does not offer STARTTLS, but the policy is {policy.describe()}", code=451, enhanced="4.7.10")
            return ""
        try:
            await smtp.starttls(server_hostname=hop.name, tls_context=self.context(policy.verify))
            tls = describe_tls(smtp, policy.verify)
            # A server may refuse the handshake only after it completed on our side (TLS 1.3 sends the
            # client certificate last): a connection that dies at the EHLO that follows failed at TLS too.
            await self._hello(smtp)
        except (ssl.SSLError, ssl.CertificateError, aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            reason = tls_reason(exc)
            if policy.required:
                raise SessionError(f"TLS with {relay} failed: {reason} (policy {policy.describe()})", enhanced="4.7.5") from None
            raise _TryPlain(reason) from None
        except aiosmtplib.SMTPResponseException as exc:
            if policy.required:
                raise SessionError(f"{relay} refused STARTTLS: {exc.code} {one_line(exc.message)}", enhanced="4.7.5") from None
            raise _TryPlain(f"STARTTLS refused: {exc.code} {one_line(exc.message)}") from None
        return tls

    async def _hello(self, smtp: aiosmtplib.SMTP) -> None:
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
                f"{relay} refused AUTH for {username}: {exc.code} {one_line(exc.message)}", code=454, enhanced="4.7.8"
            ) from None
        except aiosmtplib.SMTPException as exc:
            raise SessionError(f"AUTH for {username} at {relay} failed: {one_line(str(exc))}", enhanced="4.7.0") from None
