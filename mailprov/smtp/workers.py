"""SMTP worker processes: the SMTP sessions of a busy server spread over every CPU.

One Python process runs on one core at a time, and an SMTP session is CPU work (parsing, TLS, the
event loop) between fsyncs. With ``smtp.processes`` above 1 the service process becomes a small
master, like Postfix's: it owns the listening sockets, accepts each connection, applies the
connection limits (total and per client, exactly, since it sees every connection), and hands the
connected socket (SCM_RIGHTS over a Unix socket pair) to the least busy worker. It also runs the queue.

Each worker is ``python -m mailprov.smtp.workers CONFIG CHANNEL_FD TLS_FD``, started by the master before
it drops privileges; like the master it loads everything, then drops to ``server.user`` itself. It runs
the same SMTP handler as a single-process server: all-local mail goes straight into Maildir, the rest
into ``incoming/`` — then the worker tells the master the queue id (``Q <id>``) so the master's runner
delivers it at once. When a session ends the worker says ``C <client address>`` so the master frees
the connection slot. The TLS certificate and
key reach the workers through an in-memory file (memfd) the master filled while still root, so the
key file may stay readable by root only.

A worker whose channel reaches end-of-file (the master is gone, even by SIGKILL) stops; the master
restarts a worker that dies (which needs the Python interpreter to be executable by ``server.user``,
as it is when mailprov is installed system-wide). AUTH failure counting (``smtp.max_auth_failures``) is per worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailprov import maillog
from mailprov.queue.store import QueueItem

if TYPE_CHECKING:
    from mailprov.smtp.service import SMTPService

log = logging.getLogger("mailprov.smtp")
MESSAGE_MAX = 512


def tls_memfd(cert: str, key: str) -> int:
    """An in-memory file holding the certificate chain and the key (read while still root)."""
    with open(cert, "rb") as c, open(key, "rb") as k:
        data = c.read().rstrip(b"\n") + b"\n" + k.read()
    fd = os.memfd_create("mailprov-tls", os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def context_from_fd(fd: int) -> ssl.SSLContext:
    """The server TLS context of mailprov.tls.server_context, from a memfd."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(f"/proc/self/fd/{fd}")
    return context


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    channel: socket.socket
    load: int = 0
    clients: dict[str, int] = field(default_factory=dict)


