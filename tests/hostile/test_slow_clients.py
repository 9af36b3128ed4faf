"""Slow and idle clients: thousands of connections are bounded by limits and timeouts and do not starve
real clients.

* One address opening 1,000 connections gets ``max_connections_per_client`` of them; the rest are told
  421 at once; a real client from elsewhere is served meanwhile.
* Drip-feeding clients (a byte at a time, never a whole command) are cut off after
  ``smtp.command_timeout``: the timer is only reset by complete commands.
* Filling ``smtp.max_connections`` from many addresses: a new client is told 421 at once (never left
  hanging) and is served as soon as slots free up.
* 1,000 concurrent SMTP connections are held at once; the server's memory is printed and bounded.
* POP3: one address gets ``pop3.max_connections_per_client`` sessions; a real user still logs in.
"""

from __future__ import annotations

import contextlib
import poplib
import resource
import smtplib
import socket
import time
from pathlib import Path

import pytest

from mailprov import config as config_mod
from mailprov.users import UserDB
from tests.hostile.conftest import next_ip
from tests.peers.mailprov_server import MailprovProcess, MailprovTree, run_mailprov
from tests.peers.pop3_server import POP3Thread, pop3_sections

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(240)]

PER_CLIENT = 20


@pytest.fixture(scope="module", autouse=True)
def many_files():
    """Thousands of sockets in this process (and the server it starts): raise the soft fd limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_mta(command_timeout: int) -> tuple[MailprovTree, MailprovProcess]:
    tree = MailprovTree.create(
        hostname="mx.slow.test",
        domains=["slow.test"],
        ip=next_ip(),
        smtp={"max_connections": 1000, "max_connections_per_client": PER_CLIENT, "command_timeout": command_timeout, "data_timeout": 5},
    )
    tree.add_user("alice@slow.test", "alice-secret-1")
    return tree, run_mailprov(tree.config_path)


@pytest.fixture
def mta():
    tree, server = start_mta(3)
    yield tree, server
    server.stop()
    tree.cleanup()


@pytest.fixture
def patient_mta():
    """command_timeout 60 s: long enough to hold 1,000 idle connections while they are opened."""
    tree, server = start_mta(60)
    yield tree, server
    server.stop()
    tree.cleanup()


FIRST: dict[int, bytes] = {}  # id(socket) -> its first reply


def open_many(host: str, port: int, sources: list[str], per_source: int, batch: int = 50) -> list[socket.socket]:
    """Connect ``per_source`` sockets from each source address, ``batch`` at a time, each batch reading its
    first reply before the next opens (a burst beyond the listen backlog only measures SYN retries)."""
    socks: list[socket.socket] = []

    def greet(group: list[socket.socket]) -> None:
        for s in group:
            s.settimeout(10)
            try:
                FIRST[id(s)] = s.recv(512)
            except (TimeoutError, ConnectionResetError):
                FIRST[id(s)] = b""

    pending: list[socket.socket] = []
    for source in sources:
        for _ in range(per_source):
            pending.append(socket.create_connection((host, port), timeout=10, source_address=(source, 0)))
            if len(pending) >= batch:
                greet(pending)
                socks += pending
                pending = []
    greet(pending)
    return socks + pending


def first_reply(sock: socket.socket) -> bytes:
    """The first reply read when the socket was opened (see open_many)."""
    return FIRST.get(id(sock), b"")


def real_client_delivers(tree: MailprovTree, n: int) -> None:
    with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=10, source_address=("127.0.7.151", 0)) as client:
        client.sendmail("real@client.test", ["alice@slow.test"], f"Subject: real {n}\r\n\r\nhello\r\n")


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def rss_kib(pgid: int) -> int:
    """Resident memory of every process in the server's process group (master and SMTP workers), KiB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5, pgrp
                total += next(int(ln.split()[1]) for ln in (stat.parent / "status").read_text().splitlines() if ln.startswith("VmRSS:"))
        except (OSError, IndexError, ValueError, StopIteration):
            continue
    return total


