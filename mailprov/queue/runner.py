"""The queue manager: schedules delivery attempts, hands messages to couriers, retries, expires, bounces.

Trust boundary: everything it reads was written by the SMTP server or the operator's ``mailprov queue``
commands; unreadable queue files are quarantined in ``corrupt/`` (never deleted) with a log line.

How an attempt goes (docs/flow.md has the whole path):

1. The item moves to ``active/`` (one rename). Its message comes from memory when the SMTP server just
   accepted it (no re-read), otherwise from the file.
2. Pending recipients are split by courier: local mailboxes go to the local courier in one call; remote
   addresses go to the remote courier, one call per destination domain, all calls concurrently. Several
   messages for the same domain are in flight at once (``queue.workers``); the remote courier enforces
   per-destination limits (``queue.per_destination``) and reuses connections itself.
3. Each recipient's Result is recorded (status, reply, relay, attempts) and logged, one line each, by
   :func:`mailprov.queue.intake.record` (the same for a direct delivery at acceptance).
   TEMPORARY becomes ``deferred``; PERMANENT becomes ``bounced``; TEMPORARY after ``queue.max_lifetime``
   becomes ``bounced`` too (expired).
4. Newly bounced recipients get one DSN to the sender from ``<>`` (never for a ``<>`` sender). The DSN is
   queued durably *before* the item's new state is written, so a crash can repeat a DSN but never lose it.
5. If nothing is pending the file is removed; otherwise it is rewritten (atomic write) with the next
   attempt time (exponential backoff from ``queue.retry_min`` to ``queue.retry_max``, with jitter) and
   moved to ``deferred/``.

Parameters (config ``[queue]``): workers, per_destination, retry_min, retry_max, max_lifetime,
delay_warning, scan_interval. ``incoming/`` and ``deferred/`` are re-scanned every ``scan_interval``
seconds, and at once when ``mailprov queue flush`` or ``release`` pulls the trigger FIFO
(:mod:`mailprov.queue.trigger`); the periodic scan is what guarantees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailprov import maillog
from mailprov.config import Config
from mailprov.delivery.base import Courier, Envelope, Result, group_by_domain
from mailprov.queue import trigger
from mailprov.queue.diskio import DiskIO
from mailprov.queue.dsn import build_dsn
from mailprov.queue.intake import Intake, record, targets_for
from mailprov.queue.store import CorruptQueueFile, QueueItem, QueueStore, Recipient, is_queue_id, new_queue_id
from mailprov.users import Directory

log = logging.getLogger("mailprov.queue")


def retry_delay(attempts: int, retry_min: float, retry_max: float, rnd: float) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: ``retry_min`` doubled each time, capped
    at ``retry_max``, times a jitter factor in [0.8, 1.2) (``rnd`` in [0, 1)) so retries do not march in
    lock-step; never more than ``retry_max``."""
    base = min(float(retry_max), float(retry_min) * 2 ** max(0, attempts - 1))
    return min(float(retry_max), base * (0.8 + 0.4 * rnd))


@dataclass
class _Job:
    queue_id: str
    state: str  # where the file is now: incoming, active or deferred
    item: QueueItem | None = None
    message: bytes | None = None


