"""The MDA: the local courier, delivering into Maildir the safe way.

For each recipient (a local mailbox address, aliases already expanded by the queue) it writes
``Return-Path`` and ``Delivered-To`` plus the message into ``MAILBOX/tmp/NAME``, fsyncs the file, renames it
into ``MAILBOX/new/NAME`` and fsyncs ``new/`` (grouped with other deliveries into the same mailbox, see
:class:`~mailprov.queue.diskio.DiskIO`). Only then does it report DELIVERED. A full disk, a quota or any
other I/O error is a TEMPORARY result (the queue retries); it never drops a message. A mailbox whose user
was deleted after the message was accepted is a PERMANENT failure (5.1.1; the queue bounces it).

File names follow the Maildir convention ``SECONDS.M<usec>P<pid>Q<n>.HOST,S=<size>``; ``S=`` is the
file's size so POP3 can answer LIST without a stat. Files are mode 0600, directories 0700.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import time
from pathlib import Path

from mailprov.atomic import durable_create, fsync_dir
from mailprov.config import Config
from mailprov.delivery.base import Envelope, Result
from mailprov.errors import UsageError
from mailprov.maildir import maildir_path
from mailprov.queue.diskio import DiskIO
from mailprov.users import Directory, normalize, strip_subaddress

RELAY = "local"
STALE_TMP = 36 * 3600  # seconds after which a file in tmp/ is a crash leftover
_counter = itertools.count()


def _maildir_host(hostname: str) -> str:
    # '/' and ':' are not allowed in Maildir names (':' starts the info suffix).
    return hostname.replace("/", "\\057").replace(":", "\\072")


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
        self._host = _maildir_host(config.server.hostname)
        self._ready: set[Path] = set()  # mailboxes whose tmp/new/cur exist

    def _ensure_maildir(self, box: Path) -> None:
        if box in self._ready:
            return
        created = False
        for sub in ("tmp", "new", "cur"):
            path = box / sub
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
                created = True
        if created:
            # New directories must survive a crash too, or a renamed-in message could vanish with them.
            for path in (box.parent.parent, box.parent, box):
                with contextlib.suppress(OSError):
                    fsync_dir(path)
        else:
            self._clean_tmp(box / "tmp")
        self._ready.add(box)

    @staticmethod
    def _clean_tmp(tmp: Path) -> None:
        """Remove files left in ``tmp/`` by a crash mid-write (never acknowledged, never visible) once
        they are older than STALE_TMP, as the Maildir convention says (36 hours)."""
        now = time.time()
        with contextlib.suppress(OSError), os.scandir(tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP:
                        os.unlink(entry.path)

    def _write(self, box: Path, data: bytes) -> Path:
        """Blocking: write into tmp/, fsync, rename into new/. Returns the new file's path."""
        self._ensure_maildir(box)
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_counter)}.{self._host},S={len(data)}"
        tmp, final = box / "tmp" / name, box / "new" / name
        try:
            durable_create(tmp, final, data)
        except FileNotFoundError:
            self._ready.discard(box)  # removed behind our back: create it again
            self._ensure_maildir(box)
            durable_create(tmp, final, data)
        return final

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
                jobs[rcpt] = maildir_path(self.mail_dir, mailbox)
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
