"""``mailprov serve pop3``: the POP3 service object (see :mod:`mailprov.service` for the contract)."""

from __future__ import annotations

from mailprov.listeners import ListenerService
from mailprov.pop3.server import POP3Server


class POP3Service(ListenerService):
    """The POP3 server as a service: ``start()`` binds ``pop3.listen`` and ``pop3.tls_listen``; on stop,
    sessions already in UPDATE finish first."""

    name = "pop3"
    server_class = POP3Server
