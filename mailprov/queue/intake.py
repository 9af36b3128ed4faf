"""Intake: the one way a message enters mailprov's custody, and the one way an attempt is recorded.

Every message the SMTP server accepts, and every DSN the queue runner writes, comes through
:class:`Intake`, in whichever process accepted it (the single-process server, or an SMTP worker
process; see mailprov.smtp.workers):

* :meth:`Intake.accept` — all-local mail is delivered at once: the local courier writes each Maildir
  copy durably (tmp, fsync, rename into new, fsync new/), and the item is done when every recipient
  is there. Recipients that failed, and any mail for another domain, go to :meth:`Intake.enqueue`.
* :meth:`Intake.enqueue` — one queue file in ``incoming/`` (temporary name, fsync, rename, then a
  grouped fsync of ``incoming/``), the ``(queued)`` log line, then the hand-off: in the process that
  runs the queue it gives the item and its bytes to the runner; in a worker process it tells the
  master the queue id.

Either way the coroutine returns only once the message is durable on disk, so the caller's 250 is a
promise. An OSError (a full disk, say) propagates: the caller answers 4xx and the client keeps its copy.

:func:`record` is the one place where a delivery attempt's result becomes a recipient's state (status,
reply, relay, attempts) and its mail log line, for the direct delivery here and for the runner's
attempts alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailprov import maillog
from mailprov.delivery.base import Courier, Envelope, Outcome, Result
from mailprov.queue.diskio import DiskIO
from mailprov.queue.store import QueueItem, QueueStore, Recipient
from mailprov.users import Directory, Resolution

Handoff = Callable[[QueueItem, bytes], None]


def targets_for(directory: Directory, address: str, resolution: Resolution | None = None) -> list[Recipient]:
    """The delivery targets of one envelope recipient: local mailboxes and remote addresses."""
    resolution = resolution or directory.resolve(address)
    out = [Recipient(address=m, original=address, local=True) for m in resolution.mailboxes]
    out += [Recipient(address=r, original=address, local=False) for r in resolution.remote]
    return out


def delays_for(item: QueueItem, start: float, end: float, result: Result) -> tuple[float, tuple[float, float, float, float]]:
    """``delay`` and Postfix's ``delays=a/b/c/d`` for one attempt (see mailprov.maillog)."""
    queued = item.queued if item.queued > 0 else item.arrival
    before = max(0.0, queued - item.arrival)
    waiting = max(0.0, start - queued)
    setup = sum(v for k, v in result.timings.items() if k != "xfer")
    xfer = result.timings.get("xfer", max(0.0, end - start - setup))
    return end - item.arrival, (before, waiting, setup, xfer)


def record(item: QueueItem, rcpt: Recipient, result: Result, start: float, end: float, *, expired_after: float = 0.0) -> str:
    """Record one recipient's attempt (status, reply, relay, attempts) and write its mail log line.

    DELIVERED becomes ``sent``, PERMANENT ``bounced``, TEMPORARY ``deferred`` — or ``bounced`` when
    ``expired_after`` (the queue lifetime in seconds, given when the item has outlived it) is set, with
    the last error kept in the reply. Returns the new status."""
    rcpt.attempts += 1
    rcpt.last_attempt = end
    rcpt.code, rcpt.enhanced, rcpt.reply, rcpt.relay = result.code, result.enhanced, result.message, result.relay
    if result.outcome is Outcome.DELIVERED:
        rcpt.status = "sent"
    elif result.outcome is Outcome.PERMANENT:
        rcpt.status = "bounced"
    elif expired_after:
        rcpt.status = "bounced"
        rcpt.reply = f"message expired after {expired_after / 86400:g} days in the queue; last error: {result.message}"
    else:
        rcpt.status = "deferred"
    delay, delays = delays_for(item, start, end, result)
    reply = rcpt.reply if result.relay == "local" or not result.code else f"{result.code} {result.enhanced} {rcpt.reply}"
    maillog.emit(
        maillog.delivery_line(
            item.id,
            to=rcpt.address,
            orig_to=rcpt.original,
            relay=result.relay,
            delay=delay,
            delays=delays,
            dsn=result.enhanced,
            status=rcpt.status,
            reply=reply,
        )
    )
    return rcpt.status


class Intake:
    """Takes new messages into custody: delivered to local mailboxes now, or queued durably."""

    def __init__(
        self,
        store: QueueStore,
        io: DiskIO,
        local: Courier,
        handoff: Handoff,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.io = io
        self.local = local
        self.handoff = handoff  # called once the item is durable in incoming/; must not block
        self.clock = clock

    async def accept(self, item: QueueItem, message: bytes) -> bool:
        """Take a message just received: True when it was delivered to every (local) recipient at once,
        False when it was queued (for the rest). Returns only once it is durable either way."""
        if all(r.local for r in item.recipients) and await self._deliver_now(item, message):
            return True
        await self.enqueue(item, message)
        return False

    async def enqueue(self, item: QueueItem, message: bytes) -> None:
        """Make an item durable in ``incoming/`` (file and directory fsynced), log it, hand it off."""
        item.size = item.size or len(message)
        item.queued = item.queued or self.clock()  # recorded in the file; durable a few ms later
        await self.io.run(self.store.write_new, item, message)
        await self.io.sync_dir(self.store.dir("incoming"))
        maillog.emit(
            maillog.queued_line(item.id, item.sender, item.size, len(item.recipients), client=item.client, sasl_username=item.auth_user)
        )
        self.handoff(item, message)

    async def _deliver_now(self, item: QueueItem, message: bytes) -> bool:
        """Write straight into the Maildirs. True when every recipient is durable there; otherwise the
        delivered ones are recorded as sent and the caller queues the item for the rest."""
        start = self.clock()
        envelope = Envelope(item.id, item.sender, tuple(r.address for r in item.recipients), item.arrival, item.smtputf8, item.body_8bit)
        results = await self.local.deliver(envelope, message)
        end = self.clock()
        item.queued = end
        maillog.emit(
            maillog.queued_line(
                item.id, item.sender, item.size, len(item.recipients), "direct to mailbox", client=item.client, sasl_username=item.auth_user
            )
        )
        for rcpt in item.recipients:
            result = results.get(rcpt.address)
            if result is not None and result.ok:
                record(item, rcpt, result, start, end)
        if all(r.done for r in item.recipients):
            return True
        item.queued = 0.0
        return False
