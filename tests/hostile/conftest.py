"""Fixtures for the hostile-input tests: one live MTA per module, clients that speak raw bytes.

Addresses in 127.0.7.0/24 (this area's range): servers .100-.129; raw clients bind .150-.199 (never in
the server's trusted networks, so every relay attempt must be refused).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.peers.mailprov_server import MailprovProcess, MailprovTree, run_mailprov

_ips = itertools.count((os.getpid() % 6) * 5)
REPLY_LINE = re.compile(rb"^[2-5][0-9][0-9][ -]")
CLIENT_IP = "127.0.7.150"


def next_ip() -> str:
    """A fresh server address in 127.0.7.100-129."""
    return f"127.0.7.{100 + next(_ips) % 30}"


class RawClient:
    """A socket speaking raw bytes: send a line, read one (possibly multi-line) reply."""

    def __init__(self, host: str, port: int, *, source: str = CLIENT_IP, timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def _line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def reply(self) -> list[bytes] | None:
        """The next reply's lines (SMTP: until a line whose code is followed by a space), None at EOF."""
        lines = []
        while (line := self._line()) is not None:
            lines.append(line)
            if not REPLY_LINE.match(line) or line[3:4] == b" ":
                return lines
        return lines or None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture(scope="module")
def hostile_mta() -> Iterator[tuple[MailprovTree, MailprovProcess]]:
    """A running MTA for faults.test with alice and bob, trusting nobody the tests connect from."""
    tree = MailprovTree.create(
        hostname="mx.hostile.test",
        domains=["hostile.test"],
        ip=next_ip(),
        smtp={"trusted_networks": ["127.0.7.250/32"], "command_timeout": 5, "data_timeout": 10, "max_message_size": 100000},
    )
    tree.add_user("alice@hostile.test", "alice-secret-1")
    server = run_mailprov(tree.config_path)
    yield tree, server
    server.stop()
    tree.cleanup()


def alive(host: str, port: int, deadline: float = 10) -> bool:
    """The server still greets a new client with 220 (bounded wait)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=5) as s:
            return s.recv(512).startswith(b"220")
        time.sleep(0.1)
    return False
