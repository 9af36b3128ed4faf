"""Readiness through systemd's notify protocol (sd_notify(3)), against a real ``mailprov serve``.

The test plays the service manager's side: a datagram socket whose path goes to the service in
``NOTIFY_SOCKET``, as systemd does for a ``Type=notify`` unit. ``READY=1`` must arrive only once every
listening address accepts (for SMTP and IMAP with worker processes: once every worker said it is ready), and
``STOPPING=1`` when SIGTERM ends the service. Started as root, the service binds, then drops to ``nobody``
before it says it is ready. (The booted-systemd proof, where the unit's ``User=`` runs it as mailprov
from the start, is tests/deploy/test_systemd.py.)
"""

from __future__ import annotations

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

from tests.peers import stop_process

pytestmark = pytest.mark.timeout(300)
ADDRESS = "127.0.10.20"
START_TIMEOUT = 60.0  # upper bound on start-up; not an assertion on speed


@pytest.fixture
def tree() -> Iterator[Path]:
    """A data directory owned by the service user, as an operator sets one up."""
    root = Path(tempfile.mkdtemp(prefix="mailprov-notify-"))
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    os.chown(root, user.pw_uid, user.pw_gid)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _config(root: Path, service: str) -> Path:
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    section = {
        "smtp": f'[smtp]\nlisten = ["{ADDRESS}:3025"]\nsubmission_listen = ["{ADDRESS}:3587"]\n'
        f'submissions_listen = ["{ADDRESS}:3465"]\nprocesses = 2\n',
        "pop3": f'[pop3]\nlisten = ["{ADDRESS}:3110"]\ntls_listen = ["{ADDRESS}:3995"]\n',
        "imap": f'[imap]\nlisten = ["{ADDRESS}:3143"]\ntls_listen = ["{ADDRESS}:3993"]\nprocesses = 2\n',
    }[service]
    path = root / f"{service}.toml"
    path.write_text(
        f'[server]\nhostname = "mail.notify.test"\ndomains = ["notify.test"]\nuser = "{user}"\n'
        f'[paths]\nqueue_dir = "{root}/queue"\nmail_dir = "{root}/mail"\nstate_dir = "{root}/state"\n'
        f'users_file = "{root}/users"\naliases_file = "{root}/aliases"\n' + section
    )
    path.chmod(0o644)
    return path


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((ADDRESS, port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("service", "ports"), [("pop3", (3110, 3995)), ("smtp", (3025, 3587, 3465)), ("imap", (3143, 3993))])
def test_ready_only_when_every_listener_accepts_and_stopping_on_sigterm(tree: Path, service: str, ports: tuple[int, ...]) -> None:
    config = _config(tree, service)
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tree / "notify"
    manager.bind(str(notify_path))
    os.chown(notify_path, tree.stat().st_uid, tree.stat().st_gid)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailprov.deploy", "serve", service, "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        manager.settimeout(START_TIMEOUT)
        try:
            message = manager.recv(4096).decode()
        except TimeoutError:
            pytest.fail(f"no notification within {START_TIMEOUT}s: {proc.stderr.read().decode() if proc.poll() is not None else ''}")
        fields = dict(line.split("=", 1) for line in message.splitlines())
        assert fields["READY"] == "1" and fields["MAINPID"] == str(proc.pid), message
        assert all(_accepts(port) for port in ports)  # ready was not said before this was true
        proc.send_signal(signal.SIGTERM)
        stopping = manager.recv(4096).decode()
        assert "STOPPING=1" in stopping.splitlines()
        assert proc.wait(START_TIMEOUT) == 0
    finally:
        stop_process(proc)
        manager.close()


def test_no_notify_socket_is_a_no_op() -> None:
    from mailprov.sdnotify import notify

    saved = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        assert notify("READY=1") is False
    finally:
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved
