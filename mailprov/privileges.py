"""Privileges: the state directories a service owns, and the one-way switch from root to ``server.user``.

Kept apart from the service runner so that worker processes can drop privileges without importing it.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from pathlib import Path

from mailprov.config import Config
from mailprov.errors import ConfigError

log = logging.getLogger("mailprov")


def prepare_directories(config: Config) -> None:
    """Create the queue, mail and state roots; owned by the service user when running as root."""
    owner = _service_user(config) if os.geteuid() == 0 else None
    for path in (config.paths.queue_dir, config.paths.mail_dir, config.paths.state_dir):
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o750)
        if owner:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def _service_user(config: Config) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(config.server.user)
    except KeyError:
        raise ConfigError(
            "server.user",
            f"no such user {config.server.user!r}",
            "create it (useradd --system mailprov) or name an existing unprivileged user",
        ) from None


def drop_privileges(config: Config) -> None:
    """When root: switch to ``server.user`` (and its group) for good, keeping no supplementary groups."""
    if os.geteuid() != 0:
        return
    user = _service_user(config)
    if user.pw_uid == 0:
        raise ConfigError("server.user", "is root", "name an unprivileged user such as 'mailprov'")
    os.setgroups([g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.umask(0o027)
    log.info("dropped privileges to %s (uid %d)", user.pw_name, user.pw_uid)
