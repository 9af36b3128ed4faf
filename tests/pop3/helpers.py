"""Test helpers: put messages into a Maildir the way an MDA does (tmp, fsync, rename into new/)."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from mailprov.maildir import maildir_path

_counter = itertools.count()


def ensure_maildir(path: Path) -> Path:
    """Create tmp/, new/ and cur/ under ``path``."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def deliver(maildir: Path, data: bytes, *, size_hint: bool = False, sync: bool = False) -> str:
    """Write one message into ``maildir/new`` through ``tmp``; returns its file name (unique name).

    ``size_hint`` adds ``,S=<bytes>`` as many MDAs do (it is the raw size, not the POP3 size)."""
    ensure_maildir(maildir)
    now = time.time()
    name = f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{socket.gethostname()}"
    if size_hint:
        name += f",S={len(data)}"
    tmp = maildir / "tmp" / name
    with open(tmp, "wb") as handle:
        handle.write(data)
        if sync:
            os.fsync(handle.fileno())
    os.rename(tmp, maildir / "new" / name)
    return name


def user_maildir(config, address: str) -> Path:
    """The Maildir of ``address`` under the configuration's mail_dir."""
    return maildir_path(config.paths.mail_dir, address)


def message(number: int, *, size: int = 0, body: bytes | None = None) -> bytes:
    """A small RFC 5322 message with LF line endings (as an MDA may store it)."""
    head = f"From: alex@alpha.test\nTo: john@example.test\nSubject: test {number}\nMessage-ID: <{number}@alpha.test>\n\n".encode()
    if body is None:
        line = f"line of message {number} ".encode()
        body = b""
        while len(head) + len(body) < size or not body:
            body += line + b"x" * max(0, 60 - len(line)) + b"\n"
    return head + body
