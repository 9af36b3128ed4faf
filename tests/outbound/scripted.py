"""Scripted SMTP peers on aiosmtpd: real SMTP servers whose replies a test decides (4xx, 5xx, stalls...)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    session: int  # which connection carried it (1, 2, ...)
    tls: bool


@dataclass
class Script:
    """What the peer answers. A callable gets the address (or message number) and returns a reply line,
    or None for the normal 250."""

    mail: Callable[[str], str | None] = lambda sender: None
    rcpt: Callable[[str], str | None] = lambda rcpt: None
    data: Callable[[int], str | None] = lambda n: None
    stall_data: float = 0.0  # seconds to sit on the end of DATA before answering
    drop_in_data: bool = False  # close the connection instead of answering the end of DATA


class ScriptedHandler:
    def __init__(self, script: Script, pipelining: bool = True) -> None:
        self.script = script
        self.pipelining = pipelining
        self.received: list[Received] = []
        self.sessions: dict[int, int] = {}
        self.active = 0
        self.max_active = 0
        self.auth: list[tuple[str, str]] = []
        self.helo_names: list[str] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        """aiosmtpd reads pipelined commands but does not say so: advertise PIPELINING (RFC 2920) too."""
        session.host_name = hostname
        if self.pipelining:
            responses[1:1] = ["250-PIPELINING"]
        return responses

    def _session_no(self, session: Any) -> int:
        return self.sessions.setdefault(id(session), len(self.sessions) + 1)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._session_no(session)
        self.helo_names.append(session.host_name)
        reply = self.script.mail(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.script.rcpt(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.script.stall_data:
                await asyncio.sleep(self.script.stall_data)
            if self.script.drop_in_data:
                server.transport.abort()
                return "250 never sent"
            n = len(self.received) + 1
            reply = self.script.data(n)
            if reply:
                return reply
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.content,
                    self._session_no(session),
                    server.transport.get_extra_info("ssl_object") is not None,
                )
            )
            return f"250 2.0.0 Ok: queued as S{n}"
        finally:
            self.active -= 1


class ScriptedPeer:
    """``with ScriptedPeer("127.0.5.11", 2525, Script(...)) as peer:`` -- ``peer.handler.received``."""

    def __init__(
        self,
        address: str,
        port: int,
        script: Script | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
        data_size_limit: int = 33554432,
        smtputf8: bool = True,
        pipelining: bool = True,
        server_hostname: str = "scripted-peer.test",
    ) -> None:
        self.handler = ScriptedHandler(script or Script(), pipelining)
        kwargs: dict[str, Any] = {"data_size_limit": data_size_limit, "ident": "scripted-peer", "enable_SMTPUTF8": smtputf8}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if implicit_tls is not None:
            kwargs["ssl_context"] = implicit_tls
        if credentials is not None:
            kwargs.update(authenticator=self._authenticator(credentials), auth_require_tls=False)
        # A host name for the banner: without one aiosmtpd asks socket.getfqdn() on every connection, a DNS
        # lookup that a machine with no reachable resolver (Debian 13 here) lets hang for 5 s.
        self.controller = Controller(
            self.handler, hostname=address, port=port, ready_timeout=5, server_hostname=server_hostname, **kwargs
        )

    def _authenticator(self, credentials: tuple[str, str]):
        def check(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                user, password = auth_data.login.decode(), auth_data.password.decode()
                self.handler.auth.append((user, password))
                if (user, password) == credentials:
                    return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        return check

    def __enter__(self) -> ScriptedPeer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
