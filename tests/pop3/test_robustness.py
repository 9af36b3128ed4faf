"""Hostile and unlucky clients: long lines, garbage, pipelining, STLS injection, limits, idle sessions,
failed logins, a crashed server, a large mailbox. Raw sockets on 127.0.4.0/24, every wait bounded."""

from __future__ import annotations

import base64
import poplib
import socket

import pytest

from tests.peers.pop3_server import POP3Process, POP3Thread, client_tls_context
from tests.pop3.conftest import PASSWORD
from tests.pop3.helpers import deliver, ensure_maildir, message, user_maildir


class Raw:
    """A line-oriented raw client with bounded reads."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def multiline(self) -> list[bytes]:
        lines = []
        for _ in range(100_000):
            line = self.line()
            if line == b".":
                return lines
            lines.append(line)
        raise AssertionError("unterminated multi-line reply")

    def closed(self) -> bool:
        """True when the server has closed the connection (reads what is left, bounded)."""
        try:
            for _ in range(1000):
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def test_long_line_and_garbage_do_not_hurt(pop3_server):
    raw = Raw(pop3_server.plain)
    assert raw.line().startswith(b"+OK")
    raw.send(b"X" * 100_000 + b"\r\n")
    assert raw.line() == b"-ERR line too long"
    raw.send(b"\x00\xff\xfe garbage\r\n")
    assert raw.line().startswith(b"-ERR")
    raw.send(b"NOOP\r\n")  # NOOP is not allowed before login: still an orderly -ERR
    assert raw.line().startswith(b"-ERR")
    raw.send(b"CAPA\r\n")
    assert raw.line() == b"+OK Capability list follows" and b"UIDL" in raw.multiline()
    raw.send(b"BAD\r\n" * 20)
    replies = []
    for _ in range(20):
        try:
            replies.append(raw.line())
        except EOFError:
            break
    # Three errors came before: the tenth error in all closes the session.
    assert len(replies) == 7 and b"too many errors" in replies[-1] and raw.closed()
    # The server is still fine for the next client.
    client = poplib.POP3(*pop3_server.plain, timeout=20)
    client.user("john@example.test")
    client.pass_(PASSWORD)
    client.quit()


def test_pipelined_commands_answered_in_order(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    deliver(box, b"Subject: a\n\nbody\n")
    raw = Raw(pop3_server.plain)
    raw.line()
    raw.send(f"USER john@example.test\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n".encode())
    assert raw.line() == b"+OK Send your password"
    assert raw.line().startswith(b"+OK Logged in")
    assert raw.line() == b"+OK 1 20"
    assert raw.line().startswith(b"+OK") and raw.multiline() == [b"1 20"]
    assert raw.line() == b"+OK 20 octets" and raw.multiline() == [b"Subject: a", b"", b"body"]
    assert raw.line().startswith(b"+OK message 1 deleted")
    assert raw.line().startswith(b"+OK") and raw.closed()
    assert not list((box / "new").iterdir())


def test_commands_pipelined_after_stls_are_discarded(pop3_config):
    config = pop3_config(trusted=False)
    with POP3Thread(config) as server:
        raw = Raw(server.plain)
        raw.line()
        raw.send(b"STLS\r\nCAPA\r\n")  # CAPA sent in plaintext must not be answered, before or after TLS
        assert raw.line() == b"+OK Begin TLS negotiation"
        assert raw.buf == b""
        tls = client_tls_context(config).wrap_socket(raw.sock, server_hostname="mail.example.test")
        tls.sendall(b"NOOP\r\n")
        first = tls.recv(1000)
        assert first.startswith(b"-ERR NOOP is not allowed now"), first
        tls.close()


def test_connection_limit_per_client(pop3_config):
    with POP3Thread(pop3_config(max_connections_per_client=2)) as server:
        first, second = Raw(server.plain), Raw(server.plain)
        assert first.line().startswith(b"+OK") and second.line().startswith(b"+OK")
        third = Raw(server.plain)
        assert third.line().startswith(b"-ERR [SYS/TEMP]") and third.closed()
        first.close()
        # The slot is freed once the server has seen the close; QUIT on the second proves ordering.
        second.send(b"QUIT\r\n")
        assert second.line().startswith(b"+OK") and second.closed()
        fourth = Raw(server.plain)
        assert fourth.line().startswith(b"+OK")
        fourth.close()


def test_failed_logins_are_counted_per_client_and_disconnect(pop3_config):
    with POP3Thread(pop3_config(max_auth_failures=2, auth_failure_delay=0.01)) as server:
        raw = Raw(server.plain)
        raw.line()
        raw.send(b"USER john@example.test\r\nPASS wrong\r\n")
        assert raw.line().startswith(b"+OK") and raw.line() == b"-ERR [AUTH] Authentication failed"
        token = base64.b64encode(b"\0john@example.test\0wrong-again")
        raw.send(b"AUTH PLAIN " + token + b"\r\n")
        assert raw.line() == b"-ERR [AUTH] Authentication failed" and raw.closed()
        # The count is per client address, not per connection: the next failure also disconnects.
        again = Raw(server.plain)
        again.line()
        again.send(b"USER mary@example.test\r\nPASS nope\r\n")
        again.line()
        assert again.line().startswith(b"-ERR [AUTH]") and again.closed()
        # The right password still works, and clears the count.
        client = poplib.POP3(*server.plain, timeout=20)
        client.user("john@example.test")
        client.pass_(PASSWORD)
        client.quit()


def test_idle_session_is_closed_without_update(pop3_config):
    config = pop3_config(idle_timeout=1)
    box = user_maildir(config, "john@example.test")
    deliver(box, message(1))
    with POP3Thread(config) as server:
        raw = Raw(server.plain)
        raw.line()
        raw.send(f"USER john@example.test\r\nPASS {PASSWORD}\r\nDELE 1\r\n".encode())
        for _ in range(3):
            assert raw.line().startswith(b"+OK")
        assert raw.line() == b"-ERR Idle timeout, closing the connection"  # waits at most the socket timeout
        assert raw.closed()
        assert len(list((box / "new").iterdir())) == 1
        client = poplib.POP3(*server.plain, timeout=20)  # and the lock is free
        client.user("john@example.test")
        client.pass_(PASSWORD)
        assert client.stat()[0] == 1
        client.quit()


def test_crashed_server_loses_nothing_and_leaves_no_lock(pop3_config):
    config = pop3_config()
    box = user_maildir(config, "john@example.test")
    names = sorted(deliver(box, message(i)) for i in range(5))
    with POP3Process(config) as server:
        client = poplib.POP3(*server.plain, timeout=20)
        client.user("john@example.test")
        client.pass_(PASSWORD)
        client.retr(1)
        for number in range(1, 6):
            client.dele(number)
        server.kill()  # SIGKILL mid-session
        with pytest.raises((poplib.error_proto, OSError, EOFError)):
            client.quit()
    assert sorted(p.name for p in (box / "new").iterdir()) == names
    with POP3Process(config) as server:
        client = poplib.POP3(*server.plain, timeout=20)
        client.user("john@example.test")
        client.pass_(PASSWORD)  # no stale lock after the crash
        assert client.stat()[0] == 5
        client.quit()


def test_tls_handshake_garbage_on_995(pop3_server):
    raw = Raw(pop3_server.tls)
    raw.send(b"USER john@example.test\r\n" * 10)  # plaintext on the TLS port
    assert raw.closed()
    client = poplib.POP3_SSL(*pop3_server.tls, context=client_tls_context(pop3_server.config), timeout=20)
    client.quit()


@pytest.mark.slow
def test_large_mailbox(pop3_server):
    """20,000 messages: listed from one directory scan, retrieved by number, UIDs unique."""
    box = ensure_maildir(user_maildir(pop3_server.config, "john@example.test"))
    count = 20_000
    for i in range(count):
        (box / "new" / f"1700000000.M{i}P1.h").write_bytes(b"Subject: %d\n\nx\n" % i)
    client = poplib.POP3(*pop3_server.plain, timeout=60)
    client.user("john@example.test")
    client.pass_(PASSWORD)
    assert client.stat()[0] == count
    _, uidl, _ = client.uidl()
    assert len({line.split()[1] for line in uidl}) == count
    _, lines, _ = client.retr(count)
    assert lines[0] == b"Subject: %d" % (count - 1)
    client.quit()


def test_pipelined_quit_then_half_close_still_updates(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    deliver(box, message(1))
    deliver(box, message(2))
    raw = Raw(pop3_server.plain)
    raw.line()
    # Everything at once, then shut our sending side (as `printf ... | nc` does) while the login runs.
    raw.send(f"USER john@example.test\r\nPASS {PASSWORD}\r\nDELE 1\r\nQUIT\r\n".encode())
    raw.sock.shutdown(socket.SHUT_WR)
    replies = [raw.line() for _ in range(4)]
    assert all(r.startswith(b"+OK") for r in replies) and b"1 messages deleted" in replies[-1]
    assert raw.closed()
    assert len(list((box / "new").iterdir())) == 1


def test_half_close_without_quit_deletes_nothing(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    deliver(box, message(1))
    raw = Raw(pop3_server.plain)
    raw.line()
    raw.send(f"USER john@example.test\r\nPASS {PASSWORD}\r\nDELE 1\r\n".encode())
    raw.sock.shutdown(socket.SHUT_WR)
    assert [raw.line()[:3] for _ in range(3)] == [b"+OK"] * 3
    assert raw.closed()
    assert len(list((box / "new").iterdir())) == 1
