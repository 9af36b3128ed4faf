"""Fixtures for the fault tests: mailprov trees and servers, a Postfix smtp-sink as the remote MX.

Everything listens in 127.0.7.0/24 (this area's private range): servers on .10-.89, peers (sinks,
scripted MX hosts, DNS) on .90-.99, clients bind .100-.254 when they need a distinct address.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.peers.mailprov_server import MailprovProcess, MailprovTree, free_port, run_mailprov

_ips = itertools.count((os.getpid() % 8) * 10)
_peer_ips = itertools.count(os.getpid() % 10)
MSGID = re.compile(rb"^Message-ID:\s*<([^>\r\n]+)>", re.I | re.M)


def next_ip() -> str:
    """A fresh server address in 127.0.7.10-89."""
    return f"127.0.7.{10 + next(_ips) % 80}"


def next_peer_ip() -> str:
    """A fresh peer address in 127.0.7.90-99."""
    return f"127.0.7.{90 + next(_peer_ips) % 10}"


def message_ids(paths: list[Path]) -> Counter[str]:
    """How often each Message-ID occurs in these files (one message per file)."""
    found: Counter[str] = Counter()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            match = MSGID.search(path.read_bytes()[:65536])
            if match:
                found[match.group(1).decode()] += 1
    return found


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded). Returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def queue_empty(tree: MailprovTree) -> bool:
    """No item left in incoming, active or deferred."""
    return not any(tree.queue_files(s) for s in ("incoming", "active", "deferred"))


class SmtpSink:
    """Postfix's ``smtp-sink`` dumping every transaction into its own file (a real, fast remote MX)."""

    def __init__(self, ip: str) -> None:
        require_programs("smtp-sink")
        self.ip = ip
        self.port = free_port(ip)
        self.dir = Path(tempfile.mkdtemp(prefix="mailprov-sink-", dir="/tmp"))
        if os.geteuid() == 0:  # smtp-sink -u nobody writes its dumps here as nobody
            os.chown(self.dir, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SmtpSink:
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [exe, "-u", "nobody", "-d", f"{self.dir}/%H%M%S.", f"{self.ip}:{self.port}", "256"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.ip, self.port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("smtp-sink did not start")

    def files(self) -> list[Path]:
        return [p for p in self.dir.iterdir() if p.is_file()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def make_tree() -> Iterator:
    """Factory: ``make_tree(**sections)`` -> a MailprovTree for faults.test with alice and bob; removed after."""
    trees: list[MailprovTree] = []

    def build(*, ip: str | None = None, root: Path | None = None, **sections) -> MailprovTree:  # type: ignore[no-untyped-def]
        tree = MailprovTree.create(hostname="mx.faults.test", domains=["faults.test"], ip=ip or next_ip(), root=root, **sections)
        tree.add_user("alice@faults.test", "alice-secret-1")
        tree.add_user("bob@faults.test", "bob-secret-2")
        trees.append(tree)
        return tree

    yield build
    for tree in trees:
        tree.cleanup()


@pytest.fixture
def mailprov_server() -> Iterator:
    """Factory: ``mailprov_server(tree)`` -> a running ``mailprov serve``; every one stopped afterwards."""
    running: list[MailprovProcess] = []

    def start(tree: MailprovTree, **kwargs) -> MailprovProcess:  # type: ignore[no-untyped-def]
        proc = run_mailprov(tree.config_path, **kwargs)
        running.append(proc)
        return proc

    yield start
    for proc in running:
        proc.stop()


@pytest.fixture
def smtp_sink() -> Iterator:
    """Factory: ``smtp_sink()`` -> a running SmtpSink on a peer address; stopped afterwards."""
    sinks: list[SmtpSink] = []

    def start(ip: str | None = None) -> SmtpSink:
        sink = SmtpSink(ip or next_peer_ip()).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


class Tmpfs:
    """A small tmpfs mounted for one test (root only); unmounted by the fixture's finalizer."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True, timeout=30)
        self.mounted = True
        self._filler = path / ".filler"

    def fill(self, leave: int = 0) -> int:
        """Write a filler file until the file system is full, then give back ``leave`` bytes. Returns its size."""
        written = 0
        with open(self._filler, "ab") as handle:
            chunk = b"\0" * 16384
            while True:
                try:
                    handle.write(chunk)
                    handle.flush()
                    written += len(chunk)
                except OSError:
                    break
        if leave:
            self.free(leave)
        return written

    def free(self, amount: int | None = None) -> None:
        """Give back ``amount`` bytes of the filler (all of it when None)."""
        if amount is None:
            self._filler.unlink(missing_ok=True)
            return
        size = self._filler.stat().st_size
        os.truncate(self._filler, max(0, size - amount))

    def umount(self) -> None:
        if self.mounted:
            result = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self.mounted = False


@pytest.fixture
def tmpfs() -> Iterator:
    """Factory: ``tmpfs(path, size)`` mounts a tmpfs; every mount is unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (./dev test runs as root in CI)")
    mounts: list[Tmpfs] = []

    def mount(path: Path, size: str = "2m") -> Tmpfs:
        fs = Tmpfs(path, size)
        mounts.append(fs)
        return fs

    yield mount
    for fs in reversed(mounts):
        fs.umount()