def test_one_address_gets_its_share_and_real_clients_are_served(mta) -> None:
    tree, _server = mta
    socks = open_many(tree.ip, tree.ports["smtp"], ["127.0.7.160"], 1000)
    try:
        replies = [first_reply(s) for s in socks]
        greeted = sum(r.startswith(b"220") for r in replies)
        refused = sum(r.startswith(b"421") for r in replies)
        assert greeted == PER_CLIENT and refused == 1000 - PER_CLIENT, (greeted, refused)
        real_client_delivers(tree, 1)
    finally:
        close_all(socks)


def test_drip_feeding_clients_are_cut_off_by_the_command_timeout(mta) -> None:
    tree, _server = mta
    sources = [f"127.0.7.{i}" for i in range(161, 171)]
    socks = open_many(tree.ip, tree.ports["smtp"], sources, 10)
    try:
        assert all(first_reply(s).startswith(b"220") for s in socks)
        for s in socks:
            s.setblocking(False)
        open_ = set(range(len(socks)))
        deadline = time.monotonic() + 20  # command_timeout is 3 s: all must be gone well before this
        while open_ and time.monotonic() < deadline:
            for i in list(open_):
                try:
                    socks[i].send(b"E")  # one byte of "EHLO ..." every 0.2 s, never a line end
                    if socks[i].recv(512) == b"":
                        open_.discard(i)
                except BlockingIOError:
                    continue
                except OSError:
                    open_.discard(i)
            time.sleep(0.2)
        assert not open_, f"{len(open_)} drip-feeding connections outlived the command timeout"
        real_client_delivers(tree, 2)
    finally:
        close_all(socks)


def test_full_house_refuses_at_once_and_frees_slots_on_disconnect(patient_mta) -> None:
    tree, server = patient_mta
    sources = [f"127.0.7.{i}" for i in range(171, 221)]  # 50 addresses x 20 = max_connections (1,000)
    base_rss = rss_kib(server.proc.pid)
    socks = open_many(tree.ip, tree.ports["smtp"], sources, PER_CLIENT)
    try:
        replies = [first_reply(s)[:3] for s in socks]
        assert replies.count(b"220") == len(socks) == 1000, {r: replies.count(r) for r in set(replies)}
        held_rss = rss_kib(server.proc.pid)
        print(f"1,000 concurrent SMTP connections: server RSS {base_rss / 1024:.1f} MiB idle -> {held_rss / 1024:.1f} MiB held")
        assert held_rss - base_rss < 200 * 1024, "memory per held connection is not bounded"
        with socket.create_connection((tree.ip, tree.ports["smtp"]), timeout=10, source_address=("127.0.7.151", 0)) as extra:
            assert extra.recv(512).startswith(b"421"), "over max_connections a client must be refused, not left hanging"
        # Slots come back as soon as idle clients leave (the drip test shows the timeout doing the same).
        close_all(socks[:100])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                real_client_delivers(tree, 3)
                break
            except (smtplib.SMTPException, OSError):
                time.sleep(0.2)
        else:
            pytest.fail("a real client was not served after slots were freed")
    finally:
        close_all(socks)


def test_pop3_per_client_limit(tmp_path) -> None:
    config = config_mod.from_dict(
        {
            "server": {"hostname": "pop.slow.test", "domains": ["slow.test"]},
            "paths": {
                "queue_dir": str(tmp_path / "q"),
                "mail_dir": str(tmp_path / "mail"),
                "state_dir": str(tmp_path / "state"),
                "users_file": str(tmp_path / "users"),
                "aliases_file": str(tmp_path / "aliases"),
            },
            "pop3": pop3_sections(next_ip(), trusted=True, max_connections_per_client=10, max_connections=100),
        }
    )
    UserDB(config.paths.users_file).add("alice@slow.test", "alice-secret-1")
    with POP3Thread(config) as pop:
        socks = open_many(*pop.plain, ["127.0.7.230"], 200)
        try:
            replies = [first_reply(s) for s in socks]
            assert sum(r.startswith(b"+OK") for r in replies) == 10
            assert sum(r.startswith(b"-ERR") for r in replies) == 190
            client = poplib.POP3(*pop.plain, timeout=10)
            client.user("alice@slow.test")
            client.pass_("alice-secret-1")
            client.quit()
        finally:
            close_all(socks)
