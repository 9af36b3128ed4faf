"""The multi-process IMAP server (``imap.processes = 2``): sessions in two worker processes behave as in one.

``mailprov serve imap`` on 127.0.23.10 (and .11 for the kill test), run as root and dropping to
``nobody`` as deployed; clients bind source addresses 127.0.23.100-139 so the per-client limits of one
test never meet another's. Which worker serves a session is read from the kernel (the process holding
the server side of the connection), so "two sessions in two workers" is checked, not assumed.
"""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from tests.peers.mailprov_server import MailprovProcess, MailprovTree, alive, children, run_mailprov, worker_holding

pytestmark = [pytest.mark.peers]

IP, KILL_IP = "127.0.23.10", "127.0.23.11"
USER, PASSWORD = "john@beta.test", "john-imap-secret"


class Client(imaplib.IMAP4):
    """imaplib from a chosen source address (the server's limits are per client address)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.source = source
        super().__init__(host, port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def worker_of(server: MailprovProcess, client: imaplib.IMAP4) -> int:
    """The worker process serving ``client``'s session."""
    return worker_holding(server.proc.pid, client.sock.getpeername()[:2], client.sock.getsockname()[:2])


def start(ip: str, **imap: object) -> tuple[MailprovTree, MailprovProcess]:
    settings = {"processes": 2, "plaintext_networks": ["127.0.0.0/8"], **imap}
    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=ip, imap=settings)
    tree.add_user(USER, PASSWORD)
    return tree, run_mailprov(tree.config_path, services="imap")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[MailprovTree, MailprovProcess, list[int]]]:
    tree, server = start(IP, max_connections_per_client=2, max_auth_failures=2, auth_failure_delay=0.05)
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2, server.log()
        yield tree, server, workers
    finally:
        server.stop()
        tree.cleanup()


def deliver(tree: MailprovTree, name: str, body: bytes) -> None:
    """Drop a message into john's new/ as the MDA does (tmp/ then rename), owned by the service user."""
    owner = tree.mail_dir.stat()
    box = tree.mail_dir / "beta.test" / "john"
    for path in (box.parent, box, box / "tmp", box / "new", box / "cur"):
        path.mkdir(exist_ok=True)
        os.chown(path, owner.st_uid, owner.st_gid)
    (box / "tmp" / name).write_bytes(body)
    os.chown(box / "tmp" / name, owner.st_uid, owner.st_gid)
    os.rename(box / "tmp" / name, box / "new" / name)


def two_sessions(tree: MailprovTree, server: MailprovProcess, source: str) -> tuple[Client, Client]:
    """Two logged-in sessions from ``source`` with INBOX selected, served by the two different workers.
    The master gives each connection to the least busy worker; the ends of an earlier test's sessions
    reach it asynchronously, so a second session that lands beside the first is closed and tried again
    (bounded)."""
    a = Client(IP, tree.ports["imap"], source)
    deadline = time.monotonic() + 10
    while True:
        try:
            b = Client(IP, tree.ports["imap"], source)
        except imaplib.IMAP4.error:  # refused: the slot of the one closed below is not back yet
            b = None
        if b is not None and worker_of(server, b) != worker_of(server, a):
            break
        if b is not None:
            b.logout()
        assert time.monotonic() < deadline, "the master never spread two sessions over the two workers"
        time.sleep(0.1)
    for c in (a, b):
        c.login(USER, PASSWORD)
        c.select("INBOX")
    return a, b


def test_sessions_in_two_workers_see_each_others_changes_and_idle_wakes_in_both(served):
    """RFC 3501 5.2 and 7.4.1 across processes: a flag change and an expunge made in one worker are
    reported by the other's session at its next command; a delivery wakes IDLE (RFC 2177) in both."""
    tree, server, _workers = served
    deliver(tree, "1700000001.M1P1.test", b"Subject: one\r\n\r\nfirst\r\n")
    deliver(tree, "1700000002.M2P1.test", b"Subject: two\r\n\r\nsecond\r\n")
    a, b = two_sessions(tree, server, "127.0.23.100")
    try:
        assert a.uid("STORE", "1", "+FLAGS.SILENT", r"(\Flagged)")[0] == "OK"
        typ, _ = b.noop()
        assert typ == "OK"
        flagged = [r for r in b.untagged_responses.pop("FETCH", []) if b"\\Flagged" in r]
        assert flagged, "the other worker's session was not told of the flag change"
        assert a.uid("STORE", "2", "+FLAGS.SILENT", r"(\Deleted)")[0] == "OK"
        assert a.expunge()[0] == "OK"
        b.noop()
        assert b.untagged_responses.pop("EXPUNGE", []) == [b"2"]

        for c in (a, b):  # both idle; a delivery must wake each, whichever worker holds it
            c.send(b"I1 IDLE\r\n")
            assert c.readline().startswith(b"+")
        deliver(tree, "1700000003.M3P1.test", b"Subject: three\r\n\r\nthird\r\n")
        for c in (a, b):
            c.sock.settimeout(10)
            line = c.readline()
            while line and not line.endswith(b"EXISTS\r\n"):
                line = c.readline()
            assert line == b"* 2 EXISTS\r\n"
            c.send(b"DONE\r\n")
            for _ in range(10):  # bounded: at most a few updates before the tagged OK
                line = c.readline()
                if not line or line.startswith(b"I1 "):
                    break
            assert line.startswith(b"I1 OK"), line
    finally:
        for c in (a, b):
            c.logout()
    # Both workers dropped to nobody after loading: nothing was imported from the checkout later.
    log = server.log()
    assert log.count("dropped privileges to nobody") >= 3, log  # the master and each worker
    assert "after dropping privileges" not in log


