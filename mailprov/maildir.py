"""Where mailboxes live: ``MAIL_DIR/DOMAIN/LOCALPART/`` is a standard Maildir (``tmp``, ``new``, ``cur``).

The MDA writes into it (tmp, fsync, rename into new); the POP3 server reads it and moves what it has
read into ``cur`` with the standard ``:2,`` info suffix, so Dovecot or mutt can open the same folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from mailprov.errors import UsageError

# Local parts and domains are used as path components: only characters that are safe there.
_SAFE = re.compile(r"^[a-z0-9!#$%&'*+=?^_`{|}~.-]+$")


def maildir_path(mail_dir: str | Path, address: str) -> Path:
    """The Maildir of ``address`` (already normalized: lower case, no subaddress)."""
    local, _, domain = address.rpartition("@")
    for part in (local, domain):
        if not part or not _SAFE.match(part) or part in (".", "..") or part.startswith("."):
            raise UsageError(f"{address!r} cannot name a mailbox", fix="use a plain local@domain address")
    return Path(mail_dir) / domain / local
