"""``mailprov serve pop3``: the POP3 service object (see :mod:`mailprov.service` for the contract)."""

from __future__ import annotations

import ssl

from mailprov.config import Config
from mailprov.pop3.server import POP3Server
from mailprov.users import UserDB


class POP3Service:
    """The POP3 server as a service: ``start()`` binds ``pop3.listen`` and ``pop3.tls_listen``."""

    name = "pop3"

    def __init__(self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.server = POP3Server(config, users=users, ssl_context=ssl_context)

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs."""
        return self.server.sockets

    async def start(self) -> None:
        """Bind the listeners and start serving."""
        await self.server.start()

    async def stop(self) -> None:
        """Close the listeners and the sessions; sessions already in UPDATE finish first."""
        await self.server.stop()
