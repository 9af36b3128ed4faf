"""The service object of a listening server (POP3, IMAP): the contract :mod:`mailprov.service` runs.

A subclass names itself and its server class; the server binds in ``start(serving=...)`` and accepts
clients in ``start_serving()``, so ``mailprov serve`` can bind as root and serve only after the
privilege drop (``begin()``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

from mailprov.config import Config, parse_hostport
from mailprov.users import UserDB

HANDSHAKE_TIMEOUT = 30.0  # seconds for an implicit-TLS handshake


async def bind(
    section: str,
    addresses: dict[str, list[str]],
    factory: Callable[[bool], asyncio.Protocol],
    ssl_context: ssl.SSLContext | None,
    *,
    serving: bool,
    log: logging.Logger,
    upgrade: str,
) -> list[asyncio.base_events.Server]:
    """Bind ``addresses["listen"]`` (plain, ``upgrade`` offered: STLS, STARTTLS) and
    ``addresses["tls_listen"]`` (implicit TLS); ``factory(implicit_tls)`` makes a connection. Raises
    OSError when one cannot be bound, after closing those already bound."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.base_events.Server] = []
    try:
        for key, implicit in (("listen", False), ("tls_listen", True)):
            for i, value in enumerate(addresses[key]):
                host, port = parse_hostport(value, key=f"{section}.{key}[{i}]")
                server = await loop.create_server(
                    lambda implicit=implicit: factory(implicit),
                    host.strip("[]"),
                    port,
                    ssl=ssl_context if implicit else None,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None,
                    reuse_address=True,
                    start_serving=serving,
                )
                servers.append(server)
                log.info("listening on %s (%s)", value, "implicit TLS" if implicit else upgrade)
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


class ListenerService:
    """A server as a service: ``start()`` binds its listeners; ``begin()`` serves after the drop."""

    name: ClassVar[str]
    server_class: ClassVar[Any]

    def __init__(
        self, config: Config, *, users: UserDB | None = None, ssl_context: ssl.SSLContext | None = None, serve_after_drop: bool = False
    ) -> None:
        self.config = config
        self.server = self.server_class(config, users=users, ssl_context=ssl_context)
        self.serve_after_drop = serve_after_drop

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (address, port) pairs."""
        return self.server.sockets  # type: ignore[no-any-return]

    async def start(self) -> None:
        """Bind the listeners; start serving now, or in :meth:`begin` when ``serve_after_drop``."""
        await self.server.start(serving=not self.serve_after_drop)

    async def begin(self) -> None:
        """Called by ``mailprov serve`` once privileges are dropped: begin accepting clients."""
        await self.server.start_serving()

    async def stop(self) -> None:
        """Close the listeners and the sessions (each server documents what finishes first)."""
        await self.server.stop()
