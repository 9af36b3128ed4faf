"""The embedded default end to end: ``mailprov demo up --json`` tells the story, ``status --json`` gives
every endpoint while it runs, ``probe --demo`` passes, and ``demo down`` leaves nothing running.

Uses the demo's fixed addresses (127.0.6.10/20/53) and ports (2525, 2587, 2465, 2110, 2995, 2143, 2993, 5300): a demo
started by hand on this machine must be stopped first (``mailprov demo down``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.lab import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _mailprov(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailprov.deploy", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture
def demo_root() -> Iterator[Path]:
    # Not pytest's tmp_path (mode 0700 parents): run as root, the services drop to the mailprov user.
    root = Path(tempfile.mkdtemp(prefix="mailprov-demo-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_demo_up_status_probe_down(demo_root: Path) -> None:
    tmp_path = demo_root
    env = dict(os.environ, MAILPROV_DEMO_DIR=str(tmp_path / "demo"), NO_COLOR="1")
    try:
        up = _mailprov("demo", "up", env=env)
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        assert "reads it over IMAPS too" in up.stdout and "IMAPS login ok" in up.stdout, up.stdout[-2000:]
        story = _mailprov("demo", "status", env=env)
        assert story.returncode == 0
        status = json.loads(_mailprov("demo", "status", "--json", env=env).stdout)
        assert status["running"] is True
        assert status["dns"]["server"] == "127.0.6.53:5300"
        assert {u["address"] for u in status["users"]} == {"alex@alpha.test", "john@beta.test"}
        for name, address in (("mail.alpha.test", "127.0.6.10"), ("mail.beta.test", "127.0.6.20")):
            host = status["hosts"][name]
            assert host["address"] == address
            for service in ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps"):
                assert _listening(host[service]["host"], host[service]["port"]), (name, service)
        probe = _mailprov("probe", "mail.beta.test", "--demo", "--format", "json", env=env)
        assert probe.returncode == 0, probe.stdout
        report = json.loads(probe.stdout)
        assert report["verdict"] == "pass"
        imap_checks = [c for d in report["domains"] for c in d["checks"] if c["id"] == "probe.imap"]
        assert len(imap_checks) == 2 and all(c["status"] == "pass" for c in imap_checks), imap_checks  # capabilities, round trip
    finally:
        down = _mailprov("demo", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not (tmp_path / "demo").exists()
    assert not _listening("127.0.6.10", 2525) and not _listening("127.0.6.20", 2995) and not _listening("127.0.6.53", 5300)
    after = json.loads(_mailprov("demo", "status", "--json", env=env).stdout)
    assert after["running"] is False
