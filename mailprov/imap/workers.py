"""IMAP worker processes: the IMAP sessions of a busy server spread over every CPU.

With ``imap.processes`` above 1 the IMAP service process is a master (:class:`mailprov.workers.WorkerPool`:
it accepts, applies ``imap.max_connections`` and ``imap.max_connections_per_client``, counts failed logins
for ``imap.max_auth_failures`` and hands each connection to the least busy worker). This module is the
IMAP side of a worker: ``python -m mailprov.imap.workers CONFIG CHANNEL_FD TLS_FD`` runs the very
:class:`~mailprov.imap.server.IMAPServer` of a single-process service, its connection counter and login
throttle being the master's (reached over the channel).

What sessions in different workers share is the Maildir itself, as they share it with Dovecot, POP3 and
the MDA: each worker has its own inotify descriptor and folder cache (:mod:`mailprov.imap.watch`,
:mod:`mailprov.imap.store`), so IDLE wakes in every worker and a flag change or an expunge in one is
reported by the sessions of another at their next command (RFC 3501 5.2, 7.4.1).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable

from mailprov import config as config_mod
from mailprov.imap.server import IMAPServer
from mailprov.limits import FailureThrottle
from mailprov.listeners import HANDSHAKE_TIMEOUT
from mailprov.privileges import drop_privileges, preload
from mailprov.workers import ChannelAuthThrottle, ChannelLimiter, context_from_fd, serve_channel, worker_main

MODES = {"imap": False, "imaps": True}  # listener mode -> implicit TLS


def refusal(mode: str, reason: str) -> bytes | None:
    """What the master tells an IMAP client it refuses (nothing before an implicit-TLS handshake)."""
    return None if MODES.get(mode) else f"* BYE [UNAVAILABLE] {reason}\r\n".encode()


async def run_worker(config_path: str, channel_fd: int, tls_fd: int) -> None:
    """A worker's life: serve the connections the master hands over until the channel closes or SIGTERM."""
    from mailprov.tls import start_reloading, watch

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until start_reloading handles it: never die of a reload
    config = config_mod.load(config_path)
    channel = socket.socket(fileno=channel_fd)
    tls = watch(config, context_from_fd(tls_fd))
    server = IMAPServer(config, ssl_context=tls)
    server.counter = counter = ChannelLimiter(channel)
    server.auth = auth = ChannelAuthThrottle(channel, FailureThrottle(config.imap.auth_failure_delay, config.imap.max_auth_failures))
    preload()
    drop_privileges(config)  # no-op unless root
    loop = asyncio.get_running_loop()

    def open_session(mode: str, conn: socket.socket) -> Awaitable[object] | None:
        if mode not in MODES:
            return None
        implicit = MODES[mode]
        return loop.connect_accepted_socket(
            lambda: server.connection_class(server, implicit_tls=implicit),
            conn,
            ssl=tls if implicit else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if implicit else None,
        )

    start_reloading(config)  # a renewed certificate reaches new sessions of this worker too
    await serve_channel(channel, auth, counter, open_session)
    await server.stop()


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], run_worker))
