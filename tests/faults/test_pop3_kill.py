"""SIGKILL of the POP3 server during RETR and after DELE before QUIT: nothing deleted, no lock left behind.

RFC 1939 deletes only in the UPDATE state (after QUIT). The server runs in its own process
(tests.peers.pop3_server.POP3Process) so it can be killed; the lock is a ``flock`` the kernel drops
with the process, which the test checks directly as well as by logging in again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import poplib
import socket
from pathlib import Path

import pytest

from mailprov.maildir import maildir_path
from mailprov.users import UserDB
from tests.faults.conftest import next_ip
from tests.peers.pop3_server import POP3Process, pop3_sections

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

USER, PASSWORD = "alice@faults.test", "alice-pop-secret"


def snapshot(maildir: Path) -> dict[str, str]:
    """Message digest by Maildir unique name, over new/ and cur/ (flags may change, content must not)."""
    out = {}
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            out[path.name.split(":", 1)[0]] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_unlocked(state_dir: Path) -> None:
    """Nobody holds the mailbox lock: take it and give it back at once."""
    lock = state_dir / "pop3" / "faults.test" / "alice.lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if a lock was left behind
    finally:
        os.close(fd)


def login(pop: POP3Process) -> poplib.POP3:
    client = poplib.POP3(*pop.plain, timeout=20)
    client.user(USER)
    client.pass_(PASSWORD)
    return client


def test_kill_during_retr_and_before_quit_deletes_nothing(make_config) -> None:
    config = make_config(hostname="pop.faults.test", domains=("faults.test",), pop3=pop3_sections(next_ip(), trusted=True))
    UserDB(config.paths.users_file).add(USER, PASSWORD)
    maildir = maildir_path(config.paths.mail_dir, USER)
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 4 * 1024 * 128  # 8 MiB: RETR is still streaming at the kill
    for n in range(5):
        data = big if n == 0 else f"Subject: small {n}\r\n\r\nhello {n}\r\n".encode()
        (maildir / "new" / f"17000000{n:02d}.M{n}P1Q{n}.pop.faults.test,S={len(data)}").write_bytes(data)
    before = snapshot(maildir)
    state_dir = Path(config.paths.state_dir)

    # 1. Killed in the middle of RETR of the big message.
    pop = POP3Process(config).start()
    try:
        client = login(pop)
        assert client.stat()[0] == 5
        sock: socket.socket = client.sock
        sock.sendall(b"RETR 1\r\n")
        got = sock.recv(65536)
        assert got.startswith(b"+OK")
        pop.kill()
        client.close()
        assert snapshot(maildir) == before
        assert_unlocked(state_dir)
    finally:
        pop.stop()

    # 2. Killed after DELE (and a RETR) but before QUIT.
    pop = POP3Process(config).start()
    try:
        client = login(pop)  # a lock left by the kill would answer [IN-USE] here
        assert client.stat()[0] == 5
        client.retr(2)
        client.dele(2)
        client.dele(3)
        assert client.stat()[0] == 3
        pop.kill()
        client.close()
        assert snapshot(maildir) == before, "a DELE without QUIT removed a message"
        assert_unlocked(state_dir)
    finally:
        pop.stop()

    # 3. Control: the same DELE with QUIT does delete (so the checks above can fail).
    pop = POP3Process(config).start()
    try:
        client = login(pop)
        assert client.stat()[0] == 5, "messages went missing across the kills"
        client.dele(2)
        client.quit()
        assert len(snapshot(maildir)) == 4
        assert_unlocked(state_dir)
    finally:
        pop.stop()
