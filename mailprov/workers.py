"""Worker processes: the sessions of a busy service (SMTP, IMAP) spread over every CPU.

One Python process runs on one core at a time. With ``smtp.processes`` or ``imap.processes`` above 1
the service process becomes a small master, like Postfix's: it owns the listening sockets, accepts each
connection, applies the connection limits (total and per client, exactly, since it sees every
connection), and hands the connected socket (SCM_RIGHTS over a Unix socket pair) to the least busy
worker. The protocol stays in the workers; this module holds what every such service shares:

* :class:`WorkerPool`, the master side: start the workers, accept, limit, hand over, count login
  failures for all of them, restart a worker that dies;
* :func:`serve_channel`, the worker side: receive connections until the master is gone or SIGTERM;
* :class:`ChannelLimiter` and :class:`ChannelAuthThrottle`: a worker's connection limits and login-failure
  counts, kept by the master;
* :func:`bind_sockets`, :func:`tls_memfd`, :func:`context_from_fd`.

Each worker is ``python -m mailprov.<service>.workers CONFIG CHANNEL_FD TLS_FD``, started by the master
before it drops privileges; like the master it loads everything, then drops to ``server.user`` itself.
When a session ends the worker says ``C <client address>`` so the master frees the connection slot. The
TLS certificate and key reach the workers through an in-memory file (memfd) the master filled while
still root, so the key file may stay readable by root only.

Login failures are counted in the master, for all workers (``max_auth_failures`` is a limit per client
address, whichever worker serves it): a worker asks ``B <n> <client>`` (blocked?) or reports
``F <n> <client>`` (a failure) and the master answers ``A <n> <failures> <delay> <blocked>`` on the same
channel; ``S <client>`` (a successful login) clears the client's count. A worker whose master does not
answer within AUTH_ASK_TIMEOUT seconds counts in its own memory meanwhile, so a stuck master never lets a
client guess freely.

Channel messages (SOCK_SEQPACKET, one message each, at most MESSAGE_MAX bytes):

    master -> worker   ``<mode> <client>`` with the connection's descriptor; ``A <n> <failures> <delay> <0|1>``
    worker -> master   ``R`` (ready); ``C <client>``; ``B <n> <client>``; ``F <n> <client>``; ``S <client>``;
                       and the service's own (SMTP: ``Q <queue id>``)

A worker whose channel reaches end-of-file (the master is gone, even by SIGKILL) stops; the master
restarts a worker that dies. A restart runs the Python interpreter as ``server.user``, which works when
mailprov is installed where that user can read it (the roles' /opt/mailprov/venv). Where it cannot (a
checkout in /root), the failed restart is logged and, once no worker is left, the master serves the
sessions itself (``fallback``), like a single-process server, on one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailprov import config as config_mod
from mailprov.config import Config, parse_hostport
from mailprov.errors import MailprovError
from mailprov.limits import ConnectionLimiter, FailureThrottle
from mailprov.logsetup import setup_logging
from mailprov.tls import certificate_paths, reloader

log = logging.getLogger("mailprov.workers")
MESSAGE_MAX = 512
AUTH_ASK_TIMEOUT = 5.0  # seconds a worker waits for the master's login-failure count
READY_TIMEOUT = 60.0  # seconds for the workers to load and say they are ready
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def bind_sockets(section: str, listeners: list[tuple[str, str]], logger: logging.Logger) -> list[tuple[str, socket.socket]]:
    """Bind ``(mode, address)`` pairs: (mode, listening socket). Done as root, before the privilege drop;
    on an error every socket already bound is closed and the OSError raised."""
    bound: list[tuple[str, socket.socket]] = []
    try:
        for mode, address in listeners:
            host, port = parse_hostport(address, key=f"{section}.{mode}")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host.strip("[]"), port), family=family, backlog=512, reuse_port=False)
            bound.append((mode, sock))
            logger.info("listening on %s (%s)", address, mode)
    except OSError:
        for _, sock in bound:
            sock.close()
        raise
    return bound


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


def auth_reply(throttle: FailureThrottle, kind: str, value: str) -> str:
    """The master's answer to a worker's ``B <n> <client>`` (blocked?) or ``F <n> <client>`` (a failure,
    counted here): ``A <n> <failures> <delay> <0|1>``."""
    number, _, client = value.partition(" ")
    delay = throttle.fail(client) if kind == "F" else 0.0
    return f"A {number} {throttle.failures(client)} {delay:.3f} {int(throttle.blocked(client))}"


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    channel: socket.socket
    load: int = 0
    clients: dict[str, int] = field(default_factory=dict)
    ready: bool = False


class WorkerPool:
    """The master side: accept, limit, hand over, count login failures; restart workers that die.

    ``service`` names the worker module (``mailprov.<service>.workers``); ``refusal(mode, reason)`` is what
    a refused client is told (None: nothing, e.g. before an implicit-TLS handshake); ``handlers`` take the
    service's own channel messages (kind -> function of the rest); ``fallback(mode, socket)`` gives what
    serves one connection in this process when no worker is alive (as a worker's ``open_session`` does)."""

    def __init__(
        self,
        config: Config,
        count: int,
        *,
        service: str,
        refusal: Callable[[str, str], bytes | None],
        connections: ConnectionLimiter,
        auth_failures: FailureThrottle,
        handlers: dict[str, Callable[[str], None]] | None = None,
        fallback: Callable[[str, socket.socket], Awaitable[object] | None] | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.label = service.upper()
        self.refusal = refusal
        self.handlers = handlers or {}
        self.fallback = fallback
        self.connections = connections
        self.auth_failures = auth_failures
        self.count = count
        self.tls_fd: int | None = None  # the certificate and key for the workers (spawn reads them, as root)
        self.workers: list[_Worker | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._all_ready = asyncio.Event()
        self._served_here: set[asyncio.Task[object]] = set()

    async def spawn(self) -> None:
        """Start the workers (before the privilege drop: each drops to ``server.user`` itself once it has
        loaded everything, as the master does). The certificate and key are read now, into a memfd the
        workers inherit: the key file may stay readable by root only."""
        cert, key = certificate_paths(self.config)
        self.tls_fd = tls_memfd(str(cert), str(key))
        for i in range(self.count):
            await self._spawn(i)
        watcher = reloader(self.config)
        if watcher is not None:
            watcher.on_hangup.append(self.hangup)

    def hangup(self) -> None:
        """Pass SIGHUP on to every worker (each reloads its own TLS context)."""
        for worker in self.workers:
            if worker is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGHUP)

    async def serve(self, listeners: list[tuple[str, socket.socket]]) -> None:
        """Accept on every listener and hand the connections over."""
        loop = asyncio.get_running_loop()
        for mode, sock in listeners:
            sock.setblocking(False)
            self._tasks.append(loop.create_task(self._accept(mode, sock), name=f"{self.service}-accept-{mode}"))

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Return once every worker has said it is ready (loaded, privileges dropped, reading its channel)."""
        try:
            await asyncio.wait_for(self._all_ready.wait(), timeout)
        except TimeoutError:
            waiting = ", ".join(str(i) for i, w in enumerate(self.workers) if w is None or not w.ready)
            message = f"{self.label} workers {waiting} were not ready within {timeout:.0f}s"
            raise MailprovError(message, fix="see the log lines above") from None

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [w.proc.pid for w in self.workers if w is not None and w.proc.returncode is None]

    async def _spawn(self, index: int) -> None:
        assert self.tls_fd is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"mailprov.{self.service}.workers",
            self.config.source,
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
        self._tasks.append(loop.create_task(self._watch(worker), name=f"{self.service}-worker-{index}"))
        log.info("started %s worker %d (pid %d)", self.label, index, proc.pid)

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
            if kind == "C":
                self._release(worker, value)
            elif kind == "R":
                worker.ready = True
                if all(w is not None and w.ready for w in self.workers):
                    self._all_ready.set()
            elif kind in ("B", "F"):
                self._answer_auth(worker, kind, value)
            elif kind == "S":
                self.auth_failures.success(value)
            elif kind in self.handlers:
                self.handlers[kind](value)

    def _answer_auth(self, worker: _Worker, kind: str, value: str) -> None:
        reply = auth_reply(self.auth_failures, kind, value)
        with contextlib.suppress(OSError):  # a worker that is gone, or not reading: it falls back to its own count
            worker.channel.send(reply.encode())

    def _release(self, worker: _Worker, client: str) -> None:
        left = worker.clients.get(client, 0)
        if left <= 0:
            return
        worker.clients[client] = left - 1
        if left == 1:
            del worker.clients[client]
        worker.load -= 1
        self.connections.release(client)

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
        log.error("%s worker %d (pid %d) exited with code %s; restarting it", self.label, worker.index, worker.proc.pid, code)
        self.workers[worker.index] = None
        await asyncio.sleep(RESTART_DELAY)
        if self._stopping:
            return
        try:
            await self._spawn(worker.index)
        except OSError as exc:  # e.g. the interpreter is out of server.user's reach after the drop
            alone = not any(w is not None for w in self.workers)
            log.error(
                "cannot restart %s worker %d: %s%s",
                self.label,
                worker.index,
                exc,
                f"; this process serves the {self.label} sessions itself from now on" if alone and self.fallback else "",
            )

    async def _accept(self, mode: str, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limiter = self.connections
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
            if not refusal and not live and self.fallback is not None:
                limiter.release(client)  # the session counts itself, as in a single-process server
                self._serve_here(mode, conn, client)
                continue
            if refusal or not live:
                reason = refusal or "Service temporarily unavailable"
                log.warning("refused %s connection from [%s]: %s", self.label, client, reason)
                line = self.refusal(mode, reason)
                if line is not None:
                    with contextlib.suppress(OSError):
                        conn.send(line)
                conn.close()
                if not refusal:
                    limiter.release(client)
                continue
            worker = min(live, key=lambda w: w.load)
            try:
                socket.send_fds(worker.channel, [f"{mode} {client}".encode()], [conn.fileno()])
            except OSError as exc:
                log.error("cannot hand a connection to %s worker %d: %s", self.label, worker.index, exc)
                limiter.release(client)
            else:
                worker.load += 1
                worker.clients[client] = worker.clients.get(client, 0) + 1
            finally:
                conn.close()

    def _serve_here(self, mode: str, conn: socket.socket, client: str) -> None:
        """Run one session in this process (no worker is alive and none could be restarted)."""
        assert self.fallback is not None
        try:
            conn.setblocking(False)
            opening = self.fallback(mode, conn)
            if opening is None:
                conn.close()
                return
            task = asyncio.ensure_future(opening)
        except Exception:
            log.exception("cannot serve a connection from [%s] in the master", client)
            conn.close()
            return
        self._served_here.add(task)
        task.add_done_callback(self._served_here_done)

    def _served_here_done(self, task: asyncio.Task[object]) -> None:
        self._served_here.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. a TLS handshake that failed
            log.info("%s connection not served: %s", self.label, task.exception())

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
        if self.tls_fd is not None:
            os.close(self.tls_fd)
            self.tls_fd = None


class ChannelLimiter:
    """The worker side of the connection limits: the master already counted; a closed session is
    reported back so it frees the slot."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel

    def acquire(self, client: str) -> str | None:
        """Always admitted here: the master counted the connection before handing it over."""
        return None

    def release(self, client: str) -> None:
        """Tell the master the session of ``client`` ended."""
        with contextlib.suppress(OSError):
            self.channel.send(f"C {client}".encode())


class ChannelAuthThrottle:
    """The worker side of login-failure counting: the master counts for every worker (see above)."""

    def __init__(self, channel: socket.socket, fallback: FailureThrottle) -> None:
        self.channel = channel
        self.fallback = fallback  # counts here only while the master does not answer
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[tuple[int, float, bool]]] = {}

    async def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its attempts (the master's count)."""
        answer = await self._ask("B", client)
        return answer[2] if answer else self.fallback.blocked(client)

    async def fail(self, client: str) -> tuple[float, int]:
        """Record a failure with the master; returns the delay before answering and the failures so far."""
        answer = await self._ask("F", client)
        if answer is None:
            delay = self.fallback.fail(client)
            return delay, self.fallback.failures(client)
        return answer[1], answer[0]

    async def success(self, client: str) -> None:
        """A successful login clears the client's count (here and in the master)."""
        self.fallback.success(client)
        with contextlib.suppress(OSError):
            self.channel.send(f"S {client}".encode())

    async def _ask(self, kind: str, client: str) -> tuple[int, float, bool] | None:
        number = str(next(self._numbers))
        future: asyncio.Future[tuple[int, float, bool]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            self.channel.send(f"{kind} {number} {client}".encode())
            return await asyncio.wait_for(future, AUTH_ASK_TIMEOUT)
        except (OSError, TimeoutError):
            log.error("the master did not answer a login-failure query for [%s]: counting in this worker", client)
            return None
        finally:
            self._waiting.pop(number, None)

    def answer(self, value: str) -> None:
        """``A <n> <failures> <delay> <blocked>`` from the master."""
        number, failures, delay, blocked = [*value.split(" "), "", "", ""][:4]
        future = self._waiting.get(number)
        if future is not None and not future.done():
            with contextlib.suppress(ValueError):
                future.set_result((int(failures), float(delay), blocked == "1"))


async def serve_channel(
    channel: socket.socket,
    auth: ChannelAuthThrottle,
    connections: ChannelLimiter,
    open_session: Callable[[str, socket.socket], Awaitable[object] | None],
) -> None:
    """A worker's life: say ready (``R``), then start a session for each connection the master hands
    over (``open_session(mode, socket)``: an awaitable that sets it up, or None for a mode this service
    does not serve), until the channel closes (the master is gone) or SIGTERM/SIGINT. The caller then
    ends its sessions. A connection whose set-up fails (a TLS handshake on an implicit-TLS port) gives its
    slot back here, since no session will ever report its close."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    channel_fd = channel.fileno()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    starting: set[asyncio.Future[object]] = set()

    def started(client: str, task: asyncio.Future[object]) -> None:
        starting.discard(task)
        if task.cancelled() or task.exception() is not None:
            log.info("connection from [%s] ended before the session: %s", client, None if task.cancelled() else task.exception())
            connections.release(client)

    def on_message() -> None:
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
            mode, _, value = data.decode("ascii", "replace").partition(" ")
            if mode == "A":
                auth.answer(value)
            for fd in fds:
                conn = socket.socket(fileno=fd)
                setup = open_session(mode, conn)
                if setup is None:
                    conn.close()
                    connections.release(value)
                    continue
                task = asyncio.ensure_future(setup)
                starting.add(task)
                task.add_done_callback(functools.partial(started, value))

    loop.add_reader(channel_fd, on_message)
    channel.send(b"R")  # ready: the master counts the service ready once every worker said so
    await done.wait()
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(channel_fd)


def worker_main(argv: list[str], run: Callable[[str, int, int], Awaitable[None]]) -> int:
    """The body of ``python -m mailprov.<service>.workers CONFIG CHANNEL_FD TLS_FD``: logging as the
    configuration says, then ``run(CONFIG, CHANNEL_FD, TLS_FD)`` until it returns."""
    setup_logging(config_mod.load(argv[0]))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(argv[0], int(argv[1]), int(argv[2])))  # type: ignore[arg-type]
    return 0


__all__ = [
    "ChannelAuthThrottle",
    "ChannelLimiter",
    "WorkerPool",
    "auth_reply",
    "bind_sockets",
    "context_from_fd",
    "serve_channel",
    "tls_memfd",
    "worker_main",
]
