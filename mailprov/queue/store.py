"""The on-disk queue: one file per message, its state is the directory it sits in (Postfix's design).

Layout under ``paths.queue_dir`` (see docs/layout.md)::

    incoming/   accepted, durable, not yet picked up (also where 'queue flush' and 'release' put items)
    active/     being delivered right now
    deferred/   waiting for a retry (the file records when)
    hold/       parked by the operator ('mailprov queue hold'); never delivered until released
    corrupt/    files that could not be read: quarantined with a log line, never deleted

A queue file is written once at acceptance (temporary name ``.ID.tmp`` in ``incoming/``, fsync, rename
to ``ID``, directory fsync) and rewritten with :func:`~mailprov.atomic.atomic_write` after each delivery
attempt. Its format is a magic line, one JSON line (the envelope and a status per recipient), then the
message bytes exactly as they will be delivered (CRLF line ends, our Received header on top)::

    MAILPROV-QUEUE 1\\n
    {"id": "...", "sender": "...", "recipients": [{"address": "...", "status": "pending", ...}], ...}\\n
    Received: from ...\\r\\n...

Moving a file between directories (one ``rename``) is the state change; a crash leaves it in one of
them, and a restart scans ``incoming``, ``active`` and ``deferred`` and resumes.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailprov.atomic import atomic_write, durable_create

log = logging.getLogger("mailprov.queue")

MAGIC = b"MAILPROV-QUEUE 1\n"
STATES = ("incoming", "active", "deferred", "hold", "corrupt")
# A recipient's status: pending (not tried yet), deferred (tried, temporary failure), sent, bounced.
FINAL = ("sent", "bounced")
_counter = itertools.count(secrets.randbelow(4096))
_random = random.Random(secrets.randbits(64))  # uniqueness, not secrecy: no urandom call per message


class CorruptQueueFile(Exception):
    """A queue file that cannot be parsed."""


def new_queue_id() -> str:
    """A unique, time-ordered id: 13 hex digits of microseconds, 3 of a counter, 2 random (18 in all)."""
    micros = time.time_ns() // 1000
    return f"{micros:013X}{next(_counter) % 4096:03X}{_random.getrandbits(8):02X}"


def is_queue_id(name: str) -> bool:
    """The one rule for a queue id (file names, the worker channel, the CLI): upper-case hex, 8 to 64
    characters. New ids are 18 (:func:`new_queue_id`); the wider range keeps files written under
    another id length visible to the queue instead of silently skipped, while still refusing paths,
    temporary ``.ID.tmp`` names and foreign files."""
    return 8 <= len(name) <= 64 and all(c in "0123456789ABCDEF" for c in name)


@dataclass
class Recipient:
    """One delivery target and what happened to it so far."""

    address: str  # the target: a local mailbox (local=True) or a remote address
    original: str  # the envelope RCPT TO it came from (aliases expand one into several)
    local: bool
    status: str = "pending"  # pending, deferred, sent, bounced
    attempts: int = 0
    code: int = 0  # last reply code, enhanced status, text and relay
    enhanced: str = ""
    reply: str = ""
    relay: str = ""
    last_attempt: float = 0.0

    @property
    def done(self) -> bool:
        return self.status in FINAL


@dataclass
class QueueItem:
    """A queued message's envelope and per-recipient state (the message bytes live beside it)."""

    id: str
    sender: str  # "" is the null sender (bounces)
    recipients: list[Recipient]
    arrival: float  # when the client began the transaction (MAIL FROM)
    queued: float = 0.0  # when it became durable
    size: int = 0
    smtputf8: bool = False
    body_8bit: bool = False
    client: str = ""  # who handed it over, for the log: "unknown[ADDR]" (Postfix's NAME[ADDR]), or "HOST (local DSN for ID)"
    auth_user: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    warned: bool = False  # a delay warning was sent
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if not r.done]

    def header_bytes(self) -> bytes:
        """The first two lines of the queue file."""
        data = asdict(self)
        return MAGIC + json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"

    @classmethod
    def from_header(cls, line: bytes) -> QueueItem:
        try:
            data = json.loads(line)
            recipients = [Recipient(**r) for r in data.pop("recipients")]
            item = cls(recipients=recipients, **data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptQueueFile(f"bad header: {exc}") from None
        if not is_queue_id(item.id) or not isinstance(item.sender, str) or not item.recipients:
            raise CorruptQueueFile("bad header: id, sender or recipients invalid")
        return item


def parse(data: bytes) -> tuple[QueueItem, bytes]:
    """Split a queue file into its item and message; raises CorruptQueueFile."""
    if not data.startswith(MAGIC):
        raise CorruptQueueFile("missing MAILPROV-QUEUE magic line")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptQueueFile("truncated header")
    item = QueueItem.from_header(data[len(MAGIC) : end])
    message = data[end + 1 :]
    if item.size and len(message) != item.size:  # the header records the size: a cut file must not be delivered
        raise CorruptQueueFile(f"truncated message: {len(message)} of {item.size} bytes")
    return item, message


class QueueStore:
    """Blocking operations on the queue directories (call them from a worker thread in async code)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def dir(self, state: str) -> Path:
        return self.root / state

    def path(self, state: str, queue_id: str) -> Path:
        return self.root / state / queue_id

    def ensure_dirs(self) -> None:
        """Create the state directories (mode 0700: queue files hold other people's mail)."""
        for state in STATES:
            self.dir(state).mkdir(parents=True, exist_ok=True, mode=0o700)

    def write_new(self, item: QueueItem, message: bytes) -> Path:
        """Write a new item into ``incoming/`` (temp file, fsync, rename). The caller must then fsync the
        ``incoming`` directory (grouped, see DiskIO.sync_dir) before answering 250."""
        final = self.path("incoming", item.id)
        tmp = self.dir("incoming") / f".{item.id}.tmp"
        durable_create(tmp, final, item.header_bytes(), message)
        return final

    def rewrite(self, state: str, item: QueueItem, message: bytes) -> None:
        """Replace an item's file in ``state`` durably (after a delivery attempt)."""
        atomic_write(self.path(state, item.id), item.header_bytes() + message, mode=0o600)

    def read(self, state: str, queue_id: str) -> tuple[QueueItem, bytes]:
        """Read an item and its message; raises FileNotFoundError or CorruptQueueFile."""
        return parse(self.path(state, queue_id).read_bytes())

    def read_header(self, state: str, queue_id: str) -> QueueItem:
        """Read only the envelope (cheap for big messages)."""
        with open(self.path(state, queue_id), "rb") as handle:
            magic = handle.readline()
            if magic != MAGIC:
                raise CorruptQueueFile("missing MAILPROV-QUEUE magic line")
            line = handle.readline()
            if not line.endswith(b"\n"):
                raise CorruptQueueFile("truncated header")
        return QueueItem.from_header(line)

    def move(self, queue_id: str, src: str, dst: str) -> None:
        """Change an item's state (one rename). Raises FileNotFoundError if it is not in ``src``."""
        os.rename(self.path(src, queue_id), self.path(dst, queue_id))

    def remove(self, state: str, queue_id: str) -> bool:
        """Delete an item (delivered, or deleted by the operator); False if it was not in ``state``."""
        try:
            os.unlink(self.path(state, queue_id))
        except FileNotFoundError:
            return False
        return True

    def quarantine(self, state: str, name: str, reason: str) -> None:
        """Move an unreadable file to ``corrupt/`` (never delete it) and say so in the log."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.dir(state) / name, self.dir("corrupt") / name)
            log.error("%s: quarantined %s/%s in corrupt/: %s", name, state, name, reason)

    def ids(self, state: str) -> list[str]:
        """Queue ids in ``state`` (temporary and foreign files are skipped)."""
        try:
            names = os.listdir(self.dir(state))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_queue_id(n))

    def locate(self, queue_id: str) -> str | None:
        """The state an item is in, or None."""
        for state in STATES:
            if self.path(state, queue_id).exists():
                return state
        return None

    def scan(self, states: tuple[str, ...] = ("incoming", "active", "deferred", "hold")) -> Iterator[tuple[str, QueueItem]]:
        """Every readable item's envelope, oldest first across ``states`` (queue ids are time-ordered),
        read one at a time: only the ids are held in memory. Unreadable items are quarantined; an item
        that moved meanwhile is skipped."""
        for queue_id, state in heapq.merge(*[zip(self.ids(state), itertools.repeat(state)) for state in states]):
            try:
                yield state, self.read_header(state, queue_id)
            except FileNotFoundError:
                continue
            except (CorruptQueueFile, OSError, UnicodeDecodeError) as exc:
                self.quarantine(state, queue_id, str(exc))

    def clean_temporaries(self, max_age: float = 0.0) -> int:
        """Remove temporary ``.NAME.tmp`` files older than ``max_age`` seconds: partial writes of a server
        that died mid-write (never acknowledged with a 250; the complete file, if any, is beside them).
        Returns how many were removed."""
        removed = 0
        now = time.time()
        for state in ("incoming", "active", "deferred", "hold"):
            try:
                names = os.listdir(self.dir(state))
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    path = self.dir(state) / name
                    with contextlib.suppress(FileNotFoundError):
                        if now - path.stat().st_mtime >= max_age:
                            path.unlink()
                            removed += 1
                            log.info("removed partial write %s/%s", state, name)
        return removed
