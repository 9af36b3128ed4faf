"""SMTP worker processes: the SMTP sessions of a busy server spread over every CPU.

With ``smtp.processes`` above 1 the SMTP service process is a master (:class:`mailprov.workers.WorkerPool`:
it accepts, applies the connection limits, counts AUTH failures and hands each connection to a worker)
that also runs the queue. This module is the SMTP side of a worker: ``python -m mailprov.smtp.workers
CONFIG CHANNEL_FD TLS_FD`` runs the same SMTP handler as a single-process server: all-local mail goes
straight into Maildir, the rest into ``incoming/`` -- then the worker tells the master the queue id
(``Q <id>``, this service's own channel message) so the master's runner delivers it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable

from mailprov import config as config_mod
from mailprov.config import Config
from mailprov.delivery.local import LocalCourier
from mailprov.limits import FailureThrottle
from mailprov.privileges import drop_privileges, preload
from mailprov.queue.diskio import DiskIO
from mailprov.queue.intake import Intake
from mailprov.queue.store import QueueItem, QueueStore
from mailprov.smtp.context import SMTPContext, open_directory
from mailprov.smtp.server import end_sessions, make_factory
from mailprov.workers import ChannelAuthThrottle, ChannelLimiter, context_from_fd, serve_channel, worker_main

log = logging.getLogger("mailprov.smtp")


def refusal(hostname: str, mode: str, reason: str) -> bytes | None:
    """What the master tells an SMTP client it refuses (nothing before an implicit-TLS handshake)."""
    return None if mode == "submissions" else f"421 4.7.0 {hostname} {reason}\r\n".encode()


def worker_context(
    config: Config, channel: socket.socket, tls_context: ssl.SSLContext, io: DiskIO, auth: ChannelAuthThrottle
) -> SMTPContext:
    """A worker process's context: its own directory and Maildir writer; the queue runner, the
    connection limits and the AUTH-failure counts are the master's, reached over ``channel``."""

    def tell_master(item: QueueItem, message: bytes) -> None:
        with contextlib.suppress(OSError):  # if the master is gone, its next start finds the durable item
            channel.send(f"Q {item.id}".encode())

    directory = open_directory(config)
    local = LocalCourier(config, directory, io=io)
    return SMTPContext(
        config=config,
        directory=directory,
        intake=Intake(QueueStore(config.paths.queue_dir), io, local, tell_master),
        tls_context=tls_context,
        auth_limiter=auth,
        connections=ChannelLimiter(channel),
    )


async def run_worker(config_path: str, channel_fd: int, tls_fd: int) -> None:
    """A worker's life: receive connections from the master until the channel closes or SIGTERM."""
    from mailprov.tls import start_reloading, watch

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until start_reloading handles it: never die of a reload
    config = config_mod.load(config_path)
    channel = socket.socket(fileno=channel_fd)
    io = DiskIO(threads=8)
    auth = ChannelAuthThrottle(channel, FailureThrottle(config.smtp.auth_failure_delay, config.smtp.max_auth_failures))
    ctx = worker_context(config, channel, watch(config, context_from_fd(tls_fd)), io, auth)
    factories = {mode: make_factory(ctx, mode) for mode in ("mx", "submission", "submissions")}
    preload()
    drop_privileges(config)  # no-op unless root
    loop = asyncio.get_running_loop()

    def open_session(mode: str, conn: socket.socket) -> Awaitable[object] | None:
        if mode not in factories:
            return None
        return loop.connect_accepted_socket(factories[mode], conn, ssl=ctx.tls_context if mode == "submissions" else None)

    start_reloading(config)  # a renewed certificate reaches new sessions of this worker too
    await serve_channel(channel, auth, ChannelLimiter(channel), open_session)
    await end_sessions(10.0)  # let running sessions finish their transaction (bounded), then go
    io.close()


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], run_worker))
