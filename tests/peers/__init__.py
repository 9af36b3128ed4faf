"""Launchers for the real peer programs the tests drive (Knot, Unbound, Postfix, Dovecot, sshd, ...).

Each module starts a private instance on a loopback address chosen by the caller, waits until it
answers, and stops it (a context manager or a fixture-friendly start/stop pair). Every process a test
starts, it stops.
"""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a peer we started: SIGTERM, wait up to ``timeout``, then SIGKILL, and always reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
