"""``mailprov serve imap``: the IMAP service object (see :mod:`mailprov.service` for the contract)."""

from __future__ import annotations

from mailprov.imap.server import IMAPServer
from mailprov.listeners import ListenerService


class IMAPService(ListenerService):
    """The IMAP server as a service: ``start()`` binds ``imap.listen`` and ``imap.tls_listen``."""

    name = "imap"
    server_class = IMAPServer
