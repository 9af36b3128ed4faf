"""Run mailprov's IMAP service for tests: in a background thread, or in a child process (benchmarks).

    from tests.peers.imap_server import IMAPThread, imap_sections
    config = make_config(imap=imap_sections("127.0.13.10", trusted=True))
    with IMAPThread(config) as imap:
        client = imaplib.IMAP4(*imap.plain)

Both run as the invoking user (no privilege drop, unlike ``mailprov serve``); they are the POP3 test
runners (tests/peers/pop3_server.py) pointed at the IMAP service and its ``[imap]`` table.
"""

from __future__ import annotations

import sys
from typing import Any

from mailprov.imap.service import IMAPService
from tests.peers.pop3_server import POP3Process, POP3Thread, pop3_sections, serve_forever


def imap_sections(host: str, *, trusted: bool = False, **overrides: Any) -> dict[str, Any]:
    """An ``[imap]`` table listening on ``host`` (free ports); ``trusted`` allows passwords without TLS
    from loopback. The keys are POP3's, so it is :func:`pop3_sections`."""
    return pop3_sections(host, trusted=trusted, **overrides)


class IMAPThread(POP3Thread):
    """IMAPService running in its own event loop on a background thread."""

    service_class = IMAPService
    section = "imap"


class IMAPProcess(POP3Process):
    """The IMAP service in a child process (``python -m tests.peers.imap_server CONFIG.json``)."""

    module = "tests.peers.imap_server"
    section = "imap"


if __name__ == "__main__":
    serve_forever(sys.argv[1], IMAPService, "imap")