class WorkerPool:
    """The master side: accept, limit, hand over; restart workers that die."""

    def __init__(self, service: SMTPService, count: int, tls_fd: int) -> None:
        self.service = service
        self.count = count
        self.tls_fd = tls_fd
        self.workers: list[_Worker | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def spawn(self) -> None:
        """Start the workers (before the privilege drop: each drops to ``server.user`` itself once it has
        loaded everything, as the master does)."""
        for i in range(self.count):
            await self._spawn(i)

    async def serve(self, listeners: list[tuple[str, socket.socket]]) -> None:
        """Accept on every listener and hand the connections over."""
        loop = asyncio.get_running_loop()
        for mode, sock in listeners:
            sock.setblocking(False)
            self._tasks.append(loop.create_task(self._accept(mode, sock), name=f"smtp-accept-{mode}"))

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = self.service.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailprov.smtp.workers",
            config.source,
            str(theirs.fileno()),
            str(self.tls_fd),
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(theirs.fileno(), self.tls_fd),
        )
        theirs.close()
        worker = _Worker(index, proc, ours)
        self.workers[index] = worker
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_message, worker)
        self._tasks.append(loop.create_task(self._watch(worker), name=f"smtp-worker-{index}"))
        log.info("started SMTP worker %d (pid %d)", index, proc.pid)

    def _on_message(self, worker: _Worker) -> None:
        for _ in range(64):  # bounded: other work gets its turn
            try:
                data = worker.channel.recv(MESSAGE_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
                return
            kind, _, value = data.decode("ascii", "replace").partition(" ")
            if kind == "Q":
                self.service.runner.notify(value)
            elif kind == "C":
                self._release(worker, value)

    def _release(self, worker: _Worker, client: str) -> None:
        left = worker.clients.get(client, 0)
        if left <= 0:
            return
        worker.clients[client] = left - 1
        if left == 1:
            del worker.clients[client]
        worker.load -= 1
        self.service.connections.release(client)

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.channel.fileno())
        worker.channel.close()
        for client, count in list(worker.clients.items()):  # its sessions died with it
            for _ in range(count):
                self._release(worker, client)
        if self._stopping:
            return
        log.error("SMTP worker %d (pid %d) exited with code %s; restarting it", worker.index, worker.proc.pid, code)
        self.workers[worker.index] = None
        await asyncio.sleep(1.0)
        if not self._stopping:
            await self._spawn(worker.index)

    async def _accept(self, mode: str, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limiter = self.service.connections
        while not self._stopping:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: breathe, then go on
                log.error("accept on %s failed: %s", mode, exc)
                await asyncio.sleep(0.1)
                continue
            client = str(addr[0]) if addr else ""
            refusal = limiter.acquire(client)
            live = [w for w in self.workers if w is not None]
            if refusal or not live:
                reason = refusal or "Service temporarily unavailable"
                log.warning("refused connection from [%s]: %s", client, reason)
                if mode != "submissions":
                    with contextlib.suppress(OSError):
                        conn.send(f"421 4.7.0 {self.service.config.server.hostname} {reason}\r\n".encode())
                conn.close()
                if not refusal:
                    limiter.release(client)
                continue
            worker = min(live, key=lambda w: w.load)
            try:
                socket.send_fds(worker.channel, [f"{mode} {client}".encode()], [conn.fileno()])
            except OSError as exc:
                log.error("cannot hand a connection to worker %d: %s", worker.index, exc)
                limiter.release(client)
            else:
                worker.load += 1
                worker.clients[client] = worker.clients.get(client, 0) + 1
            finally:
                conn.close()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; workers finish their sessions (up to ``grace`` seconds), then are killed."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        live = [w for w in self.workers if w is not None]
        for worker in live:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.terminate()
        deadline = time.monotonic() + grace
        for worker in live:
            try:
                await asyncio.wait_for(worker.proc.wait(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
            with contextlib.suppress(OSError):
                worker.channel.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class ChannelLimiter:
    """The worker side of the connection limits: the master already counted; a closed session is
    reported back so it frees the slot."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel

    def acquire(self, client: str) -> str | None:
        return None

    def release(self, client: str) -> None:
        with contextlib.suppress(OSError):
            self.channel.send(f"C {client}".encode())


class ChannelQueue:
    """The worker side of the queue: make the item durable in ``incoming/``, then tell the master."""

    def __init__(self, service: SMTPService, channel: socket.socket) -> None:
        self.service = service
        self.channel = channel

    async def enqueue(self, item: QueueItem, message: bytes) -> None:
        store, io = self.service.store, self.service.io
        item.size = item.size or len(message)
        item.queued = item.queued or time.time()
        await io.run(store.write_new, item, message)
        await io.sync_dir(store.dir("incoming"))
        maillog.emit(
            maillog.queued_line(item.id, item.sender, item.size, len(item.recipients), client=item.client, sasl_username=item.auth_user)
        )
        with contextlib.suppress(OSError):  # if the master is gone, its next start finds the durable item
            self.channel.send(f"Q {item.id}".encode())


async def run_worker(config_path: str, channel_fd: int, tls_fd: int) -> None:
    """A worker's life: receive connections from the master until the channel closes or SIGTERM."""
    import signal

    from mailprov import config as config_mod
    from mailprov.privileges import drop_privileges, preload
    from mailprov.smtp.server import end_sessions, make_factory
    from mailprov.smtp.service import SMTPService

    config = config_mod.load(config_path)
    channel = socket.socket(fileno=channel_fd)
    channel.setblocking(False)
    service = SMTPService(config, wait_for_drop=False, worker=True)
    ctx = service.context(context_from_fd(tls_fd), runner=ChannelQueue(service, channel), connections=ChannelLimiter(channel))
    factories = {mode: make_factory(ctx, mode) for mode in ("mx", "submission", "submissions")}
    preload()
    drop_privileges(config)  # no-op unless root
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    sessions: set[asyncio.Task[object]] = set()

    def on_connection() -> None:
        for _ in range(64):
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, MESSAGE_MAX, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                loop.remove_reader(channel_fd)
                done.set()
                return
            mode, _, client = data.decode("ascii", "replace").partition(" ")
            for fd in fds:
                conn = socket.socket(fileno=fd)
                if mode not in factories:
                    conn.close()
                    ctx.connections.release(client)
                    continue
                task = loop.create_task(
                    loop.connect_accepted_socket(factories[mode], conn, ssl=ctx.tls_context if mode == "submissions" else None)
                )
                sessions.add(task)
                task.add_done_callback(functools.partial(_session_started, client))

    def _session_started(client: str, task: asyncio.Task[object]) -> None:
        sessions.discard(task)
        if task.cancelled() or task.exception() is not None:
            # No session began (a failed TLS handshake on 465, say): give the master its slot back here,
            # since no protocol will ever report the close.
            log.info("connection from [%s] ended before the session: %s", client, None if task.cancelled() else task.exception())
            ctx.connections.release(client)

    await service.runner_less_start()
    loop.add_reader(channel_fd, on_connection)
    await done.wait()
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(channel_fd)
    await end_sessions(10.0)  # let running sessions finish their transaction (bounded), then go
    service.io.close()


def main(argv: list[str]) -> int:
    """``python -m mailprov.smtp.workers CONFIG CHANNEL_FD TLS_FD``."""
    from mailprov import config as config_mod
    from mailprov.logsetup import setup_logging

    config = config_mod.load(argv[0])
    setup_logging(config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(argv[0], int(argv[1]), int(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