def test_connection_limit_and_login_throttle_count_across_workers(served):
    """imap.max_connections_per_client (2) and imap.max_auth_failures (2) hold for a client address
    whichever worker serves it: the third connection is refused, and the second failure, made in the
    other worker, ends the session."""
    tree, server, _workers = served
    a, b = two_sessions(tree, server, "127.0.23.110")
    with socket.create_connection((IP, tree.ports["imap"]), timeout=10, source_address=("127.0.23.110", 0)) as third:
        assert third.recv(200).startswith(b"* BYE [UNAVAILABLE]")
    a.logout()
    deadline = time.monotonic() + 10
    while True:  # the worker tells the master the session ended; the slot comes back
        try:
            Client(IP, tree.ports["imap"], "127.0.23.110").logout()
            break
        except (imaplib.IMAP4.error, OSError):  # refused: '* BYE [UNAVAILABLE]' instead of the greeting
            assert time.monotonic() < deadline, "a closed session's slot never came back"
            time.sleep(0.1)
    b.logout()

    c = Client(IP, tree.ports["imap"], "127.0.23.120")
    d = Client(IP, tree.ports["imap"], "127.0.23.120")
    if worker_of(server, c) == worker_of(server, d):  # an earlier close not yet counted: see two_sessions
        d.logout()
        time.sleep(0.5)
        d = Client(IP, tree.ports["imap"], "127.0.23.120")
    assert worker_of(server, c) != worker_of(server, d)
    for session, password in ((c, "wrong"), (d, "wrong again")):
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            session.login(USER, password)
    assert c.noop()[0] == "OK"  # one failure: this session goes on
    with pytest.raises((imaplib.IMAP4.abort, OSError)):  # the second, counted by the master: hung up
        d.noop()
    c.logout()
    d.shutdown()
    assert "2 recent failures" in server.log()


def test_a_killed_worker_is_replaced_and_sessions_go_on():
    """SIGKILL one worker: the session in the other worker goes on and new clients are served; the master
    restarts the dead worker, or, when server.user cannot run the interpreter from this checkout (as here
    and in CI: /root/.pyenv), says so, and serves the sessions itself once the last worker is gone too."""
    tree, server = start(KILL_IP)
    try:
        workers = children(server.proc.pid)
        assert len(workers) == 2
        restartable = "worker that dies cannot be restarted" not in server.log()
        survivor = Client(KILL_IP, tree.ports["imap"], "127.0.23.130")
        survivor.login(USER, PASSWORD)
        doomed = Client(KILL_IP, tree.ports["imap"], "127.0.23.131")
        victim = worker_of(server, doomed)
        assert worker_of(server, survivor) != victim
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and alive(victim):
            time.sleep(0.05)
        assert survivor.select("INBOX")[0] == "OK"  # the other worker's session is untouched
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            doomed.noop()
        deadline = time.monotonic() + 20
        while True:  # the restarted worker may still be loading: bounded retries
            try:
                for i in range(3):  # enough to reach every live worker
                    c = Client(KILL_IP, tree.ports["imap"], f"127.0.23.{132 + i}")
                    c.login(USER, PASSWORD)
                    assert c.select("INBOX")[0] == "OK"
                    c.logout()
                break
            except (imaplib.IMAP4.error, OSError):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the master waits a second, then restarts (or fails to)
            now = set(children(server.proc.pid))
            if (len(now) == 2 and victim not in now) or "cannot restart IMAP worker" in server.log():
                break
            time.sleep(0.1)
        if restartable:
            assert len(now) == 2 and victim not in now, server.log()
            return
        # Not restartable here: the other worker serves every session; once it dies too, the master does.
        assert "cannot restart IMAP worker" in server.log()
        survivor.logout()
        (last,) = now
        os.kill(last, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while "this process serves the IMAP sessions itself" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        c = Client(KILL_IP, tree.ports["imap"], "127.0.23.136")
        c.login(USER, PASSWORD)
        assert c.select("INBOX")[0] == "OK" and not children(server.proc.pid)
        c.logout()
    finally:
        server.stop()
        tree.cleanup()
