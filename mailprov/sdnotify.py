"""systemd's notify protocol (sd_notify(3)): tell the service manager the service is ready, or stopping.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a datagram socket path, or an abstract
name starting with ``@``) and counts the service started only when it receives ``READY=1``. So
``systemctl start`` -- and the deploy's start and restart tasks -- succeed only once the service really
serves, and fail with the journal's reason when it cannot. Without ``NOTIFY_SOCKET`` (the pid-file
manager, tests, a terminal) every call is a no-op. A few lines on a socket, as sd_notify(3) documents,
rather than a dependency on libsystemd.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("mailprov")


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments (``READY=1``, ``STOPPING=1``, ``STATUS=...``); True when sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket: the name starts with a NUL byte
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError as exc:  # the manager went away: the service itself can go on
        log.warning("cannot notify the service manager at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True
