"""The service manager for hosts without systemd: ``python -m mailprov.deploy.daemon``.

Runs a real ``mailprov serve pop3`` on 127.0.6.40: start is idempotent, status and stop report what they
did (the first word is what Ansible reports as changed), and a service that cannot start fails with its log.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.lab import REPO

pytestmark = pytest.mark.timeout(300)
ADDRESS = "127.0.6.40"


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mailprov-daemon-"))
    user = "nobody" if os.geteuid() == 0 else getpass.getuser()
    if os.geteuid() == 0:  # run as root, the service drops to nobody: its tree is nobody's, as a deploy makes it
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    (root / "mailprov.toml").write_text(
        f"""[server]
hostname = "mail.daemon.test"
domains = ["daemon.test"]
user = "{user}"
[paths]
queue_dir = "{root}/queue"
mail_dir = "{root}/mail"
state_dir = "{root}/state"
users_file = "{root}/users"
aliases_file = "{root}/aliases"
[pop3]
listen = ["{ADDRESS}:3110"]
tls_listen = ["{ADDRESS}:3995"]
"""
    )
    yield root
    daemon("stop", "--pidfile", str(root / "pop3.pid"))
    shutil.rmtree(root, ignore_errors=True)


def daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailprov.deploy.daemon", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def _start(root: Path) -> subprocess.CompletedProcess[str]:
    return daemon(
        "start", "--service", "pop3", "--config", str(root / "mailprov.toml"), "--pidfile", str(root / "pop3.pid"),
        "--logfile", str(root / "pop3.log"), "--timeout", "60",
    )  # fmt: skip


def test_start_is_idempotent_and_stop_reports(tree: Path) -> None:
    first = _start(tree)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("started pid ")
    pid = int(first.stdout.split()[-1])
    with socket.create_connection((ADDRESS, 3110), timeout=10) as sock:
        assert sock.recv(512).startswith(b"+OK")
    again = _start(tree)
    assert again.returncode == 0 and again.stdout.strip() == f"running pid {pid}"
    status = daemon("status", "--pidfile", str(tree / "pop3.pid"))
    assert status.returncode == 0 and status.stdout.strip() == f"running pid {pid}"
    stopped = daemon("stop", "--pidfile", str(tree / "pop3.pid"))
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped pid {pid}"
    assert not (tree / "pop3.pid").exists()
    assert daemon("stop", "--pidfile", str(tree / "pop3.pid")).stdout.strip() == "stopped-already"
    assert daemon("status", "--pidfile", str(tree / "pop3.pid")).returncode == 3


def test_a_service_that_cannot_start_fails_with_its_log(tree: Path) -> None:
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind((ADDRESS, 3110))
        blocker.listen()
        result = _start(tree)
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr or "did not listen" in result.stderr
    assert "last log lines" in result.stderr
    assert "Traceback" not in result.stdout


def test_a_stale_pid_file_is_not_trusted(tree: Path) -> None:
    (tree / "pop3.pid").write_text(f"{os.getpid()}\n")  # alive, but not a mailprov serve
    assert daemon("status", "--pidfile", str(tree / "pop3.pid")).returncode == 3
    started = _start(tree)
    assert started.returncode == 0 and started.stdout.startswith("started pid "), started.stderr


def test_start_right_after_a_sigkill_starts_a_new_server(tree: Path) -> None:
    """The issue's case: after SIGKILL, start answered "running" for the dying master and nothing listened."""
    first = _start(tree)
    assert first.returncode == 0, first.stderr
    old = int(first.stdout.split()[-1])
    os.kill(old, signal.SIGKILL)
    again = _start(tree)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("started pid ") and int(again.stdout.split()[-1]) != old, again.stdout
    for port in (3110, 3995):
        socket.create_connection((ADDRESS, port), timeout=10).close()
