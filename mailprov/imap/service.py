"""``mailprov serve imap``: the IMAP service object (see :mod:`mailprov.service` for the contract)."""

from __future__ import annotations

import ssl

from mailprov.config import Config
from mailprov.imap.server import IMAPServer
from mailprov.users import UserDB


class IMAPService:
    """The IMAP server as a service: ``start()`` binds ``imap.listen`` and ``imap.tls_listen``."""

    name = "imap"

    def __init__(
        self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None, serve_after_drop: bool = False
    ) -> None:
        self.config = config
        self.server = IMAPServer(config, users=users, ssl_context=ssl_context)
        self.serve_after_drop = serve_after_drop

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs."""
        return self.server.sockets

    async def start(self) -> None:
        """Bind the listeners; start serving now, or in :meth:`begin` when ``serve_after_drop``."""
        await self.server.start(serving=not self.serve_after_drop)

    async def begin(self) -> None:
        """Called by ``mailprov serve`` once privileges are dropped: begin accepting clients."""
        await self.server.start_serving()

    async def stop(self) -> None:
        """Close the listeners and the sessions."""
        await self.server.stop()
