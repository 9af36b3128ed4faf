"""The embedded default end to end: ``mailprov demo up --json`` tells the story, ``status --json`` gives
every endpoint while it runs, ``probe --demo`` passes, and ``demo down`` leaves nothing running.

The test runs its own demo in 127.0.18.0/24 (``MAILPROV_DEMO_NET``) and its own ``MAILPROV_DEMO_DIR``, so
that the demo a user left running with ``./dev demo`` (127.0.6.0/24, /tmp/mailprov-demo-UID) neither
breaks it nor is stopped by it: while it runs, the default demo's DNS and SMTP addresses stay held (by
the user's demo, or else by stand-in listeners) and are still held afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.lab import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NET = "127.0.18"
USER_DEMO = [("127.0.6.53", 5300), ("127.0.6.10", 2525), ("127.0.6.20", 2995)]  # the default demo's


def _mailprov(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailprov.deploy", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture
def user_demo() -> Iterator[None]:
    """The default demo's addresses held, as a user's running demo holds them (by it, or by stand-ins)."""
    held: list[socket.socket] = []
    try:
        for host, port in USER_DEMO:
            sock = socket.socket()
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                assert exc.errno == errno.EADDRINUSE, exc
                continue  # a real demo holds it
            sock.listen()
            held.append(sock)
        yield
    finally:
        for sock in held:
            sock.close()


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # A path the demo creates itself, as MAILPROV_DEMO_DIR set by a user would be (not pytest's tmp_path:
    # the demo refuses, as root, a directory whose parents the mailprov user cannot traverse).
    path = Path(f"/tmp/mailprov-demo-test-{uuid.uuid4().hex[:8]}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_up_status_probe_down_beside_a_running_demo(user_demo: None, demo_dir: Path) -> None:
    env = dict(os.environ, MAILPROV_DEMO_DIR=str(demo_dir), MAILPROV_DEMO_NET=NET, NO_COLOR="1")
    try:
        up = _mailprov("demo", "up", env=env)
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        assert f"demo down             stop it and remove {demo_dir}" in up.stdout  # how to stop it, last
        assert "reads it over IMAPS too" in up.stdout and "IMAPS login ok" in up.stdout, up.stdout[-2000:]
        story = _mailprov("demo", "status", env=env)
        assert story.returncode == 0
        status = json.loads(_mailprov("demo", "status", "--json", env=env).stdout)
        assert status["running"] is True
        assert status["network"] == NET
        assert status["dns"]["server"] == f"{NET}.53:5300"
        assert {u["address"] for u in status["users"]} == {"alex@alpha.test", "john@beta.test"}
        for name, address in (("mail.alpha.test", f"{NET}.10"), ("mail.beta.test", f"{NET}.20")):
            host = status["hosts"][name]
            assert host["address"] == address
            for service in ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps"):
                assert _listening(host[service]["host"], host[service]["port"]), (name, service)
            # Installed the way a real deploy installs: a venv of the host's own, not the caller's environment.
            venv = demo_dir / name / "opt" / "mailprov" / "venv"
            assert (venv / ".mailprov-wheel-digest").is_file(), f"{venv} has no installed wheel"
            cmdline = Path(f"/proc/{status['processes'][f'{name}/smtp']['pid']}/cmdline").read_bytes().split(b"\0")
            assert cmdline[0].decode().startswith(str(venv)), cmdline
        probe = _mailprov("probe", "mail.beta.test", "--demo", "--format", "json", env=env)
        assert probe.returncode == 0, probe.stdout
        report = json.loads(probe.stdout)
        assert report["verdict"] == "pass"
        imap_checks = [c for d in report["domains"] for c in d["checks"] if c["id"] == "probe.imap"]
        assert len(imap_checks) == 2 and all(c["status"] == "pass" for c in imap_checks), imap_checks  # capabilities, round trip
        # Without the environment, status still finds the demo's network from its directory.
        plain = {k: v for k, v in env.items() if k != "MAILPROV_DEMO_NET"}
        assert json.loads(_mailprov("demo", "status", "--json", env=plain).stdout)["network"] == NET
    finally:
        down = _mailprov("demo", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not demo_dir.exists()
    assert not _listening(f"{NET}.10", 2525) and not _listening(f"{NET}.20", 2995) and not _listening(f"{NET}.53", 5300)
    after = json.loads(_mailprov("demo", "status", "--json", env=env).stdout)
    assert after["running"] is False
    for host, port in USER_DEMO:
        assert _listening(host, port), f"the user's demo lost {host}:{port}"


def test_demo_network_is_checked() -> None:
    env = dict(os.environ, MAILPROV_DEMO_NET="10.0.0", MAILPROV_DEMO_DIR="/nonexistent/mailprov-demo")
    result = _mailprov("demo", "status", "--json", env=env)
    assert result.returncode == 2
    assert "MAILPROV_DEMO_NET='10.0.0' is not a /24 of 127.0.0.0/8" in result.stderr + result.stdout


def test_demo_zones_rewritten_for_its_network(tmp_path: Path) -> None:
    from mailprov.deploy import demo
    from mailprov.dns.zonefile import load_zone

    files = demo.write_zones(tmp_path, NET)
    assert sorted(p.name for p in files) == ["18.0.127.in-addr.arpa.zone", "alpha.test.zone", "beta.test.zone"]
    reverse = load_zone(tmp_path / "zones" / "18.0.127.in-addr.arpa.zone")
    assert str(reverse.origin) == "18.0.127.in-addr.arpa."
    assert reverse.find_rdataset("10", "PTR")[0].target.to_text() == "mail.alpha.test."
    alpha = load_zone(tmp_path / "zones" / "alpha.test.zone")
    assert [r.address for r in alpha.find_rdataset("mail", "A")] == [f"{NET}.10"]
    assert "127.0.6." not in "".join(p.read_text() for p in files)
