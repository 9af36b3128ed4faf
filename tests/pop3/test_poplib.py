"""The POP3 server against Python's poplib over loopback (127.0.4.0/24)."""

from __future__ import annotations

import poplib
import threading

import pytest

from mailprov.pop3.mailbox import uid_for
from tests.peers.pop3_server import POP3Thread, client_tls_context
from tests.pop3.conftest import PASSWORD
from tests.pop3.helpers import deliver, message, user_maildir


def login(server: POP3Thread, user: str = "john@example.test") -> poplib.POP3:
    client = poplib.POP3(*server.plain, timeout=30)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def vanish(client: poplib.POP3) -> None:
    """Drop the TCP connection without QUIT (poplib's file object holds the socket open too)."""
    client.file.close()
    client.sock.close()


def unstuffed(lines: list[bytes]) -> bytes:
    """poplib's RETR lines (already unstuffed by poplib) joined as the message was sent."""
    return b"".join(line + b"\r\n" for line in lines)


def test_retrieve_is_byte_exact_and_sizes_match(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    bodies = [
        message(1, size=4096),
        b"Subject: dots\n\n.leading dot\n..two dots\n.\nend\n",
        b"Subject: crlf\r\n\r\nalready CRLF\r\n.\r\nlast",  # no final newline
        b"Subject: mixed\n\r\nbare\rCR inside\nlf\r\n",
    ]
    for body in bodies:
        deliver(box, body)
    client = login(pop3_server)
    count, total = client.stat()
    assert count == len(bodies)
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert total == sum(sizes)
    for number, body in enumerate(bodies, 1):
        _, lines, octets = client.retr(number)
        expected = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert unstuffed(lines) == expected
        assert octets == sizes[number - 1] == len(expected)
    client.quit()


def test_uids_are_maildir_names_and_survive_move_and_restart(pop3_config):
    config = pop3_config()
    box = user_maildir(config, "john@example.test")
    names = [deliver(box, message(i)) for i in range(3)]
    with POP3Thread(config) as server:
        client = login(server)
        _, uidl, _ = client.uidl()
        first = [line.split()[1].decode() for line in uidl]
        assert first == [uid_for(n) for n in names]
        client.retr(2)
        client.quit()
    assert sorted(p.name for p in (box / "cur").iterdir()) == [names[1] + ":2,S"]
    later = deliver(box, message(9))
    with POP3Thread(config) as server:
        client = login(server)
        _, uidl, _ = client.uidl()
        assert [line.split()[1].decode() for line in uidl] == [*first, uid_for(later)]
        assert client.uidl(2).split()[2].decode() == first[1]
        client.quit()


def test_deletions_only_on_quit_and_rset(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    for i in range(4):
        deliver(box, message(i))
    client = login(pop3_server)
    client.dele(1)
    client.dele(2)
    with pytest.raises(poplib.error_proto, match="deleted"):
        client.retr(1)
    assert client.stat()[0] == 2
    client.rset()
    assert client.stat()[0] == 4
    client.dele(3)
    # Nothing is removed before QUIT.
    assert len(list((box / "new").iterdir())) == 4
    assert client.quit().startswith(b"+OK")
    assert len(list((box / "new").iterdir())) == 3


def test_dropped_connection_deletes_nothing_and_frees_the_lock(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    for i in range(3):
        deliver(box, message(i))
    client = login(pop3_server)
    client.retr(1)
    client.dele(1)
    client.dele(2)
    vanish(client)
    second = login(pop3_server)  # the lock is free again
    assert second.stat()[0] == 3
    second.quit()
    assert len(list((box / "new").iterdir())) == 3 and not list((box / "cur").iterdir())


def test_second_session_gets_in_use(pop3_server):
    deliver(user_maildir(pop3_server.config, "john@example.test"), message(1))
    first = login(pop3_server)
    second = poplib.POP3(*pop3_server.plain, timeout=30)
    second.user("john@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    # Another user is not blocked.
    other = login(pop3_server, "mary@example.test")
    assert other.stat() == (0, 0)
    other.quit()
    second.quit()
    first.quit()


def test_new_mail_during_a_session_appears_in_the_next(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    deliver(box, message(1))
    client = login(pop3_server)
    deliver(box, message(2))
    assert client.stat()[0] == 1
    client.quit()
    client = login(pop3_server)
    assert client.stat()[0] == 2
    client.quit()


def test_failed_login_does_not_say_whether_the_user_exists(pop3_server):
    replies = []
    for user in ("john@example.test", "nobody@example.test"):
        client = poplib.POP3(*pop3_server.plain, timeout=30)
        client.user(user)
        with pytest.raises(poplib.error_proto) as info:
            client.pass_("wrong")
        replies.append(info.value.args[0])
        client.quit()
    assert replies[0] == replies[1] == b"-ERR [AUTH] Authentication failed"


def test_bare_local_part_logs_in_when_one_domain(pop3_server):
    client = login(pop3_server, "John")
    assert client.stat() == (0, 0)
    client.quit()


def test_capa_and_top(pop3_server):
    box = user_maildir(pop3_server.config, "john@example.test")
    deliver(box, b"Subject: top\nX: y\n\n.one\ntwo\nthree\n")
    client = poplib.POP3(*pop3_server.plain, timeout=30)
    caps = client.capa()
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "STLS", "SASL"):
        assert cap in caps
    assert "APOP" not in caps
    client.user("john@example.test")
    client.pass_(PASSWORD)
    _, lines, _ = client.top(1, 2)
    assert lines == [b"Subject: top", b"X: y", b"", b".one", b"two"]
    _, lines, _ = client.top(1, 0)
    assert lines == [b"Subject: top", b"X: y", b""]
    client.quit()
    # TOP does not mark a message as read.
    assert not list((box / "cur").iterdir())


def test_stls_then_login(pop3_config):
    config = pop3_config(trusted=False)
    deliver(user_maildir(config, "john@example.test"), message(1))
    with POP3Thread(config) as server:
        client = poplib.POP3(*server.plain, timeout=30)
        assert "USER" not in client.capa()
        with pytest.raises(poplib.error_proto, match="STLS"):
            client.user("john@example.test")
        client.stls(context=client_tls_context(config))
        caps = client.capa()
        assert "STLS" not in caps and "USER" in caps
        client.user("john@example.test")
        client.pass_(PASSWORD)
        assert client.stat()[0] == 1
        client.quit()


def test_implicit_tls_login(pop3_config):
    config = pop3_config(trusted=False)
    deliver(user_maildir(config, "john@example.test"), message(1, size=5000))
    with POP3Thread(config) as server:
        client = poplib.POP3_SSL(*server.tls, context=client_tls_context(config), timeout=30)
        assert "STLS" not in client.capa()
        client.user("john@example.test")
        client.pass_(PASSWORD)
        _, lines, octets = client.retr(1)
        assert octets == int(client.list(1).split()[2]) > 5000
        assert lines[3] == b"Message-ID: <1@alpha.test>"
        client.quit()


def test_two_users_retrieve_at_the_same_time(pop3_server):
    """Two sessions interleave their RETRs (threads, bounded joins); each gets exactly its own mail."""
    users = ("john@example.test", "mary@example.test")
    for user in users:
        box = user_maildir(pop3_server.config, user)
        for i in range(40):
            deliver(box, message(i, body=f"for {user} number {i}\n".encode() * 50))
    clients = {user: login(pop3_server, user) for user in users}  # both logged in before either retrieves
    got: dict[str, list[bytes]] = {}

    def fetch(user: str) -> None:
        client = clients[user]
        got[user] = [b"\n".join(client.retr(n)[1]) for n in range(1, 41)]
        for n in range(1, 41):
            client.dele(n)
        client.quit()

    threads = [threading.Thread(target=fetch, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for user in users:
        assert len(got[user]) == 40
        assert all(f"for {user} number {i}".encode() in body for i, body in enumerate(got[user]))
        assert not list((user_maildir(pop3_server.config, user) / "new").iterdir())
