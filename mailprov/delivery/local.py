"""The MDA: the local courier, delivering into Maildir the safe way.

For each recipient (a local mailbox address, aliases already expanded by the queue) it writes
``Return-Path`` and ``Delivered-To`` plus the message into ``MAILBOX/tmp/NAME``, fsyncs the file, renames it
into ``MAILBOX/new/NAME`` and fsyncs ``new/`` (grouped with other deliveries into the same mailbox, see
:class:`~mailprov.queue.diskio.DiskIO`). Only then does it report DELIVERED. A full disk, a quota or any
other I/O error is a TEMPORARY result (the queue retries); it never drops a message. A mailbox whose user
was deleted after the message was accepted is a PERMANENT failure (5.1.1; the queue bounces it).

Names, sizes, the tmp->new move and the clean-up of crash leftovers in ``tmp/`` are the one Maildir
module's (:mod:`mailprov.maildir`): file names are Dovecot's ``SECONDS.M<usec>P<pid>Q<n>.HOST,S=<size>,W=<crlf
size>``, so POP3 and IMAP report sizes without reading the file. Files are mode 0600, directories 0700.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from mailprov import maildir as md
from mailprov.config import Config
from mailprov.delivery.base import Envelope, Result
from mailprov.errors import UsageError
from mailprov.queue.diskio import DiskIO
from mailprov.users import Directory, normalize, strip_subaddress

RELAY = "local"


def delivery_headers(sender: str, mailbox: str) -> bytes:
    """The trace headers an MDA adds (RFC 5321 4.4: Return-Path at final delivery)."""
    return f"Return-Path: <{sender}>\r\nDelivered-To: {mailbox}\r\n".encode()


class LocalCourier:
    """Delivers to local mailboxes. ``deliver`` never raises for delivery problems."""

    def __init__(self, config: Config, directory: Directory, *, io: DiskIO | None = None) -> None:
        self.config = config
        self.directory = directory
        self.mail_dir = Path(config.paths.mail_dir)
        self.io = io or DiskIO()
        self._own_io = io is None
        self._host = md.maildir_host(config.server.hostname)
        self._ready: set[Path] = set()  # mailboxes whose tmp/new/cur exist

    def _ensure_maildir(self, box: Path) -> None:
        if box in self._ready:
            return
        if not md.ensure_maildir(box):
            md.clean_tmp(box)
        self._ready.add(box)

    def _write(self, box: Path, data: bytes) -> Path:
        """Blocking: write into tmp/, fsync, rename into new/. Returns the new file's path."""
        self._ensure_maildir(box)
        try:
            return md.deliver_file(box, data, self._host)
        except FileNotFoundError:
            self._ready.discard(box)  # removed behind our back: create it again
            self._ensure_maildir(box)
            return md.deliver_file(box, data, self._host)

    async def deliver(self, envelope: Envelope, message: bytes) -> dict[str, Result]:
        """Deliver to every recipient (each a local mailbox address); one Result per recipient."""
        results: dict[str, Result] = {}
        jobs: dict[str, Path] = {}
        for rcpt in envelope.recipients:
            mailbox = strip_subaddress(normalize(rcpt))
            if not self.directory.users.exists(mailbox):
                results[rcpt] = Result.permanent(f"no such mailbox {mailbox}", code=550, enhanced="5.1.1", relay=RELAY)
                continue
            try:
                jobs[rcpt] = md.maildir_path(self.mail_dir, mailbox)
            except UsageError as exc:
                results[rcpt] = Result.permanent(exc.message, code=550, enhanced="5.1.3", relay=RELAY)
        if not jobs:
            return results

        async def one(rcpt: str, box: Path) -> tuple[str, Result]:
            data = delivery_headers(envelope.sender, strip_subaddress(normalize(rcpt))) + message
            try:
                final = await self.io.run(self._write, box, data)
                await self.io.sync_dir(final.parent)
            except OSError as exc:
                return rcpt, _os_error_result(exc)
            return rcpt, Result.delivered(RELAY, f"delivered to maildir as {final.name}")

        for rcpt, result in await asyncio.gather(*(one(r, b) for r, b in jobs.items())):
            results[rcpt] = result
        return results

    async def close(self) -> None:
        """Release the I/O pool if this courier created it."""
        if self._own_io:
            self.io.close()


def _os_error_result(exc: OSError) -> Result:
    """Map an I/O error to a temporary failure with the right enhanced status (RFC 3463)."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return Result.temporary(f"mail system full: {reason}", code=452, enhanced="4.3.1", relay=RELAY)
    if exc.errno == errno.EDQUOT:
        return Result.temporary(f"mailbox full: {reason}", code=452, enhanced="4.2.2", relay=RELAY)
    return Result.temporary(f"local delivery failed: {reason}", code=451, enhanced="4.3.0", relay=RELAY)