class QueueRunner:
    """Delivers queued messages through the couriers. ``start`` resumes what is on disk."""

    def __init__(
        self,
        config: Config,
        store: QueueStore,
        directory: Directory,
        local: Courier,
        remote: Courier,
        io: DiskIO,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.local = local
        self.remote = remote
        self.io = io
        self.clock = clock
        self.rng = rng
        self._ready: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._busy: set[str] = set()  # queued for a worker or being delivered
        self._due: dict[str, float] = {}  # deferred items: id -> next attempt
        self._timers: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._scan_requested = False
        self._trigger_fd: int | None = None
        self.idle = asyncio.Event()  # set whenever nothing is busy (tests and benchmarks wait on it)
        self.idle.set()
        # New messages (the SMTP server's, and our DSNs) enter through the intake, which hands them back.
        self.intake = Intake(store, io, local, self.submit, clock=clock)

    # -- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the directories, resume what a previous run left, and start the workers."""
        await self.io.run(self.store.ensure_dirs)
        await self.io.run(self.store.clean_temporaries, 0.0)
        await self._scan(startup=True)
        loop = asyncio.get_running_loop()
        try:
            self._trigger_fd = trigger.open_listener(self.store.root)
            loop.add_reader(self._trigger_fd, self._triggered)
        except OSError as exc:  # not fatal: flush and release then wait for the periodic scan
            fifo = trigger.path(self.store.root)
            log.warning("queue trigger %s unavailable (%s): 'queue flush' takes effect at the next scan", fifo, exc)
        self._tasks = [loop.create_task(self._worker(), name=f"queue-worker-{i}") for i in range(self.config.queue.workers)]
        self._tasks.append(loop.create_task(self._scheduler(), name="queue-scheduler"))

    async def stop(self, grace: float = 10.0) -> None:
        """Finish in-flight attempts (up to ``grace`` seconds), then stop. Unstarted work stays on disk."""
        self._stopping = True
        self._wake.set()
        if self._trigger_fd is not None:
            asyncio.get_running_loop().remove_reader(self._trigger_fd)
            os.close(self._trigger_fd)
            self._trigger_fd = None
        for _ in range(self.config.queue.workers):
            self._ready.put_nowait(None)
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        self._tasks = []
        for courier in (self.local, self.remote):
            with contextlib.suppress(Exception):
                await courier.close()

    # -- entry points -------------------------------------------------------------------------------
    async def enqueue(self, item: QueueItem, message: bytes) -> None:
        """Make a new item durable in ``incoming/`` through the intake, and schedule it now."""
        await self.intake.enqueue(item, message)

    def submit(self, item: QueueItem, message: bytes | None) -> None:
        """Hand an item that is durable in ``incoming/`` to the workers (its bytes avoid a re-read)."""
        self._push(_Job(item.id, "incoming", item, message))

    def notify(self, queue_id: str) -> None:
        """An item another process made durable in ``incoming/`` (an SMTP worker): deliver it now."""
        if is_queue_id(queue_id):
            self._push(_Job(queue_id, "incoming"))

    def flush(self) -> None:
        """Make every deferred item due now (``mailprov queue flush`` does the same through the disk)."""
        now = self.clock()
        for queue_id in list(self._due):
            self._due[queue_id] = now
            heapq.heappush(self._timers, (now, queue_id))
        self._wake.set()

    def _triggered(self) -> None:
        """The trigger FIFO is readable: an operator moved items into ``incoming/``; rescan now."""
        assert self._trigger_fd is not None
        if trigger.drain(self._trigger_fd):
            self._scan_requested = True
            self._wake.set()

    @property
    def busy(self) -> int:
        """Items queued for a worker or being delivered."""
        return len(self._busy)

    def _push(self, job: _Job) -> None:
        if job.queue_id in self._busy or self._stopping:
            return
        self._busy.add(job.queue_id)
        self._due.pop(job.queue_id, None)
        self.idle.clear()
        self._ready.put_nowait(job)

    # -- scheduling ---------------------------------------------------------------------------------
    async def _scan(self, startup: bool = False) -> None:
        """Pick up what is on disk but not in memory: ``incoming`` (new, flushed, released), ``deferred``
        (retry times), and at start-up ``active`` (interrupted attempts)."""
        states = ("active", "incoming") if startup else ("incoming",)
        for state in states:
            for queue_id in await self.io.run(self.store.ids, state):
                if queue_id not in self._busy:
                    self._push(_Job(queue_id, state))
        if startup:  # deferred/ can hold 100,000s of items: the scheduler reads them at once, while serving
            return
        for queue_id in await self.io.run(self.store.ids, "deferred"):
            if queue_id in self._busy or queue_id in self._due:
                continue
            try:
                item = await self.io.run(self.store.read_header, "deferred", queue_id)
            except FileNotFoundError:
                continue
            except (CorruptQueueFile, OSError, UnicodeDecodeError) as exc:
                await self.io.run(self.store.quarantine, "deferred", queue_id, str(exc))
                continue
            self._schedule(queue_id, item.next_attempt)

    def _schedule(self, queue_id: str, when: float) -> None:
        self._due[queue_id] = when
        heapq.heappush(self._timers, (when, queue_id))
        self._wake.set()

    async def _scheduler(self) -> None:
        next_scan = self.clock()  # the first scan (deferred/ included) right away
        while not self._stopping:
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                when, queue_id = heapq.heappop(self._timers)
                if self._due.get(queue_id) == when and queue_id not in self._busy:
                    self._push(_Job(queue_id, "deferred"))
            if now >= next_scan or self._scan_requested:
                self._scan_requested = False
                try:
                    await self._scan()
                except OSError as exc:
                    log.error("queue scan failed: %s", exc)
                next_scan = self.clock() + self.config.queue.scan_interval
            wait = next_scan - self.clock()
            if self._timers:
                wait = min(wait, self._timers[0][0] - self.clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, wait))

    async def _worker(self) -> None:
        while True:
            job = await self._ready.get()
            if job is None or self._stopping:
                return
            try:
                await self._attempt(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the worker; the item stays on disk and is tried again later
                log.exception("%s: delivery attempt failed unexpectedly", job.queue_id)
                retry = _Job(job.queue_id, "active")  # the periodic scan never looks in active/: come back to it
                asyncio.get_running_loop().call_later(self.config.queue.retry_min, self._push, retry)
            finally:
                self._busy.discard(job.queue_id)
                if not self._busy:
                    self.idle.set()

    # -- one attempt --------------------------------------------------------------------------------
    async def _attempt(self, job: _Job) -> None:
        claimed = await self.io.grouped(self._claim, job)
        if claimed is None:
            return
        item, message = claimed
        pending = item.pending
        if not pending:
            await self._finish(item, message)
            return

        # Local mailboxes in one call; remote recipients one call per destination domain.
        groups: list[tuple[Courier, list[Recipient]]] = []
        local = [r for r in pending if r.local]
        if local:
            groups.append((self.local, local))
        by_domain = group_by_domain((r for r in pending if not r.local), lambda r: r.address)
        groups += [(self.remote, rs) for rs in by_domain.values()]
        if len(groups) == 1:  # the usual case: no tasks to spawn and gather
            outcomes = [await self._call(groups[0][0], item, groups[0][1], message)]
        else:
            outcomes = await asyncio.gather(*(self._call(courier, item, rs, message) for courier, rs in groups))

        now = self.clock()
        expired_after = self.config.queue.max_lifetime if now - item.arrival >= self.config.queue.max_lifetime else 0.0
        bounced: list[Recipient] = []
        for start, end, pairs in outcomes:
            for rcpt, result in pairs:
                if record(item, rcpt, result, start, end, expired_after=expired_after) == "bounced":
                    bounced.append(rcpt)

        if bounced:
            await self._notify(item, bounced, message, "failed")
        delay_warning = self.config.queue.delay_warning
        if delay_warning and not item.warned and item.pending and now - item.arrival >= delay_warning:
            item.warned = True
            await self._notify(item, item.pending, message, "delayed")
        item.attempts += 1
        await self._finish(item, message)

    async def _call(self, courier: Courier, item: QueueItem, rcpts: list[Recipient], message: bytes):  # type: ignore[no-untyped-def]
        """Run one courier call; a courier that raises or forgets a recipient defers that recipient."""
        addresses = tuple(dict.fromkeys(r.address for r in rcpts))
        envelope = Envelope(item.id, item.sender, addresses, item.arrival, item.smtputf8, item.body_8bit)
        start = self.clock()
        try:
            results = await courier.deliver(envelope, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: courier %s raised", item.id, type(courier).__name__)
            results = {a: Result.temporary(f"delivery agent error: {exc}", code=451, enhanced="4.3.0") for a in addresses}
        end = self.clock()
        missing = Result.temporary("delivery agent returned no result", code=451, enhanced="4.3.0")
        return start, end, [(r, results.get(r.address, missing)) for r in rcpts]

    async def _notify(self, item: QueueItem, rcpts: list[Recipient], message: bytes, action: str) -> None:
        """Queue a DSN to the sender (never to ``<>``)."""
        if not item.sender:
            log.info("%s: no %s notice: the sender is <> (a bounce is never bounced)", item.id, "bounce" if action == "failed" else "delay")
            return
        targets = targets_for(self.directory, item.sender)
        if not targets:
            log.warning("%s: sender <%s> has no mailbox here: %s notice dropped", item.id, item.sender, action)
            return
        hostname = self.config.server.hostname
        item.extra.setdefault("max_lifetime", str(self.config.queue.max_lifetime))
        data = build_dsn(item, rcpts, message, hostname=hostname, action=action)
        now = self.clock()
        dsn = QueueItem(id=new_queue_id(), sender="", recipients=targets, arrival=now, queued=0.0, size=len(data))
        dsn.client = f"{hostname} (local DSN for {item.id})"
        await self.enqueue(dsn, data)
        maillog.emit(f"{item.id}: sender {'non-delivery' if action == 'failed' else 'delay'} notification: {dsn.id}")

    async def _finish(self, item: QueueItem, message: bytes) -> None:
        """Remove a finished item, or write its new state and defer it."""
        if not item.pending:
            await self.io.grouped(self._remove_anywhere, item.id)
            maillog.emit(f"{item.id}: removed")
            return
        item.next_attempt = self.clock() + retry_delay(item.attempts, self.config.queue.retry_min, self.config.queue.retry_max, self.rng())
        try:
            state = await self.io.run(self._persist, item, message)
        except OSError as exc:  # e.g. a full disk: keep the new state in memory and retry from active/ then
            log.error("%s: cannot write the queue file (%s); kept in active/, next attempt as scheduled", item.id, exc)
            delay = max(0.0, item.next_attempt - self.clock())
            asyncio.get_running_loop().call_later(delay, self._push, _Job(item.id, "active", item, message))
            return
        if state == "deferred":
            self._schedule(item.id, item.next_attempt)
        elif state is None:
            maillog.emit(f"{item.id}: deleted by the operator during delivery; its new state was discarded")

    def _claim(self, job: _Job) -> tuple[QueueItem, bytes] | None:
        """Blocking (grouped with other attempts' in one trip to the I/O pool): move the item to ``active/`` and read it, unless
        the job carries it. None if it is gone (the operator held or deleted it meanwhile) or unreadable
        (then quarantined)."""
        qid = job.queue_id
        if job.state != "active":
            try:
                self.store.move(qid, job.state, "active")
            except FileNotFoundError:
                return None
        if job.item is not None and job.message is not None:
            return job.item, job.message
        try:
            return self.store.read("active", qid)
        except FileNotFoundError:
            return None
        except (CorruptQueueFile, OSError, UnicodeDecodeError) as exc:
            self.store.quarantine("active", qid, str(exc))
            return None

    def _remove_anywhere(self, queue_id: str) -> None:
        # Usually in active/; in hold/ only if the operator held it during the attempt.
        if not self.store.remove("active", queue_id):
            self.store.remove("hold", queue_id)

    def _persist(self, item: QueueItem, message: bytes) -> str | None:
        """Blocking: rewrite the item where it is (active, or hold if the operator held it meanwhile), then
        move it from active to deferred. Returns its state, or None if it was deleted meanwhile."""
        for state in ("active", "hold"):
            if self.store.path(state, item.id).exists():
                self.store.rewrite(state, item, message)
                if state == "active":
                    self.store.move(item.id, "active", "deferred")
                    return "deferred"
                return "hold"
        return None
